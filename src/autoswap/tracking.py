"""The MLflow store: `sqlite:///<root>/mlruns/mlflow.db`, artifacts in `<root>/mlruns/artifacts`.

<root> is DVC_ROOT when DVC runs the stage: `dvc exp run --queue` runs stages in a temporary copy
of the repo but points DVC_ROOT at the real one, so queued experiments land in the same store.
MLflow 3 refuses a plain ./mlruns file store, hence sqlite. MLFLOW_TRACKING_URI, when set, wins
(a shared tracking server, or a test's own store)."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def tracking_uri(root: Path | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = root or project_root()
    (root / "mlruns" / "artifacts").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def artifact_root(root: Path | None = None) -> str:
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    return ""


def setup(experiment: str):
    """Point mlflow at the project store and return the experiment id (created on first use)."""
    import logging

    import mlflow

    # alembic prints its migration log at INFO on the first use of a new store
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    with store_lock():
        # under the lock: the first use creates the tables, and two trainings started at once on a
        # new store would otherwise both run the migrations and leave it broken for good
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            loc = artifact_root() or None
            return mlflow.create_experiment(experiment, artifact_location=loc)
    return exp.experiment_id


def ensure_store() -> None:
    """Create the sqlite store's tables now if it has none, under `store_lock` (see setup)."""
    import contextlib
    import sqlite3

    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return
    with store_lock(), contextlib.closing(sqlite3.connect(uri[len("sqlite:///") :])) as db:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone() is None:
            import mlflow

            mlflow.MlflowClient(uri).search_experiments(max_results=1)


@contextmanager
def store_lock():
    """An exclusive lock (flock on mlflow.db.lock) around the sqlite store's first use; a no-op
    for any other tracking URI."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)  # MLFLOW_TRACKING_URI may name a folder not made yet
    with open(db.with_suffix(".db.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


# ----------------------------------------------------------------------------- the model's MLflow run
# The run that trained models/final is kept out of that folder, in models/run.json: the folder is a
# DVC output, and a run id inside it would give every training a new hash (dvc.lock never equal
# between two clones). models/run.json is no DVC output; it names the folder and the digest of its
# files, so a model checked out from the DVC cache, an experiment applied, or a folder copied
# elsewhere without it is never taken for that run's model.
MODEL_RUN_FILE = "run.json"


def model_digest(model_dir: Path) -> str:
    """SHA-256 over a model folder's model.json and weight files (names and bytes)."""
    import hashlib

    h = hashlib.sha256()
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.weights.h5")) + [model_dir / "model.json"]
    for f in files:
        h.update(f.name.encode() + b"\0")
        if f.is_file():
            with open(f, "rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def write_model_run(model_dir: Path, run_id: str, uri: str) -> Path:
    """Record (atomically) that the model in `model_dir`, as it is now, was trained by MLflow
    run `run_id` in store `uri`: <model_dir's parent>/run.json."""
    from autoswap.files import atomic_write_json

    model_dir = Path(model_dir)
    path = model_dir.parent / MODEL_RUN_FILE
    atomic_write_json(path, {"model": model_dir.name, "digest": model_digest(model_dir),
                             "mlflow_run_id": run_id, "mlflow_tracking_uri": uri})
    return path


def model_run(model_dir: Path) -> tuple[str, str | None] | None:
    """(run id, tracking URI) of the MLflow run that trained the model in `model_dir`, or None
    when nothing says so: no run.json beside it, or one written for other files (another model,
    a folder since replaced). A model.json from before run.json (it held the run id itself) still
    counts. The one place evaluate, preview, swap and its marks learn a model's run."""
    import json

    model_dir = Path(model_dir)
    try:
        rec = json.loads((model_dir.parent / MODEL_RUN_FILE).read_text())
        if (isinstance(rec, dict) and rec.get("model") == model_dir.name and rec.get("mlflow_run_id")
                and rec.get("digest") == model_digest(model_dir)):
            return rec["mlflow_run_id"], rec.get("mlflow_tracking_uri")
    except (OSError, ValueError):
        pass
    try:
        meta = json.loads((model_dir / "model.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(meta, dict) and meta.get("mlflow_run_id"):
        return meta["mlflow_run_id"], meta.get("mlflow_tracking_uri")
    return None


@contextmanager
def log_to_model_run(model_dir: Path):
    """Resume the MLflow run that trained the model in `model_dir` (`model_run`: its run id and
    store) for the block, and yield it: evaluate, preview, swap and the demo log what they make of
    a model to the run that made it. Yields None, and nothing is logged, when the model has no run
    (quietly: a folder copied elsewhere), when its store is gone (a sqlite file that is not there:
    opening it would make an empty store), or when the store has no such run (with a warning)."""
    run = model_run(model_dir)
    if run is None:
        yield None
        return
    run_id, uri = run
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        yield None
        return
    import logging
    import sys

    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)  # see setup
    mlflow.set_tracking_uri(uri)
    try:
        active = mlflow.start_run(run_id=run_id)
    except mlflow.exceptions.MlflowException as e:
        print(f"autoswap: warning: MLflow run {run_id} not found in {uri} ({type(e).__name__}); "
              "nothing logged to it", file=sys.stderr)
        yield None
        return
    with active:
        yield active


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=project_root()
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_tags() -> dict[str, str]:
    tags = {"autoswap.stage": "train"}
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    if name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = name
    return tags


# ----------------------------------------------------------------------------- provenance
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=project_root())
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(data_fingerprint: str, counts: dict[str, int], seed: int) -> dict[str, str]:
    """The tags that explain a training run a year later: the face set (a hash of its files and
    manifests, and the counts), the code (git commit, and whether the tree had changes), the
    software (TensorFlow and, on a CUDA build, CUDA and cuDNN), the machine (CPU model, GPUs with
    their memory), the seed and the DVC experiment."""
    import os as _os

    import tensorflow as tf

    tags = {"autoswap.data.fingerprint": data_fingerprint, "autoswap.seed": str(seed)}
    tags.update({f"autoswap.data.{k}": str(v) for k, v in counts.items()})
    if commit := _git("rev-parse", "HEAD"):
        tags["mlflow.source.git.commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        tags["autoswap.git.dirty"] = "unknown" if status is None else str(bool(status)).lower()
    build = tf.sysconfig.get_build_info()
    tags["autoswap.tensorflow"] = tf.__version__
    tags["autoswap.cuda"] = str(build.get("cuda_version") or "none")
    tags["autoswap.cudnn"] = str(build.get("cudnn_version") or "none")
    tags["autoswap.cpu"] = f"{cpu_model()} ({_os.cpu_count()} logical cores)"
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        name = tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        gpus.append(f"{name} ({_gpu_memory(len(gpus))})")
    tags["autoswap.gpu"] = "; ".join(gpus) or "none"
    if name := _os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = name
    return tags


def _gpu_memory(index: int) -> str:
    """Total memory of GPU `index` from nvidia-smi, where there is one (TensorFlow does not say)."""
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "memory unknown"
    except (OSError, subprocess.SubprocessError):
        return "memory unknown"
