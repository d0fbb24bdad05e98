"""I/O errors in one line: the file, what happened and what to do, for a full disk (ENOSPC), no
permission (EACCES) and a read-only file system (EROFS); and nothing half-written is left behind.
The wording is checked with the errno simulated; the real thing on a tiny tmpfs (as root) and on
a folder without write permission (not as root, where chmod stops nothing). `autoswap swap`'s
own cases (the C2PA signing, videos) are in test_swap.py."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_raw
from matplotlib import cbook
from PIL import Image

from autoswap import cli
from autoswap.errors import naming, os_error_line
from autoswap.files import atomic_path, atomic_write_text, save_png

ADVICE = {
    errno.ENOSPC: "no space left on the device; free space there (or write elsewhere with --out) and re-run",
    errno.EACCES: "permission denied; give your user access to it and its folder (or write elsewhere with --out) "
                  "and re-run",
    errno.EROFS: "read-only file system; write elsewhere with --out (or remount it read-write) and re-run",
}


@pytest.mark.parametrize("code", sorted(ADVICE))
def test_each_errno_is_one_line_saying_what_to_do(code):
    e = OSError(code, os.strerror(code), "swaps/x.jpg")
    assert os_error_line(e, "write elsewhere with --out") == f"swaps/x.jpg: {ADVICE[code]}"


def test_other_errors_and_errors_that_name_no_file():
    assert os_error_line(OSError(errno.EIO, "Input/output error", "a.png")) == (
        "a.png: Input/output error; free space or fix permissions, then re-run")
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device")).startswith("no space left on the device;")
    e = naming(OSError(errno.ENOSPC, "No space left on device"), "swaps/x.jpg")
    assert e.filename == "swaps/x.jpg" and "swaps/x.jpg" in str(e)
    assert naming(OSError(errno.ENOSPC, "x", "swaps/.x.jpg.tmp"), "swaps/x.jpg", "swaps/.x.jpg.tmp").filename == \
        "swaps/x.jpg"
    assert naming(OSError(errno.EACCES, "x", "models/final"), "swaps/x.jpg").filename == "models/final"


@pytest.mark.parametrize("command, code, line", [
    ("extract", errno.ENOSPC, "no space left on the device; free space there (or write elsewhere with --out) "
                              "and re-run"),
    ("swap", errno.ENOSPC, "no space left on the device; free space there (or write elsewhere: another OUTPUT) "
                           "and re-run"),
    ("swap", errno.EACCES, "permission denied; give your user access to it and its folder (or write elsewhere: "
                           "another OUTPUT) and re-run"),
    ("swap", errno.EROFS, "read-only file system; write elsewhere: another OUTPUT (or remount it read-write) and "
                          "re-run"),
    ("prepare", errno.ENOSPC, "no space left on the device; free space there (or write elsewhere with "
                              "data.faces_dir in params.yaml) and re-run"),
    ("evaluate", errno.EROFS, "read-only file system; write elsewhere (or remount it read-write) and re-run"),
])
def test_the_cli_prints_one_line_per_errno(command, code, line, monkeypatch, capsys):
    def fails(args):
        raise OSError(code, os.strerror(code), "swaps/x.jpg")

    monkeypatch.setattr(cli, f"cmd_{command}", fails)
    monkeypatch.setenv("AUTOSWAP_TF_LOGS", "1")  # no TensorFlow start: the command fails at once
    assert cli.main([command, *{"extract": ["in.jpg", "--out", "faces"], "swap": ["in.jpg", "out.jpg"]}
                     .get(command, [])]) == 1
    err = capsys.readouterr().err
    assert err == f"autoswap: swaps/x.jpg: {line}\n"


# ----------------------------------------------------------------------------- the real thing
def _big(n: int = 256) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, n, 3), dtype=np.uint8)  # ~200 KB as PNG


def test_atomic_writes_onto_a_full_disk_leave_nothing_and_name_the_file(small_disk):
    with small_disk("64k") as disk:
        for write in (lambda p: atomic_write_text(p, "x" * 200_000),
                      lambda p: save_png(_big(), p)):
            target = disk / "out.png"
            with pytest.raises(OSError) as e:
                write(target)
            assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
            assert os_error_line(e.value).startswith(f"{target}: no space left on the device; free space there")
            assert list(disk.iterdir()) == []  # no half-written file, no temporary one
        target.write_text("old")
        with pytest.raises(OSError) as e, atomic_path(target) as tmp:
            Image.fromarray(_big()).save(tmp)
        assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
        assert [p.name for p in disk.iterdir()] == ["out.png"] and target.read_text() == "old"  # as it was


def test_a_read_only_file_system(small_disk):
    with small_disk("64k", read_only=True) as disk:
        with pytest.raises(OSError) as e:
            atomic_write_text(disk / "prepare.json", "{}")
        assert e.value.errno == errno.EROFS
        assert os_error_line(e.value, "write elsewhere with --out") == (
            f"{disk / 'prepare.json'}: read-only file system; write elsewhere with --out (or remount it read-write) "
            "and re-run")


def _unprivileged() -> list[str]:
    """A command prefix under which the file permissions apply: none for a user; for root, setpriv
    without the capabilities that let root write anywhere (skipped where that cannot be had)."""
    if os.geteuid() != 0:
        return []
    cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    probe = subprocess.run([*cmd, "true"], capture_output=True)
    if shutil.which("setpriv") is None or probe.returncode:
        pytest.skip("running as root, where chmod does not stop writes, and setpriv cannot drop that power")
    return cmd


def _prepare_cli(tmp_path: Path, faces_dir: Path, prefix: list[str]) -> subprocess.CompletedProcess:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw(tmp_path, data={"faces_dir": str(faces_dir)})))
    return subprocess.run([*prefix, sys.executable, "-m", "autoswap.cli", "--params", str(params), "prepare"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_a_folder_without_write_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.geteuid() != 0:  # (root: only in the subprocess below)
            with pytest.raises(OSError) as e:
                atomic_write_text(locked / "prepare.json", "{}")
            assert e.value.errno == errno.EACCES and e.value.filename == str(locked / "prepare.json")
        r = _prepare_cli(tmp_path, locked / "faces", _unprivileged())
        assert r.returncode == 1 and r.stderr == (
            f"autoswap: {locked / 'faces'}: permission denied; give your user access to it and its folder (or write "
            "elsewhere with data.faces_dir in params.yaml) and re-run\n"), r.stderr
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_prepare_onto_a_read_only_file_system(small_disk, tmp_path):
    with small_disk("64k", read_only=True) as disk:
        r = _prepare_cli(tmp_path, disk / "faces", [])
        assert r.returncode == 1 and r.stderr == (
            f"autoswap: {disk / 'faces'}: read-only file system; write elsewhere with data.faces_dir in params.yaml "
            "(or remount it read-write) and re-run\n"), r.stderr


def test_extract_onto_a_full_disk_says_so_in_one_line(small_disk, tmp_path, capsys, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = Image.open(f).convert("RGB")
    for i in range(4):  # four crops and masks, ~150 KB
        hopper.rotate(i * 3).save(raw / f"hopper{i}.jpg")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"extract": {"dedup_hamming": 0}}))
    monkeypatch.setenv("AUTOSWAP_TF_LOGS", "1")
    with small_disk("64k") as disk:
        out = disk / "faces"
        assert cli.main(["--params", str(params), "extract", str(raw), "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"autoswap: {out}/"), err
        assert err[0].endswith(": no space left on the device; free space there (or write elsewhere with --out) "
                               "and re-run"), err
        assert not (out / "manifest.jsonl").exists()
        for p in out.rglob("*.png"):  # what is there is whole
            with Image.open(p) as im:
                im.load()
