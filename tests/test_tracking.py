"""autoswap.tracking: where the MLflow store lives (DVC_ROOT, so queued experiments land in the
project's store; MLFLOW_TRACKING_URI wins), the experiment made once with its artifacts beside the
database, and models/run.json naming a model's run only while the model's files are unchanged.
Stores opened by several processes at once are in test_reliability.py."""

import json
from pathlib import Path

import pytest

from autoswap import tracking


def test_store_is_rooted_at_dvc_root_not_the_working_copy(tmp_path, monkeypatch):
    real, copy = tmp_path / "project", tmp_path / "exp-copy"
    real.mkdir()
    copy.mkdir()
    monkeypatch.chdir(copy)  # dvc exp run --queue: the stage runs in a temporary copy
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(real))
    assert tracking.tracking_uri() == f"sqlite:///{real / 'mlruns' / 'mlflow.db'}"
    assert tracking.artifact_root() == (real / "mlruns" / "artifacts").as_uri()
    assert (real / "mlruns" / "artifacts").is_dir() and not (copy / "mlruns").exists()
    monkeypatch.delenv("DVC_ROOT")
    assert tracking.tracking_uri() == f"sqlite:///{copy / 'mlruns' / 'mlflow.db'}"  # plain runs: the cwd


def test_tracking_uri_from_the_environment_wins_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.tracking_uri() == "http://tracking.example:5000"
    assert tracking.artifact_root() == ""  # the server decides
    with tracking.store_lock():  # nothing to lock on a server
        pass
    assert list(tmp_path.iterdir()) == []


def test_experiment_is_made_once_with_artifacts_beside_the_store(mlflow_store):
    import mlflow

    first = tracking.setup("lr-sweep")
    assert tracking.setup("lr-sweep") == first
    exp = mlflow.MlflowClient().get_experiment(first)
    assert exp.name == "lr-sweep" and exp.artifact_location == tracking.artifact_root()
    assert (mlflow_store / "mlruns" / "mlflow.db").is_file()


def test_a_sqlite_uri_in_a_folder_not_made_yet_gets_its_folder(tmp_path, monkeypatch):
    # MLFLOW_TRACKING_URI=sqlite:///<new folder>/mlflow.db failed on the store's lock file
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'new' / 'store' / 'mlflow.db'}")
    exp = tracking.setup("elsewhere")
    assert mlflow.MlflowClient().get_experiment(exp).name == "elsewhere"
    assert (tmp_path / "new" / "store" / "mlflow.db").is_file()


def test_run_tags_carry_the_dvc_experiment_name(monkeypatch):
    monkeypatch.setattr(tracking, "git_commit", lambda: "abc123")
    monkeypatch.setenv("DVC_EXP_NAME", "seed-full")
    assert tracking.run_tags() == {"autoswap.stage": "train", "mlflow.source.git.commit": "abc123",
                                   "dvc.exp_name": "seed-full"}
    monkeypatch.setattr(tracking, "git_commit", lambda: None)
    monkeypatch.delenv("DVC_EXP_NAME")
    assert tracking.run_tags() == {"autoswap.stage": "train"}


def model_folder(root: Path) -> Path:
    d = root / "models" / "final"
    d.mkdir(parents=True)
    (d / "model.json").write_text(json.dumps({"model": {"width": 0.125}}))
    for name in ("encoder", "decoder_a", "decoder_b"):
        (d / f"{name}.weights.h5").write_bytes(name.encode() * 100)
    return d


def test_model_run_names_the_run_only_for_the_same_files(tmp_path):
    d = model_folder(tmp_path)
    assert tracking.model_run(d) is None  # no run.json yet
    path = tracking.write_model_run(d, "run-1", "sqlite:///x.db")
    assert path == tmp_path / "models" / "run.json"
    assert tracking.model_run(d) == ("run-1", "sqlite:///x.db")

    other = tmp_path / "models" / "other"  # another folder beside it: run.json names "final"
    other.mkdir()
    for f in d.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    assert tracking.model_run(other) is None

    digest = tracking.model_digest(d)
    (d / "decoder_b.weights.h5").write_bytes(b"retrained")  # e.g. replaced by a dvc checkout
    assert tracking.model_digest(d) != digest
    assert tracking.model_run(d) is None
    (d / "decoder_b.weights.h5").write_bytes(b"decoder_b" * 100)
    assert tracking.model_run(d) == ("run-1", "sqlite:///x.db")  # the same bytes again: the same run

    (tmp_path / "models" / "run.json").write_text("{not json")
    assert tracking.model_run(d) is None  # unreadable: no run, no exception


@pytest.mark.parametrize("meta, expected", [
    ({"mlflow_run_id": "old-run", "mlflow_tracking_uri": "sqlite:///old.db"}, ("old-run", "sqlite:///old.db")),
    ({"mlflow_run_id": None}, None),
])
def test_model_json_from_before_run_json_still_names_its_run(tmp_path, meta, expected):
    d = model_folder(tmp_path)
    (d / "model.json").write_text(json.dumps({"model": {"width": 0.125}, **meta}))
    assert tracking.model_run(d) == expected


def test_log_to_model_run_resumes_the_models_run_or_logs_nothing(mlflow_store, tmp_path, capsys):
    """evaluate, preview, swap and the demo log through tracking.log_to_model_run: into the run
    models/run.json names, in its store; nothing (and no new store) without one."""
    import mlflow

    d = model_folder(tmp_path)
    with tracking.log_to_model_run(d) as run:  # no run.json: quietly nothing
        assert run is None
    gone = tmp_path / "moved" / "mlflow.db"
    tracking.write_model_run(d, "abc", f"sqlite:///{gone}")
    with tracking.log_to_model_run(d) as run:  # its store is gone: nothing, and no empty store made
        assert run is None
    assert not (tmp_path / "moved").exists() and capsys.readouterr().err == ""

    uri = tracking.tracking_uri()
    exp = tracking.setup("autoswap")
    with mlflow.start_run(experiment_id=exp) as trained:
        pass
    tracking.write_model_run(d, trained.info.run_id, uri)
    with tracking.log_to_model_run(d) as run:
        assert run.info.run_id == trained.info.run_id
        mlflow.log_metric("eval.a.recon_mae", 0.5)
    assert mlflow.active_run() is None
    assert mlflow.MlflowClient(uri).get_run(trained.info.run_id).data.metrics == {"eval.a.recon_mae": 0.5}

    tracking.write_model_run(d, "0" * 32, uri)  # a run this store does not have: a warning, nothing logged
    capsys.readouterr()
    with tracking.log_to_model_run(d) as run:
        assert run is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"autoswap: warning: MLflow run {'0' * 32} not found in {uri}")
