"""The seed's two 4x4-output convolutions, as oneDNN's direct convolution and as one matmul.

    PYTHONPATH=src .venv/bin/python bench/conv_matmul.py [--repeats 15]

For each layer (encoder `down3`: 8x8 -> 4x4, 5x5 stride 2; encoder `up_conv`: 4x4, 3x3) at the
model widths 0.125 (the demo), 0.25, 0.5 and 1.0 (the seed), times one compiled forward +
backward (gradients of the input, kernel and bias) of `autoswap.model.Conv2D` with
`as_matmul=False` and `True` on the same weights and batch (32 images, as the training step's
encoder sees them), alternating the two, and reports medians and their ratio. This is the
measurement behind `model.MATMUL_MIN_FILTERS` and `train.conv_as_matmul`.

Results: bench/results/conv_matmul.json, and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
# (name, input side, input channels, filters, kernel, stride) at width 1.0 (ModelSettings())
LAYERS = [("down3", 8, 512, 1024, 5, 2), ("up_conv", 4, 1024, 2048, 3, 1)]
WIDTHS = [0.125, 0.25, 0.5, 1.0]


def alternate_ms(fns: list, inputs: tuple, repeats: int) -> list[float]:
    """Median ms of each of `fns` (functions returning tensors) on `inputs`, called in turn
    `repeats` times: a change in the machine's load hits them all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            [t.numpy() for t in fn(*inputs)]  # waits for the results
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def max_rel_difference(ref: list, other: list) -> float:
    return max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(ref, other, strict=True))


def write_results(out: Path, info: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"written {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15, help="timed calls of each variant")
    ap.add_argument("--batch", type=int, default=32, help="images (the encoder sees both people's 16)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "conv_matmul.json")
    args = ap.parse_args()

    import tensorflow as tf

    from autoswap.model import Conv2D

    rows = []
    for width in WIDTHS:
        for name, side, cin, filters, k, stride in LAYERS:
            cin, filters = int(cin * width), int(filters * width)
            x = tf.constant(np.random.default_rng(0).normal(size=(args.batch, side, side, cin)).astype(np.float32))
            steps, outs, convs = [], [], []
            for as_matmul in (False, True):
                conv = Conv2D(filters, k, strides=stride, padding="same", activation="leaky_relu", as_matmul=as_matmul)
                conv.build(x.shape)
                if convs:
                    conv.set_weights(convs[0].get_weights())  # the same weights for both
                convs.append(conv)

                @tf.function
                def step(x, conv=conv):
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        y = conv(x)
                        loss = tf.reduce_sum(y * y)
                    return [y, *tape.gradient(loss, [x, *conv.trainable_variables])]

                outs.append([t.numpy() for t in step(x)])  # also the warm-up (tracing)
                steps.append(step)
            direct, matmul = alternate_ms(steps, (x,), args.repeats)
            rel = max_rel_difference(*outs)
            ho = -(-side // stride)
            gflop = 3 * 2 * args.batch * ho * ho * k * k * cin * filters / 1e9  # forward + 2 gradients
            row = {
                "width": width,
                "layer": name,
                "shape": f"{side}x{side}x{cin} -> {ho}x{ho}x{filters}, {k}x{k}/{stride}",
                "gflop": round(gflop, 2),
                "direct_ms": round(direct, 2),
                "matmul_ms": round(matmul, 2),
                "matmul_time_ratio": round(matmul / direct, 3),
                "direct_gflop_s": round(gflop / direct * 1e3, 1),
                "matmul_gflop_s": round(gflop / matmul * 1e3, 1),
                "max_rel_difference": float(f"{rel:.2e}"),
            }
            rows.append(row)
            print(
                f"width {width:<5} {name:8s} {row['shape']:32s} direct {direct:8.1f} ms "
                f"({row['direct_gflop_s']:5.0f} GFLOP/s)  matmul {matmul:8.1f} ms ({row['matmul_gflop_s']:5.0f} GFLOP/s)"
                f"  matmul/direct {row['matmul_time_ratio']:.2f}  max rel diff {rel:.1e}",
                flush=True,
            )
    info = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "tensorflow": tf.__version__,
        "batch": args.batch,
        "repeats": args.repeats,
        "what": "median ms of one compiled forward + backward (input, kernel, bias gradients), float32",
        "rows": rows,
    }
    write_results(args.out, info)


if __name__ == "__main__":
    main()
