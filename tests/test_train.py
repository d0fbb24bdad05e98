import csv
import json
import os

import mlflow
import numpy as np
import pytest
from conftest import tiny_raw
from PIL import Image

from autoswap import losses
from autoswap import optim as O
from autoswap import train as T
from autoswap.config import parse
from autoswap.errors import UserError
from autoswap.tracking import model_run


def random_faces(root, size=64, n_train=10, n_val=3, seed=0):
    rng = np.random.default_rng(seed)
    for side in "ab":
        for split, n in (("train", n_train), ("val", n_val)):
            d = root / side / split
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                # smooth blobs, not white noise, so a tiny net can learn something
                base = rng.random((8, 8, 3)) * 255
                img = Image.fromarray(base.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
                img.save(d / f"{i:03d}.png")


def run(tmp_path, **over):
    s = parse(tiny_raw(tmp_path, **over))
    return s, T.train(s, metrics_dir=tmp_path / "metrics", plots_dir=tmp_path / "plots")


def weights(tmp_path):
    from autoswap.model import load_final

    enc, da, db, meta = load_final(tmp_path / "models" / "final")
    return [w.numpy() for m in (enc, da, db) for w in m.weights], meta


@pytest.fixture
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    random_faces(root)
    return root


def test_training_is_deterministic_and_logged(tmp_path, faces, mlflow_store):
    a, b = tmp_path / "a", tmp_path / "b"
    _, ra = run(a, data={"faces_dir": str(faces)})
    _, rb = run(b, data={"faces_dir": str(faces)})
    wa, meta = weights(a)
    wb, _ = weights(b)
    assert len(wa) == len(wb) > 0
    for x, y in zip(wa, wb, strict=True):
        np.testing.assert_array_equal(x, y)
    assert ra == rb and np.isfinite(ra["loss_a"])
    # the MLflow run: params, per-step metrics, previews and weights
    client = mlflow.MlflowClient()
    run_ = client.get_run(model_run(a / "models" / "final")[0])
    assert run_.info.status == "FINISHED"
    assert run_.data.params["train.learning_rate"] == "0.001"
    steps = [m.step for m in client.get_metric_history(run_.info.run_id, "loss_a")]
    assert steps == [2, 3, 4, 6]  # every log_every, plus save points and the end
    for key in ("learning_rate", "warp_stddev", "images_per_s", "loss_b"):
        assert key in run_.data.metrics
    arts = [f.path for f in client.list_artifacts(run_.info.run_id, "weights")]
    assert {"weights/encoder.weights.h5", "weights/decoder_a.weights.h5", "weights/model.json"} <= set(arts)
    previews = [f.path for f in client.list_artifacts(run_.info.run_id, "previews")]
    assert "previews/step_000006.png" in previews
    # DVC metrics and plots files
    assert json.loads((a / "metrics" / "train.json").read_text())["steps"] == 6
    assert (a / "plots" / "loss.csv").read_text().splitlines()[0] == "step,loss_a,loss_b,learning_rate,warp_stddev"


def test_resume_after_interruption_matches_uninterrupted(tmp_path, faces, mlflow_store, monkeypatch):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run(ref, data={"faces_dir": str(faces)})

    real_update = T.Progress.update

    def crash_at_4(self, step, n, info):
        real_update(self, step, n, info)
        if step >= 4:
            raise KeyboardInterrupt  # after the step-3 checkpoint, before the step-6 one

    monkeypatch.setattr(T.Progress, "update", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        run(cut, data={"faces_dir": str(faces)})
    assert not (cut / "models" / "final").exists()
    state = json.loads((cut / "models" / "checkpoints" / "state.json").read_text())
    assert mlflow.MlflowClient().get_run(state["run_id"]).info.status == "KILLED"
    monkeypatch.setattr(T.Progress, "update", real_update)
    run(cut, data={"faces_dir": str(faces)})

    w_ref, _ = weights(ref)
    w_cut, meta = weights(cut)
    for x, y in zip(w_ref, w_cut, strict=True):
        np.testing.assert_array_equal(x, y)  # bit-identical on the same machine
    assert (ref / "plots" / "loss.csv").read_text() == (cut / "plots" / "loss.csv").read_text()
    assert model_run(cut / "models" / "final")[0] == state["run_id"]  # the same MLflow run continued
    assert mlflow.MlflowClient().get_run(state["run_id"]).info.status == "FINISHED"


def test_changed_settings_start_afresh(tmp_path, faces, mlflow_store):
    run(tmp_path, data={"faces_dir": str(faces)})
    first = json.loads((tmp_path / "models" / "checkpoints" / "state.json").read_text())
    run(tmp_path, data={"faces_dir": str(faces)}, train={"learning_rate": 2.0e-3})
    second = json.loads((tmp_path / "models" / "checkpoints" / "state.json").read_text())
    assert first["fingerprint"] != second["fingerprint"] and first["run_id"] != second["run_id"]
    assert (tmp_path / "models" / f"checkpoints.stale-{first['fingerprint']}").is_dir()


def test_checkpoints_keep_last_and_backups(tmp_path, faces, mlflow_store):
    run(tmp_path, data={"faces_dir": str(faces)}, train={"steps": 12, "keep_last": 2})
    ck = tmp_path / "models" / "checkpoints"
    kept = sorted(p.name.split(".")[0] for p in ck.glob("ckpt-*.index"))
    assert kept == ["ckpt-12", "ckpt-9"]
    assert sorted(p.name.split(".")[0] for p in (ck / "backups").glob("*.index")) == ["backup-12", "backup-6"]


def test_lr_schedules():
    from autoswap.config import LRScheduleSettings

    cos = O.LRSchedule(LRScheduleSettings(kind="cosine", min_ratio=0.1), 1e-3, 101)
    assert float(cos(0)) == pytest.approx(1e-3) and float(cos(100)) == pytest.approx(1e-4)
    assert float(cos(50)) == pytest.approx(0.55e-3, rel=1e-4)
    step = O.LRSchedule(LRScheduleSettings(kind="step", step_every=10, step_gamma=0.5), 1e-3, 100)
    assert float(step(9)) == pytest.approx(1e-3) and float(step(10)) == pytest.approx(5e-4)
    warm = O.LRSchedule(LRScheduleSettings(warmup_steps=4), 1e-3, 100)
    assert float(warm(0)) == pytest.approx(2.5e-4) and float(warm(10)) == pytest.approx(1e-3)


def test_too_few_faces_is_a_clear_error(tmp_path, mlflow_store):
    random_faces(tmp_path / "f", n_train=1)
    with pytest.raises(UserError, match=r"person A, need at least 2"):
        run(tmp_path, data={"faces_dir": str(tmp_path / "f")})


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, faces, mlflow_store, monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(losses, "mae", lambda t, y: tf.reduce_mean(tf.abs(t - y)) * float("nan"))
    with pytest.raises(UserError, match="loss became nan by step 2; lower train.learning_rate"):
        run(tmp_path, data={"faces_dir": str(faces)})
    state = json.loads((tmp_path / "models" / "checkpoints" / "state.json").read_text())
    assert mlflow.MlflowClient().get_run(state["run_id"]).info.status == "FAILED"
    assert not list((tmp_path / "models" / "checkpoints").glob("ckpt-*.index"))  # no NaN checkpoint


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, faces, mlflow_store, capsys):
    ref = tmp_path / "ref"
    run(ref, data={"faces_dir": str(faces)})
    cut = tmp_path / "cut"
    run(cut, data={"faces_dir": str(faces)}, train={"steps": 6})
    ck = cut / "models" / "checkpoints"
    # make the run look interrupted after step 6's save, then corrupt that newest checkpoint
    for data in ck.glob("ckpt-6.data-*"):
        data.write_bytes(b"\0" * 64)
    import shutil

    shutil.rmtree(cut / "models" / "final")
    run(cut, data={"faces_dir": str(faces)})
    out = capsys.readouterr().out
    assert "ckpt-6 is unreadable" in out and "resuming from" in out and "at step 3" in out
    w_ref, _ = weights(ref)
    w_cut, _ = weights(cut)
    for x, y in zip(w_ref, w_cut, strict=True):
        np.testing.assert_array_equal(x, y)  # steps 4-6 redone from the step-3 checkpoint


def test_disk_full_while_saving_is_a_clear_error(tmp_path, faces, mlflow_store, monkeypatch):
    import errno

    import tensorflow as tf

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full)
    with pytest.raises(UserError, match="could not save the step-3 checkpoint \\(No space left on device\\)"):
        run(tmp_path, data={"faces_dir": str(faces)})
    ck = tmp_path / "models" / "checkpoints"
    assert not list(ck.glob("ckpt-*")) and not (ck / "checkpoint").exists()  # nothing half-written as latest
    state = json.loads((ck / "state.json").read_text())
    assert mlflow.MlflowClient().get_run(state["run_id"]).info.status == "FAILED"


