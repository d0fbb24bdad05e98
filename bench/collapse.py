"""Anatomy of a training collapse: step by step, the loss, the gradient's global norm, the largest
Adam step relative to its layer's weights, and the share of output pixels the sigmoid saturates.

Why: a collapsed run ends with flat-colour previews and a loss stuck near 0.4, with no NaN. This
shows the chain that gets it there (a gradient spike, an oversized Adam step, saturated sigmoid
outputs whose gradient is zero) and what train.clip_grad_norm does to it. It trains a copy of
`autoswap train`'s network on the same batches (make_dataset), with the step written out so that
it can report these per-step figures, which the production step does not compute.

    python bench/collapse.py --params params.yaml --lr 2.0e-3 --steps 160              # collapses
    python bench/collapse.py --params params.yaml --lr 2.0e-3 --steps 160 --clip 1.0   # does not
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def anatomy(params: Path, lr: float, steps: int, clip: float | None) -> list[dict]:
    import keras
    import tensorflow as tf

    from autoswap import config
    from autoswap import model as M
    from autoswap.losses import make_loss, needs_maps, region_weight
    from autoswap.optim import LRSchedule, make_optimizer
    from autoswap.pipeline import BatchSpec, load_faces, load_maps
    from autoswap.train import make_dataset

    s = config.load(params)
    t = s.train.model_copy(update={"learning_rate": lr, "clip_grad_norm": None})
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(s.seed)
    spec = BatchSpec.from_settings(s)
    faces = {}
    for side in "ab":
        f, files, _ = load_faces(s.data.faces_dir / side / "train", s.data.face_size)
        if needs_maps(t.loss):
            f = np.concatenate([f, load_maps(s.data.faces_dir / side / "train", files, s.data.face_size)], -1)
        faces[side] = f
    enc, da, db = M.build(s.model)
    opt = make_optimizer(t, LRSchedule(t.lr_schedule, lr, t.steps))
    tv = enc.trainable_variables + da.trainable_variables + db.trainable_variables
    opt.build(tv)
    loss_fn = make_loss(t.loss)
    names = [v.path for v in tv]

    def maps(x):
        if x.shape[-1] == 3:
            return x, {}
        return x[..., :3], {"mask": x[..., 3:4], "weight": region_weight(t.loss, eyes=x[..., 4:5], mouth=x[..., 5:6])}

    @tf.function
    def step(wa, ta, wb, tb):
        b = wa.shape[0]
        (ta, ka), (tb, kb) = maps(ta), maps(tb)
        with tf.GradientTape() as tape:
            z = enc(tf.concat([wa, wb], 0), training=True)  # (2b, 8, 8, C)
            ya, yb = da(z[:b], training=True), db(z[b:], training=True)  # (b, 64, 64, 3)
            la, lb = loss_fn(ta, ya, **ka)["total"], loss_fn(tb, yb, **kb)["total"]
            loss = la + lb
        g = tape.gradient(loss, tv)
        norm = tf.linalg.global_norm(g)
        if clip:  # what keras' global_clipnorm (train.clip_grad_norm) does
            g = [x * tf.minimum(1.0, clip / norm) for x in g]
        before = [tf.identity(v) for v in tv]
        opt.apply_gradients(zip(g, tv, strict=True))
        rel = tf.stack([tf.norm(v - v0) / (tf.norm(v0) + 1e-12) for v, v0 in zip(tv, before, strict=True)])
        y = tf.concat([ya, yb], 0)
        saturated = tf.reduce_mean(tf.cast((y < 1e-3) | (y > 1 - 1e-3), tf.float32))
        return la, lb, norm, rel, saturated

    rows = []
    for s_, batch in make_dataset(spec, faces["a"], faces["b"], 0, steps):
        la, lb, norm, rel, sat = step(*batch)
        rel = rel.numpy()
        i = int(np.argmax(rel))
        rows.append({
            "step": int(s_) + 1, "loss_a": round(float(la), 4), "loss_b": round(float(lb), 4),
            "grad_norm": round(float(norm), 4), "max_rel_update": round(float(rel[i]), 4),
            "max_rel_update_in": names[i], "saturated": round(float(sat), 4),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--lr", type=float, default=2.0e-3)
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--clip", type=float, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    a = p.parse_args(argv)
    rows = anatomy(a.params, a.lr, a.steps, a.clip)
    if a.out:
        a.out.write_text(json.dumps({"lr": a.lr, "clip": a.clip, "steps": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
