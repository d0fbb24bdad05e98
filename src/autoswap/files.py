"""Where stages write, and how.

Atomic writes: a file is either its old self or its complete new self, never half-written,
even if the process is killed or the disk fills up mid-write (temporary name, fsync, rename).

Output folders: no setting may make a stage delete what it did not write. A stage's output
folder is refused when it is, holds or lies inside an input (data/raw, data.dir_a, ...), or is
or holds the project root, the home folder or `/` (`check_output_dir`). A folder a stage makes
is marked as its own with a MARKER file naming the stage; a stage empties only a folder with its
own marker, and refuses a non-empty one without it (`fresh_output_dir`)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from autoswap.errors import UserError, naming

MARKER = ".autoswap-output"  # first line: the stage whose output the folder is
ALWAYS_INPUTS = (Path("data/raw"),)  # the user's data, whatever params.yaml says


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, say: named as `path`, not the temporary name
        discard(tmp)
        raise naming(e, path, tmp) from None
    except BaseException:
        discard(tmp)
        raise
    fsync_dir(path.parent)


def discard(path: Path) -> None:
    """Remove what a failed write left at `path`, if anything (on a read-only file system even a
    file that is not there cannot be removed: that error is not the one to report)."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


def save_png(a, path: Path) -> None:
    """An image array as PNG, straight to `path` (for the many files of one output folder, which
    a manifest or DVC records once all are written): on a full disk no half-written file is left,
    and the error names it."""
    from PIL import Image

    path = Path(path)
    try:
        Image.fromarray(a).save(path, format="PNG")
    except BaseException as e:
        discard(path)
        if isinstance(e, OSError):
            raise naming(e, path) from None
        raise


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (where the system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_json(path: Path, obj, **kw) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, **kw) + "\n")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """For writers that want a file name (PIL's save, matplotlib's savefig): a temporary path
    next to `path`, with its suffix (which picks the format), moved onto `path` once the block
    ends; removed, and `path` left as it was, when the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        discard(tmp)
        raise naming(e, path, tmp) from None
    except BaseException:
        discard(tmp)
        raise
    fsync_dir(path.parent)


# ----------------------------------------------------------------------------- output folders
def is_inside(child: Path, parent: Path) -> bool:
    """Whether `child` is `parent` or lies anywhere under it, links resolved (the one check
    extract, swap and the output folders use)."""
    child, parent = Path(child).resolve(), Path(parent).resolve()
    return child == parent or parent in child.parents


def project_roots() -> list[Path]:
    """The project root: the current folder, and DVC_ROOT when DVC runs the stage."""
    roots = [Path.cwd().resolve()]
    if os.environ.get("DVC_ROOT"):
        roots.append(Path(os.environ["DVC_ROOT"]).resolve())
    return roots


def check_output_dir(path: Path, where: str, inputs: Iterable[Path | None] = (), suggest: str | None = None) -> None:
    """Refuse `path` as a folder a stage writes into (and may empty) when it is, holds or lies
    inside one of `inputs` or data/raw (in the current folder or under DVC_ROOT), or is or holds
    the project root, the home folder or `/`. `where` names the setting in the one-line error,
    e.g. "params.yaml: key 'data.faces_dir'" or "--out"; `suggest` a folder to choose instead."""
    out = Path(path).resolve()
    hint = f"choose a folder of its own such as {suggest}" if suggest else "choose a folder of its own"
    protected = [("the file system root", Path(out.anchor))]
    try:
        protected.append(("the home folder", Path.home().resolve()))
    except (RuntimeError, KeyError):  # no home folder known
        pass
    protected += [("the project root", r) for r in project_roots()]
    for what, p in protected:
        if is_inside(p, out):
            raise UserError(f"{where}: {path} is or holds {what} ({p}); {hint}")
    always = [r / a for r in project_roots() for a in ALWAYS_INPUTS]
    for given in [*ALWAYS_INPUTS, *always, *(p for p in inputs if p is not None)]:
        inp = Path(given).resolve()
        if is_inside(out, inp) or is_inside(inp, out):
            raise UserError(f"{where}: {path} is, holds or lies inside {given} (an input); {hint}")


def output_owner(path: Path) -> str | None:
    """The stage whose output folder `path` is (its MARKER's first line), or None."""
    marker = Path(path) / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        lines = marker.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return (lines[0].strip() or None) if lines else None


def mark_output_dir(path: Path, stage: str) -> None:
    """Mark `path` as `stage`'s output folder: the folders a stage may empty on its next run."""
    atomic_write_text(
        Path(path) / MARKER,
        f"{stage}\n# written by `autoswap {stage}`: this folder is its output, which its next run replaces\n",
    )


def fresh_output_dir(path: Path, stage: str, where: str, inputs: Iterable[Path | None] = (),
                     suggest: str | None = None) -> Path:
    """Make `path` an empty folder marked as `stage`'s output: a missing folder is made, an
    empty one used, one marked as `stage`'s own emptied; anything else is refused with a
    one-line UserError before a file is touched (see `check_output_dir` for the rest)."""
    path = Path(path)
    check_output_dir(path, where, inputs, suggest)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise UserError(f"{where}: {path} exists and is not a folder; move it or choose another folder")
        entries = list(path.iterdir())
        owner = output_owner(path)
        if entries and owner != stage:
            if owner:
                raise UserError(f"{where}: {path} holds the output of `autoswap {owner}`, not {stage}; "
                                "choose another folder")
            raise UserError(f"{where}: {path} is not empty and not written by autoswap; "
                            "move its files or choose another folder")
        for e in entries:  # its own earlier output
            if e.name == MARKER:
                continue
            if e.is_dir() and not e.is_symlink():
                shutil.rmtree(e)
            else:
                e.unlink()  # a link: the link only, never what it points at
    path.mkdir(parents=True, exist_ok=True)
    mark_output_dir(path, stage)
    return path
