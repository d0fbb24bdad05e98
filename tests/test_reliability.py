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
from autoswap.tracking import model_run

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
    assert model_run(cut / "models" / "final")[0] == state["run_id"]
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
    _, peak_mb = prepare_peak_mb(tmp_path, params)
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
    img.resize((1400, 1400)).save(tmp_path / "medium.png")
    img.resize((1500, 1500)).save(tmp_path / "over.png")
    limit = 1_000_000  # the smallest data.max_image_pixels

    jpg = load_rgb(tmp_path / "big.jpg", limit)  # 4.4 MP: decoded at 1/2 scale (1.1 MP), then fitted
    assert jpg.shape == (1000, 1000, 3)
    med = load_rgb(tmp_path / "medium.png", limit)  # 1.96 MP (7.8 MB as PIL holds RGB): decoded, then downscaled
    assert med.shape[2] == 3 and med.shape[0] * med.shape[1] <= limit and med.shape[0] >= 990
    # not a JPEG, and decoding it whole would take more than 2 x the limit of RGB (8 MB): refused, not decoded
    for name, side in (("big.png", 2100), ("over.png", 1500)):
        with pytest.raises(BadImage, match=rf"too large to decode safely \({side}x{side} px, RGB: \d+ MB decoded"):
            load_rgb(tmp_path / name, limit)
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


# ----------------------------------------------------------------------------- SIGKILL inside a save
# The child below trains with one internal function patched to SIGKILL the process at its Nth call:
# AUTOSWAP_TEST_KILL="<point>:<N>:<file name part, or empty>". Only the test patches; nothing in
# autoswap knows about it.
_KILL_INSIDE = r"""
import os, signal, sys

point, n, match = os.environ["AUTOSWAP_TEST_KILL"].split(":")
n, calls = int(n), [0]


def due(name=""):
    if match and match not in name:
        return False
    calls[0] += 1
    return calls[0] == n


def die(what):
    print(f"KILLED at {point} ({what})", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def kill_before(owner, attr):
    real = getattr(owner, attr)

    def patched(*a, **k):
        name = os.path.basename(str(a[-1])) if a else ""
        if due(name):
            die(name)
        return real(*a, **k)

    setattr(owner, attr, patched)


if point == "tf_merge":  # TF's shards written under ckpt-N_temp/, not yet merged into ckpt-N.*
    from tensorflow.python.checkpoint import functional_saver
    kill_before(functional_saver.gen_io_ops, "merge_v2_checkpoints")
elif point == "tf_index":  # ckpt-N.* complete, TF's `checkpoint` index not yet pointing at it
    from tensorflow.python.checkpoint import checkpoint_management
    kill_before(checkpoint_management, "update_checkpoint_state_internal")
elif point == "half_write":  # files.atomic_write_text: half the text in its temporary file
    import builtins
    from autoswap import files

    class Half:
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.f.__exit__(*exc)
        def __getattr__(self, attr):
            return getattr(self.f, attr)
        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            die(self.f.name)

    def half_open(path, mode="r", *a, **k):
        f = builtins.open(path, mode, *a, **k)
        return Half(f) if "w" in mode and due(os.path.basename(str(path))) else f

    files.open = half_open  # the module's `open`, ahead of the builtin
elif point == "h5_close":  # a Keras weight file written but not closed (flushed)
    from keras.src.saving import saving_lib
    kill_before(saving_lib.H5IOStore, "close")
elif point == "replace":  # os.replace, the last step of every atomic write
    kill_before(os, "replace")
else:
    raise SystemExit(f"unknown kill point {point}")

from autoswap.cli import main

sys.exit(main(["train"]))
"""

