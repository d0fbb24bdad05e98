"""DVC stage `train`: the shared encoder and both decoders, one compiled step per iteration.

Resumable: checkpoints (weights, optimizer, step) go to models/checkpoints (declared
`persist: true` in dvc.yaml so `dvc repro` keeps it). Re-running after an interruption continues
from the latest checkpoint into the same MLflow run; batches are a pure function of
(seed, step), so the resumed run sees exactly the data an uninterrupted one would have.
A checkpoint folder written under other settings or other data is set aside and training starts
afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from autoswap import __version__
from autoswap.config import Settings, flatten
from autoswap.errors import UserError
from autoswap.files import atomic_write_json

# settings that change when and what is logged or saved but not the numbers a run computes
# settings that change when and what is logged or saved but not the numbers a run computes; steps
# is kept in state.json instead: a run that only gets longer goes on (see optim.total_dependent)
_NOT_IN_FINGERPRINT = {
    "log_every", "save_every", "keep_last", "backup_every", "preview_every", "models_dir", "steps", "on_more_steps",
}


def fingerprint(settings: Settings, data_files: list[Path]) -> str:
    train = {k: v for k, v in settings.train.model_dump(mode="json").items() if k not in _NOT_IN_FINGERPRINT}
    blob = {
        "seed": settings.seed,
        "face_size": settings.data.face_size,
        "model": settings.model.model_dump(mode="json"),
        "train": train,
        "data": [(p.name, p.stat().st_size) for p in data_files],
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def mae_loss(y_true, y_pred):
    """The seed's loss. Written out rather than keras.losses.MeanAbsoluteError, which divides by
    the number of replicas by itself inside a tf.distribute replica context (Keras 3): the
    scaling is done once, visibly, in the step."""
    import tensorflow as tf

    return tf.reduce_mean(tf.abs(tf.cast(y_true, tf.float32) - tf.cast(y_pred, tf.float32)))


def make_strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        # all local GPUs; on a machine without one, all logical CPUs (how the tests run it)
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        import os

        if not os.environ.get("TF_CONFIG"):
            raise UserError("train.strategy multi_worker needs TF_CONFIG (cluster and task) in the environment")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """Only the chief writes checkpoints that count, the final weights and MLflow records."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


class Progress:
    """tqdm bar on a terminal; plain periodic lines otherwise (DVC logs, CI)."""

    def __init__(self, start: int, total: int):
        self.tty = sys.stderr.isatty()
        self.total, self.t0, self.start = total, time.time(), start
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, n: int, info: dict):
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix_str(
                f"A {info['loss_a']:.4f} B {info['loss_b']:.4f} {info['images_per_s']:.1f} img/s", refresh=False
            )
        else:
            done = step - self.start
            rate = done / max(1e-9, time.time() - self.t0)
            eta = (self.total - step) / max(1e-9, rate)
            print(
                f"step {step}/{self.total} loss_a {info['loss_a']:.4f} loss_b {info['loss_b']:.4f} "
                f"{info['images_per_s']:.1f} img/s ETA {eta / 60:.1f} min",
                flush=True,
            )

    def rewind(self, step: int):
        """Back to `step` after a rollback."""
        self.start, self.t0 = step, time.time()
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def loss_jump(history: list[dict], info: dict, factor: float = 4.0) -> str | None:
    """Why the run has diverged, when a person's logged loss has jumped to `factor` times its
    lowest so far (too high a learning rate, typically, without reaching NaN: the sigmoid output
    saturates and its gradient vanishes, so the run never comes back). None otherwise."""
    for key in ("loss_a", "loss_b"):
        best = min((r[key] for r in history), default=None)
        if best is not None and best > 0 and info[key] > factor * best:
            return f"{key} jumped to {info[key]:.4f}, {info[key] / best:.1f}x its lowest ({best:.4f})"
    return None


