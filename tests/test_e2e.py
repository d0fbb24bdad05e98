"""The whole pipeline through DVC on a tiny config: `dvc repro`, a no-op second `dvc repro`,
and an experiment that changes the learning rate (train, evaluate, preview rerun; prepare not)."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import TINY

from autoswap.tracking import model_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=True, timeout=900)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    d = tmp_path_factory.mktemp("proj")
    shutil.copytree(ROOT / "src", d / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "dvc.yaml", d)
    for side in "ab":
        (d / "data" / "raw" / side).mkdir(parents=True)
        (d / "data" / "raw" / side / ".gitkeep").touch()
    # DVC wants every key a stage lists in params.yaml: the project's file with TINY merged in
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict):
                merge(dst.setdefault(k, {}), v)
            else:
                dst[k] = v

    merge(params, copy.deepcopy(TINY))
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    # the user's environment: no TF_CPP_MIN_LOG_LEVEL (conftest sets 3 for the in-process tests),
    # so the log below is what a user sees
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "TF_CPP_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["XDG_CONFIG_HOME"] = str(d / "config")  # the local C2PA signer, not the CI user's
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.com"
    sh("git init -q && dvc init -q && dvc config core.analytics false", d, env)
    sh("printf '/mlruns/\\n' > .gitignore && git add -A && git commit -qm base", d, env)
    return d, env


def test_dvc_repro_end_to_end(project):
    d, env = project
    out = sh("dvc repro", d, env)
    for stage in ("prepare", "train", "evaluate", "preview", "demo"):
        assert f"Running stage '{stage}'" in out
    # no TensorFlow C++ error lines in the user's log (grappler's "remapper failed" was one)
    assert "E0000" not in out and "remapper failed" not in out, out[-3000:]
    # DVC outputs
    assert len(list((d / "data/faces/a/train").glob("*.png"))) == 24
    assert len(list((d / "data/faces/b/val_gt").glob("*.png"))) == 4
    ev = json.loads((d / "metrics/eval.json").read_text())
    assert {"recon_mae", "recon_psnr", "recon_ssim", "swap_mae", "identity_swap_mae", "cycle_mae"} <= set(ev["a"])
    # the swapped photo itself: every validation face swapped in its rendered frame and scored
    assert ev["a"]["photo_n"] == 4 and 0 <= ev["a"]["photo_found"] <= 1
    assert (d / "previews/swap_grid.png").stat().st_size > 1000 and (d / "previews/loss.png").is_file()
    assert (d / "previews/photo_swaps.png").stat().st_size > 1000
    lock = yaml.safe_load((d / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "train", "evaluate", "preview", "demo"}
    verify = json.loads((d / "swaps/verify.json").read_text())
    assert verify, "the demo stage verified its outputs"
    # the showcase (validation faces swapped in their frames) is marked like every swap
    shown = verify["verify"]["showcase.png"]
    assert shown["watermark"]["found"] and shown["metadata"]["found"] and shown["c2pa"]["state"] == "Valid"
    # the MLflow run in the project's own store: metrics, preview artifact, weights
    client = mlflow.MlflowClient(f"sqlite:///{d / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(model_run(d / "models/final")[0])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eval.a.swap_mae"] == pytest.approx(ev["a"]["swap_mae"])
    assert "loss_a" in run.data.metrics and run.data.params["train.steps"] == "6"
    arts = {a.path for p in ("", "previews", "weights", "plots") for a in client.list_artifacts(run.info.run_id, p)}
    assert {"previews/swap_grid.png", "weights/encoder.weights.h5", "plots/loss.png"} <= arts
    assert (d / "mlruns/artifacts").is_dir()

    # nothing changed: nothing runs
    again = sh("dvc repro", d, env)
    assert "Running stage" not in again

    # an experiment on the learning rate reruns train and what follows, not prepare
    sh("git add -A && git commit -qm repro", d, env)
    exp = sh("dvc exp run -n lr2e3 -S train.learning_rate=2.0e-3", d, env)
    assert "Running stage 'train'" in exp and "Running stage 'prepare'" not in exp
    shown = sh("dvc exp show --json", d, env)
    assert "lr2e3" in shown
    runs = client.search_runs([run.info.experiment_id])
    assert len(runs) == 2
    tagged = [r for r in runs if r.data.tags.get("dvc.exp_name") == "lr2e3"]
    assert len(tagged) == 1 and tagged[0].data.params["train.learning_rate"] == "0.002"


def test_queued_sweep_lands_in_the_project_store(project):
    """`dvc exp run --queue` runs in a temporary copy of the repo: both runs must still land in
    this project's MLflow store (rooted at DVC_ROOT), tagged with their experiment names."""
    import time

    d, env = project
    client = mlflow.MlflowClient(f"sqlite:///{d / 'mlruns' / 'mlflow.db'}")
    before = {r.info.run_id for r in client.search_runs([client.get_experiment_by_name("autoswap").experiment_id])}
    sh("dvc exp run --queue -n q1 -S train.learning_rate=3.0e-3 && dvc exp run --queue -n q2 -S train.learning_rate=4.0e-3", d, env)
    sh("dvc queue start -j 1", d, env)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = sh("dvc queue status", d, env)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "Failed" not in status, status
    exp_id = client.get_experiment_by_name("autoswap").experiment_id
    new = [r for r in client.search_runs([exp_id]) if r.info.run_id not in before]
    by_name = {r.data.tags.get("dvc.exp_name"): r for r in new}
    assert set(by_name) == {"q1", "q2"}, [r.data.tags for r in new]
    assert by_name["q1"].data.params["train.learning_rate"] == "0.003"
    assert by_name["q2"].data.params["train.learning_rate"] == "0.004"
    assert all(r.info.status == "FINISHED" and "eval.a.swap_mae" in r.data.metrics for r in new)
    shown = sh("dvc exp show --csv", d, env)
    assert "q1" in shown and "q2" in shown
