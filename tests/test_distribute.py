"""tf.distribute: two logical CPU devices under MirroredStrategy train exactly like one device
on the same global batch; two worker processes under MultiWorkerMirroredStrategy agree."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_raw

pytestmark = pytest.mark.slow

RUNNER = textwrap.dedent(
    """
    import os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    n = int(sys.argv[2])
    if n > 1:  # before TF starts: split the CPU into n logical devices
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    from autoswap.config import load
    from autoswap.train import train
    from pathlib import Path
    out = Path(sys.argv[3])
    train(load(sys.argv[1]), metrics_dir=out / "metrics", plots_dir=out / "plots")
    """
)


def losses(out):
    rows = (out / "plots" / "loss.csv").read_text().splitlines()[1:]
    return np.array([[float(v) for v in r.split(",")[1:3]] for r in rows])


def run(tmp_path, name, devices, env_extra=None, **train):
    from test_train import random_faces

    faces = tmp_path / "faces"
    if not faces.exists():
        random_faces(faces)
    out = tmp_path / name
    raw = tiny_raw(out, data={"faces_dir": str(faces)}, train={"batch_size": 4, **train})
    p = out / "params.yaml"
    out.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(raw))
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {**os.environ, "DVC_ROOT": str(out), **(env_extra or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, str(script), str(p), str(devices), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out


def finish(proc):
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]


def test_mirrored_two_devices_equal_one(tmp_path):
    p1, one = run(tmp_path, "one", 1, data_on_device=True)
    finish(p1)
    p2, two = run(tmp_path, "two", 2, strategy="mirrored")
    finish(p2)
    a, b = losses(one), losses(two)
    assert a.shape == b.shape and len(a) >= 3
    np.testing.assert_allclose(a, b, atol=1e-5)
    # and the on-device batches are the tf.data pipeline's batches
    p3, host = run(tmp_path, "host", 1)
    finish(p3)
    np.testing.assert_allclose(losses(host), a, atol=1e-5)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_two_processes_agree(tmp_path):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(run(tmp_path, f"w{i}", 1, {"TF_CONFIG": tf_config}, strategy="multi_worker"))
    for p, _ in procs:
        finish(p)
    chief = procs[0][1]
    assert (chief / "models" / "final" / "model.json").is_file()
    assert not (procs[1][1] / "models" / "final").exists()  # only the chief writes
    # the chief's losses equal a single-process run on the same global batch
    p1, one = run(tmp_path, "single", 1, data_on_device=True)
    finish(p1)
    np.testing.assert_allclose(losses(chief), losses(one), atol=1e-5)
    # both workers hold the same weights: the worker's scratch copy matches the chief's
    import tempfile

    from autoswap.model import load_final

    scratch = [Path(p) for p in Path(tempfile.gettempdir()).glob("autoswap-worker-*") if (Path(p) / "models/final").is_dir()]
    assert scratch, "the second worker wrote its final weights to scratch"
    newest = max(scratch, key=lambda p: p.stat().st_mtime)
    wa = [w.numpy() for m in load_final(chief / "models/final")[:3] for w in m.weights]
    wb = [w.numpy() for m in load_final(newest / "models/final")[:3] for w in m.weights]
    for x, y in zip(wa, wb, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)