def conv_as_matmul(t) -> bool:
    """train.conv_as_matmul resolved: "auto" is on when TensorFlow sees no GPU (model.Conv2D)."""
    if t.conv_as_matmul == "auto":
        import tensorflow as tf

        return not tf.config.list_physical_devices("GPU")
    return t.conv_as_matmul


def make_forward_backward(nets, optimizer, loss_settings, replicas: int = 1):
    """The train step, uncompiled: warped and target batches of both people in, one Adam update.

    Losses are divided by `replicas` so that summing the replicas' gradients gives the gradient
    of the mean over the global batch. Returns the two totals, or, when train.loss has several
    terms, (total, *terms) per person.
    """
    import tensorflow as tf

    from autoswap.losses import component_names, make_loss, region_weight

    encoder, decoder_a, decoder_b = nets
    train_vars = encoder.trainable_variables + decoder_a.trainable_variables + decoder_b.trainable_variables
    loss_fn = make_loss(loss_settings, mae_loss)  # the default (kind mae) is exactly mae_loss
    parts = component_names(loss_settings)  # [] unless a mix

    def maps(t):
        """A target (b, 64, 64, 3) alone, or (b, 64, 64, 6) with the loss maps behind it (train
        loads them only when the loss needs them) -> (RGB target, the loss's keyword arguments)."""
        if t.shape[-1] == 3:
            return t, {}
        weight = region_weight(loss_settings, eyes=t[..., 4:5], mouth=t[..., 5:6])  # None at multipliers 1
        return t[..., :3], {"mask": t[..., 3:4], "weight": weight}

    def forward_backward(wa, ta, wb, tb):  # warped (b, 64, 64, 3), targets (b, 64, 64, 3 or 6)
        b = wa.shape[0]
        (ta, kw_a), (tb, kw_b) = maps(ta), maps(tb)
        with tf.GradientTape() as tape:
            z = encoder(tf.concat([wa, wb], 0), training=True)  # (2b, 8, 8, 512): one pass, both people
            ya = decoder_a(z[:b], training=True)  # (b, 64, 64, 3)
            yb = decoder_b(z[b:], training=True)
            terms_a, terms_b = loss_fn(ta, ya, **kw_a), loss_fn(tb, yb, **kw_b)  # float32 dicts: "total", each term
            loss_a, loss_b = terms_a["total"] / replicas, terms_b["total"] / replicas
            loss = loss_a + loss_b  # inside the tape, or it has no path to the weights
        grads = tape.gradient(loss, train_vars)
        optimizer.apply_gradients(zip(grads, train_vars, strict=True))
        if not parts:
            return loss_a, loss_b
        # each term scaled like the total, so the replicas' sum is the global batch's mean
        return (tf.stack([loss_a, *(terms_a[k] / replicas for k in parts)]),
                tf.stack([loss_b, *(terms_b[k] / replicas for k in parts)]))

    return forward_backward


