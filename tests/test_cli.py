"""autoswap.cli: every DVC stage is a command, `swap`'s flags land on the swap.* keys they name,
errors the user can fix are one line with the right exit code, and `prepare` runs without
TensorFlow. Config errors are in test_config.py, the UI command in test_ui.py, each command's
own work in its module's tests."""

import ast
import errno
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_raw

from autoswap import cli
from autoswap.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def params(tmp_path, **over) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(tiny_raw(tmp_path, **over)))
    return p


def test_every_dvc_stage_is_a_command_of_the_same_name():
    """docs/ARCHITECTURE.md's one hop: stage X runs `autoswap X`, whose code is X() in src/autoswap/X.py,
    the stage's first dep."""
    parser = cli.build_parser()
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        argv = stage["cmd"].split()
        assert argv[0] == "autoswap" and argv[1] == name, stage["cmd"]
        assert parser.parse_args(argv[1:]).fn is getattr(cli, f"cmd_{name}")
        assert stage["deps"][0] == f"src/autoswap/{name}.py"
        tree = ast.parse((ROOT / stage["deps"][0]).read_text())
        assert name in {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}, f"no {name}() in {name}.py"


def test_swap_flags_override_their_keys_and_bad_values_name_the_flag(tmp_path):
    p = params(tmp_path, swap={"mask_feather": 0.1, "crf": 20})
    args = cli.build_parser().parse_args(
        ["--params", str(p), "swap", "in.jpg", "out.jpg", "--erode", "0.05", "--no-poisson", "--to", "a",
         "--faces", "0,2", "--smooth", "0"])
    s = cli._swap_settings(args).swap
    assert (s.mask_erode, s.poisson, s.to, s.faces, s.smooth) == (0.05, False, "a", (0, 2), 0.0)
    assert (s.mask_feather, s.crf) == (0.1, 20)  # flags left out keep params.yaml's values
    args = cli.build_parser().parse_args(["--params", str(p), "swap", "in.jpg", "out.jpg", "--feather", "0.9"])
    with pytest.raises(UserError, match=r"^--feather: .*0\.5.* \(got 0\.9\)$"):
        cli._swap_settings(args)


@pytest.mark.parametrize("error, rc, line", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/faces/a/00001.png"), 1,
     "autoswap: /data/faces/a/00001.png: no space left on the device; free space there (or write elsewhere with "
     "data.faces_dir in params.yaml) and re-run"),
    (KeyboardInterrupt(), 130, "autoswap: interrupted; re-run the same command to resume"),
    (UserError("data.dir_a: folder not found"), 1, "autoswap: data.dir_a: folder not found"),
], ids=["disk-full", "ctrl-c", "user-error"])
def test_a_failing_stage_is_one_line_and_its_exit_code(error, rc, line, tmp_path, monkeypatch, capsys):
    import autoswap.prepare

    def fails(settings):
        raise error

    monkeypatch.setattr(autoswap.prepare, "prepare", fails)
    assert cli.main(["--params", str(params(tmp_path)), "prepare"]) == rc
    err = capsys.readouterr().err
    assert err.splitlines() == [line]


def test_prepare_runs_without_importing_tensorflow(tmp_path):
    p = params(tmp_path)
    code = ("import sys; from autoswap.cli import main; rc = main(['--params', sys.argv[1], 'prepare']); "
            "print('TF_LOADED', 'tensorflow' in sys.modules); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(p)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TF_LOADED False" in r.stdout  # ~600 MB and seconds saved; train etc. do load it
    assert len(list((tmp_path / "faces/a/train").glob("*.png"))) == 24
