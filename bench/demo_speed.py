"""Where the demo's `dvc repro` time goes, and what each speed change bought, side by side.

    PYTHONPATH=src .venv/bin/python bench/demo_speed.py [--rounds 3] [--steps 100] [--parts pipeline,loop,identity]

Run from the repository root after `dvc repro prepare` (it reads params.yaml and data/faces).
Three measurements, each alternating its variants round by round; figures are medians:

* input pipeline, one person's batch (`pipeline.make_batch`, the demo's spec): the colour change
  with tf.pow against exp(a log x) (`pipeline._pow`), both under XLA; the warp's dense
  flow as tfa computes it (a spline solved per image, `warp.interpolate_spline`) against the
  precomputed flow matrix (`pipeline._flow_operator`); and the whole batch in a tf.function
  against the same compiled with XLA (`pipeline._make_batch_compiled`, what training runs).
* training loop, img/s of the real loop (`train.make_step`: the tf.data pipeline feeding the
  compiled step) at the demo's settings, each variant in its own process because TensorFlow
  takes its thread count once: float32 with TensorFlow's threads, float32 with
  `train.intra_op_threads: auto`, and bfloat16 with auto (`train.mixed_precision`, only where
  the CPU has bfloat16).
* identity descriptors (evaluate's dlib ResNet) of 64 faces: in this process alone against
  split with the helper processes (`identity._describe`).

Results: bench/results/demo_speed.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
LOOP_VARIANTS = {
    "float32, TF's threads": {"train.intra_op_threads": 0, "train.mixed_precision": False},
    "float32, intra_op_threads auto": {"train.intra_op_threads": "auto", "train.mixed_precision": False},
    "bfloat16, intra_op_threads auto": {"train.intra_op_threads": "auto", "train.mixed_precision": True},
}


def settings_with(overrides: dict):
    from autoswap import config

    d = config.load(REPO / "params.yaml").model_dump(mode="json")
    for key, value in overrides.items():
        node, *path = d, *key.split(".")
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return config.parse(d)


def loop_img_s(variant: str, steps: int, warmup: int = 20) -> dict:
    """In a fresh process: img/s of the training loop as `autoswap train` runs it."""
    import tensorflow as tf

    from autoswap import train as T
    from autoswap.pipeline import BatchSpec

    s = settings_with(LOOP_VARIANTS[variant])
    T.set_threads(s.train)
    trainer = T.build_trainer(s)
    sets, _ = T.load_training_faces(s)
    step, steps_from = T.make_step(s, trainer, tf.distribute.get_strategy(), BatchSpec.from_settings(s), sets, 10**6)
    it = iter(steps_from(0))
    for _ in range(warmup):
        _, b = next(it)
        step(*b)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, b = next(it)
        out = step(*b)
    float(out[0])  # waits for the last step
    dt = time.perf_counter() - t0
    return {"img_s": round(steps * 2 * s.train.batch_size / dt, 1),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()}


def timed(f, *args, n: int) -> float:
    """median seconds of f(*args) over n calls, after one untimed call"""
    f(*args)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = f(*args)
        getattr(r[0] if isinstance(r, tuple) else r, "numpy", lambda: None)()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def pipeline_ms(rounds: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from autoswap import pipeline as P
    from autoswap.warp import interpolate_spline

    spec = P.BatchSpec.from_settings(settings_with({}))
    faces = tf.constant(P.load_faces(REPO / "data/faces/a/train", spec.face_size)[0])  # (N, S, S, 3)
    b, o, g = spec.batch, spec.out_size, spec.grid
    moved = tf.random.stateless_normal([b, g * g, 2], (0, 1)) * 2.5  # (b, 25, 2) px
    dest = tf.broadcast_to(tf.constant(P._control_grid(spec)), [b, g * g, 2])
    q = tf.broadcast_to(tf.constant(P._output_grid(spec)), [b, o * o, 2])
    op = tf.constant(P._flow_operator(spec))
    px = tf.random.stateless_uniform([b, o * o, 3], (0, 2))  # (b, M, 3): an input half
    u = tf.random.stateless_uniform([b, 4], (0, 3))

    def colour(pow_fn):
        def f(p, u):  # traced (under the patch) on its first call
            saved, P._pow = P._pow, pow_fn
            try:
                return P.color_jitter(spec, p, u, o * o)
            finally:
                P._pow = saved

        return tf.function(f, jit_compile=True)

    variants = {
        "colour change, XLA, tf.pow": colour(tf.pow),
        "colour change, XLA, exp(a log x) (training's)": colour(P._pow),
        "flow: spline solved per image (tfa's way)": tf.function(
            lambda m: interpolate_spline(dest, -m, q, spec.order), jit_compile=True),
        "flow: precomputed matrix": tf.function(lambda m: tf.einsum("mk,bkc->bmc", op, -m), jit_compile=True),
        "make_batch, tf.function": tf.function(lambda f, s: P.make_batch(spec, f, s, 0)),
        "make_batch, XLA (training's)": P._make_batch_compiled(spec, 0),
    }
    args = {k: (moved,) if k.startswith("flow") else (px, u) if k.startswith("colour")
            else (faces, tf.constant(5, tf.int64)) for k in variants}
    per_round = {k: [] for k in variants}
    for _ in range(rounds):
        for k, f in variants.items():
            per_round[k].append(timed(f, *args[k], n=20) * 1e3)
    out = {k: round(statistics.median(v), 2) for k, v in per_round.items()}
    assert np.allclose(*(variants[k](px, u) for k in variants if k.startswith("colour")), atol=1e-4)
    assert np.allclose(variants["flow: precomputed matrix"](moved),
                       variants["flow: spline solved per image (tfa's way)"](moved), atol=1e-2)
    return out


def identity_s(rounds: int) -> dict:
    import numpy as np

    from autoswap import identity as I
    from autoswap import pipeline as P

    spec = P.BatchSpec.from_settings(settings_with({}))
    faces = P.load_faces(REPO / "data/faces/a/train", spec.face_size)[0][:64]
    crops = np.asarray(P.center_crop(spec, faces))  # (64, 64, 64, 3): evaluate's view
    import dlib

    chips = []
    for c in crops:
        big, _, shape = I._measured(c)  # as identity.descriptors makes them
        chips.append(dlib.get_face_chip(big, shape, size=I.CHIP_SIZE))  # (150, 150, 3)
    per_round = {"this process alone": [], f"split over {len(os.sched_getaffinity(0))} processes": []}
    for _ in range(rounds):
        per_round["this process alone"].append(timed(I._resnet_descriptors, chips, n=1))
        per_round[f"split over {len(os.sched_getaffinity(0))} processes"].append(timed(I._describe, chips, n=1))
    return {k: round(statistics.median(v), 2) for k, v in per_round.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100, help="timed training steps per loop measurement")
    ap.add_argument("--parts", default="pipeline,loop,identity",
                    help="which measurements; the others are kept from the existing results file")
    ap.add_argument("--loop", help=argparse.SUPPRESS)  # internal: one loop measurement, JSON on stdout
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    if args.loop:
        print(json.dumps(loop_img_s(args.loop, args.steps)))
        return

    from autoswap.train import cpu_has_bf16

    parts = set(args.parts.split(","))
    out_file = RESULTS / "demo_speed.json"
    res = json.loads(out_file.read_text()) if out_file.exists() and parts != {"pipeline", "loop", "identity"} else {}
    variants = [v for v in LOOP_VARIANTS if cpu_has_bf16() or not v.startswith("bfloat16")]
    loops = {v: [] for v in variants}
    for r in range(args.rounds if "loop" in parts else 0):
        for v in variants:
            out = subprocess.run([sys.executable, __file__, "--loop", v, "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True, cwd=REPO)
            loops[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}: {v}: {loops[v][-1]['img_s']} img/s", flush=True)
    res["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
                      "bf16": cpu_has_bf16()}
    if "pipeline" in parts:
        res["pipeline_ms_per_person"] = pipeline_ms(args.rounds)
    if "loop" in parts:
        res["training_loop_img_s"] = {v: {"median": statistics.median(x["img_s"] for x in rs),
                                          "rounds": [x["img_s"] for x in rs],
                                          "intra_op_threads": rs[0]["intra_op_threads"]} for v, rs in loops.items()}
    if "identity" in parts:
        res["identity_64_faces_s"] = identity_s(args.rounds)
    try:
        res["machine"]["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(res, indent=2) + "\n")
    for section, rows in res.items():
        print(f"\n{section}")
        for k, v in rows.items():
            print(f"  {k:45s} {v}")


if __name__ == "__main__":
    main()
