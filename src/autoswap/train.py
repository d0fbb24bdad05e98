"""DVC stage `train`: the shared encoder and both decoders, one compiled step per iteration.

`train()` reads top to bottom: load the faces, build the trainer (networks, Adam, schedule),
open the checkpoints (resume, set aside, or lengthen), open the MLflow run, make the step, run
the loop (logging, saving, previews, the divergence guard), write the final model.

Resumable: checkpoints (weights, optimizer, step) go to models/checkpoints (no DVC output, so
`dvc repro` keeps it). Re-running after an interruption continues
from the latest checkpoint into the same MLflow run; batches are a pure function of
(seed, step), so the resumed run sees exactly the data an uninterrupted one would have.
A checkpoint folder written under other settings or other data is set aside and training starts
afresh; a run whose train.steps only grew goes on (see Checkpoints.open).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from autoswap import __version__
from autoswap.config import Settings, flatten
from autoswap.errors import UserError
from autoswap.files import atomic_write_json

# settings that change when and what is logged or saved but not the numbers a run computes; steps
# is kept in state.json instead: a run that only gets longer goes on (see optim.total_dependent)
_NOT_IN_FINGERPRINT = {
    "log_every", "save_every", "keep_last", "backup_every", "preview_every", "models_dir", "steps", "on_more_steps",
}


def fingerprint(settings: Settings, data_files: list[Path], init: str = "") -> str:
    """What a run's numbers depend on; `init`: the digest of the model it starts from."""
    train = {k: v for k, v in settings.train.model_dump(mode="json").items() if k not in _NOT_IN_FINGERPRINT}
    blob = {
        "init": init,
        "seed": settings.seed,
        "face_size": settings.data.face_size,
        "model": settings.model.model_dump(mode="json"),
        "train": train,
        "data": [(p.name, p.stat().st_size) for p in data_files],
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


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


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), from /proc/cpuinfo's
    flags; elsewhere oneDNN emulates it, slower than float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) at which bfloat16 still runs in hardware; below them
# oneDNN emulates it (slower than float32) or has no bfloat16 kernel at all (AVX2: a convolution
# fails with "could not create a primitive descriptor")
_BF16_ISAS = {"", "ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX",
              "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2"}


def isa_allows_bf16(cap: str | None = None) -> bool:
    """Whether oneDNN's kernels, capped by ONEDNN_MAX_CPU_ISA (unset: not capped), include the
    CPU's bfloat16 instructions."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "") if cap is None else cap
    return cap.strip().upper() in _BF16_ISAS


@functools.lru_cache(maxsize=1)
def bf16_probe() -> str | None:
    """None when a bfloat16 convolution, its weight gradient and a matmul run on this machine's
    kernels; else the first line of the error. Milliseconds, once a process: CPU flags alone do
    not say what the kernels can do (a capped oneDNN, a build without bfloat16 kernels)."""
    import tensorflow as tf

    try:
        x = tf.ones([1, 8, 8, 4], tf.bfloat16)  # (B, H, W, C)
        k = tf.Variable(tf.ones([3, 3, 4, 4], tf.bfloat16))
        with tf.GradientTape() as tape:
            y = tf.nn.conv2d(x, k, 1, "SAME")  # (1, 8, 8, 4)
            y = tf.matmul(tf.reshape(y, [64, 4]), tf.ones([4, 4], tf.bfloat16))  # (64, 4)
            loss = tf.reduce_sum(y)
        g = tape.gradient(loss, k)
        if not np.isfinite(float(tf.reduce_sum(tf.cast(g, tf.float32)))):
            return "a bfloat16 convolution gave a non-finite result"
    except (tf.errors.OpError, RuntimeError, ValueError) as e:
        # TensorFlow prefixes the kernel's message with its graph node: keep the message
        msg = re.sub(r"\{\{.*?\}\}|Operation received an exception:", "", str(e)).strip()
        return (msg.splitlines() or [type(e).__name__])[0][:160]
    return None


def mixed_precision(t) -> bool:
    """train.mixed_precision resolved: "auto" is on where bfloat16 runs in hardware: every GPU
    of compute capability 8.0 or later, or, with no GPU, a CPU with AVX512-BF16 or AMX whose
    kernels are not capped below them, and in both cases only where a bfloat16 convolution
    really runs (`bf16_probe`); elsewhere float32. `true` where bfloat16 cannot run is a one-line
    error rather than a crash deep in the first step."""
    if t.mixed_precision is False:
        return False
    if t.mixed_precision is True:
        err = bf16_probe()
        if err:
            raise UserError(f"train.mixed_precision: true, but bfloat16 does not run on this machine ({err}); "
                            "set it to auto or false")
        return True
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        caps = [tf.config.experimental.get_device_details(g).get("compute_capability") or (0, 0) for g in gpus]
        hardware = all(tuple(c) >= (8, 0) for c in caps)
    else:
        hardware = cpu_has_bf16() and isa_allows_bf16()
    return hardware and bf16_probe() is None


def intra_op_threads(t) -> int:
    """train.intra_op_threads resolved: "auto" is one fewer than the usable cores on a CPU (the
    input pipeline gets the last one), TensorFlow's default (0) with a GPU."""
    if t.intra_op_threads != "auto":
        return t.intra_op_threads
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return 0
    return max(1, len(os.sched_getaffinity(0)) - 1)


