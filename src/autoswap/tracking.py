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

RUN_FILE = "mlflow_run.json"


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

    with open(Path(uri[len("sqlite:///") :]).with_suffix(".db.lock"), "a") as f:
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
