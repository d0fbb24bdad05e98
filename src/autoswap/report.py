"""What the train and preview stages both draw and keep: the loss history (a CSV, DVC's plot
source) and the swap grid (the seed's Figure 9). Below both stages, so that neither imports the
other and editing a plot retrains nothing."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from autoswap.files import atomic_write_text

LOSS_FIELDS = ["step", "loss_a", "loss_b", "learning_rate", "warp_stddev"]
LOSS_NAMES = {"mae": "MAE", "ssim": "DSSIM", "ms_ssim": "1 - MS-SSIM", "mix": "weighted mix"}


def write_history(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOSS_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def _run(nets, x):
    encoder, decoder_a, decoder_b = nets
    z = encoder(x, training=False)
    return np.asarray(decoder_a(z, training=False)), np.asarray(decoder_b(z, training=False))


def preview_grid(nets, spec, faces_a, faces_b, gt_a=None, gt_b=None, scale: int = 2, caption: str = "") -> np.ndarray:
    """faces_* (n, S, S, 3) uint8 -> (H, W, 3) uint8 grid with a header row of labels, and a
    caption row above it when given (training's previews: the step and the losses)."""
    from autoswap.pipeline import center_crop

    xa, xb = np.asarray(center_crop(spec, faces_a)), np.asarray(center_crop(spec, faces_b))
    a_as_a, a_as_b = _run(nets, xa)
    b_as_a, b_as_b = _run(nets, xb)
    cols = [("A", xa), ("A rebuilt", a_as_a), ("A as B", a_as_b)]
    if gt_a is not None:
        cols.append(("truth", np.asarray(center_crop(spec, gt_a))))
    cols += [("B", xb), ("B rebuilt", b_as_b), ("B as A", b_as_a)]
    if gt_b is not None:
        cols.append(("truth", np.asarray(center_crop(spec, gt_b))))
    n = min(len(c[1]) for c in cols)
    o = spec.out_size * scale
    pad, head = 2, 14 + (14 if caption else 0)
    grid = np.full((head + n * (o + pad) + pad, len(cols) * (o + pad) + pad, 3), 255, np.uint8)
    for j, (_, imgs) in enumerate(cols):
        for i in range(n):
            tile = np.clip(imgs[i] * 255 + 0.5, 0, 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
            y, x = head + pad + i * (o + pad), pad + j * (o + pad)
            grid[y : y + o, x : x + o] = tile
    img = Image.fromarray(grid)
    draw = ImageDraw.Draw(img)
    if caption:
        draw.text((pad + 2, 1), caption, fill=(0, 0, 0))
    for j, (label, _) in enumerate(cols):
        draw.text((pad + j * (o + pad) + 2, head - 13), label, fill=(0, 0, 0))
    return np.asarray(img)


def save_frame(folder: Path, step: int, grid: np.ndarray) -> Path:
    """One timelapse frame, folder/step_000123.png (written whole: a temporary name, then renamed)."""
    from autoswap.files import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:06d}.png"
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path


def timelapse(folder: Path, out: Path, until: int, ms_per_frame: int = 400) -> int:
    """The frames of steps up to `until` in `folder`, in step order, as an animated GIF (the last
    frame held 4x as long). -> the number of frames; 0 writes nothing."""
    from autoswap.files import atomic_path

    frames = sorted(p for p in folder.glob("step_*.png") if int(p.stem[5:]) <= until) if folder.is_dir() else []
    if not frames:
        return 0
    images = [Image.open(f).convert("RGB") for f in frames]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=[ms_per_frame] * (len(images) - 1) + [4 * ms_per_frame])
    return len(images)


def loss_plot(rows: list[dict], path: Path, kind: str = "mae") -> None:
    """The loss curves of both people, log scale, labelled with the loss that was trained."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = [r["step"] for r in rows]
    name = LOSS_NAMES.get(kind, kind)
    ax.plot(steps, [r["loss_a"] for r in rows], label=f"loss A ({name})")
    ax.plot(steps, [r["loss_b"] for r in rows], label=f"loss B ({name})")
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