# ----------------------------------------------------------------------------- loss maps
MAPS_LOSS = {"kind": "mae", "mask_outside_weight": 0.0, "eye_multiplier": 3.0, "mouth_multiplier": 2.0}


@pytest.fixture(scope="module")
def synthetic_faces(tmp_path_factory):
    """The tiny synthetic set, with its landmark manifests (prepare writes them)."""
    from autoswap.prepare import prepare

    root = tmp_path_factory.mktemp("synthetic")
    prepare(parse(tiny_raw(root)), metrics_dir=root / "metrics")
    return root / "faces"


def test_mask_and_region_weights_are_fed_to_the_loss(tmp_path, synthetic_faces, mlflow_store):
    _, plain = run(tmp_path / "plain", data={"faces_dir": str(synthetic_faces)})
    _, masked = run(tmp_path / "maps", data={"faces_dir": str(synthetic_faces)}, train={"loss": MAPS_LOSS})
    assert np.isfinite([masked["loss_a"], masked["loss_b"]]).all()
    assert masked["loss_a"] != plain["loss_a"] and masked["loss_b"] != plain["loss_b"]
    # the on-device path builds the same batches, maps included
    _, device = run(tmp_path / "dev", data={"faces_dir": str(synthetic_faces)},
                    train={"loss": MAPS_LOSS, "data_on_device": True})
    assert device["loss_a"] == pytest.approx(masked["loss_a"], rel=1e-4)
    assert device["loss_b"] == pytest.approx(masked["loss_b"], rel=1e-4)


def test_forward_backward_splits_the_maps_off_the_target(tmp_path):
    import keras
    import tensorflow as tf

    from autoswap import model as M

    s = parse(tiny_raw(tmp_path, train={"loss": MAPS_LOSS}))
    keras.utils.set_random_seed(0)
    nets = M.build(s.model)
    step = T.make_forward_backward(nets, O.make_optimizer(s.train, 1e-3), s.train.loss)
    rng = np.random.default_rng(0)
    w = tf.constant(rng.random((2, 32, 32, 3)), tf.float32)
    rgb = tf.constant(rng.random((2, 32, 32, 3)), tf.float32)
    ones = tf.ones((2, 32, 32, 3))
    # a mask of 0 everywhere, with outside weight 0: nothing counts, whatever the model outputs
    la, _ = step(w, tf.concat([rgb, 0.0 * ones], -1), w, tf.concat([rgb, ones], -1))
    assert float(la) == 0.0
    # a mask of 1 and eyes / mouth everywhere: a constant weight, so the plain MAE again
    _, lb = step(w, tf.concat([rgb, ones], -1), w, tf.concat([rgb, ones], -1))
    assert float(lb) > 0.05


