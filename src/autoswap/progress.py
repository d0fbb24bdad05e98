"""Progress of a long loop (files extracted, frames swapped): a tqdm bar on a terminal, plain
lines otherwise.

When stderr is not a terminal (`dvc repro > log 2>&1`, CI), a tqdm bar would write one
carriage-return update per file or frame onto a single line of the log. There, instead, one
plain line is printed to stderr at most every INTERVAL_S seconds, and one at the end:

    extract: 120/637 files, 3.4 files/s, ETA 2.5 min
    extract: 637/637 files, 3.3 files/s, done in 3.2 min, kept 512

the same rule and ETA as train's own progress (train.Progress). AUTOSWAP_PROGRESS_INTERVAL
(seconds) changes the interval; it changes nothing but how often these lines come.
"""

from __future__ import annotations

import os
import sys
import time

INTERVAL_S = 30.0  # at most one plain line this often (the end line aside)


def is_terminal(stream=None) -> bool:
    """Whether `stream` (stderr by default, where the bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _interval() -> float:
    try:
        return max(0.0, float(os.environ["AUTOSWAP_PROGRESS_INTERVAL"]))
    except (KeyError, ValueError):
        return INTERVAL_S


def _rate(x: float) -> str:
    return f"{x:.1f}" if x >= 1 else f"{x:.2f}"


class Progress:
    """`total` (or None when unknown) items of `unit` under the name `desc`.

    enabled=False shows nothing (--quiet). On a terminal: a tqdm bar (leave=False: it goes when
    done). Otherwise: plain lines, at most every `interval` s (default: INTERVAL_S, or
    AUTOSWAP_PROGRESS_INTERVAL), and one at the end, for leave=False only when a line was printed
    before (so that a folder of short videos does not print a line for each)."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "file", *, enabled: bool = True,
                 leave: bool = True, interval: float | None = None, stream=None) -> None:
        self.desc, self.total, self.unit, self.leave = desc, total, unit, leave
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.n = 0
        self.postfix: dict[str, object] = {}
        self.interval = _interval() if interval is None else interval
        self.t0 = self.last = time.monotonic()
        self.printed = 0
        self.closed = False
        self.bar = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, desc=desc, leave=leave, file=self.stream)

    @property
    def disable(self) -> bool:
        return not self.enabled

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last >= self.interval:
            self._line()

    def set_postfix(self, **kw) -> None:
        self.postfix.update(kw)
        if self.bar is not None:
            self.bar.set_postfix(**kw)

    def line(self, end: bool = False) -> str:
        """The plain line for now (`end`: the closing one)."""
        elapsed = time.monotonic() - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{count} {self.unit}s", f"{_rate(rate)} {self.unit}s/s"]
        if end:
            parts.append(f"done in {elapsed / 60:.1f} min")
        elif self.total and rate > 0:
            parts.append(f"ETA {max(0, self.total - self.n) / rate / 60:.1f} min")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return f"{self.desc}: " + ", ".join(parts)

    def _line(self, end: bool = False) -> None:
        print(self.line(end), file=self.stream, flush=True)
        self.last = time.monotonic()
        self.printed += 1

    def close(self, failed: bool = False) -> None:
        """Close the bar, or print the end line (not when the loop `failed`: it is not done)."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and not failed and (self.leave or self.printed):
            self._line(end=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(failed=kind is not None)
