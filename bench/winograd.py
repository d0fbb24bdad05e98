"""A probe, not part of autoswap: Winograd F(2x2, 3x3) in TensorFlow ops against tf.nn.conv2d.

    PYTHONPATH=src .venv/bin/python bench/winograd.py [--repeats 5]

Winograd's algorithm does 16 multiplies per 2x2 output tile where a direct 3x3 convolution
does 36, so it is the usual way to do fewer FLOPs in 3x3 layers. oneDNN (TensorFlow's CPU
convolutions) no longer offers it, so this writes it in TensorFlow ops: the input and output
transforms as strided slices and sums, the 16 products as one batched matmul. Times one compiled
forward + backward (input, kernel gradients) of the seed's four 3x3 layers (encoder up_conv and
decoder up0..up2, float32, the batch each sees in a training step) against tf.nn.conv2d.

Measured (bench/results/winograd.json): faster than the direct convolution only on the 4x4
layer, where the patches-as-matmul of model.Conv2D is faster still; 1.6x to 5x slower on the
others, where the transforms (memory-bound) cost more than the saved multiplies. So autoswap does
not use it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from conv_matmul import alternate_ms, max_rel_difference, write_results  # bench/ is on sys.path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
# (name, batch, side, input channels, filters) of the seed's 3x3 convolutions
LAYERS = [("up_conv", 32, 4, 1024, 2048), ("up0", 16, 8, 512, 1024), ("up1", 16, 16, 256, 512), ("up2", 16, 32, 128, 256)]


def winograd_conv3x3(x, g):
    """tf.nn.conv2d(x, g, 1, "SAME") for a 3x3 kernel g and even H, W, by Winograd F(2x2, 3x3)."""
    import tensorflow as tf

    b, h, w, c = x.shape
    k = g.shape[-1]
    th, tw = h // 2, w // 2
    G = tf.constant([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], tf.float32)

    def bt(d0, d1, d2, d3):  # B^T d, one axis at a time
        return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]

    xp = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])  # (B, H+2, W+2, C)
    rows = bt(*[xp[:, i : i + h : 2] for i in range(4)])  # 4 x (B, TH, W+2, C): 4x4 tiles, stride 2
    v = [t for r in rows for t in bt(*[r[:, :, j : j + w : 2] for j in range(4)])]  # 16 x (B, TH, TW, C)
    v = tf.reshape(tf.stack(v), (16, b * th * tw, c))
    u = tf.reshape(tf.einsum("ai,ijck,bj->abck", G, g, G), (16, c, k))  # G g G^T
    m = tf.reshape(tf.matmul(v, u), (4, 4, b, th, tw, k))  # the 16 products per tile
    r0, r1 = m[0] + m[1] + m[2], m[1] - m[2] - m[3]  # A^T m A, rows then columns
    y = tf.stack([tf.stack([r[0] + r[1] + r[2], r[1] - r[2] - r[3]]) for r in (r0, r1)])  # (2, 2, B, TH, TW, K)
    return tf.reshape(tf.transpose(y, (2, 3, 0, 4, 1, 5)), (b, h, w, k))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "winograd.json")
    args = ap.parse_args()

    import tensorflow as tf

    rows = []
    for name, b, side, c, k in LAYERS:
        rng = np.random.default_rng(0)
        x = tf.constant(rng.normal(size=(b, side, side, c)).astype(np.float32))
        g = tf.constant((rng.normal(size=(3, 3, c, k)) * 0.05).astype(np.float32))
        fns = {"direct": lambda x, g: tf.nn.conv2d(x, g, 1, "SAME"), "winograd": winograd_conv3x3}
        steps, outs = {}, {}
        for key, conv in fns.items():

            @tf.function
            def step(x, g, conv=conv):
                with tf.GradientTape() as tape:
                    tape.watch([x, g])
                    y = conv(x, g)
                    loss = tf.reduce_sum(y * y)
                return [y, *tape.gradient(loss, [x, g])]

            outs[key] = [t.numpy() for t in step(x, g)]
            steps[key] = step
        ms = alternate_ms(list(steps.values()), (x, g), args.repeats)
        med = dict(zip(steps, ms, strict=True))
        rel = max_rel_difference(outs["direct"], outs["winograd"])
        row = {
            "layer": name,
            "shape": f"{b}x{side}x{side}x{c} -> {k}",
            "direct_ms": round(med["direct"], 1),
            "winograd_ms": round(med["winograd"], 1),
            "winograd_time_ratio": round(med["winograd"] / med["direct"], 2),
            "max_rel_difference": float(f"{rel:.1e}"),
        }
        rows.append(row)
        print(
            f"{name:8s} {row['shape']:24s} direct {row['direct_ms']:7.1f} ms  winograd {row['winograd_ms']:7.1f} ms"
            f"  ratio {row['winograd_time_ratio']:.2f}  max rel diff {rel:.1e}",
            flush=True,
        )
    info = {
        "tensorflow": tf.__version__,
        "cores": os.cpu_count(),
        "what": "median ms of one compiled forward + backward (input and kernel gradients), float32",
        "rows": rows,
    }
    write_results(args.out, info)


if __name__ == "__main__":
    main()