def test_loss_maps_need_landmarks(tmp_path, faces, mlflow_store):
    # faces from data.aligned: true folders (here: plain PNGs) have no manifest to draw maps from
    with pytest.raises(UserError) as e:
        run(tmp_path, data={"faces_dir": str(faces)}, train={"loss": {"eye_multiplier": 3.0}})
    msg = str(e.value)
    assert "\n" not in msg and str(faces / "a") in msg and "no manifest.jsonl with face landmarks" in msg
    assert "set them to 1.0" in msg


def test_loss_jump_flags_a_diverged_run_once_it_leaves_its_best():
    from autoswap.train import loss_jump

    # the demo at lr 1e-3 with colour augmentation and eye/mouth weights: 0.057 at step 1600, 0.41 at 1700
    history = [{"loss_a": a, "loss_b": b} for a, b in ((0.16, 0.17), (0.085, 0.094), (0.057, 0.064))]
    assert loss_jump(history, {"loss_a": 0.06, "loss_b": 0.066}) is None  # noise, not divergence
    assert loss_jump(history, {"loss_a": 0.16, "loss_b": 0.17}) is None  # 2.8x: not yet
    msg = loss_jump(history, {"loss_a": 0.4112, "loss_b": 0.25})
    assert msg is not None and msg.startswith("loss_a jumped to 0.4112, 7.2x its lowest (0.0570)")
    assert "loss_b" in loss_jump(history, {"loss_a": 0.05, "loss_b": 0.3})
    assert loss_jump([], {"loss_a": 1.0, "loss_b": 1.0}) is None  # the first log has nothing to compare


def test_gpu_switches_run_on_cpu(tmp_path, faces, mlflow_store):
    """train.mixed_precision, jit_compile and data_on_device together (the GPU path) train on CPU:
    bfloat16 compute with float32 weights and a float32 output, finite falling losses, weights that
    load back as float32, and the Keras policy left as it was."""
    import keras

    def curve(root):
        with open(root / "plots" / "loss.csv") as f:
            return np.array([[float(x["loss_a"]), float(x["loss_b"])] for x in csv.DictReader(f)])

    ref = tmp_path / "float32"
    run(ref, data={"faces_dir": str(faces)}, train={"steps": 8})
    s, r = run(tmp_path, data={"faces_dir": str(faces)},
               train={"mixed_precision": True, "jit_compile": True, "data_on_device": True, "steps": 8})
    assert keras.mixed_precision.global_policy().name == "float32"
    # same batches, same initial weights: bfloat16 rounding moves the losses, but slightly (1e-6 here:
    # the rounding errors of the activations average out in the mean absolute error)
    low, full = curve(tmp_path), curve(ref)
    assert low.shape == full.shape and np.isfinite(low).all()
    assert np.abs(low - full).max() < 0.01 and np.abs(low - full).max() > 0  # it did compute in bfloat16
    w, meta = weights(tmp_path)
    assert all(x.dtype == np.float32 and np.isfinite(x).all() for x in w)
    # the same run's network, rebuilt under the policy, computes in bfloat16 but answers in float32
    from autoswap.model import build

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        enc, da, _ = build(s.model)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = np.zeros((1, s.model.input_size, s.model.input_size, 3), np.float32)
    assert enc(x).dtype.name == "bfloat16" and da(enc(x)).dtype.name == "float32"


def compiled_apply(opt, variables, jit):
    import tensorflow as tf

    return tf.function(lambda grads: opt.apply_gradients(zip(grads, variables, strict=True)), jit_compile=jit)


@pytest.mark.parametrize("jit", [False, True])
def test_fused_adam_is_keras_adam(tmp_path, jit):
    """make_optimizer's Adam (TensorFlow's fused kernel per variable) follows keras' Adam step for
    step, with a changing learning rate, and keeps keras' variables (checkpoints unchanged)."""
    import keras
    import tensorflow as tf

    s = parse(tiny_raw(tmp_path, train={"beta_1": 0.5, "beta_2": 0.99}))
    rng = np.random.default_rng(0)
    init = [rng.normal(size=sh).astype(np.float32) for sh in ((3, 3, 8, 16), (16,), (40, 7))]
    grads = [[tf.constant(rng.normal(size=x.shape).astype(np.float32)) for x in init] for _ in range(5)]
    lr = keras.optimizers.schedules.ExponentialDecay(1e-2, 1, 0.7)  # a new rate every step
    runs = []
    for opt in (O.make_optimizer(s.train, lr), keras.optimizers.Adam(lr, beta_1=0.5, beta_2=0.99)):
        vs = [keras.Variable(x, name=f"w{j}") for j, x in enumerate(init)]
        opt.build(vs)
        apply = compiled_apply(opt, vs, jit)
        for g in grads:
            apply(g)
        runs.append((opt, [v.numpy() for v in vs]))
    (fused, got), (ref, want) = runs
    assert type(fused).__name__ == "FusedAdam" and isinstance(fused, keras.optimizers.Adam)
    assert fused.name == "adam"  # keras names its Adam so (a second one in a process: adam_1)
    assert [v.path.split("/", 1)[1] for v in fused.variables] == [v.path.split("/", 1)[1] for v in ref.variables]
    for g, w, x in zip(got, want, init, strict=True):
        assert np.abs(w - x).max() > 1e-3  # five steps moved the weights
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- divergence
def nan_at(monkeypatch, first: int, last: int | None = None):
    """losses.mae returns NaN for the training steps first..last (1-based, inclusive; None = for good),
    counted in calls, so a rollback that replays those steps does not meet the NaN again."""
    import tensorflow as tf

    calls = tf.Variable(0, dtype=tf.int64, trainable=False)  # two calls a step: person A, person B
    lo, hi = 2 * first - 1, 2 * (last if last is not None else 10**9)

    def loss(t, y):
        c = calls.assign_add(1)
        poison = tf.where((c >= lo) & (c <= hi), float("nan"), 1.0)
        return tf.reduce_mean(tf.abs(tf.cast(t, tf.float32) - tf.cast(y, tf.float32))) * poison

    monkeypatch.setattr(losses, "mae", loss)


