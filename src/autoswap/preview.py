"""DVC stage `preview`: the seed's Figure 9 grid and the loss curves, as PNG, also in MLflow.

Grid columns: A, A rebuilt (decoder A), A as B (the swap), B, B rebuilt, B as A; with ground truth
(the synthetic data set) a column after each swap shows what the swap should look like.
photo_swaps.png: validation faces swapped in their own photos or frames by `autoswap swap`'s path
(autoswap.photoscore), beside the originals: what the user gets.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from autoswap.config import Settings
from autoswap.files import atomic_write_text


def preview(settings: Settings, model_dir: Path = Path("models/final"), loss_csv: Path = Path("plots/loss.csv")) -> dict:
    import mlflow

    from autoswap import tracking
    from autoswap.model import check_geometry, load_final
    from autoswap.pipeline import BatchSpec, load_faces
    from autoswap.report import loss_plot, preview_grid, read_history

    *nets, card = load_final(model_dir)
    check_geometry(card, settings, model_dir)
    spec = BatchSpec.from_settings(settings)
    n, root, size = settings.preview.faces, settings.data.faces_dir, settings.data.face_size
    faces = {s: load_faces(root / s / "val", size)[0][:n] for s in "ab"}
    gts = {s: load_faces(root / s / "val_gt", size)[0][:n] for s in "ab"}
    has_gt = all(len(gts[s]) == len(faces[s]) and len(gts[s]) for s in "ab")
    grid = preview_grid(nets, spec, faces["a"], faces["b"], *(gts["a"], gts["b"]) if has_gt else (None, None))
    out = settings.preview.out_dir
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out / "swap_grid.png")
    rows = read_history(loss_csv)
    if rows:
        loss_plot(rows, out / "loss.png", settings.train.loss.kind)
    # what the user gets: validation faces swapped in their own photos or frames by the swap path
    from autoswap.photoscore import sheet, swap_val_photos

    groups = [(f"{x.upper()} swapped to {y.upper()}: original (left), swap (right)", swap_val_photos(settings, model_dir, x, 2 * n))
              for x, y in (("a", "b"), ("b", "a"))]
    photo_sheet = None
    if any(pairs for _, pairs in groups):
        photo_sheet = out / "photo_swaps.png"
        sheet(groups, photo_sheet)
    summary = {"grid": str(out / "swap_grid.png"), "faces_per_person": len(faces["a"]), "ground_truth": has_gt,
               "photo_swaps": str(photo_sheet) if photo_sheet else None}
    atomic_write_text(out / "preview.json", json.dumps(summary, indent=2) + "\n")

    with tracking.log_to_model_run(model_dir) as run:
        if run is not None:  # None: a model without its run (copied elsewhere), not logged
            mlflow.log_artifact(str(out / "swap_grid.png"), artifact_path="previews")
            if photo_sheet:
                mlflow.log_artifact(str(photo_sheet), artifact_path="previews")
            if rows:
                mlflow.log_artifact(str(out / "loss.png"), artifact_path="plots")
    return summary
