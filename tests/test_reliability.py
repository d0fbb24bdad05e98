"""Reliability: `autoswap train` killed with SIGKILL and resumed, bad input (each a one-line
message, the user's folder untouched), a huge photo within bounded memory, model folders that do
not match, and the MLflow store under two trainings and the UI at once."""

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_raw
from PIL import Image
from test_prepare import make_raw, tree_digest
from test_train import random_faces
from test_ui import start_ui, stop, subprocess_env

from autoswap import cli

LOSS_KEYS = ("loss_a", "loss_b", "learning_rate", "warp_stddev", "images_per_s")


# ----------------------------------------------------------------------------- helpers
def project(root: Path, faces: Path, **train) -> Path:
    """A project folder with its own params.yaml (the tiny config), trained from `faces`."""
    root.mkdir(parents=True, exist_ok=True)
    raw = tiny_raw(root, data={"faces_dir": str(faces)}, train={"log_every": 1, "preview_every": 1000, **train})
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


def start_cli(root: Path, *args: str, store: Path | None = None) -> subprocess.Popen:
    """`python -m autoswap.cli ARGS` in `root`, its MLflow store in `store` (default root)."""
    with open(root / "cli.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "autoswap.cli", *args], cwd=root,
                                env=subprocess_env(store or root), stdout=log, stderr=subprocess.STDOUT)


def log_of(root: Path) -> str:
    return (root / "cli.log").read_text(errors="replace")


def latest_checkpoint(ckpt_dir: Path) -> int:
    f = ckpt_dir / "checkpoint"
    m = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', f.read_text(), re.M) if f.is_file() else None
    return int(m.group(1)) if m else 0


def h5_arrays(path: Path) -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def store_metrics(db: Path, run_id: str, key: str) -> dict[int, set[float]]:
    """step -> the values logged at that step (a value logged again after a resume is the same)."""
    out: dict[int, set[float]] = {}
    with sqlite3.connect(db) as c:
        for step, value in c.execute("SELECT step, value FROM metrics WHERE run_uuid = ? AND key = ?", (run_id, key)):
            out.setdefault(step, set()).add(value)
    return out


def csv_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def one_line_error(capsys, argv: list[str], code: int = 1) -> str:
    rc = cli.main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == code, err
    lines = [ln for ln in err if ln.startswith("autoswap:")]
    assert len(lines) == 1 and not any("Traceback" in ln for ln in err), err
    return lines[0]


# ----------------------------------------------------------------------------- kill -9 and resume
def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    faces = tmp_path / "faces"
    random_faces(faces)
    steps = 60
    ref = project(tmp_path / "ref", faces, steps=steps, save_every=5)
    cut = project(tmp_path / "cut", faces, steps=steps, save_every=5)
    p_ref, p_cut = start_cli(ref, "train"), start_cli(cut, "train")
    try:
        # SIGKILL a few steps past the step-10 checkpoint: no handler, no cleanup, no end_run
        ckpt = cut / "models" / "checkpoints"
        deadline = time.time() + 300
        while not (latest_checkpoint(ckpt) >= 10 and re.search(rf"^step 1[2-9]/{steps} ", log_of(cut), re.M)):
            assert p_cut.poll() is None, log_of(cut)
            assert time.time() < deadline, "no checkpoint within 300 s:\n" + log_of(cut)
            time.sleep(0.02)
        os.kill(p_cut.pid, signal.SIGKILL)
        assert p_cut.wait(30) == -signal.SIGKILL
        killed_at = latest_checkpoint(ckpt)
        assert 10 <= killed_at < steps and not (cut / "models" / "final" / "model.json").exists()
        state = json.loads((ckpt / "state.json").read_text())

        resumed = subprocess.run([sys.executable, "-m", "autoswap.cli", "train"], cwd=cut, env=subprocess_env(cut),
                                 capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert f"at step {killed_at}" in resumed.stdout and "resuming from" in resumed.stdout
        assert p_ref.wait(600) == 0, log_of(ref)
    finally:
        for p in (p_ref, p_cut):
            if p.poll() is None:
                p.kill()
                p.wait()

    # the loss table, line for line, and every weight, bit for bit
    assert (cut / "plots" / "loss.csv").read_text() == (ref / "plots" / "loss.csv").read_text()
    for name in ("encoder", "decoder_a", "decoder_b"):
        a, b = h5_arrays(ref / "models" / "final" / f"{name}.weights.h5"), h5_arrays(cut / "models" / "final" / f"{name}.weights.h5")
        assert a.keys() == b.keys() and len(a) > 0
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")

    # one MLflow run, continued: the run id of the checkpoints is the final model's, and it holds
    # every step once (steps redone after the kill were logged again with the same value)
    meta = json.loads((cut / "models" / "final" / "model.json").read_text())
    assert meta["mlflow_run_id"] == state["run_id"]
    db = cut / "mlruns" / "mlflow.db"
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT run_uuid, status FROM runs").fetchall() == [(state["run_id"], "FINISHED")]
    rows = csv_rows(cut / "plots" / "loss.csv")
    history = store_metrics(db, state["run_id"], "loss_a")
    assert sorted(history) == list(range(1, steps + 1)) and all(len(v) == 1 for v in history.values())
    assert [history[int(r["step"])] for r in rows] == [{float(r["loss_a"])} for r in rows]


# ----------------------------------------------------------------------------- bad input
def aligned_params(tmp_path: Path, **data) -> Path:
    raw = tiny_raw(tmp_path, data={"source": "folders", "aligned": True, "dir_a": str(tmp_path / "raw/a"),
                                   "dir_b": str(tmp_path / "raw/b"), "min_faces": 4, **data})
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "photos"])
def test_missing_empty_or_single_image_data_folder(tmp_path, monkeypatch, capsys, aligned):
    monkeypatch.chdir(tmp_path)
    p = str(aligned_params(tmp_path, aligned=aligned))
    make_raw(tmp_path / "raw/b", 6)
    raw = tmp_path / "raw"

    msg = one_line_error(capsys, ["--params", p, "prepare"])
    assert f"{raw / 'a'}: folder not found; put person A's" in msg

    (raw / "a").mkdir()
    (raw / "a" / "notes.txt").write_text("not a photo")
    before = tree_digest(raw)
    msg = one_line_error(capsys, ["--params", p, "prepare"])
    assert f"{raw / 'a'}: 0 usable face(s)" in msg and "for person A, need at least 4" in msg
    assert tree_digest(raw) == before

    if aligned:  # (one photo for face detection: test_prepare covers too few faces found)
        make_raw(raw / "a", 1)
        before = tree_digest(raw)
        msg = one_line_error(capsys, ["--params", p, "prepare"])
        assert "1 usable face(s) for person A, need at least 4" in msg
        assert tree_digest(raw) == before