DIVERGE = {"steps": 8, "log_every": 1, "save_every": 3, "preview_every": 8, "backup_every": 100}


def test_divergence_rolls_back_to_the_last_checkpoint_and_trains_on_bit_identically(
    tmp_path, faces, mlflow_store, monkeypatch, capsys
):
    results = []
    for name in ("first", "rerun"):
        nan_at(monkeypatch, 5, 5)  # step 5 is NaN once; the last good checkpoint is step 3's
        root = tmp_path / name
        _, r = run(root, data={"faces_dir": str(faces)}, train=DIVERGE)
        results.append((root, r))
    err = capsys.readouterr().err
    assert "step 5: loss became nan; rolled back to step 3 with the learning rate x0.5 (now 0.0005)" in err
    (a, ra), (b, rb) = results
    assert ra == rb and np.isfinite(ra["loss_a"])
    wa, meta = weights(a)
    wb, _ = weights(b)
    for x, y in zip(wa, wb, strict=True):
        np.testing.assert_array_equal(x, y)  # the rollback is as deterministic as the rest
    # one curve: steps 4 and 5 were trained again, and the history has each step once
    rows = list(csv.DictReader((a / "plots" / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([1e-3] * 3 + [5e-4] * 5)
    run_ = mlflow.MlflowClient().get_run(model_run(a / "models" / "final")[0])
    assert run_.info.status == "FINISHED"
    assert run_.data.tags["autoswap.diverged_at_step"] == "5"
    assert run_.data.tags["autoswap.rollback.1"].startswith("step 5 -> 3: loss became nan")
    assert run_.data.metrics["rollbacks"] == 1


def test_divergence_before_the_first_checkpoint_rolls_back_to_the_start(tmp_path, faces, mlflow_store, monkeypatch):
    nan_at(monkeypatch, 2, 2)
    _, r = run(tmp_path, data={"faces_dir": str(faces)}, train=DIVERGE)
    rows = list(csv.DictReader((tmp_path / "plots" / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert float(rows[0]["learning_rate"]) == pytest.approx(5e-4)  # step 1 retrained at the lower rate
    assert np.isfinite(r["loss_a"])


def test_rollbacks_are_capped_then_training_stops(tmp_path, faces, mlflow_store, monkeypatch):
    nan_at(monkeypatch, 5)  # NaN from step 5 on, for good: every rollback meets it again
    with pytest.raises(UserError, match=r"loss became nan by step \d; lower train.learning_rate .* after 2 rollback"):
        run(tmp_path, data={"faces_dir": str(faces)}, train={**DIVERGE, "max_rollbacks": 2})
    state = json.loads((tmp_path / "models" / "checkpoints" / "state.json").read_text())
    run_ = mlflow.MlflowClient().get_run(state["run_id"])
    assert run_.info.status == "FAILED"
    assert {"autoswap.rollback.1", "autoswap.rollback.2", "autoswap.stopped"} <= set(run_.data.tags)
    assert not (tmp_path / "models" / "final").exists()  # no weights from after the divergence


def test_stop_mode_keeps_the_last_good_checkpoint_and_a_rerun_resumes_from_it(
    tmp_path, faces, mlflow_store, monkeypatch, capsys
):
    nan_at(monkeypatch, 5)
    with pytest.raises(UserError, match="loss became nan by step 5; .*stopped \\(train.on_divergence stop\\)"):
        run(tmp_path, data={"faces_dir": str(faces)}, train={**DIVERGE, "on_divergence": "stop"})
    ck = tmp_path / "models" / "checkpoints"
    assert sorted(p.name.split(".")[0] for p in ck.glob("ckpt-*.index")) == ["ckpt-3"]
    assert not (tmp_path / "models" / "final").exists()
    state = json.loads((ck / "state.json").read_text())
    assert mlflow.MlflowClient().get_run(state["run_id"]).data.tags["autoswap.stopped"] == "diverged at step 5"
    # the cause gone (a lower rate, in real life), the rerun goes on from step 3 in the same run
    monkeypatch.setattr(losses, "mae", _plain_mae)
    capsys.readouterr()
    _, r = run(tmp_path, data={"faces_dir": str(faces)}, train={**DIVERGE, "on_divergence": "stop"})
    assert "resuming from" in capsys.readouterr().out
    assert model_run(tmp_path / "models" / "final")[0] == state["run_id"] and np.isfinite(r["loss_a"])


def _plain_mae(t, y):
    import tensorflow as tf

    return tf.reduce_mean(tf.abs(tf.cast(t, tf.float32) - tf.cast(y, tf.float32)))


def test_warn_mode_never_writes_a_diverged_final_model(tmp_path, faces, mlflow_store, monkeypatch):
    import tensorflow as tf

    calls = tf.Variable(0, dtype=tf.int64, trainable=False)

    def blown_up(t, y):  # a finite loss that jumps 100x from step 4 on: a collapse without NaN
        c = calls.assign_add(1)
        return _plain_mae(t, y) * tf.where(c >= 7, 100.0, 1.0)

    monkeypatch.setattr(losses, "mae", blown_up)
    with pytest.raises(UserError, match="training ended diverged .*models/final not written"):
        run(tmp_path, data={"faces_dir": str(faces)}, train={**DIVERGE, "on_divergence": "warn"})
    assert not (tmp_path / "models" / "final").exists()


def test_clip_grad_norm_caps_the_gradient_before_adam(tmp_path):
    import tensorflow as tf

    s = parse(tiny_raw(tmp_path, train={"clip_grad_norm": 1.0, "beta_1": 0.5}))
    v = tf.Variable(tf.zeros([4]))
    opt = O.make_optimizer(s.train, 1e-3)
    opt.build([v])
    opt.apply_gradients([(tf.constant([30.0, 40.0, 0.0, 0.0]), v)])  # norm 50
    m = opt._momentums[0].numpy()
    np.testing.assert_allclose(m, 0.5 * np.array([0.6, 0.8, 0.0, 0.0]), rtol=1e-6)  # (1 - beta_1) x the clipped gradient


def test_a_second_training_on_the_same_models_folder_exits_at_once_naming_the_holder(tmp_path, faces, mlflow_store):
    import signal
    import subprocess
    import sys
    import time

    models = tmp_path / "models"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from autoswap.train import training_lock\n"
         f"with training_lock(Path({str(models)!r})):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(UserError, match=rf"another `autoswap train` \(PID {holder.pid}\) is training here"):
            run(tmp_path, data={"faces_dir": str(faces)})
        assert time.monotonic() - t0 < 5  # at once: before any face is loaded or model built
        assert not (models / "checkpoints").exists()
        holder.send_signal(signal.SIGKILL)  # a killed holder leaves its lock file behind: stale
        holder.wait(10)
        assert (models / ".train.lock").read_text().strip() == str(holder.pid)
        _, r = run(tmp_path, data={"faces_dir": str(faces)})  # taken over
        assert np.isfinite(r["loss_a"]) and (models / "final" / "model.json").is_file()
    finally:
        holder.kill()
        holder.wait(10)


# ----------------------------------------------------------------------------- train longer
def run_of(root):
    """The MLflow run id that trained root/models/final."""
    from autoswap import tracking

    return tracking.model_run(root / "models" / "final")[0]


LONGER = {"log_every": 2, "save_every": 4, "preview_every": 8, "backup_every": 100}


def test_raising_steps_goes_on_from_the_last_checkpoint_bit_identically(tmp_path, faces, mlflow_store, capsys):
    straight, grown = tmp_path / "straight", tmp_path / "grown"
    run(straight, data={"faces_dir": str(faces)}, train={**LONGER, "steps": 8})
    _, short = run(grown, data={"faces_dir": str(faces)}, train={**LONGER, "steps": 4})
    first_run = run_of(grown)
    capsys.readouterr()
    run(grown, data={"faces_dir": str(faces)}, train={**LONGER, "steps": 8})
    out = capsys.readouterr().out
    assert "train.steps changed from 4 to 8; going on from step 4" in out and "set it aside" not in out
    w_straight, _ = weights(straight)
    w_grown, meta = weights(grown)
    for x, y in zip(w_straight, w_grown, strict=True):
        np.testing.assert_array_equal(x, y)  # steps 0..4 and 4..8 are the straight run's, bit for bit
    # one loss curve, in the same MLflow run
    assert (straight / "plots" / "loss.csv").read_text() == (grown / "plots" / "loss.csv").read_text()
    assert run_of(grown) == first_run and meta.steps == 8
    run_ = mlflow.MlflowClient().get_run(first_run)
    assert run_.info.status == "FINISHED"
    assert run_.data.tags["autoswap.lengthened_at_step.4"] == "train.steps 4 -> 8"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(first_run, "loss_a")]
    assert steps == [2, 4, 6, 8]


def test_a_schedule_that_depends_on_the_total_restarts_or_stretches_as_asked(
    tmp_path, faces, mlflow_store, capsys, monkeypatch
):
    cosine = {**LONGER, "lr_schedule": {"kind": "cosine", "min_ratio": 0.1}}
    run(tmp_path, data={"faces_dir": str(faces)}, train={**cosine, "steps": 4})
    capsys.readouterr()
    run(tmp_path, data={"faces_dir": str(faces)}, train={**cosine, "steps": 8})
    out = capsys.readouterr().out
    assert "the cosine learning-rate schedule depends on it: starting afresh" in out
    assert "train.on_more_steps: stretch_schedule" in out and "set it aside" in out
    rows = list(csv.DictReader((tmp_path / "plots" / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]

    # stretched: an 8-step cosine run stopped at its step-4 checkpoint, then made 16 steps long:
    # steps 0..4 as the 8-step run, then its remaining schedule (4..7) spread over 4..15
    other = tmp_path / "other"
    real_update = T.Progress.update

    def stop_at_6(self, step, n, info):
        real_update(self, step, n, info)
        if step >= 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(T.Progress, "update", stop_at_6)
    with pytest.raises(KeyboardInterrupt):
        run(other, data={"faces_dir": str(faces)}, train={**cosine, "steps": 8})
    monkeypatch.setattr(T.Progress, "update", real_update)
    run0 = json.loads((other / "models" / "checkpoints" / "state.json").read_text())["run_id"]
    capsys.readouterr()
    run(other, data={"faces_dir": str(faces)}, train={**cosine, "steps": 16, "on_more_steps": "stretch_schedule"})
    assert "stretched from step 4 to the new end, 16" in capsys.readouterr().out
    rows = {int(r["step"]): float(r["learning_rate"]) for r in csv.DictReader((other / "plots" / "loss.csv").open())}
    from autoswap.config import LRScheduleSettings

    eight = O.LRSchedule(LRScheduleSettings(kind="cosine", min_ratio=0.1), 1e-3, 8)
    assert rows[2] == pytest.approx(float(eight(1)), rel=1e-6)  # before the stretch: the 8-step run's
    assert rows[10] == pytest.approx(float(eight(4 + (9 - 4) * 3 / 11)), rel=1e-5)  # logged at 10: step 9
    assert rows[16] == pytest.approx(1e-4, rel=1e-5)  # the schedule's end at the new last step
    state = json.loads((other / "models" / "checkpoints" / "state.json").read_text())
    assert state["stretch"] == [4, 4.0, 15, 7] and state["schedule_steps"] == 8
    tag = mlflow.MlflowClient().get_run(run_of(other)).data.tags["autoswap.lengthened_at_step.4"]
    assert run_of(other) == run0 and "stretch_schedule" in tag


def test_stretched_maps_the_rest_of_a_schedule_onto_the_new_end():
    from autoswap.pipeline import stretched

    # a 101-step schedule stopped at step 40, lengthened to 201 steps: step 40 reads 40, 200 reads 100
    m = (40, 40.0, 200, 100)
    assert float(stretched(10, m)) == 10 and float(stretched(40, m)) == 40
    assert float(stretched(120, m)) == pytest.approx(70) and float(stretched(200, m)) == pytest.approx(100)
    assert float(stretched(7, None)) == 7


def test_finish_after_an_interruption_writes_the_final_model_from_the_last_checkpoint(
    tmp_path, faces, mlflow_store, monkeypatch
):
    real_update = T.Progress.update

    def crash_at_6(self, step, n, info):
        real_update(self, step, n, info)
        if step >= 6:
            raise KeyboardInterrupt  # Ctrl+C after the step-4 checkpoint

    monkeypatch.setattr(T.Progress, "update", crash_at_6)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, data={"faces_dir": str(faces)}, train={**LONGER, "steps": 8})
    monkeypatch.setattr(T.Progress, "update", real_update)
    s = parse(tiny_raw(tmp_path, data={"faces_dir": str(faces)}, train={**LONGER, "steps": 8}))
    r = T.train(s, metrics_dir=tmp_path / "metrics", plots_dir=tmp_path / "plots", finish=True)
    assert r["steps"] == 4 and json.loads((tmp_path / "metrics" / "train.json").read_text())["steps"] == 4
    _, meta = weights(tmp_path)
    assert meta.steps == 4
    run_ = mlflow.MlflowClient().get_run(run_of(tmp_path))
    assert run_.info.status == "FINISHED" and run_.data.tags["autoswap.finished_early_at_step"] == "4"
    rows = list(csv.DictReader((tmp_path / "plots" / "loss.csv").open()))
    assert [int(x["step"]) for x in rows] == [2, 4]
    # and the evaluate stage works on it
    from autoswap.evaluate import evaluate

    ev = evaluate(s, model_dir=tmp_path / "models" / "final", metrics_dir=tmp_path / "metrics")
    assert set(ev) == {"a", "b"}


def test_finish_without_a_checkpoint_is_a_clear_error(tmp_path, faces, mlflow_store):
    s = parse(tiny_raw(tmp_path, data={"faces_dir": str(faces)}))
    with pytest.raises(UserError, match="no checkpoint of these settings to finish from"):
        T.train(s, metrics_dir=tmp_path / "metrics", plots_dir=tmp_path / "plots", finish=True)


# ----------------------------------------------------------------------------- the run outside models/final
def test_final_model_holds_no_run_so_two_trainings_give_the_same_bytes(tmp_path, faces, mlflow_store, capsys):
    """models/final is a DVC output: the same training twice gives the same files (the same DVC
    hash, the same dvc.lock). The MLflow run is in models/run.json, which evaluate follows to log to
    the training's run; a folder away from its run.json, or since replaced, is logged nowhere."""
    import shutil
    from pathlib import Path

    from autoswap.evaluate import evaluate
    from autoswap.tracking import model_digest, tracking_uri

    a, b = tmp_path / "a", tmp_path / "b"
    s, _ = run(a, data={"faces_dir": str(faces)}, evaluate={"identity_faces": 0})
    run(b, data={"faces_dir": str(faces)}, evaluate={"identity_faces": 0})
    fa, fb = a / "models" / "final", b / "models" / "final"
    assert (fa / "model.json").read_bytes() == (fb / "model.json").read_bytes()
    assert "mlflow" not in (fa / "model.json").read_text()
    assert sorted(p.name for p in fa.iterdir()) == sorted(p.name for p in fb.iterdir())
    assert model_digest(fa) == model_digest(fb)  # the weight files too, byte for byte

    # two runs, each named in its own models/run.json, which DVC does not track
    ra, rb = model_run(fa), model_run(fb)
    assert ra and rb and ra[0] != rb[0]
    state = json.loads((a / "models" / "checkpoints" / "state.json").read_text())
    assert ra == (state["run_id"], tracking_uri())
    assert json.loads((a / "models" / "run.json").read_text())["model"] == "final"
    assert "run.json" not in (Path(__file__).resolve().parents[1] / "dvc.yaml").read_text()

    # evaluate logs to the training's run, and to no other
    ev = evaluate(s, model_dir=fa, metrics_dir=a / "metrics")
    client = mlflow.MlflowClient()
    assert client.get_run(ra[0]).data.metrics["eval.a.recon_mae"] == pytest.approx(ev["a"]["recon_mae"])
    assert "eval.a.recon_mae" not in client.get_run(rb[0]).data.metrics

    # the folder copied elsewhere without run.json: evaluated, logged nowhere, nothing said
    copy = tmp_path / "elsewhere" / "final"
    shutil.copytree(fa, copy)
    exp_id = client.get_run(ra[0]).info.experiment_id
    n_runs = len(client.search_runs([exp_id]))
    capsys.readouterr()
    assert model_run(copy) is None
    evaluate(s, model_dir=copy, metrics_dir=tmp_path / "elsewhere")
    assert "autoswap" not in capsys.readouterr().err
    assert len(client.search_runs([exp_id])) == n_runs
    # a run.json written for other files (models/final replaced since): not this model's run
    shutil.copyfile(a / "models" / "run.json", copy.parent / "run.json")
    assert model_run(copy) == ra
    with open(copy / "decoder_b.weights.h5", "ab") as f:
        f.write(b"\0")
    assert model_run(copy) is None


def test_an_older_set_aside_checkpoint_folder_is_kept_never_deleted(tmp_path, faces, mlflow_store, capsys):
    """Setting checkpoints aside when their name is already taken used to delete the older folder."""
    run(tmp_path, data={"faces_dir": str(faces)})
    models = tmp_path / "models"
    fp = json.loads((models / "checkpoints" / "state.json").read_text())["fingerprint"]
    older = models / f"checkpoints.stale-{fp}"  # set aside by an earlier change with these settings
    older.mkdir()
    (older / "notes.txt").write_text("an older run")
    capsys.readouterr()
    run(tmp_path, data={"faces_dir": str(faces)}, train={"learning_rate": 2.0e-3})
    assert (older / "notes.txt").read_text() == "an older run"
    aside = models / f"checkpoints.stale-{fp}-2"
    assert json.loads((aside / "state.json").read_text())["fingerprint"] == fp
    assert f"set it aside as {aside}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- trainer workflow
def test_timelapse_has_one_frame_per_preview_and_the_previews_carry_step_and_loss(tmp_path, faces, mlflow_store):
    from PIL import Image

    s, _ = run(tmp_path, data={"faces_dir": str(faces)}, train={"steps": 9, "preview_every": 3, "log_every": 3})
    gif = Image.open(tmp_path / "models" / "timelapse.gif")
    assert gif.n_frames == 3  # steps 3, 6, 9
    frames = sorted((tmp_path / "models" / "checkpoints" / "timelapse").glob("step_*.png"))
    assert [f.name for f in frames] == ["step_000003.png", "step_000006.png", "step_000009.png"]
    # a caption row (step, losses) above the labels: 14 px taller than the preview stage's grid
    from autoswap.model import load_final
    from autoswap.pipeline import BatchSpec, load_faces
    from autoswap.report import preview_grid

    *nets, _ = load_final(tmp_path / "models" / "final")
    val = load_faces(faces / "a" / "val", 64)[0][:2]
    plain = preview_grid(nets, BatchSpec.from_settings(s), val, val)
    assert np.asarray(Image.open(frames[-1])).shape[0] == plain.shape[0] + 14
    arts = [f.path for f in mlflow.MlflowClient().list_artifacts(run_of(tmp_path), "previews")]
    assert "previews/timelapse.gif" in arts and "previews/step_000009.png" in arts


def test_provenance_tags_on_a_tiny_run(tmp_path, faces, mlflow_store):
    import subprocess

    import tensorflow as tf

    # the project is a git repository with a change not committed: the run says so
    subprocess.run(["git", "init", "-q", str(mlflow_store)], check=True)
    (mlflow_store / "README").write_text("x")
    git = ["git", "-C", str(mlflow_store), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    (mlflow_store / "README").write_text("changed")
    run(tmp_path, data={"faces_dir": str(faces)})
    tags = mlflow.MlflowClient().get_run(run_of(tmp_path)).data.tags
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head and tags["autoswap.git.dirty"] == "true"
    assert len(tags["autoswap.data.fingerprint"]) == 16
    assert (tags["autoswap.data.n_train_a"], tags["autoswap.data.n_val_b"]) == ("10", "3")
    assert tags["autoswap.tensorflow"] == tf.__version__ and tags["autoswap.seed"] == "3"
    assert tags["autoswap.gpu"] == "none" and "logical cores" in tags["autoswap.cpu"]
    assert "autoswap.cuda" in tags and "autoswap.cudnn" in tags
    # the same faces give the same face-set fingerprint; one more face, another
    other = tmp_path / "other"
    run(other, data={"faces_dir": str(faces)})
    assert mlflow.MlflowClient().get_run(run_of(other)).data.tags["autoswap.data.fingerprint"] == tags[
        "autoswap.data.fingerprint"]
    # and `autoswap compare --tags` shows chosen ones
    from autoswap.compare import compare

    table = compare("autoswap", tmp_path / "c.png", ("autoswap.git.dirty", "autoswap.gpu"))["table"]
    assert "autoswap.git.dirty" in table.splitlines()[0] and "true" in table.splitlines()[2]


def test_init_from_loads_the_encoder_and_the_chosen_decoders(tmp_path, faces, mlflow_store):
    src = tmp_path / "src"
    run(src, data={"faces_dir": str(faces)})
    (src_w, _), parent = weights(src), run_of(src)
    s = parse(tiny_raw(tmp_path / "new", data={"faces_dir": str(faces)},
                       train={"init_from": str(src / "models" / "final"), "init_decoder_a": "b"}))
    trainer = T.build_trainer(s)
    T.apply_init(s, trainer, src / "models" / "final")
    enc, da, db = trainer.nets
    n_enc, n_dec = len(enc.weights), len(da.weights)
    for x, y in zip(enc.get_weights(), src_w[:n_enc], strict=True):
        np.testing.assert_array_equal(x, y)  # the encoder
    for x, y in zip(da.get_weights(), src_w[n_enc + n_dec:], strict=True):
        np.testing.assert_array_equal(x, y)  # decoder_a from its decoder_b
    fresh = T.build_trainer(s).nets[2]
    for x, y in zip(db.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)  # decoder_b: left as initialised
    # a whole run from it, and from its MLflow run id: tagged with the parent
    for name, init in (("by_folder", str(src / "models" / "final")), ("by_run", parent)):
        root = tmp_path / name
        _, r = run(root, data={"faces_dir": str(faces)}, train={"init_from": init, "init_decoder_b": "b"})
        tags = mlflow.MlflowClient().get_run(run_of(root)).data.tags
        assert tags["autoswap.init_from"] == init and tags["autoswap.parent_run"] == parent
        assert np.isfinite(r["loss_a"])
    # the starting model is part of the run's identity: retrained source, new fingerprint
    fp = json.loads((tmp_path / "by_folder" / "models" / "checkpoints" / "state.json").read_text())["fingerprint"]
    run(src, data={"faces_dir": str(faces)}, train={"learning_rate": 2.0e-3})
    run(tmp_path / "by_folder", data={"faces_dir": str(faces)},
        train={"init_from": str(src / "models" / "final"), "init_decoder_b": "b"})
    fp2 = json.loads((tmp_path / "by_folder" / "models" / "checkpoints" / "state.json").read_text())["fingerprint"]
    assert fp != fp2


def test_freeze_encoder_steps_holds_the_loaded_encoder_then_lets_it_train(tmp_path, faces, mlflow_store):
    src = tmp_path / "src"
    run(src, data={"faces_dir": str(faces)})
    (src_w, _) = weights(src)
    init = {"init_from": str(src / "models" / "final"), "init_decoder_a": "a", "init_decoder_b": "b"}
    n_enc = None
    for steps, frozen in ((4, True), (5, False)):
        root = tmp_path / f"new{steps}"
        run(root, data={"faces_dir": str(faces)}, train={**init, "steps": steps, "freeze_encoder_steps": 4})
        new_w, _ = weights(root)
        if n_enc is None:
            from autoswap.model import load_final

            n_enc = len(load_final(root / "models" / "final")[0].weights)
        same = [np.array_equal(x, y) for x, y in zip(new_w, src_w, strict=True)]
        assert all(same[:n_enc]) == frozen  # the encoder: as loaded for 4 steps, then trained
        assert not any(same[n_enc:])  # the decoders train from the first step


def test_held_variables_keep_their_values_but_gather_adams_moments():
    import tensorflow as tf

    held, free = tf.Variable(np.ones(3, np.float32)), tf.Variable(np.ones(3, np.float32))
    opt = O.FusedAdam(learning_rate=0.1, beta_1=0.5)
    opt.build([held, free])
    opt.hold([held], 2)
    step = tf.function(lambda: opt.apply_gradients([(tf.ones(3), held), (tf.ones(3), free)]))
    h, f = [1.0], [1.0]
    for _ in range(6):
        step()
        h.append(float(held.numpy()[0]))
        f.append(float(free.numpy()[0]))
    dh, df = -np.diff(h), -np.diff(f)  # each step's move
    np.testing.assert_allclose(df, 0.1, rtol=1e-4)  # a constant gradient: Adam steps the rate
    # held for 2 steps, then the free one's step: the moments were gathered all along (moments
    # started from zero at step 3 would step 0.5 / sqrt(0.001) = 16x the rate)
    np.testing.assert_allclose(dh, [0, 0, 0.1, 0.1, 0.1, 0.1], rtol=1e-4, atol=1e-7)


def test_init_from_a_mismatched_model_is_refused_in_one_line(tmp_path, faces, mlflow_store):
    src = tmp_path / "src"
    run(src, data={"faces_dir": str(faces)}, model={"width": 0.125})
    with pytest.raises(UserError, match=r"key 'train.init_from': .* was trained with another network") as e:
        run(tmp_path / "new", data={"faces_dir": str(faces)}, train={"init_from": str(src / "models" / "final")})
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="neither a model folder"):
        run(tmp_path / "new2", data={"faces_dir": str(faces)}, train={"init_from": str(tmp_path / "nowhere")})


def test_bfloat16_and_threads_auto_resolve_from_the_machine():
    """train.mixed_precision auto follows the CPU's bfloat16 flags (emulated bfloat16 is slower
    than float32); train.intra_op_threads auto leaves the input pipeline a core."""
    import os

    from autoswap.config import Settings

    assert T.cpu_has_bf16("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert T.cpu_has_bf16("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert not T.cpu_has_bf16("flags\t\t: fpu avx2 avx512f avx512_vnni\nbugs\t\t: amx_bf16\n")
    t = Settings().train
    assert T.mixed_precision(t) is False
    runs = T.bf16_probe() is None  # this machine's kernels run bfloat16
    assert T.mixed_precision(t.model_copy(update={"mixed_precision": "auto"})) == (
        T.cpu_has_bf16() and T.isa_allows_bf16() and runs)  # no GPU here
    assert T.intra_op_threads(t) == max(1, len(os.sched_getaffinity(0)) - 1)
    assert T.intra_op_threads(t.model_copy(update={"intra_op_threads": 3})) == 3


def test_bfloat16_auto_follows_what_the_kernels_can_do(monkeypatch):
    """A machine (or a run with oneDNN capped below AVX512_CORE_BF16) whose kernels cannot run
    bfloat16 gets float32 from auto, not a crash in the first step; `true` there is a one-line
    error naming the key. Checked in fresh interpreters with the real kernels capped to AVX2,
    where a bfloat16 convolution fails ("could not create a primitive descriptor")."""
    import subprocess
    import sys

    from autoswap.config import Settings

    code = (
        "from autoswap import train as T\n"
        "from autoswap.config import Settings\n"
        "from autoswap.errors import UserError\n"
        "t = Settings().train\n"
        "print('probe', T.bf16_probe() is None)\n"
        "print('auto', T.mixed_precision(t.model_copy(update={'mixed_precision': 'auto'})))\n"
        "try:\n"
        "    print('true', T.mixed_precision(t.model_copy(update={'mixed_precision': True})))\n"
        "except UserError as e:\n"
        "    print('error', str(e))\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert lines["probe"] == "False", out  # AVX2 kernels have no bfloat16 convolution
    assert lines["auto"] == "False", out
    assert lines["error"].startswith("train.mixed_precision: true, but bfloat16 does not run on this machine")
    assert "set it to auto or false" in lines["error"] and "\n" not in lines["error"]
    # caps below the bfloat16 instructions turn auto off before any kernel runs
    assert not T.isa_allows_bf16("AVX512_CORE") and not T.isa_allows_bf16("avx2")
    assert T.isa_allows_bf16("") and T.isa_allows_bf16("AVX512_CORE_AMX") and T.isa_allows_bf16("avx512_core_bf16")
    # and where the probe fails, auto is float32 whatever the flags say
    monkeypatch.setattr(T, "bf16_probe", lambda: "no bfloat16 kernel")
    monkeypatch.setattr(T, "cpu_has_bf16", lambda cpuinfo=None: True)
    assert T.mixed_precision(Settings().train.model_copy(update={"mixed_precision": "auto"})) is False
