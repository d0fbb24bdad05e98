"""The optimiser side of training: the learning-rate schedule and Adam.

Both are what train.* sets (the seed: Adam 5e-5, beta_1 0.5, a constant rate). Kept apart from the
training loop so that the bench times the very same optimiser (bench/train_throughput.py).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from autoswap.pipeline import stretched


class LRSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """constant, cosine (to min_ratio at the last step) or step (x gamma every step_every), with
    optional linear warm-up, times `scale` (a variable: rollbacks lower it). Evaluated in-graph by
    the optimizer. `total` and `stretch` (see pipeline.stretched) are set before the first step
    when a run is lengthened."""

    def __init__(self, cfg, base_lr: float, steps: int, scale=None):
        self.cfg, self.base_lr, self.total, self.scale = cfg, base_lr, steps, scale
        self.stretch = None

    def __call__(self, step):
        cfg = self.cfg
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.base_lr, tf.float32)
        if cfg.kind == "cosine":
            at = stretched(step, self.stretch)
            span = max(1, self.total - 1 - cfg.warmup_steps)
            t = tf.clip_by_value((at - cfg.warmup_steps) / span, 0.0, 1.0)
            lr = lr * (cfg.min_ratio + (1 - cfg.min_ratio) * 0.5 * (1 + tf.cos(math.pi * t)))
        elif cfg.kind == "step":
            lr = lr * tf.pow(cfg.step_gamma, tf.floor(step / cfg.step_every))
        if cfg.warmup_steps:
            lr = lr * tf.minimum(1.0, (step + 1) / cfg.warmup_steps)
        if self.scale is not None:  # lowered by each rollback after a divergence
            lr = lr * tf.cast(self.scale, tf.float32)
        return lr

    def get_config(self):
        return {}


def total_dependent(t) -> list[str]:
    """The schedules whose shape depends on train.steps: a longer run cannot just go on with them.
    A constant or step learning rate (with or without warm-up) and a constant or off_after warp
    do not depend on it."""
    out = []
    if t.lr_schedule.kind == "cosine":
        out.append("the cosine learning-rate schedule")
    if t.warp.schedule == "linear":
        out.append("the linear warp schedule")
    return out


class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam, each variable updated by TensorFlow's fused ResourceApplyAdam
    kernel: the same formula in the same order (to a float rounding), but three passes over
    the weights and moments instead of about a dozen. Why: the step's Adam update (82 M
    weights at the seed's size) was 8% of a CPU step; fused it takes 0.31x the time. Keras'
    own update under a tf.distribute strategy, where the variables are per-replica.

    `hold(variables, steps)`: those variables keep their values for the first `steps` steps (their
    rate is 0; train.freeze_encoder_steps). Their moments still gather the real gradients, so
    that when they start to move, Adam's steps are its usual size: moments started from zero at a
    late step would get almost no bias correction and take steps about 16x the rate at first."""

    _held: frozenset = frozenset()
    _held_steps: int = 0

    def hold(self, variables, steps: int) -> None:
        self._held = frozenset(self._get_variable_index(v) for v in variables)
        self._held_steps = steps

    def update_step(self, gradient, variable, learning_rate):
        if self._held_steps and self._get_variable_index(variable) in self._held:
            dt = variable.dtype
            learning_rate = tf.cast(learning_rate, dt) * tf.cast(self.iterations >= self._held_steps, dt)
        if tf.distribute.has_strategy() or self.amsgrad or not hasattr(variable, "handle"):
            return super().update_step(gradient, variable, learning_rate)
        dt = variable.dtype
        step = tf.cast(self.iterations + 1, dt)
        i = self._get_variable_index(variable)
        beta_1, beta_2 = tf.cast(self.beta_1, dt), tf.cast(self.beta_2, dt)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[i].value.handle,
            v=self._velocities[i].value.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dt),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dt),
            grad=tf.cast(gradient, dt),
        )


def make_optimizer(t, schedule) -> FusedAdam:
    """Adam as train.* sets it (the seed: 5e-5, beta_1 0.5), with train.clip_grad_norm's cap on
    the gradient's global norm. `schedule`: a rate or an LRSchedule."""
    # named as keras names its Adam: the same variable paths (and checkpoints) as before
    return FusedAdam(
        learning_rate=schedule, beta_1=t.beta_1, beta_2=t.beta_2, global_clipnorm=t.clip_grad_norm, name="adam"
    )