def test_aligned_faces_of_many_sizes_are_resized(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    a = tmp_path / "raw/a"
    a.mkdir(parents=True)
    sizes = [(64, 64), (16, 16), (300, 300), (97, 61), (61, 97), (1600, 1200), (3, 1), (128, 128)]
    for i, (w, h) in enumerate(sizes):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(a / f"f{i}.{'png' if i % 2 else 'jpg'}")
    Image.fromarray((rng.random((50, 70)) * 255).astype(np.uint8)).save(a / "grey.png")
    make_raw(tmp_path / "raw/b", 6)
    before = tree_digest(tmp_path / "raw")

    assert cli.main(["--params", str(aligned_params(tmp_path)), "prepare"]) == 0
    assert tree_digest(tmp_path / "raw") == before
    report = json.loads((tmp_path / "metrics/prepare.json").read_text())
    assert report["persons"]["a"]["kept"] == len(sizes) + 1 and report["persons"]["a"]["dropped"] == {}
    out = sorted((tmp_path / "faces/a").glob("*/*.png"))
    assert len(out) == len(sizes) + 1
    assert all(Image.open(f).size == (64, 64) and Image.open(f).mode == "RGB" for f in out)

    # training reads a faces folder of mixed sizes too (one written by hand, or by an older prepare)
    from autoswap.pipeline import load_faces

    loaded, files, skipped = load_faces(a, 64)
    assert loaded.shape == (len(sizes) + 1, 64, 64, 3) and loaded.dtype == np.uint8 and not skipped
    assert tree_digest(tmp_path / "raw") == before


def test_huge_jpeg_is_downscaled_in_bounded_memory(tmp_path):
    a = tmp_path / "raw/a"
    make_raw(a, 7)
    make_raw(tmp_path / "raw/b", 8)
    # 12000 x 12000 (144 MP, 432 MB decoded), a smooth picture so the file stays small; made in a
    # child process so that this one's memory is not counted below
    subprocess.run([sys.executable, "-c", (
        "import sys; from PIL import Image; g = Image.linear_gradient('L').resize((12000, 12000)); "
        "Image.merge('RGB', (g, g.transpose(Image.Transpose.ROTATE_90), g)).save(sys.argv[1], quality=80)"
    ), str(a / "huge.jpg")], check=True, timeout=300)
    before = tree_digest(tmp_path / "raw")
    params = aligned_params(tmp_path)  # data.max_image_pixels: the default 40 MP

    # prepare in a child that reports its own peak resident memory: VmHWM on Linux (ru_maxrss there
    # also counts the memory of this process, which the child was forked from), ru_maxrss elsewhere
    code = ("import resource, re, sys; from pathlib import Path; from autoswap.cli import main; "
            "rc = main(['--params', sys.argv[1], 'prepare']); st = Path('/proc/self/status'); "
            "kb = int(re.search(r'VmHWM:\\s+(\\d+)', st.read_text()).group(1)) if st.exists() "
            "else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == 'darwin' else 1); "
            "print('PEAK_KB', kb); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(params)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=subprocess_env(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    peak_mb = int(re.search(r"PEAK_KB (\d+)", r.stdout).group(1)) / 1024
    print(f"prepare with a 12000x12000 JPEG: peak RSS {peak_mb:.0f} MB")
    # decoded at 1/2 scale (6000 px, 108 MB) and never whole; before, one such photo took 1.6 GB
    assert peak_mb < 600
    assert tree_digest(tmp_path / "raw") == before
    report = json.loads((tmp_path / "metrics/prepare.json").read_text())
    assert report["persons"]["a"]["kept"] == 8 and report["persons"]["a"]["dropped"] == {}


def test_large_images_are_bounded_by_max_image_pixels(tmp_path):
    from autoswap.images import BadImage, load_rgb

    grad = Image.linear_gradient("L").resize((2100, 2100))
    img = Image.merge("RGB", (grad, grad.transpose(Image.Transpose.ROTATE_90), grad))
    img.save(tmp_path / "big.jpg", quality=80)
    img.save(tmp_path / "big.png")
    img.resize((1500, 1500)).save(tmp_path / "medium.png")
    limit = 1_000_000  # the smallest data.max_image_pixels

    jpg = load_rgb(tmp_path / "big.jpg", limit)  # 4.4 MP: decoded at 1/2 scale (1.1 MP), then fitted
    assert jpg.shape == (1000, 1000, 3)
    med = load_rgb(tmp_path / "medium.png", limit)  # 2.25 MP: decoded, then downscaled
    assert med.shape[2] == 3 and med.shape[0] * med.shape[1] <= limit and med.shape[0] >= 990
    with pytest.raises(BadImage, match=r"too large to decode safely \(2100x2100 px"):
        load_rgb(tmp_path / "big.png", limit)  # over 4 x the limit and not a JPEG: refused, not decoded
    assert load_rgb(tmp_path / "big.png").shape == (2100, 2100, 3)  # the default limit: as it is


# ----------------------------------------------------------------------------- model folders
@pytest.fixture
def model_project(tmp_path, monkeypatch):
    """Params (tiny config), validation faces, and a model folder written for those params."""
    from autoswap import model as M
    from autoswap.config import parse

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    random_faces(tmp_path / "faces", n_train=2, n_val=2)
    raw = tiny_raw(tmp_path, data={"faces_dir": str(tmp_path / "faces")})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    s = parse(raw)

    def write(name: str, model: dict | None = None, face_size: int | None = None) -> Path:
        cfg = s.model.model_copy(update=model or {})
        meta = {"model": cfg.model_dump(mode="json"), "face_size": face_size or s.data.face_size,
                "crop": s.train.crop, "mlflow_run_id": "0" * 32}
        M.save_final(tmp_path / name, M.build(cfg), meta)
        return tmp_path / name

    return tmp_path, write


def test_model_folders_that_do_not_match_are_one_line_errors(model_project, capsys):
    root, write = model_project
    params = ["--params", str(root / "params.yaml")]

    msg = one_line_error(capsys, [*params, "evaluate", "--model", str(root / "nothing")])
    assert "model.json: no trained model here; run `dvc repro train`" in msg

    # weights of one width, model.json of another (a folder mixed from two trainings)
    d = write("mixed")
    other = write("wider", {"width": 0.125})
    (d / "model.json").write_text((other / "model.json").read_text())
    msg = one_line_error(capsys, [*params, "evaluate", "--model", str(d)])
    assert re.search(r"encoder\.weights\.h5: does not match .*model\.json \(\w+\); retrain", msg)

    # model.json of an older autoswap: settings it no longer knows
    d = write("older")
    meta = json.loads((d / "model.json").read_text())
    meta["model"]["dropout"] = 0.1
    (d / "model.json").write_text(json.dumps(meta))
    assert "written by another autoswap version or config; retrain" in one_line_error(
        capsys, [*params, "evaluate", "--model", str(d)])

    # trained for another face size and input size than params.yaml has now
    d = write("bigger", {"input_size": 64}, face_size=128)
    assert "trained for other face/input sizes or crop" in one_line_error(
        capsys, [*params, "evaluate", "--model", str(d)])

    # a weight file lost, or cut short by a full disk
    d = write("partial")
    (d / "decoder_b.weights.h5").unlink()
    assert "decoder_b.weights.h5: missing weight file" in one_line_error(
        capsys, [*params, "preview", "--model", str(d)])
    d = write("truncated")
    f = d / "encoder.weights.h5"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert "encoder.weights.h5: does not match" in one_line_error(capsys, [*params, "evaluate", "--model", str(d)])


def test_unreadable_model_json_is_a_one_line_error(model_project, capsys):
    root, write = model_project
    d = write("cut")
    (d / "model.json").write_text('{"model": {')
    msg = one_line_error(capsys, ["--params", str(root / "params.yaml"), "evaluate", "--model", str(d)])
    assert "model.json" in msg


def test_preview_with_a_model_for_other_sizes_is_a_one_line_error(model_project, capsys):
    root, write = model_project
    d = write("bigger", {"input_size": 64}, face_size=128)
    msg = one_line_error(capsys, ["--params", str(root / "params.yaml"), "preview", "--model", str(d)])
    assert "trained for other face/input sizes or crop" in msg


# ----------------------------------------------------------------------------- the store under load
_SETUP_AT = """
import sys, time
import mlflow
from autoswap import tracking
while time.time() < float(sys.argv[1]):
    time.sleep(0.001)
exp = tracking.setup("autoswap")
with mlflow.start_run(experiment_id=exp):
    mlflow.log_metrics({"x": 1.0}, step=1)
print("ok", exp)
"""


def test_new_store_opened_by_three_processes_at_once(tmp_path):
    # each creates the tables on first use; without the lock in tracking.setup, concurrent
    # migrations fail, and can leave the store unusable for good
    at = str(time.time() + 6)  # all three past their imports by then
    procs = [subprocess.Popen([sys.executable, "-c", _SETUP_AT, at], cwd=tmp_path, env=subprocess_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert all(re.search(r"^ok 1$", o, re.M) for o in outs), outs
    with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as c:
        assert c.execute("SELECT name FROM experiments ORDER BY experiment_id").fetchall() == [("Default",), ("autoswap",)]
        assert c.execute("SELECT COUNT(*) FROM runs WHERE status = 'FINISHED'").fetchone() == (3,)


def test_store_holds_under_two_trainings_and_the_ui(tmp_path):
    faces = tmp_path / "faces"
    random_faces(faces)
    store = tmp_path / "store"
    store.mkdir()
    steps = 40
    ui, base = start_ui(store, tmp_path / "ui.log")
    roots = [project(tmp_path / f"t{i}", faces, steps=steps, save_every=10, learning_rate=lr)
             for i, lr in enumerate((1.0e-3, 2.0e-3))]
    trainings = [start_cli(r, "train", store=store) for r in roots]

    def api(path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    answered, failures, seen_runs, both_running = 0, [], set(), 0
    try:
        # the UI's REST API read while both trainings write
        while any(t.poll() is None for t in trainings):
            try:
                exp = api("experiments/get-by-name?experiment_name=autoswap")["experiment"]["experiment_id"]
                runs = api("runs/search", {"experiment_ids": [exp], "max_results": 10}).get("runs", [])
                for r in runs:
                    seen_runs.add(r["info"]["run_id"])
                    api(f"metrics/get-history?run_id={r['info']['run_id']}&metric_key=loss_a")
                answered += 1
                both_running += sum(r["info"]["status"] == "RUNNING" for r in runs) == 2
            except urllib.error.HTTPError as e:
                if e.code != 404:  # 404: the experiment is not created yet
                    failures.append(f"{e.code} {e.read()[:300]!r}")
            except OSError as e:
                failures.append(repr(e))
            time.sleep(0.1)
        rcs = [t.wait() for t in trainings]
    finally:
        for t in trainings:
            if t.poll() is None:
                t.kill()
                t.wait()
        stop(ui)

    logs = [log_of(r) for r in roots]
    assert rcs == [0, 0], logs
    print(f"UI API: {answered} rounds answered, {both_running} while both trainings were logging")
    assert failures == [] and both_running >= 3, (answered, both_running, failures)
    assert not any("database is locked" in text for text in [*logs, (tmp_path / "ui.log").read_text()])

    # nothing lost: both runs finished, every logged step of every metric is in the store
    db = store / "mlruns" / "mlflow.db"
    run_ids = [json.loads((r / "models" / "checkpoints" / "state.json").read_text())["run_id"] for r in roots]
    assert seen_runs <= set(run_ids) and len(set(run_ids)) == 2
    with sqlite3.connect(db) as c:
        assert sorted(c.execute("SELECT status FROM runs").fetchall()) == [("FINISHED",), ("FINISHED",)]
    for root, run_id in zip(roots, run_ids, strict=True):
        rows = csv_rows(root / "plots" / "loss.csv")
        assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
        for key in LOSS_KEYS:
            history = store_metrics(db, run_id, key)
            assert sorted(history) == list(range(1, steps + 1)), (key, sorted(history))
            if key != "images_per_s":
                assert [history[int(r["step"])] for r in rows] == [{float(r[key])} for r in rows], key