def set_threads(t) -> None:
    """Apply train.intra_op_threads. TensorFlow takes it only before its first op; in a process
    that already ran one (a test, a notebook) the threads stay as they are."""
    import tensorflow as tf

    n = intra_op_threads(t)
    if tf.config.threading.get_intra_op_parallelism_threads() != n:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
        except RuntimeError:  # "cannot be modified after initialization"
            pass


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
    loss_fn = make_loss(loss_settings)  # the default (kind mae) is exactly losses.mae
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


# ----------------------------------------------------------------------------- building blocks
def load_training_faces(settings: Settings) -> tuple[dict, dict]:
    """-> ({"a": (faces, files), "b": ...}, {"a": val faces, "b": ...}). The faces carry the loss
    maps (mask, eyes, mouth) as channels 3-5 when the loss needs them: make_batch carries them
    through the augmentation."""
    from autoswap.losses import needs_maps
    from autoswap.pipeline import load_faces, load_maps

    root, size = settings.data.faces_dir, settings.data.face_size
    sets = {}
    for side in ("a", "b"):
        faces, files, _ = load_faces(root / side / "train", size)  # (N, S, S, 3) uint8
        if len(faces) < 2:
            raise UserError(
                f"{root / side / 'train'}: {len(faces)} usable face image(s) for person {side.upper()}, "
                "need at least 2; run `dvc repro prepare` or add images"
            )
        if needs_maps(settings.train.loss):
            faces = np.concatenate([faces, load_maps(root / side / "train", files, size)], -1)  # (N, S, S, 6)
        sets[side] = (faces, files)
    val = {s: load_faces(root / s / "val", size)[0][: settings.preview.faces] for s in "ab"}
    return sets, val


@dataclasses.dataclass
class Trainer:
    """What a training step changes and a checkpoint holds."""

    nets: tuple  # (encoder, decoder_a, decoder_b)
    optimizer: object
    schedule: object  # optim.LRSchedule
    lr_scale: object  # tf.Variable: rollbacks after a divergence lower the rate
    rollbacks: object  # tf.Variable: how many so far
    step: object  # tf.Variable: steps done

    def checkpoint(self):
        import tensorflow as tf

        encoder, decoder_a, decoder_b = self.nets
        return tf.train.Checkpoint(
            encoder=encoder, decoder_a=decoder_a, decoder_b=decoder_b, optimizer=self.optimizer, step=self.step,
            lr_scale=self.lr_scale, rollbacks=self.rollbacks,
        )


def build_trainer(settings: Settings, strategy=None) -> Trainer:
    """The networks, Adam and its schedule, built (and seeded) as `autoswap train` builds them,
    under `strategy`'s scope. bench/ builds its trainers here too."""
    import keras
    import tensorflow as tf

    from autoswap import model as M
    from autoswap.optim import LRSchedule, make_optimizer

    t = settings.train
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(settings.seed)  # weight initialisation
    with (strategy or tf.distribute.get_strategy()).scope():
        # bfloat16 compute, float32 weights; model.py keeps the output conv in float32. The policy
        # is Keras-global, so it is set for the build only and does not leak into later models
        before = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if mixed_precision(t) else before)
        try:
            nets = M.build(settings.model, conv_as_matmul(t))
        finally:
            keras.mixed_precision.set_global_policy(before)
        # kept in the checkpoint, so a resumed run goes on at the rate its rollbacks left
        lr_scale = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_scale")
        rollbacks = tf.Variable(0, dtype=tf.int64, trainable=False, name="rollbacks")
        schedule = LRSchedule(t.lr_schedule, t.learning_rate, t.steps, scale=lr_scale)
        optimizer = make_optimizer(t, schedule)
        optimizer.build([v for net in nets for v in net.trainable_variables])
        if t.init_from and t.freeze_encoder_steps:
            optimizer.hold(nets[0].trainable_variables, t.freeze_encoder_steps)
        step = tf.Variable(0, dtype=tf.int64, name="step")
    return Trainer(nets, optimizer, schedule, lr_scale, rollbacks, step)


