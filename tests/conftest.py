import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """Each test gets its own MLflow store (sqlite + artifacts) under tmp_path."""
    root = tmp_path / "project"
    root.mkdir(exist_ok=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(root))
    return root


TINY = {
    "seed": 3,
    "data": {"face_size": 64, "synthetic": {"train_per_person": 24, "val_per_person": 4}},
    "model": {"input_size": 32, "width": 0.0625, "latent_dim": 128},
    "train": {
        "steps": 6, "batch_size": 4, "learning_rate": 1.0e-3, "log_every": 2, "save_every": 3,
        "preview_every": 3, "backup_every": 6,
    },
    "preview": {"faces": 2},
}


def tiny_raw(tmp_path, **over):
    """The tiny config, rooted in tmp_path, with nested overrides merged in."""
    import copy

    raw = copy.deepcopy(TINY)
    raw["data"]["faces_dir"] = str(tmp_path / "faces")
    raw["train"]["models_dir"] = str(tmp_path / "models")
    raw["preview"]["out_dir"] = str(tmp_path / "previews")
    for section, values in over.items():
        if isinstance(values, dict):
            for k, v in values.items():
                if isinstance(v, dict):
                    raw.setdefault(section, {}).setdefault(k, {}).update(v)
                else:
                    raw.setdefault(section, {})[k] = v
        else:
            raw[section] = values
    return raw