# (kill point, the checkpoint the rerun resumes from). Each run below goes on from a finished
# 3-step training to 6 steps (train.steps raised), so it saves one checkpoint, at step 6, then
# models/final over the step-3 model.
KILL_POINTS = {
    "tf-shards-not-merged": ("tf_merge:1:", 3),
    "tf-index-not-updated": ("tf_index:1:", 3),
    "history-half-written": ("half_write:1:history.csv", 3),
    "weight-file-not-flushed": ("h5_close:2:", 6),  # decoder_a's, the encoder's already in place
    "model-json-not-renamed": ("replace:1:model.json", 6),  # every weight file in place
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(faces, a project trained 3 steps, the final weights of one trained 6 steps straight)."""
    root = tmp_path_factory.mktemp("trained")
    faces = root / "faces"
    random_faces(faces)
    out = {}
    for name, steps in (("base", 3), ("straight", 6)):
        p = project(root / name, faces, steps=steps, save_every=3, backup_every=3)
        r = subprocess.run([sys.executable, "-m", "autoswap.cli", "train"], cwd=p, env=subprocess_env(p),
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        out[name] = p
    return faces, out["base"], {n: h5_arrays(out["straight"] / "models/final" / f"{n}.weights.h5")
                                for n in ("encoder", "decoder_a", "decoder_b")}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_inside_a_save_then_rerun_resumes(trained, tmp_path, point):
    import shutil

    from autoswap.tracking import model_digest

    faces, base, straight = trained
    spec, resumes_at = KILL_POINTS[point]
    root = project(tmp_path / "p", faces, steps=6, save_every=3, backup_every=3)
    for d in ("models", "mlruns"):
        shutil.copytree(base / d, root / d, symlinks=True)
    final = root / "models" / "final"
    before = model_digest(final)
    state = json.loads((root / "models/checkpoints/state.json").read_text())

    killed = subprocess.run([sys.executable, "-c", _KILL_INSIDE], cwd=root, capture_output=True, text=True,
                            timeout=600, env={**subprocess_env(root), "AUTOSWAP_TEST_KILL": spec})
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert "KILLED at" in killed.stdout

    # never a silently broken model: either the step-3 model as it was, or no model.json at all
    # (a folder without it is no model: evaluate, preview and swap say so in one line)
    if (final / "model.json").exists():
        assert model_digest(final) == before and resumes_at == 3
    else:
        assert resumes_at == 6
        from autoswap.errors import UserError
        from autoswap.model import load_final

        with pytest.raises(UserError, match="no trained model here"):
            load_final(final)

    rerun = subprocess.run([sys.executable, "-m", "autoswap.cli", "train"], cwd=root, env=subprocess_env(root),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert re.search(rf"^autoswap: resuming from \S+ckpt-{resumes_at} at step {resumes_at}$", rerun.stdout, re.M), \
        rerun.stdout
    # a usable models/final, nothing left over in it, and the very weights of a straight 6-step run
    assert sorted(p.name for p in final.iterdir()) == [
        "decoder_a.weights.h5", "decoder_b.weights.h5", "encoder.weights.h5", "model.json"]
    for name, want in straight.items():
        got = h5_arrays(final / f"{name}.weights.h5")
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{point}: {name} {k}")
    # the same MLflow run went on, and ended
    assert model_run(final)[0] == state["run_id"]
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as c:
        assert c.execute("SELECT status FROM runs WHERE run_uuid = ?", (state["run_id"],)).fetchone() == ("FINISHED",)


# ----------------------------------------------------------------------------- damaged checkpoint folder
def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# what is damaged, and what the rerun must say: resume from the last good checkpoint, or start
# afresh (folder set aside, a new MLflow run) with one line
DAMAGE = {
    "state-json-cut": (lambda ck: _cut(ck / "state.json"), r"state\.json is unreadable \(.*\); starting afresh; set "
                       r"\S+checkpoints aside as \S+checkpoints\.stale-unknown$", None),
    "checkpoint-index-cut": (lambda ck: _cut(ck / "checkpoint"), r"checkpoint is missing or unreadable; rebuilt it "
                             r"from the 2 checkpoint file\(s\) there$", 6),
    "checkpoint-index-empty": (lambda ck: _cut(ck / "checkpoint", 0), r"checkpoint is missing or unreadable", 6),
    "newest-ckpt-index-cut": (lambda ck: _cut(ck / "ckpt-6.index"), r"checkpoint \S+ckpt-6 is unreadable", 3),
    "every-ckpt-index-cut": (lambda ck: [_cut(f) for f in ck.glob("ckpt-*.index")],
                             r"no checkpoint in \S+ is readable; starting afresh; set \S+ aside as "
                             r"\S+checkpoints\.stale-[0-9a-f]{16}$", None),
}


@pytest.fixture(scope="module")
def face_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    random_faces(root)
    return root


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_folder_resumes_or_starts_afresh_in_one_line(tmp_path, face_set, mlflow_store, capsys,
                                                                         damage):
    import shutil

    from test_train import run, weights

    damage_fn, said, resumes_at = DAMAGE[damage]
    over = {"data": {"faces_dir": str(face_set)}}
    run(tmp_path, **over)  # checkpoints at steps 3 and 6
    want, _ = weights(tmp_path)
    ck = tmp_path / "models" / "checkpoints"
    first = json.loads((ck / "state.json").read_text())["run_id"]
    shutil.rmtree(tmp_path / "models" / "final")  # as if cut off after the last checkpoint
    damage_fn(ck)
    capsys.readouterr()

    run(tmp_path, **over)  # no exception: no traceback
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("autoswap:")]
    assert sum(bool(re.search(said, ln)) for ln in lines) == 1, lines
    second = json.loads((ck / "state.json").read_text())["run_id"]
    if resumes_at:
        assert f"at step {resumes_at}" in out and second == first, lines
    else:  # afresh: not one step restored, and a new MLflow run
        assert "resuming from" not in out and second != first, lines
        assert len(list(tmp_path.glob("models/checkpoints.stale-*"))) == 1
    got, _ = weights(tmp_path)
    for x, y in zip(want, got, strict=True):
        np.testing.assert_array_equal(x, y)  # the same weights, however many steps were redone


# ----------------------------------------------------------------------------- huge PNG and TIFF
def _png_rgba(path: Path, w: int, h: int, rgba=(200, 120, 40, 128)) -> None:
    """A constant-colour RGBA PNG written as a stream (filter byte 0, then the pixels, each row):
    150 MP compress to 0.6 MB, in a second or two, without holding the picture."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows, z = (b"\0" + bytes(rgba) * w) * 64, zlib.compressobj(6)
    idat = b"".join([z.compress(rows) for _ in range(h // 64)] + [z.compress(rows[: (h % 64) * (1 + 4 * w)]), z.flush()])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _tiff16(path: Path, w: int, h: int, samples: int = 1, value: int = 40000) -> None:
    """A constant 16-bit TIFF (grey, or RGB with samples=3), little-endian, one Deflate strip."""
    import struct
    import zlib

    row, z = struct.pack("<H", value) * samples * w, zlib.compressobj(6)
    data = b"".join([z.compress(row * 64) for _ in range(h // 64)] + [z.compress(row * (h % 64)), z.flush()])
    n = 11
    extra_at = 8 + 2 + n * 12 + 4  # after the one IFD: BitsPerSample's values when there are several
    extra = struct.pack("<" + "H" * samples, *[16] * samples) if samples > 1 else b""
    tags = sorted([(256, 4, 1, w), (257, 4, 1, h), (258, 3, samples, 16 if samples == 1 else extra_at),
                   (259, 3, 1, 8), (262, 3, 1, 1 if samples == 1 else 2), (273, 4, 1, extra_at + len(extra)),
                   (277, 3, 1, samples), (278, 4, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1), (339, 3, 1, 1)])
    ifd = struct.pack("<H", n) + b"".join(
        struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", v, 0) if kind == 3 and count == 1 else struct.pack("<I", v))
        for tag, kind, count, v in tags) + struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + extra + data)


def prepare_peak_mb(tmp_path: Path, params: Path) -> tuple[subprocess.CompletedProcess, float]:
    """`autoswap prepare` in a child, and its peak resident memory (VmHWM), as the huge-JPEG test measures it."""
    code = ("import resource, re, sys; from pathlib import Path; from autoswap.cli import main; "
            "rc = main(['--params', sys.argv[1], 'prepare']); st = Path('/proc/self/status'); "
            "kb = int(re.search(r'VmHWM:\\s+(\\d+)', st.read_text()).group(1)) if st.exists() "
            "else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == 'darwin' else 1); "
            "print('PEAK_KB', kb); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(params)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=subprocess_env(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    return r, int(re.search(r"PEAK_KB (\d+)", r.stdout).group(1)) / 1024


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Image.open below, to check the files
def test_huge_png_and_16_bit_tiff_are_refused_before_decoding(tmp_path):
    from autoswap.images import BadImage, load_rgb

    a = tmp_path / "raw/a"
    make_raw(a, 7)
    make_raw(tmp_path / "raw/b", 8)
    side = 12248  # 150 MP: 600 MB as PIL holds RGBA or 16-bit grey (+ libtiff's strip), 1.5 GB as 16-bit RGB
    _png_rgba(a / "huge_rgba.png", side, side)
    _tiff16(a / "huge_grey16.tif", side, side)
    _tiff16(a / "huge_rgb16.tif", side, side, samples=3)
    with Image.open(a / "huge_grey16.tif") as im, Image.open(a / "huge_rgba.png") as png:
        assert (im.mode, im.size, png.mode) == ("I;16", (side, side), "RGBA")  # what they claim to be
    before = tree_digest(tmp_path / "raw")

    r, peak_mb = prepare_peak_mb(tmp_path, aligned_params(tmp_path))  # data.max_image_pixels: the default 40 MP
    print(f"prepare with a 150 MP RGBA PNG and 16-bit TIFFs: peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 600  # the huge-JPEG test's bound; decoding the PNG whole took 1.6 GB
    assert tree_digest(tmp_path / "raw") == before
    report = json.loads((tmp_path / "metrics/prepare.json").read_text())["persons"]["a"]
    assert report["kept"] == 7 and report["dropped"] == {"unreadable": 3}
    for name in ("huge_rgba.png", "huge_grey16.tif", "huge_rgb16.tif"):
        why = next(f for f in report["dropped_files"]["unreadable"] if Path(f.split(": ")[0]).name == name)
        assert f"too large to decode safely ({side}x{side} px" in why, why
    # refused from the header: what PIL would hold, for each
    for name, why in (("huge_rgba.png", "RGBA: 600 MB"), ("huge_grey16.tif", "I;16: 600 MB"),
                      ("huge_rgb16.tif", "RGB: 1500 MB")):
        with pytest.raises(BadImage, match=re.escape(why) + " decoded, more than 2 x data.max_image_pixels"):
            load_rgb(a / name)


def test_large_png_within_the_limit_is_decoded_in_bounded_memory(tmp_path):
    a = tmp_path / "raw/a"
    make_raw(a, 7)
    make_raw(tmp_path / "raw/b", 8)
    _png_rgba(a / "large_rgba.png", 8900, 8900)  # 79 MP RGBA, 317 MB decoded: just under 2 x the 40 MP limit
    _tiff16(a / "large_grey16.tif", 8900, 8900)  # 79 MP 16-bit grey: 158 MB + a 158 MB strip
    r, peak_mb = prepare_peak_mb(tmp_path, aligned_params(tmp_path))
    print(f"prepare with a 79 MP RGBA PNG and 16-bit TIFF: peak RSS {peak_mb:.0f} MB")
    # decoded whole, then made 40 MP RGB a band of rows at a time; before, the PNG alone took 1 GB
    assert peak_mb < 600
    report = json.loads((tmp_path / "metrics/prepare.json").read_text())["persons"]["a"]
    assert report["kept"] == 9 and report["dropped"] == {}
    face = sorted((tmp_path / "faces/a").glob("*/*.png"))
    colours = {tuple(int(v) for v in np.asarray(Image.open(f))[32, 32]) for f in face}
    # (200, 120, 40) at alpha 128 on white, and 40000 / 65535 grey, among the random faces
    assert any(abs(c[0] - 227) <= 1 and abs(c[1] - 187) <= 1 and abs(c[2] - 147) <= 1 for c in colours), colours
    assert (156, 156, 156) in colours, colours


# ----------------------------------------------------------------------------- absurd pixel aspect
def _clip(path: Path, sar, pasp: tuple[int, int] | None = None) -> Path:
    """A 3-frame H.264 MP4 with the codec's sample aspect ratio `sar`; `pasp` then rewrites the
    container's (the MP4 `pasp` box, read as it is: encoders refuse a SAR whose stretched side
    would be under 1 px, but nothing checks a file)."""
    import struct
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        s.codec_context.sample_aspect_ratio = Fraction(sar)
        for i in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((24, 32, 3), 90 + i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    if pasp:
        data = path.read_bytes()
        at = data.index(b"pasp") + 4
        path.write_bytes(data[:at] + struct.pack(">II", *pasp) + data[at + 8 :])
    return path


def test_video_with_absurd_pixel_aspect_is_skipped_with_a_reason(tmp_path):
    from fractions import Fraction

    import av

    from autoswap.config import ExtractSettings
    from autoswap.extract import extract_to_dir
    from autoswap.video import BadVideo, iter_video_frames, transcode

    raw = tmp_path / "raw"
    raw.mkdir()
    bad = {
        _clip(raw / "pasp_65535_1.mp4", 2, pasp=(65535, 1)): "65535:1",  # the container's claim
        _clip(raw / "codec_20_1.mp4", 20): "20:1",  # the codec's: valid for FFmpeg at 24 px high
        _clip(raw / "codec_1_16.mp4", Fraction(1, 16)): "1:16",
    }
    with av.open(str(raw / "pasp_65535_1.mp4")) as c:
        assert c.streams.video[0].sample_aspect_ratio == 65535  # what the frames would be stretched by
    good = _clip(tmp_path / "anamorphic.mp4", 2)
    assert {f.rgb.shape for f in iter_video_frames(good)} == {(24, 64, 3)}  # 2:1 is still made square

    for path, sar in bad.items():
        with pytest.raises(BadVideo, match=f"pixel aspect ratio {sar} is outside 1:4..4:1") as e:
            next(iter_video_frames(path))
        assert e.value.reason == "bad_aspect"
        with pytest.raises(BadVideo, match="pixel aspect ratio"):  # swap: refused before anything is written
            transcode(path, tmp_path / "out.mp4", lambda i, t, rgb: None, progress=False)
        assert not (tmp_path / "out.mp4").exists()

    report = extract_to_dir([raw], tmp_path / "faces", ExtractSettings(), 64, progress=False, allow_empty=True)
    assert sorted(report["dropped"]["bad_aspect"]) == sorted(str(p) for p in bad)
    assert {k: v for k, v in report["dropped"].items() if v} == {"bad_aspect": report["dropped"]["bad_aspect"]}
    assert report["frames"] == 0 and "re-encode it with square pixels" in report["errors"][str(raw / "codec_20_1.mp4")]


# ----------------------------------------------------------------------------- two writers, one store
_LOG_AT = """
import sys, time
import mlflow
from autoswap import tracking
steps = int(sys.argv[2])
while time.time() < float(sys.argv[1]):
    time.sleep(0.001)
exp = tracking.setup("autoswap")
with mlflow.start_run(experiment_id=exp, run_name=sys.argv[3]) as run:
    for step in range(1, steps + 1):  # as train logs: one batch of metrics a step, a tag now and then
        mlflow.log_metrics({k: step + i / 10 for i, k in enumerate(sys.argv[4].split(","))}, step=step)
        if step % 50 == 0:
            mlflow.set_tag(f"autoswap.at.{step}", sys.argv[3])
print("ok", run.info.run_id, flush=True)
"""


def test_two_processes_logging_at_once_lose_nothing(tmp_path):
    """What `dvc queue start -j 2` does to the store: two trainings writing to one sqlite file at
    once (DVC_ROOT points both at the project's). MLflow opens every sqlite session with a 20 s busy
    timeout, so a writer waits for the other instead of failing with "database is locked"."""
    steps = 400
    at = str(time.time() + 6)  # both past their imports by then
    procs = [subprocess.Popen([sys.executable, "-c", _LOG_AT, at, str(steps), f"w{i}", ",".join(LOSS_KEYS)], cwd=tmp_path,
                              env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("locked" in o for o in outs), outs
    run_ids = [re.search(r"^ok (\w+)$", o, re.M).group(1) for o in outs]
    db = tmp_path / "mlruns" / "mlflow.db"
    with sqlite3.connect(db) as c:
        spans = c.execute("SELECT start_time, end_time FROM runs").fetchall()
    assert len(spans) == 2 and max(s for s, _ in spans) < min(e for _, e in spans)  # they did write at once
    for i, run_id in enumerate(run_ids):
        for j, key in enumerate(LOSS_KEYS):
            history = store_metrics(db, run_id, key)
            assert history == {s: {s + j / 10} for s in range(1, steps + 1)}, (key, len(history))
        with sqlite3.connect(db) as c:
            tags = c.execute("SELECT COUNT(*) FROM tags WHERE run_uuid = ? AND key LIKE 'autoswap.at.%' AND value = ?",
                             (run_id, f"w{i}")).fetchone()
            assert tags == (steps // 50,)
            assert c.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() == ("FINISHED",)