@dataclasses.dataclass
class Resume:
    """Where a training starts, from Checkpoints.open."""

    start: int  # steps already done
    end: int  # the step to stop at: train.steps, or `start` with --finish
    history: list  # the loss rows up to `start`
    run_id: str | None  # the MLflow run to reopen
    schedule_steps: int  # the total the schedules were made for
    stretch: list | None  # pipeline.stretched's map, once a run was lengthened
    lengthened_from: int | None  # train.steps before this run raised it


class Checkpoints:
    """models/checkpoints: the TF checkpoints (the last train.keep_last, and a backup every
    train.backup_every steps), history.csv (the loss rows up to the newest checkpoint) and
    state.json (fingerprint, MLflow run, steps and the schedules' total and stretch)."""

    def __init__(self, models_dir: Path, trainer: Trainer, t):
        import tensorflow as tf

        self.models_dir, self.dir, self.trainer, self.t = models_dir, models_dir / "checkpoints", trainer, t
        self.state_file, self.history_file = self.dir / "state.json", self.dir / "history.csv"
        self.ckpt = trainer.checkpoint()
        self.manager = self.backups = None
        self._tf = tf

    def _managers(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manager = self._manager(self.dir, "ckpt", self.t.keep_last)
        self.backups = self._manager(self.dir / "backups", "backup", None)

    def _manager(self, folder: Path, name: str, keep: int | None):
        tf = self._tf
        try:
            return tf.train.CheckpointManager(self.ckpt, folder, max_to_keep=keep, checkpoint_name=name)
        except ValueError:  # TF's "Invalid checkpoint state": an index that parses but names nothing (cut to 0 bytes)
            if not self._reindex(folder, name):
                (folder / "checkpoint").replace(folder / "checkpoint.unreadable")
            return tf.train.CheckpointManager(self.ckpt, folder, max_to_keep=keep, checkpoint_name=name)

    def set_aside(self, state: dict, why: str, since: bool = True) -> None:
        stale = base = self.models_dir / f"checkpoints.stale-{state.get('fingerprint', 'unknown')}"
        n = 1
        while stale.exists() or stale.is_symlink():  # one set aside earlier: keep it too, never delete
            n += 1
            stale = base.with_name(f"{base.name}-{n}")
        self.dir.rename(stale)
        if since:
            print(f"autoswap: {why} since {self.dir} was written; set it aside as {stale}")
        else:
            print(f"autoswap: {why}; set {self.dir} aside as {stale}")

    def _read_state(self) -> dict | None:
        """state.json, or None when there is none. One that does not parse (cut short, or
        damaged on disk) cannot say which settings its checkpoints belong to: the folder is set
        aside with one line, and training starts afresh."""
        if not self.state_file.is_file():
            return None
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
            if isinstance(state, dict) and isinstance(state.get("fingerprint"), str):
                return state
            why = "not a training state"
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
        self.set_aside({}, f"{self.state_file} is unreadable ({why}); starting afresh", since=False)
        return None

    def _reindex(self, folder: Path, name: str = "ckpt") -> bool:
        """Rewrite a lost or unreadable `checkpoint` index (TF then lists no checkpoint at all)
        from the NAME-N.index files in `folder`, oldest first; True when there were any."""
        import re

        from autoswap.files import atomic_write_text

        found = sorted((int(m.group(1)), f.stat().st_mtime) for f in folder.glob(f"{name}-*.index")
                       if (m := re.fullmatch(rf"{name}-(\d+)\.index", f.name)))
        if not found:
            return False
        paths = [f"{name}-{n}" for n, _ in found]  # relative, as CheckpointManager writes them
        # CheckpointManager lists only the checkpoints newer than last_preserved_timestamp
        times = [f"all_model_checkpoint_timestamps: {t!r}\n" for _, t in found]
        atomic_write_text(folder / "checkpoint", f'model_checkpoint_path: "{paths[-1]}"\n'
                          + "".join(f'all_model_checkpoint_paths: "{p}"\n' for p in paths) + "".join(times)
                          + f"last_preserved_timestamp: {min(t for _, t in found) - 1.0!r}\n")
        print(f"autoswap: warning: {folder / 'checkpoint'} is missing or unreadable; "
              f"rebuilt it from the {len(paths)} checkpoint file(s) there")
        return True

    def restore_latest(self) -> str | None:
        """Newest first; a checkpoint that will not load (cut off, corrupted on disk) falls back
        to the one before it, with a warning, rather than losing the whole run."""
        for path in reversed(self.manager.checkpoints):
            try:
                self.ckpt.restore(path).assert_existing_objects_matched()
                return path
            except Exception as e:  # noqa: BLE001 - TF raises OpError, IndexError, ValueError... for bad files
                print(f"autoswap: warning: checkpoint {path} is unreadable ({type(e).__name__}); trying the one before")
                self.trainer.step.assign(0)
        return None

    def open(self, fp: str, finish: bool) -> Resume:
        """Resume the run these checkpoints hold, or set them aside and start afresh. A run goes
        on when only train.steps changed, unless a schedule's shape depends on the total: then
        afresh, or stretched from the last step with train.on_more_steps stretch_schedule."""
        from autoswap.optim import total_dependent
        from autoswap.pipeline import stretched
        from autoswap.report import read_history

        t, step_var = self.t, self.trainer.step
        state = self._read_state()
        depends = total_dependent(t)
        old_steps = state.get("steps", t.steps) if state else t.steps
        if state and state.get("fingerprint") != fp:
            self.set_aside(state, "settings or data changed")
            state = None
        elif state and old_steps != t.steps and depends and t.on_more_steps != "stretch_schedule" and not finish:
            print(
                f"autoswap: train.steps changed from {old_steps} to {t.steps}, and {' and '.join(depends)} "
                "depends on it: starting afresh. To go on from the last checkpoint with the schedule stretched "
                "to the new end instead, set train.on_more_steps: stretch_schedule"
            )
            self.set_aside(state, "train.steps changed")
            state = None
        self._managers()
        if state and not self.manager.checkpoints and self._reindex(self.dir):
            self._managers()
        history: list[dict] = []
        if state and self.manager.checkpoints:
            path = self.restore_latest()
            if path is None:  # not one of them loads: afresh, in a new run
                self.set_aside(state, f"no checkpoint in {self.dir} is readable; starting afresh", since=False)
                state = None
                self._managers()
            if int(step_var.numpy()):
                history = [r for r in read_history(self.history_file) if r["step"] <= int(step_var.numpy())]
                print(f"autoswap: resuming from {path} at step {int(step_var.numpy())}")
        start = int(step_var.numpy())
        if finish and not start:
            raise UserError(f"{self.dir}: no checkpoint of these settings to finish from; run `autoswap train`")
        end = start if finish else t.steps  # --finish: the final model of the last checkpoint, no more steps
        if start > end:
            raise UserError(
                f"params.yaml: key 'train.steps': {t.steps} is below step {start}, which {self.dir} has reached; "
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
        return Resume(start, end, history, state.get("run_id") if state else None, schedule_steps, stretch,
                      old_steps if lengthened else None)

    def write_state(self, fp: str, run_id: str, r: Resume) -> None:
        atomic_write_json(self.state_file, {"fingerprint": fp, "run_id": run_id, "steps": self.t.steps,
                                            "schedule_steps": r.schedule_steps, "stretch": r.stretch})

    def save(self, step: int, history: list[dict]) -> None:
        # TF writes checkpoint shards under temporary names and only then rewrites the
        # `checkpoint` index (atomically), so a save cut off half-way never becomes the latest
        from autoswap.report import write_history

        tf = self._tf
        try:
            write_history(self.history_file, history)  # first: rows past the restored step are dropped on resume
            self.manager.save(checkpoint_number=step)
            if step % self.t.backup_every == 0:
                self.backups.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as e:
            why = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
            raise UserError(
                f"{self.dir}: could not save the step-{step} checkpoint ({why.splitlines()[0]}); free space or "
                f"fix permissions and re-run: training resumes from the last good checkpoint"
            ) from None


def resolve_init(settings: Settings) -> tuple[Path, str | None] | None:
    """train.init_from -> (the model folder, the MLflow run that trained it), or None. A run id
    is looked up in this project's store and its logged weights downloaded."""
    src = settings.train.init_from
    if not src:
        return None
    from autoswap import tracking

    if Path(src).is_dir():
        run = tracking.model_run(Path(src))
        return Path(src), run[0] if run else None
    if len(src) == 32 and all(c in "0123456789abcdef" for c in src):
        import tempfile

        import mlflow

        tracking.setup(settings.tracking.experiment)
        try:
            folder = mlflow.artifacts.download_artifacts(run_id=src, artifact_path="weights",
                                                         dst_path=tempfile.mkdtemp(prefix="autoswap-init-"))
        except Exception as e:  # noqa: BLE001 - MLflow raises its own, and OSError, for a missing run
            raise UserError(f"params.yaml: key 'train.init_from': no weights for MLflow run {src} in "
                            f"{tracking.tracking_uri()} ({type(e).__name__})") from None
        return Path(folder), src
    raise UserError(f"params.yaml: key 'train.init_from': {src} is neither a model folder (such as models/final) "
                    "nor an MLflow run id of this project's store")


def apply_init(settings: Settings, trainer: Trainer, folder: Path) -> None:
    """Copy the encoder, and the decoders train.init_decoder_a / _b name, from the model in
    `folder` into the new networks. Refused in one line when its geometry or widths differ."""
    from autoswap.model import load_final

    t = settings.train
    *src, card = load_final(folder)
    ours = (settings.model, settings.data.face_size, t.crop)
    if (card.model, card.face_size, card.crop) != ours:
        raise UserError(
            f"params.yaml: key 'train.init_from': {folder} was trained with another network or geometry "
            f"(model {card.model.model_dump()}, face_size {card.face_size}, crop {card.crop}); init_from needs "
            "the same model section, data.face_size and train.crop"
        )
    enc, dec = src[0], {"a": src[1], "b": src[2]}
    trainer.nets[0].set_weights(enc.get_weights())
    for i, choice in ((1, t.init_decoder_a), (2, t.init_decoder_b)):
        if choice:
            trainer.nets[i].set_weights(dec[choice].get_weights())
    print(f"autoswap: starting from {t.init_from}: the encoder"
          + (f" (held for {t.freeze_encoder_steps} steps)" if t.freeze_encoder_steps else "")
          + "".join(f", decoder_{n} from its decoder_{c}" for n, c in (("a", t.init_decoder_a),
                                                                      ("b", t.init_decoder_b)) if c))


def face_set(settings: Settings, sets: dict) -> tuple[str, dict[str, int]]:
    """-> (a fingerprint of the face set, the face counts): a hash of the manifests (landmarks,
    sources) and of every training and validation file's name and size, for the run's provenance."""
    from autoswap.images import list_images

    root, h, counts = settings.data.faces_dir, hashlib.sha256(), {}
    for side in "ab":
        manifest = root / side / "manifest.jsonl"
        h.update(manifest.read_bytes() if manifest.is_file() else b"-")
        val = list_images(root / side / "val") if (root / side / "val").is_dir() else []
        for f in [*sets[side][1], *val]:
            h.update(f"{f.parent.name}/{f.name}:{f.stat().st_size};".encode())
        counts[f"n_train_{side}"], counts[f"n_val_{side}"] = len(sets[side][1]), len(val)
    return h.hexdigest()[:16], counts


def open_run(settings: Settings, run_id: str | None, r: Resume, sets: dict):
    """The MLflow run: reopened on resume, else a new one with the params; tagged with its
    provenance on every (re)opening, and when lengthened."""
    import mlflow

    from autoswap import tracking

    exp_id = tracking.setup(settings.tracking.experiment)
    if run_id:
        try:
            mlflow.get_run(run_id)
        except Exception:
            run_id = None
    # named here: MLflow's random names come from Python's `random`, which the seeding makes
    # repeat, so every run with the same seed would get the same name
    name = os.environ.get("DVC_EXP_NAME") or time.strftime("train-%Y%m%d-%H%M%S")
    run = mlflow.start_run(
        run_id=run_id, experiment_id=exp_id, run_name=None if run_id else name,
        tags=tracking.run_tags() if not run_id else None,
    )
    t = settings.train
    data_fp, counts = face_set(settings, sets)
    mlflow.set_tags(tracking.provenance(data_fp, counts, settings.seed))
    if r.lengthened_from is not None:  # for `autoswap compare` and the UI: where, and how
        mlflow.set_tag(f"autoswap.lengthened_at_step.{r.start}", f"train.steps {r.lengthened_from} -> {t.steps}"
                       + (", schedule stretched (train.on_more_steps stretch_schedule)" if r.stretch else ""))
        mlflow.log_param(f"train.steps.from_{r.start}", t.steps)
    if r.start == 0:
        params = flatten(settings)
        params["autoswap.version"] = __version__
        params["data.n_train_a"], params["data.n_train_b"] = counts["n_train_a"], counts["n_train_b"]
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
    return run


def make_step(settings: Settings, trainer: Trainer, strategy, spec, sets: dict, end: int):
    """-> (train_step, steps_from): the compiled step, and `steps_from(first)`, the (step, batch)
    pairs from `first` to `end`. Host path: a tf.data pipeline builds the batches. On device (and
    under a multi-replica strategy): the faces live on each device and the step builds its batch."""
    import tensorflow as tf

    from autoswap.pipeline import make_batch, make_dataset

    t, replicas = settings.train, strategy.num_replicas_in_sync
    forward_backward = make_forward_backward(trainer.nets, trainer.optimizer, t.loss, replicas)
    if not (t.data_on_device or replicas > 1):
        def steps_from(first: int):
            return make_dataset(spec, sets["a"][0], sets["b"][0], first, end)

        return tf.function(forward_backward, jit_compile=t.jit_compile), steps_from

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

    def steps_from(first: int):
        return ((tf.constant(s, tf.int64), ()) for s in range(first, end))

    # XLA compiles the whole step (augment, warp, forward, backward, Adam) on one device;
    # under a multi-replica strategy the collectives stay outside XLA
    return tf.function(distributed_step, jit_compile=t.jit_compile and replicas == 1), steps_from


class DivergenceGuard:
    """train.on_divergence: what a NaN/Inf or a jump of a logged loss leads to. Rollback restores
    the last good checkpoint (the start, copied once, when none is saved yet) at a lower rate."""

    def __init__(self, t, trainer: Trainer, ckpts: Checkpoints, start: int):
        self.t, self.trainer, self.ckpts = t, trainer, ckpts
        optimizer, nets = trainer.optimizer, trainer.nets
        self.tracked = [v for net in nets for v in net.weights] + list(optimizer.variables) + [trainer.step]
        self.initial = [v.numpy() for v in self.tracked] if start == 0 and t.on_divergence == "rollback" else None
        self.warned = False

    def check(self, history: list[dict], info: dict, losses: np.ndarray) -> tuple[str | None, bool]:
        """-> (why the run has diverged or None, whether the losses are finite)."""
        if not np.isfinite(losses).all():
            return f"loss became {losses[~np.isfinite(losses)][0]}", False
        return loss_jump(history, info, self.t.divergence_factor), True

    def __call__(self, step: int, why: str, finite: bool, history: list[dict]) -> int | None:
        """The step to go on from after a rollback, None to go on (warn). Raises UserError to
        stop, leaving the last good checkpoint as it is."""
        import mlflow

        t, tr = self.t, self.trainer
        mlflow.set_tag("autoswap.diverged_at_step", step)
        n = int(tr.rollbacks.numpy())
        if t.on_divergence == "warn" and finite:
            if not self.warned:  # said once, and kept on the MLflow run for `autoswap compare`
                self.warned = True
                print(f"autoswap: warning: step {step}: {why}: the run has probably diverged; lower "
                      f"train.learning_rate. Earlier checkpoints are in {self.ckpts.dir}", file=sys.stderr)
            return None
        if t.on_divergence != "rollback" or n >= t.max_rollbacks:
            after = f" after {n} rollback(s)" if t.on_divergence == "rollback" else ""
            mlflow.set_tag("autoswap.stopped", f"diverged at step {step}{after}")
            raise UserError(
                f"{why} by step {step}; lower train.learning_rate ({t.learning_rate}) or set "
                f"train.clip_grad_norm; stopped{after} (train.on_divergence {t.on_divergence}), "
                f"last good checkpoint kept in {self.ckpts.dir}"
            )
        scale = float(tr.lr_scale.numpy()) * t.rollback_lr_factor
        if self.ckpts.restore_latest() is None:  # nothing saved yet: back to the start
            for v, x in zip(self.tracked, self.initial, strict=True):
                v.assign(x)
        tr.lr_scale.assign(scale)
        tr.rollbacks.assign(n + 1)
        back = int(tr.step.numpy())
        history[:] = [r for r in history if r["step"] <= back]
        lr = float(tr.schedule(back))
        print(
            f"autoswap: warning: step {step}: {why}; rolled back to step {back} with the learning rate "
            f"x{t.rollback_lr_factor} (now {lr:.3g}), rollback {n + 1} of {t.max_rollbacks}",
            file=sys.stderr, flush=True,
        )
        mlflow.set_tag(f"autoswap.rollback.{n + 1}", f"step {step} -> {back}: {why}; lr now {lr:.3g}")
        mlflow.log_metric("rollbacks", n + 1, step=step)
        return back


def log_info(t, trainer: Trainer, spec, step: int, losses: np.ndarray, n_window: int, dt: float) -> dict:
    """One logged row: the mean losses since the last log (and each term of a mix), the rate and
    warp as applied, and the throughput. losses: (n, 2 x (1 + terms))."""
    from autoswap.losses import component_names
    from autoswap.pipeline import warp_stddev

    parts = component_names(t.loss)  # per person: total, then these terms
    cols = 1 + len(parts)
    info = {
        "loss_a": float(losses[:, 0].mean()),
        "loss_b": float(losses[:, cols].mean()),
        "learning_rate": float(trainer.schedule(step - 1)),
        "warp_stddev": float(warp_stddev(spec, step - 1)),
        "images_per_s": 2 * t.batch_size * n_window / max(dt, 1e-9),
    }
    for i, name in enumerate(parts):  # loss_a.dssim, ...: each term unweighted, as MLflow metrics
        info[f"loss_a.{name}"] = float(losses[:, 1 + i].mean())
        info[f"loss_b.{name}"] = float(losses[:, cols + 1 + i].mean())
    return info


def run_loop(t, trainer, spec, ckpts, r: Resume, train_step, steps_from, log_preview) -> list[dict]:
    """Train from r.start to r.end: log every train.log_every steps, save every save_every,
    preview every preview_every, and hand divergences to the guard. -> the loss history."""
    import mlflow

    from autoswap.report import LOSS_FIELDS

    history, guard = r.history, DivergenceGuard(t, trainer, ckpts, r.start)
    progress = Progress(r.start, r.end)
    pending: list = []
    t_window, n_window = time.time(), 0
    try:
        first = r.start
        while first is not None:  # once, and again from the restored step after each rollback
            steps_iter, first = steps_from(first), None
            for s, batch in steps_iter:
                trainer.step.assign(s)
                pending.append(train_step(*batch) if batch else train_step(s))
                n_window += 1
                step = int(s) + 1  # steps done
                trainer.step.assign(step)
                last = step == r.end
                if step % t.log_every == 0 or step % t.save_every == 0 or last:
                    losses = np.array([[float(v) for x in p for v in np.ravel(np.asarray(x))] for p in pending])
                    pending.clear()
                    info = log_info(t, trainer, spec, step, losses, n_window, time.time() - t_window)
                    t_window, n_window = time.time(), 0
                    # checked before the save below, so a checkpoint never holds a diverged state
                    why, finite = guard.check(history, info, losses)
                    if why and (first := guard(step, why, finite, history)) is not None:
                        progress.rewind(first)
                        break
                    history.append({"step": step, **{k: info[k] for k in LOSS_FIELDS[1:]}})
                    mlflow.log_metrics(info, step=step)
                    progress.update(step, len(losses), info)
                if step % t.save_every == 0 or last:
                    ckpts.save(step, history)
                if step % t.preview_every == 0 or last:
                    log_preview(step, history[-1] if history and history[-1]["step"] == step else None)
    finally:
        progress.close()
    if history and (why := loss_jump(history[:-1], history[-1], t.divergence_factor)):
        # warn mode, still diverged at the end: those weights are no model
        mlflow.set_tag("autoswap.stopped", f"ended diverged at step {history[-1]['step']}")
        raise UserError(
            f"training ended diverged ({why}); models/final not written. Lower train.learning_rate "
            f"or use train.on_divergence rollback; earlier checkpoints are in {ckpts.dir}"
        )
    return history


def final_card(settings: Settings, steps: int) -> dict:
    """models/final/model.json for `steps` trained with `settings` (model.ModelCard's fields)."""
    return {
        "autoswap_version": __version__,
        "model": settings.model.model_dump(mode="json"),
        "face_size": settings.data.face_size,
        "crop": settings.train.crop,
        "steps": steps,
        "seed": settings.seed,
    }


def write_final(settings: Settings, trainer: Trainer, end: int, history, run_id: str, dirs) -> dict:
    """models/final, models/run.json, metrics/train.json and plots/loss.csv, also in MLflow."""
    import mlflow

    from autoswap import model as M
    from autoswap import tracking
    from autoswap.report import write_history

    models_dir, metrics_dir, plots_dir = dirs
    final_dir = models_dir / "final"
    meta = final_card(settings, end)
    # the run id stays out of models/final (a DVC output: same training, same bytes, same hash);
    # models/run.json, beside it and not tracked, ties these files to the run (tracking.model_run)
    M.save_final(final_dir, trainer.nets, meta)
    tracking.write_model_run(final_dir, run_id, tracking.tracking_uri())
    mlflow.log_artifacts(str(final_dir), artifact_path="weights")
    write_history(plots_dir / "loss.csv", history)
    last = history[-1] if history else {"loss_a": float("nan"), "loss_b": float("nan")}
    result = {"steps": end, "loss_a": round(last["loss_a"], 6), "loss_b": round(last["loss_b"], 6)}
    metrics_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(metrics_dir / "train.json", result)
    mlflow.log_artifact(str(plots_dir / "loss.csv"))
    return result


# ----------------------------------------------------------------------------- the stage
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
    import mlflow
    import tensorflow as tf

    from autoswap.losses import needs_maps
    from autoswap.pipeline import BatchSpec
    from autoswap.report import preview_grid, save_frame, timelapse

    t = settings.train
    set_threads(t)  # before the strategy, whose devices start TensorFlow's runtime
    sets, val = load_training_faces(settings)
    strategy = make_strategy(t.strategy)
    if t.batch_size % strategy.num_replicas_in_sync:
        raise UserError(f"params.yaml: train.batch_size {t.batch_size} must divide among "
                        f"{strategy.num_replicas_in_sync} replicas")
    trainer = build_trainer(settings, strategy)

    models_dir = t.models_dir
    if not is_chief(strategy):
        # other workers take part in every collective (saves included) but write to scratch,
        # so the project sees one set of checkpoints, weights, metrics and one MLflow run
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="autoswap-worker-"))
        models_dir, metrics_dir, plots_dir = scratch / "models", scratch / "metrics", scratch / "plots"
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
    # the landmark manifests too when the maps come from them: new landmarks, new maps
    root = settings.data.faces_dir
    manifests = [root / side / "manifest.jsonl" for side in "ab"] if needs_maps(t.loss) else []
    init = resolve_init(settings)
    from autoswap.tracking import model_digest

    fp = fingerprint(settings, sets["a"][1] + sets["b"][1] + manifests, model_digest(init[0]) if init else "")
    ckpts = Checkpoints(models_dir, trainer, t)
    r = ckpts.open(fp, finish)
    if init and r.start == 0:  # a resumed run has its own weights in the checkpoint
        apply_init(settings, trainer, init[0])
    trainer.schedule.total, trainer.schedule.stretch = r.schedule_steps, r.stretch
    spec = dataclasses.replace(BatchSpec.from_settings(settings), steps=r.schedule_steps,
                               stretch=tuple(r.stretch) if r.stretch else None)

    run = open_run(settings, r.run_id, r, sets)
    mlflow.set_tags({"autoswap.intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                     "autoswap.bfloat16": mixed_precision(t)})  # what "auto" became here
    if init:  # the parent: for `autoswap compare` and the UI
        mlflow.set_tags({"autoswap.init_from": t.init_from, "autoswap.parent_run": init[1] or "unknown"})
    ckpts.write_state(fp, run.info.run_id, r)
    train_step, steps_from = make_step(settings, trainer, strategy, spec, sets, r.end)

    def log_preview(step: int, row: dict | None):
        """The fixed validation faces (the first preview.faces of each person: the same on every
        run with the same data) swapped at `step`: to MLflow, and as a timelapse frame."""
        if len(val["a"]) and len(val["b"]):
            caption = f"step {step}" + (f"   loss A {row['loss_a']:.4f}   B {row['loss_b']:.4f}" if row else "")
            grid = preview_grid(trainer.nets, spec, val["a"], val["b"], caption=caption)
            mlflow.log_image(grid, artifact_file=f"previews/step_{step:06d}.png")
            save_frame(ckpts.dir / "timelapse", step, grid)

    # Grappler's remapper fails on the train step's graph (it fuses a Conv2D + BiasAdd + LeakyRelu
    # whose BiasAdd the LeakyReluGrad still reads), prints "E0000 ... remapper failed" into the
    # user's log, and keeps the graph unchanged. Off for training, nothing changes but that line:
    # the same losses bit for bit and the same step time (measured at the seed's size).
    remapping = tf.config.optimizer.get_experimental_options().get("remapping", True)
    tf.config.optimizer.set_experimental_options({"remapping": False})
    status = "FAILED"
    try:
        history = run_loop(t, trainer, spec, ckpts, r, train_step, steps_from, log_preview)
        if finish:
            mlflow.set_tag("autoswap.finished_early_at_step", r.end)
            print(f"autoswap: finished at step {r.end} of {t.steps} (train --finish)")
        result = write_final(settings, trainer, r.end, history, run.info.run_id, (models_dir, metrics_dir, plots_dir))
        # how the swap formed: every preview of this run (resumes and rollbacks included) in step order
        if timelapse(ckpts.dir / "timelapse", models_dir / "timelapse.gif", r.end):
            mlflow.log_artifact(str(models_dir / "timelapse.gif"), artifact_path="previews")
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tf.config.optimizer.set_experimental_options({"remapping": remapping})
        mlflow.end_run(status=status)
