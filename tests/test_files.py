"""autoswap.files: where a stage may write and what it may delete (an output folder that is,
holds or lies inside an input, the project root, home or `/` is refused; a stage empties only a
folder carrying its own marker), and the atomic writes for files written by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from autoswap.errors import UserError
from autoswap.files import (
    MARKER,
    atomic_path,
    atomic_write_bytes,
    check_output_dir,
    fresh_output_dir,
    mark_output_dir,
    output_owner,
)
from autoswap.images import list_images

KEY = "params.yaml: key 'data.faces_dir'"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """cwd = a project with the user's photos under data/raw; HOME and DVC_ROOT elsewhere."""
    root = tmp_path / "work" / "proj"
    (root / "data/raw/a").mkdir(parents=True)
    (root / "data/raw/a/me.jpg").write_bytes(b"a photo")
    monkeypatch.chdir(root)
    monkeypatch.setenv("HOME", str(tmp_path / "home" / "me"))
    (tmp_path / "home" / "me").mkdir(parents=True)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return root


@pytest.mark.parametrize("out", ["data", "data/raw", "data/raw/a", "data/raw/a/faces"])
def test_output_that_is_holds_or_lies_inside_data_raw_is_refused(project, out):
    with pytest.raises(UserError) as e:
        check_output_dir(Path(out), KEY, suggest="data/faces")
    assert str(e.value) == (f"{KEY}: {out} is, holds or lies inside data/raw (an input); "
                            "choose a folder of its own such as data/faces")
    check_output_dir(Path("data/faces"), KEY)  # beside the input: fine
    check_output_dir(Path("data/rawfaces"), KEY)  # a name that merely starts the same: fine


def test_output_that_is_holds_or_lies_inside_a_given_input_is_refused(project, tmp_path):
    photos = tmp_path / "photos" / "alice"
    for out in (photos, photos.parent, photos / "faces"):
        with pytest.raises(UserError, match=rf"^--out: {re.escape(str(out))} is, holds or lies inside "
                                            rf"{re.escape(str(photos))} \(an input\)"):
            check_output_dir(out, "--out", [None, photos])
    check_output_dir(tmp_path / "photos" / "bob", "--out", [photos])


def test_project_root_home_and_filesystem_root_are_refused(project, tmp_path, monkeypatch):
    home = tmp_path / "home" / "me"
    cases = {
        ".": "the project root", str(project.parent): "the project root",
        str(home): "the home folder", str(home.parent): "the home folder", "/": "the file system root",
    }
    for out, what in cases.items():
        with pytest.raises(UserError, match=rf"^{re.escape(KEY)}: {re.escape(out)} is or holds {what} "):
            check_output_dir(Path(out), KEY)
    check_output_dir(Path("models"), KEY)  # inside the project: fine
    check_output_dir(home / "faces", KEY)  # inside home: fine
    # a DVC run in a temporary copy: the real project (DVC_ROOT) and its data/raw are protected too
    real = tmp_path / "real"
    monkeypatch.setenv("DVC_ROOT", str(real))
    with pytest.raises(UserError, match="is or holds the project root"):
        check_output_dir(real, KEY)
    with pytest.raises(UserError, match=r"lies inside .*real/data/raw \(an input\)"):
        check_output_dir(real / "data/raw/b/faces", KEY)


def test_fresh_output_dir_marks_empties_its_own_and_refuses_the_rest(project, tmp_path):
    out = Path("data/faces")
    assert fresh_output_dir(out, "prepare", KEY) == out
    assert out.is_dir() and output_owner(out) == "prepare" and [p.name for p in out.iterdir()] == [MARKER]
    # its own earlier output is emptied; a link inside it goes, never what the link points at
    (out / "a/train").mkdir(parents=True)
    (out / "a/train/00000.png").write_bytes(b"old face")
    keep = tmp_path / "elsewhere"
    keep.mkdir()
    (keep / "precious.jpg").write_bytes(b"mine")
    (out / "link").symlink_to(keep, target_is_directory=True)
    fresh_output_dir(out, "prepare", KEY)
    assert [p.name for p in out.iterdir()] == [MARKER] and (keep / "precious.jpg").read_bytes() == b"mine"

    # a folder with files and no marker: refused, not emptied
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as e:
        fresh_output_dir(mine, "prepare", KEY)
    assert str(e.value) == (f"{KEY}: {mine} is not empty and not written by autoswap; "
                            "move its files or choose another folder")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # another stage's output: refused too
    other = tmp_path / "swaps"
    other.mkdir()
    mark_output_dir(other, "swap")
    (other / "verify.json").write_text("{}")
    with pytest.raises(UserError, match="holds the output of `autoswap swap`, not prepare"):
        fresh_output_dir(other, "prepare", KEY)
    assert (other / "verify.json").is_file()
    # a file where the folder should be
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        fresh_output_dir(tmp_path / "afile", "prepare", KEY)
    # an empty folder is taken and marked; a marker without a stage name is no marker
    (tmp_path / "empty").mkdir()
    fresh_output_dir(tmp_path / "empty", "prepare", KEY)
    assert output_owner(tmp_path / "empty") == "prepare"
    (mine / MARKER).write_text("\n")
    assert output_owner(mine) is None
    # the rules hold before anything is emptied
    with pytest.raises(UserError, match="lies inside data/raw"):
        fresh_output_dir(Path("data/raw/a"), "prepare", KEY)
    assert (project / "data/raw/a/me.jpg").read_bytes() == b"a photo"


def test_the_marker_is_no_image(project):
    out = fresh_output_dir(Path("data/faces"), "prepare", KEY)
    Image.new("RGB", (4, 4)).save(out / "x.png")
    assert list_images(out) == [out / "x.png"]


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "sub" / "grid.png"
    with atomic_path(out) as tmp:
        assert tmp.parent == out.parent and tmp.suffix == ".png" and tmp != out
        Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp)
    assert Image.open(out).getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_bytes(b"half a png")
        raise RuntimeError("killed mid-write")
    assert Image.open(out).getpixel((0, 0)) == (255, 0, 0)  # the old file, whole
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]  # no temporary left
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
