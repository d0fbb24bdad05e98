"""DVC stage `preview`: the seed's Figure 9 grid and the loss curves, as PNG, also in MLflow.

Grid columns: A, A rebuilt (decoder A), A as B (the swap), B, B rebuilt, B as A; with ground truth
(the synthetic data set) a column after each swap shows what the swap should look like.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from autoswap.config import Settings


def _run(nets, x):
    encoder, decoder_a, decoder_b = nets
    z = encoder(x, training=False)
    return np.asarray(decoder_a(z, training=False)), np.asarray(decoder_b(z, training=False))


def preview_grid(nets, spec, faces_a, faces_b, gt_a=None, gt_b=None, scale: int = 2) -> np.ndarray:
    """faces_* (n, S, S, 3) uint8 -> (H, W, 3) uint8 grid with a header row of labels."""
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
    pad, head = 2, 14
    grid = np.full((head + n * (o + pad) + pad, len(cols) * (o + pad) + pad, 3), 255, np.uint8)
    for j, (_, imgs) in enumerate(cols):
        for i in range(n):
            tile = np.clip(imgs[i] * 255 + 0.5, 0, 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
            y, x = head + pad + i * (o + pad), pad + j * (o + pad)
            grid[y : y + o, x : x + o] = tile
    img = Image.fromarray(grid)
    draw = ImageDraw.Draw(img)
    for j, (label, _) in enumerate(cols):
        draw.text((pad + j * (o + pad) + 2, 1), label, fill=(0, 0, 0))
    return np.asarray(img)


def loss_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss_a"] for r in rows], label="loss A (MAE)")
    ax.plot(steps, [r["loss_b"] for r in rows], label="loss B (MAE)")
    ax.set_xlabel("step")
    ax.set_ylabel("mean absolute error")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def preview(settings: Settings, model_dir: Path = Path("models/final"), loss_csv: Path = Path("plots/loss.csv")) -> dict:
    import mlflow

    from autoswap import tracking
    from autoswap.model import check_geometry, load_final
    from autoswap.pipeline import BatchSpec, load_faces
    from autoswap.train import _read_csv

    *nets, meta = load_final(model_dir)
    check_geometry(meta, settings, model_dir)
    spec = BatchSpec.from_settings(settings)
    n, root, size = settings.preview.faces, settings.data.faces_dir, settings.data.face_size
    faces = {s: load_faces(root / s / "val", size)[0][:n] for s in "ab"}
    gts = {s: load_faces(root / s / "val_gt", size)[0][:n] for s in "ab"}
    has_gt = all(len(gts[s]) == len(faces[s]) and len(gts[s]) for s in "ab")
    grid = preview_grid(nets, spec, faces["a"], faces["b"], *(gts["a"], gts["b"]) if has_gt else (None, None))
    out = settings.preview.out_dir
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out / "swap_grid.png")
    rows = _read_csv(loss_csv)
    if rows:
        loss_plot(rows, out / "loss.png")
    summary = {"grid": str(out / "swap_grid.png"), "faces_per_person": len(faces["a"]), "ground_truth": has_gt}
    (out / "preview.json").write_text(json.dumps(summary, indent=2) + "\n")

    tracking.setup(settings.tracking.experiment)
    with mlflow.start_run(run_id=meta["mlflow_run_id"]):
        mlflow.log_artifact(str(out / "swap_grid.png"), artifact_path="previews")
        if rows:
            mlflow.log_artifact(str(out / "loss.png"), artifact_path="plots")
    return summary