def make_dataset(spec, faces_a, faces_b, start: int, stop: int):
    """The host-side input pipeline: (step, (warped A, target A, warped B, target B)) for each
    step in [start, stop). Batches are a pure function of (seed, step), so a resumed run and a
    parallel map see the same data as a sequential, uninterrupted one."""
    import tensorflow as tf

    from autoswap.pipeline import make_batch

    fa = tf.constant(faces_a)  # (Na, S, S, 3 or 6) uint8, decoded once
    fb = tf.constant(faces_b)

    @tf.autograph.experimental.do_not_convert  # plain TF code; autograph only warns about it
    def batches(s):
        return s, (*make_batch(spec, fa, s, 0), *make_batch(spec, fb, s, 1))

    return (
        tf.data.Dataset.range(start, stop)
        .map(batches, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(2)
    )


@contextmanager
def training_lock(models_dir: Path):
    """One `autoswap train` at a time per models folder: two would share models/checkpoints and
    the MLflow run and overwrite each other's checkpoints. flock, so the lock goes with its holder:
    a killed process leaves a stale file that the next run simply takes over."""
    import fcntl

    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / ".train.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise UserError(
                f"{models_dir}: another `autoswap train` (PID {holder}) is training here; wait for it to "
                "finish or stop it, then run again"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def _chief_process(settings: Settings) -> bool:
    """From TF_CONFIG, before TensorFlow starts: is this the process that writes to models/?"""
    if settings.train.strategy != "multi_worker":
        return True
    cfg = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task, has_chief = cfg.get("task", {}), "chief" in cfg.get("cluster", {})
    if task.get("type") == "chief":
        return True
    return not has_chief and task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def train(
    settings: Settings, metrics_dir: Path = Path("metrics"), plots_dir: Path = Path("plots"), finish: bool = False
) -> dict:
    """The train stage: see the module docstring. Holds the models folder's lock throughout.
    finish: train no more; write models/final, metrics and plots from the last checkpoint and end
    its MLflow run as FINISHED (after a Ctrl+C, say)."""
    with training_lock(settings.train.models_dir) if _chief_process(settings) else nullcontext():
        return _train(settings, metrics_dir, plots_dir, finish)


def _train(settings: Settings, metrics_dir: Path, plots_dir: Path, finish: bool) -> dict:
    import keras
    import mlflow
    import tensorflow as tf

    from autoswap import model as M
    from autoswap import tracking
    from autoswap.losses import needs_maps
    from autoswap.optim import LRSchedule, make_optimizer, total_dependent
    from autoswap.pipeline import BatchSpec, load_faces, load_maps, make_batch, stretched, warp_stddev
    from autoswap.report import LOSS_FIELDS, preview_grid, read_history, write_history

    t = settings.train
    faces_root = settings.data.faces_dir
    sets = {}
    for side in ("a", "b"):
        faces, files, _ = load_faces(faces_root / side / "train", settings.data.face_size)
        if len(faces) < 2:
            raise UserError(
                f"{faces_root / side / 'train'}: {len(faces)} usable face image(s) for person {side.upper()}, "
                "need at least 2; run `dvc repro prepare` or add images"
            )
        if needs_maps(t.loss):
            # mask, eyes, mouth as channels 3-5: make_batch carries them through the augmentation
            faces = np.concatenate([faces, load_maps(faces_root / side / "train", files, settings.data.face_size)], -1)
        sets[side] = (faces, files)
    val = {s: load_faces(faces_root / s / "val", settings.data.face_size)[0][: settings.preview.faces] for s in "ab"}

    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(settings.seed)  # weight initialisation

    spec = BatchSpec.from_settings(settings)
    strategy = make_strategy(t.strategy)
    replicas = strategy.num_replicas_in_sync
    if t.batch_size % replicas:
        raise UserError(f"params.yaml: train.batch_size {t.batch_size} must divide among {replicas} replicas")
    chief = is_chief(strategy)
    with strategy.scope():
        # bfloat16 compute, float32 weights; model.py keeps the output conv in float32. The policy
        # is Keras-global, so it is set for the build only and does not leak into later models
        before = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if t.mixed_precision else before)
        try:
            encoder, decoder_a, decoder_b = nets = M.build(settings.model, conv_as_matmul(t))
        finally:
            keras.mixed_precision.set_global_policy(before)
        # rollbacks after a divergence lower the rate: kept in the checkpoint, so a resumed run goes on as it was
        lr_scale = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_scale")
        rollbacks = tf.Variable(0, dtype=tf.int64, trainable=False, name="rollbacks")
        schedule = LRSchedule(t.lr_schedule, t.learning_rate, t.steps, scale=lr_scale)
        optimizer = make_optimizer(t, schedule)
        train_vars = encoder.trainable_variables + decoder_a.trainable_variables + decoder_b.trainable_variables
        optimizer.build(train_vars)
        step_var = tf.Variable(0, dtype=tf.int64, name="step")

    # ---- checkpoints and resume
    models_dir = t.models_dir
    if not chief:
        # other workers take part in every collective (saves included) but write to scratch,
        # so the project sees one set of checkpoints, weights, metrics and one MLflow run
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="autoswap-worker-"))
        models_dir, metrics_dir, plots_dir = scratch / "models", scratch / "metrics", scratch / "plots"
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
    ckpt_dir = models_dir / "checkpoints"
    # the landmark manifests too when the maps come from them: new landmarks, new maps
    manifests = [faces_root / side / "manifest.jsonl" for side in "ab"] if needs_maps(t.loss) else []
    fp = fingerprint(settings, sets["a"][1] + sets["b"][1] + manifests)
    state_file = ckpt_dir / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else None
    def set_aside(why: str) -> None:
        stale = base = models_dir / f"checkpoints.stale-{state.get('fingerprint', 'unknown')}"
        n = 1
        while stale.exists() or stale.is_symlink():  # one set aside earlier: keep it too, never delete
            n += 1
            stale = base.with_name(f"{base.name}-{n}")
        ckpt_dir.rename(stale)
        print(f"autoswap: {why} since {ckpt_dir} was written; set it aside as {stale}")

    # a run goes on from its checkpoints when only train.steps changed, unless a schedule's shape
    # depends on the total (then: afresh, or stretched from the last step with on_more_steps)
    depends = total_dependent(t)
    old_steps = state.get("steps", t.steps) if state else t.steps
    if state and state.get("fingerprint") != fp:
        set_aside("settings or data changed")
        state = None
    elif state and old_steps != t.steps and depends and t.on_more_steps != "stretch_schedule" and not finish:
        print(
            f"autoswap: train.steps changed from {old_steps} to {t.steps}, and {' and '.join(depends)} "
            "depends on it: starting afresh. To go on from the last checkpoint with the schedule stretched "
            "to the new end instead, set train.on_more_steps: stretch_schedule"
        )
        set_aside("train.steps changed")
        state = None
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = tf.train.Checkpoint(
        encoder=encoder, decoder_a=decoder_a, decoder_b=decoder_b, optimizer=optimizer, step=step_var,
        lr_scale=lr_scale, rollbacks=rollbacks,
    )
    manager = tf.train.CheckpointManager(ckpt, ckpt_dir, max_to_keep=t.keep_last)
    backups = tf.train.CheckpointManager(ckpt, ckpt_dir / "backups", max_to_keep=None, checkpoint_name="backup")
    history_file = ckpt_dir / "history.csv"
    history: list[dict] = []

    def restore_latest() -> str | None:
        # newest first; a checkpoint that will not load (cut off, corrupted on disk) falls back
        # to the one before it, with a warning, rather than losing the whole run
        for path in reversed(manager.checkpoints):
            try:
                ckpt.restore(path).assert_existing_objects_matched()
                return path
            except Exception as e:  # noqa: BLE001 - TF raises OpError, IndexError, ValueError... for bad files
                print(f"autoswap: warning: checkpoint {path} is unreadable ({type(e).__name__}); trying the one before")
                step_var.assign(0)
        return None

    if state and manager.checkpoints:
        path = restore_latest()
        if int(step_var.numpy()):
            history = [r for r in read_history(history_file) if r["step"] <= int(step_var.numpy())]
            print(f"autoswap: resuming from {path} at step {int(step_var.numpy())}")
    start = int(step_var.numpy())
    if finish and not start:
        raise UserError(f"{ckpt_dir}: no checkpoint of these settings to finish from; run `autoswap train`")
    end = start if finish else t.steps  # --finish: the final model of the last checkpoint, no more steps
    if start > end:
        raise UserError(
            f"params.yaml: key 'train.steps': {t.steps} is below step {start}, which {ckpt_dir} has reached; "
            f"raise it, or end the run there with `autoswap train --finish`"
        )
    # the schedules' total and stretch: those of the run being continued, or this one's
    schedule_steps = state.get("schedule_steps", old_steps) if state else t.steps
    stretch = state.get("stretch") if state else None
    lengthened = bool(state) and old_steps != t.steps and not finish
    if lengthened and depends:  # on_more_steps stretch_schedule, checked above
        e_k = float(stretched(start, stretch)) if stretch else float(start)
        stretch = [start, e_k, t.steps - 1, schedule_steps - 1]
        print(f"autoswap: {' and '.join(depends)} stretched from step {start} to the new end, {t.steps}")
    elif lengthened:
        print(f"autoswap: train.steps changed from {old_steps} to {t.steps}; going on from step {start}")
    if not depends:
        schedule_steps, stretch = t.steps, None  # nothing reads them
    schedule.total, schedule.stretch = schedule_steps, stretch
    spec = dataclasses.replace(spec, steps=schedule_steps, stretch=tuple(stretch) if stretch else None)

    # ---- MLflow: one run per training, reopened on resume
    exp_id = tracking.setup(settings.tracking.experiment)
    run_id = state.get("run_id") if state else None
    if run_id:
        try:
            mlflow.get_run(run_id)
        except Exception:
            run_id = None
    # named here: MLflow's random names come from Python's `random`, which the seeding above
    # makes repeat, so every run with the same seed would get the same name
    name = os.environ.get("DVC_EXP_NAME") or time.strftime("train-%Y%m%d-%H%M%S")
    run = mlflow.start_run(
        run_id=run_id, experiment_id=exp_id, run_name=None if run_id else name,
        tags=tracking.run_tags() if not run_id else None,
    )
    run_id = run.info.run_id
    state = {"fingerprint": fp, "run_id": run_id, "steps": t.steps, "schedule_steps": schedule_steps, "stretch": stretch}
    atomic_write_json(state_file, state)
    if lengthened:  # on the run, for `autoswap compare` and the UI: where it was lengthened, and how
        mlflow.set_tag(f"autoswap.lengthened_at_step.{start}", f"train.steps {old_steps} -> {t.steps}"
                       + (", schedule stretched (train.on_more_steps stretch_schedule)" if depends else ""))
        mlflow.log_param(f"train.steps.from_{start}", t.steps)
    if start == 0:
        params = flatten(settings)
        params["autoswap.version"] = __version__
        params["data.n_train_a"], params["data.n_train_b"] = len(sets["a"][0]), len(sets["b"][0])
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    # ---- the step
    on_device = t.data_on_device or replicas > 1

    forward_backward = make_forward_backward(nets, optimizer, t.loss, replicas)

    if not on_device:
        train_step = tf.function(forward_backward, jit_compile=t.jit_compile)

        def steps_from(first: int):
            return make_dataset(spec, sets["a"][0], sets["b"][0], first, end)
    else:
        # the decoded faces, copied once to every replica's device and kept there for the run
        # (constants, not variables: collectives cannot broadcast uint8 variables)
        fa = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(sets["a"][0]))
        fb = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(sets["b"][0]))

        def replica_step(s, faces_a, faces_b):
            ctx = tf.distribute.get_replica_context()
            part = ctx.replica_id_in_sync_group if ctx is not None else 0
            wa, ta = make_batch(spec, faces_a, s, 0, part, replicas)
            wb, tb = make_batch(spec, faces_b, s, 1, part, replicas)
            return forward_backward(wa, ta, wb, tb)

        def distributed_step(s):
            la, lb = strategy.run(replica_step, args=(s, fa, fb))
            return (strategy.reduce(tf.distribute.ReduceOp.SUM, la, axis=None),
                    strategy.reduce(tf.distribute.ReduceOp.SUM, lb, axis=None))

        # XLA compiles the whole step (augment, warp, forward, backward, Adam) on one device;
        # under a multi-replica strategy the collectives stay outside XLA
        train_step = tf.function(distributed_step, jit_compile=t.jit_compile and replicas == 1)

        def steps_from(first: int):
            return ((tf.constant(s, tf.int64), ()) for s in range(first, end))

    def save(step: int):
        # TF writes checkpoint shards under temporary names and only then rewrites the
        # `checkpoint` index (atomically), so a save cut off half-way never becomes the latest
        try:
            write_history(history_file, history)  # first: rows past the restored step are dropped on resume
            manager.save(checkpoint_number=step)
            if step % t.backup_every == 0:
                backups.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as e:
            why = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
            raise UserError(
                f"{ckpt_dir}: could not save the step-{step} checkpoint ({why.splitlines()[0]}); free space or "
                f"fix permissions and re-run: training resumes from the last good checkpoint"
            ) from None

    def log_preview(step: int):
        if len(val["a"]) and len(val["b"]):
            grid = preview_grid(nets, spec, val["a"], val["b"])
            mlflow.log_image(grid, artifact_file=f"previews/step_{step:06d}.png")

    # Grappler's remapper fails on the train step's graph (it fuses a Conv2D + BiasAdd + LeakyRelu
    # whose BiasAdd the LeakyReluGrad still reads), prints "E0000 ... remapper failed" into the
    # user's log, and keeps the graph unchanged. Off for training, nothing changes but that line:
    # the same losses bit for bit and the same step time (measured at the seed's size).
    # Restored after the loop.
    remapping = tf.config.optimizer.get_experimental_options().get("remapping", True)
    tf.config.optimizer.set_experimental_options({"remapping": False})
    # The state a rollback returns to when no checkpoint has been saved yet: the start (weights,
    # Adam's moments, step), copied once. Rollbacks to a saved checkpoint restore it from disk.
    tracked = [v for net in nets for v in net.weights] + list(optimizer.variables) + [step_var]
    initial = [v.numpy() for v in tracked] if start == 0 and t.on_divergence == "rollback" else None

    def diverge(step: int, why: str, finite: bool) -> int | None:
        """A divergence found at `step`: the step to go on from after a rollback, None to go on
        (warn). Raises UserError to stop, leaving the last good checkpoint as it is."""
        mlflow.set_tag("autoswap.diverged_at_step", step)
        n = int(rollbacks.numpy())
        if t.on_divergence == "warn" and finite:
            return None
        if t.on_divergence != "rollback" or n >= t.max_rollbacks:
            after = f" after {n} rollback(s)" if t.on_divergence == "rollback" else ""
            mlflow.set_tag("autoswap.stopped", f"diverged at step {step}{after}")
            raise UserError(
                f"{why} by step {step}; lower train.learning_rate ({t.learning_rate}) or set "
                f"train.clip_grad_norm; stopped{after} (train.on_divergence {t.on_divergence}), "
                f"last good checkpoint kept in {ckpt_dir}"
            )
        scale = float(lr_scale.numpy()) * t.rollback_lr_factor
        path = restore_latest()
        if path is None:  # nothing saved yet: back to the start
            for v, x in zip(tracked, initial, strict=True):
                v.assign(x)
        lr_scale.assign(scale)
        rollbacks.assign(n + 1)
        back = int(step_var.numpy())
        history[:] = [r for r in history if r["step"] <= back]
        lr = float(schedule(back))
        print(
            f"autoswap: warning: step {step}: {why}; rolled back to step {back} with the learning rate "
            f"x{t.rollback_lr_factor} (now {lr:.3g}), rollback {n + 1} of {t.max_rollbacks}",
            file=sys.stderr, flush=True,
        )
        mlflow.set_tag(f"autoswap.rollback.{n + 1}", f"step {step} -> {back}: {why}; lr now {lr:.3g}")
        mlflow.log_metric("rollbacks", n + 1, step=step)
        return back

    progress = Progress(start, end)
    pending: list = []
    t_window, n_window = time.time(), 0
    warned = False
    status = "FAILED"
    from autoswap.losses import component_names

    parts = component_names(t.loss)  # per person: total, then these terms
    cols = 1 + len(parts)
    try:
        first = start
        while first is not None:  # once, and again from the restored step after each rollback
            steps_iter, first = steps_from(first), None
            for s, batch in steps_iter:
                step_var.assign(s)
                pending.append(train_step(*batch) if batch else train_step(s))
                n_window += 1
                step = int(s) + 1  # steps done
                step_var.assign(step)
                last = step == end
                if step % t.log_every == 0 or step % t.save_every == 0 or last:
                    losses = np.array([[float(v) for x in p for v in np.ravel(np.asarray(x))] for p in pending])  # (n, 2 cols)
                    pending.clear()
                    dt = time.time() - t_window
                    info = {
                        "loss_a": float(losses[:, 0].mean()),
                        "loss_b": float(losses[:, cols].mean()),
                        "learning_rate": float(schedule(step - 1)),
                        "warp_stddev": float(warp_stddev(spec, step - 1)),
                        "images_per_s": 2 * t.batch_size * n_window / max(dt, 1e-9),
                    }
                    for i, name in enumerate(parts):  # loss_a.dssim, ...: each term unweighted, as MLflow metrics
                        info[f"loss_a.{name}"] = float(losses[:, 1 + i].mean())
                        info[f"loss_b.{name}"] = float(losses[:, cols + 1 + i].mean())
                    t_window, n_window = time.time(), 0
                    # checked before the save below, so a checkpoint never holds a diverged state
                    finite = bool(np.isfinite(losses).all())
                    if not finite:
                        why = f"loss became {losses[~np.isfinite(losses)][0]}"
                    else:
                        why = loss_jump(history, info, t.divergence_factor)
                    if why:
                        first = diverge(step, why, finite)
                        if first is not None:
                            progress.rewind(first)
                            break
                        if not warned:  # warn: said once, and kept on the MLflow run for `autoswap compare`
                            warned = True
                            print(f"autoswap: warning: step {step}: {why}: the run has probably diverged; lower "
                                  f"train.learning_rate. Earlier checkpoints are in {ckpt_dir}", file=sys.stderr)
                    history.append({"step": step, **{k: info[k] for k in LOSS_FIELDS[1:]}})
                    mlflow.log_metrics(info, step=step)
                    progress.update(step, len(losses), info)
                if step % t.save_every == 0 or last:
                    save(step)
                if step % t.preview_every == 0 or last:
                    log_preview(step)
        if history and (why := loss_jump(history[:-1], history[-1], t.divergence_factor)):
            # warn mode, still diverged at the end: those weights are no model
            mlflow.set_tag("autoswap.stopped", f"ended diverged at step {history[-1]['step']}")
            raise UserError(
                f"training ended diverged ({why}); models/final not written. Lower train.learning_rate "
                f"or use train.on_divergence rollback; earlier checkpoints are in {ckpt_dir}"
            )
        if finish:
            mlflow.set_tag("autoswap.finished_early_at_step", end)
            print(f"autoswap: finished at step {end} of {t.steps} (train --finish)")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        progress.close()
        tf.config.optimizer.set_experimental_options({"remapping": remapping})
        if status != "FINISHED":
            mlflow.end_run(status=status)

    # ---- final weights, metrics, plots
    final_dir = models_dir / "final"
    meta = {
        "autoswap_version": __version__,
        "model": settings.model.model_dump(mode="json"),
        "face_size": settings.data.face_size,
        "crop": t.crop,
        "steps": end,
        "seed": settings.seed,
    }
    # the run id stays out of models/final (a DVC output: same training, same bytes, same hash);
    # models/run.json, beside it and not tracked, ties these files to the run (tracking.model_run)
    M.save_final(final_dir, nets, meta)
    tracking.write_model_run(final_dir, run_id, tracking.tracking_uri())
    mlflow.log_artifacts(str(final_dir), artifact_path="weights")
    write_history(plots_dir / "loss.csv", history)
    last = history[-1] if history else {"loss_a": float("nan"), "loss_b": float("nan")}
    result = {"steps": end, "loss_a": round(last["loss_a"], 6), "loss_b": round(last["loss_b"], 6)}
    metrics_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(metrics_dir / "train.json", result)
    mlflow.log_artifact(str(plots_dir / "loss.csv"))
    mlflow.end_run("FINISHED")
    return result
