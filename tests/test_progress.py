"""Progress of the long loops (autoswap.progress): a tqdm bar on a terminal; when the output is
a file (`dvc repro > log 2>&1`, CI), plain lines at most every interval and one at the end, with
no carriage returns. The stages' own loops (extract, prepare, swap's video) are run here with
their output captured, and a zero interval so that every step prints."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import skimage.data
from conftest import tiny_raw
from matplotlib import cbook
from PIL import Image
from test_video import encode, frames

from autoswap import progress as P
from autoswap.config import ExtractSettings, parse
from autoswap.progress import Progress

LINE = re.compile(r"^(?P<desc>.+?): (?P<n>\d+)(/(?P<total>\d+))? (?P<unit>\w+)s, "
                  r"[\d.]+ \w+s/s(, (ETA|done in) [\d.]+ min)?(, .*)?$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(P.time, "monotonic", c)
    return c


def test_plain_lines_at_most_every_interval_and_at_the_end(clock):
    out = io.StringIO()
    with Progress("extract", 637, unit="file", stream=out, interval=30) as bar:
        for _ in range(637):
            clock.t += 0.25  # 4 files a second: a line every 120 files
            bar.update()
            bar.set_postfix(kept=7)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 6  # at 30, 60, ... 150 s, and the end
    assert lines[0] == "extract: 120/637 files, 4.0 files/s, ETA 2.2 min, kept 7"
    assert lines[-1] == "extract: 637/637 files, 4.0 files/s, done in 2.7 min, kept 7"
    assert all(LINE.match(x) for x in lines), lines


def test_unknown_total_slow_rates_and_the_env_interval(clock, monkeypatch):
    monkeypatch.setenv("AUTOSWAP_PROGRESS_INTERVAL", "0")
    out = io.StringIO()
    with Progress("clip.mkv", None, unit="frame", stream=out) as bar:
        for _ in range(2):
            clock.t += 20
            bar.update()
    assert out.getvalue().splitlines() == [
        "clip.mkv: 1 frames, 0.05 frames/s",
        "clip.mkv: 2 frames, 0.05 frames/s",
        "clip.mkv: 2 frames, 0.05 frames/s, done in 0.7 min",
    ]


def test_short_nested_loops_print_nothing_and_quiet_prints_nothing(clock):
    out = io.StringIO()
    with Progress("short.mp4", 10, unit="frame", stream=out, interval=30, leave=False) as bar:
        bar.update(10)  # under 30 s: no line, and no end line for a loop that printed none
    with Progress("long.mp4", 10, unit="frame", stream=out, interval=30, leave=False) as bar:
        clock.t += 31
        bar.update(5)
        bar.update(5)
    with Progress("extract", 10, stream=out, interval=0, enabled=False) as bar:
        bar.update(10)
    assert out.getvalue().splitlines() == ["long.mp4: 5/10 frames, 0.16 frames/s, ETA 0.5 min",
                                           "long.mp4: 10/10 frames, 0.32 frames/s, done in 0.5 min"]


def test_a_failed_loop_prints_no_end_line():
    out = io.StringIO()
    with pytest.raises(OSError), Progress("extract", 10, stream=out, interval=3600) as bar:
        bar.update()
        raise OSError("disk full")
    assert out.getvalue() == ""


def test_a_terminal_keeps_its_tqdm_bar():
    term = Terminal()
    with Progress("extract", 3, stream=term, interval=0) as bar:
        for _ in range(3):
            bar.update()
    text = term.getvalue()
    assert "\r" in text and "3/3" in text and "files/s, ETA" not in text


# ----------------------------------------------------------------------------- the stages' loops
def _plain(err: str, desc: str) -> list[str]:
    assert "\r" not in err, "a carriage return in output that is not a terminal"
    lines = [x for x in err.splitlines() if x.startswith(f"{desc}: ")]
    assert lines and all(LINE.match(x) for x in lines), err
    return lines


def test_extract_prints_plain_lines_for_files_and_a_videos_frames(tmp_path, capfd, monkeypatch):
    from autoswap.extract import extract_to_dir

    monkeypatch.setenv("AUTOSWAP_PROGRESS_INTERVAL", "0")
    raw = tmp_path / "raw"
    raw.mkdir()
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        Image.open(f).convert("RGB").save(raw / "hopper.jpg")
    Image.fromarray(skimage.data.coffee()).save(raw / "cup.png")
    encode(raw / "clip.mkv", frames(6, 48, 64))
    report = extract_to_dir([raw], tmp_path / "faces", ExtractSettings(every_nth_frame=2), 64)
    assert report["files"] == 3 and report["kept"] == 1
    err = capfd.readouterr().err
    files = _plain(err, "extract")
    assert files[0].startswith("extract: 1/3 files, ") and "ETA" in files[0]
    assert files[-1].startswith("extract: 3/3 files, ") and "done in" in files[-1] and files[-1].endswith("kept 1")
    assert re.match(r"clip.mkv: 3(/3)? frames, ", _plain(err, "clip.mkv")[-1])  # MKV may not say how many


def test_prepare_prints_plain_lines(tmp_path, capfd, monkeypatch):
    from autoswap.prepare import prepare

    monkeypatch.setenv("AUTOSWAP_PROGRESS_INTERVAL", "0")
    for side, seed in (("a", 0), ("b", 1)):
        (tmp_path / "raw" / side).mkdir(parents=True)
        for i in range(5):
            a = np.random.default_rng([seed, i]).integers(0, 256, (80, 80, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / "raw" / side / f"face{i}.png")
    folders = parse(tiny_raw(tmp_path, data={"source": "folders", "aligned": True, "min_faces": 4,
                                             "dir_a": str(tmp_path / "raw/a"), "dir_b": str(tmp_path / "raw/b")}))
    prepare(folders, metrics_dir=tmp_path / "metrics")
    err = capfd.readouterr().err
    assert _plain(err, "prepare: person A")[-1].startswith("prepare: person A: 5/5 files, ")
    assert _plain(err, "prepare: person B")[-1].startswith("prepare: person B: 5/5 files, ")

    prepare(parse(tiny_raw(tmp_path / "synthetic")), metrics_dir=tmp_path / "metrics")
    lines = _plain(capfd.readouterr().err, "prepare: demo faces")
    assert lines[-1].startswith("prepare: demo faces: 64/64 files, ")  # 2 x (24 + 2 x 4)


def test_a_videos_transcode_prints_plain_lines(tmp_path, capfd, monkeypatch):
    from autoswap.video import transcode

    monkeypatch.setenv("AUTOSWAP_PROGRESS_INTERVAL", "0")
    src = encode(tmp_path / "in.mp4", frames(5), codec="libx264", pix_fmt="yuv420p")  # MP4: 5 frames known
    transcode(src, tmp_path / "out.mp4", lambda i, t, rgb: None, desc="in.mp4")
    lines = _plain(capfd.readouterr().err, "in.mp4")
    assert [x.split(",")[0] for x in lines] == [f"in.mp4: {i}/5 frames" for i in range(1, 6)] + ["in.mp4: 5/5 frames"]
    assert "ETA" in lines[0] and "done in" in lines[-1]
