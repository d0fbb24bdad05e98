import os
import subprocess
from contextlib import contextmanager

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


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size="64k", read_only=False): a folder on a tmpfs of that size (a full disk to
    write onto, or a read-only file system), unmounted after the test. Needs root and a kernel
    that allows the mount; the test is skipped, saying why, where it cannot be made."""

    @contextmanager
    def make(size: str = "64k", read_only: bool = False):
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        where = tmp_path / f"disk{len(list(tmp_path.glob('disk*')))}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)

    return make


def fill(folder) -> None:
    """Fill `folder`'s file system: one file, `filler`, takes every byte left."""
    with open(os.path.join(folder, "filler"), "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


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
