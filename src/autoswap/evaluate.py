"""DVC stage `evaluate`: how well the model rebuilds and swaps the validation faces.

Per person X (a or b), with Y the other one, on the model's view of each face (centre crop,
model.input_size):
- recon_mae / recon_psnr / recon_ssim: X through decoder X against X (reconstruction).
- swap_mae / swap_ssim: X through decoder Y against the ground truth counterpart (the same pose,
  expression and light rendered as Y). Only where the data set has ground truth (synthetic).
- identity_swap_mae / identity_swap_ssim: the "output = input" baseline for the swap, i.e. X
  itself scored against the counterpart. A swap that learned anything beats it.
- mean_face_swap_mae / mean_face_swap_ssim: the "ignore the input" baseline: Y's average face
  (per-pixel median of Y's training crops, the constant image with the lowest MAE on them)
  scored against the counterpart. A swap that follows X's pose and expression beats it; a model
  that has only learned Y's average face, blurred, scores about the same.
- cycle_mae: X -> decoder Y -> encoder -> decoder X against X, a swap consistency score that
  needs no ground truth (lower is better).

Identity and pose (autoswap.identity, dlib's face recognition ResNet and 5-point landmarks; no
ground truth needed, so these work on your own data too; evaluate.identity_faces = 0 turns them
off). Each person's identity centroid is the mean 128-d descriptor of evaluate.identity_faces of
their training faces (evenly spaced over the sorted files, so the same faces every run). The
target is Y's centroid, the source X's:
- id_transfer: share of the swaps (X through decoder Y) nearer Y's centroid than X's; 1 = every
  swap reads as Y (higher is better).
- id_dist_target / id_dist_source: the swaps' mean descriptor distance to Y's / X's centroid;
  below about 0.6 reads as that person.
- input_id_transfer / input_id_dist_target / input_id_dist_source: the same for the unswapped
  input X, the "nothing swapped" baseline (id_transfer near 0).
- recon_id_transfer / recon_id_dist_target / recon_id_dist_source: the same for the
  reconstruction (X through decoder X), which should also stay X. Read id_transfer with it: a
  barely trained model's blurs can land nearer one centroid whatever the decoder, and then
  recon_id_transfer is high too.
- landmark_shift: mean distance of the swap's 5 landmarks from the input's, in the input's eye
  distances; lower = the swap kept X's pose and expression (0 = the same points).
- recon_landmark_shift: the same for the reconstruction, the model's own baseline.
- truth_id_transfer / truth_id_dist_* / truth_landmark_shift: the same scores of the ground-truth
  counterparts, where the data set has them (synthetic): what a perfect swap scores. Its
  landmark_shift is not 0 where the two people's eyes and nose sit in different places.

The swapped photo (autoswap.photoscore, `photo_*`): every validation face swapped in its source
photo or frame by `autoswap swap`'s own path (align, network, colour, mask, blend), then scored
as an outside tool sees it: a face found by dlib's detector, identity, sharpness kept and pose
kept, on the photo. These judge what the user gets; the scores above judge the network's crop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoswap.config import Settings
from autoswap.errors import UserError
from autoswap.files import atomic_write_json


def _batched(fn, x, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i : i + batch])) for i in range(0, len(x), batch)])


def _scores(pred, target) -> dict:
    import tensorflow as tf

    mae = float(np.mean(np.abs(pred - target)))
    psnr = float(np.mean(tf.image.psnr(pred, target, max_val=1.0)))
    ssim = float(np.mean(tf.image.ssim(tf.constant(pred), tf.constant(target), max_val=1.0)))
    return {"mae": mae, "psnr": psnr, "ssim": ssim}


def _sample(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over range(n) (all of them when k >= n): a fixed sample."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def _identity_scores(inp, recon, swap, target, source, truth=None) -> dict:
    """The identity and landmark scores of one person's swaps (see the module docstring).
    inp, recon, swap: (N, S, S, 3) float in [0, 1]; target, source: (128,) centroids; truth: the
    ground-truth counterparts (N, S, S, 3), where the data set has them (synthetic)."""
    from autoswap.identity import descriptors, identity_scores, landmark_shift

    m = {}
    d_inp, lm_inp = descriptors(inp, with_landmarks=True)  # (N, 128), (N, 5, 2)
    d_recon, lm_recon = descriptors(recon, with_landmarks=True)
    d_swap, lm_swap = descriptors(swap, with_landmarks=True)
    scored = [("", d_swap), ("input_", d_inp), ("recon_", d_recon)]
    if truth is not None:
        d_truth, lm_truth = descriptors(truth, with_landmarks=True)
        scored.append(("truth_", d_truth))
    for prefix, d in scored:
        m.update({prefix + k: v for k, v in identity_scores(d, target, source).items()})
    m["landmark_shift"] = float(np.mean(landmark_shift(lm_swap, lm_inp)))
    m["recon_landmark_shift"] = float(np.mean(landmark_shift(lm_recon, lm_inp)))
    if truth is not None:
        m["truth_landmark_shift"] = float(np.mean(landmark_shift(lm_truth, lm_inp)))
    return m


def identity_centroids(spec, train_faces: dict, identity_faces: int) -> dict:
    """person -> (128,) mean descriptor of a fixed sample of their training faces (the model's
    view of them); {} when identity_faces is 0 or a person has no training faces."""
    from autoswap.pipeline import center_crop

    if identity_faces <= 0 or not all(train_faces.get(s) is not None and len(train_faces[s]) for s in "ab"):
        return {}
    from autoswap.identity import centroid, descriptors

    out = {}
    for s in "ab":
        sample = train_faces[s][_sample(len(train_faces[s]), identity_faces)]
        out[s] = centroid(descriptors(np.asarray(center_crop(spec, sample))))
    return out


def evaluate_faces(nets, spec, faces: dict, gts: dict, batch: int = 32, train_faces: dict | None = None,
                   identity_faces: int = 0, centroids: dict | None = None) -> dict:
    """The scores of the module docstring, {"a": {...}, "b": {...}}. The identity and landmark
    scores need identity_faces > 0 and training faces of both people (or their `centroids`)."""
    from autoswap.pipeline import center_crop

    train_faces = train_faces or {}
    centroids = identity_centroids(spec, train_faces, identity_faces) if centroids is None else centroids

    encoder, decoder_a, decoder_b = nets
    dec = {"a": decoder_a, "b": decoder_b}
    out = {}
    for x, y in (("a", "b"), ("b", "a")):
        inp = np.asarray(center_crop(spec, faces[x]))  # (N, 64, 64, 3)
        recon = _batched(lambda v, d=dec[x]: d(encoder(v, training=False), training=False), inp, batch)
        swap = _batched(lambda v, d=dec[y]: d(encoder(v, training=False), training=False), inp, batch)
        cycle = _batched(lambda v, d=dec[x]: d(encoder(v, training=False), training=False), swap, batch)
        r = _scores(recon, inp)
        m = {"recon_mae": r["mae"], "recon_psnr": r["psnr"], "recon_ssim": r["ssim"]}
        m["cycle_mae"] = float(np.mean(np.abs(cycle - inp)))
        if gts.get(x) is not None and len(gts[x]) == len(faces[x]):
            gt = np.asarray(center_crop(spec, gts[x]))
            s, base = _scores(swap, gt), _scores(inp, gt)
            m.update(swap_mae=s["mae"], swap_ssim=s["ssim"])
            m.update(identity_swap_mae=base["mae"], identity_swap_ssim=base["ssim"])
            if train_faces.get(y) is not None and len(train_faces[y]):
                mean_face = np.median(np.asarray(center_crop(spec, train_faces[y])), axis=0)  # (64, 64, 3)
                c = _scores(np.broadcast_to(mean_face, gt.shape).astype(np.float32), gt)
                m.update(mean_face_swap_mae=c["mae"], mean_face_swap_ssim=c["ssim"])
        if centroids:
            truth = np.asarray(center_crop(spec, gts[x])) if "swap_mae" in m else None
            m.update(_identity_scores(inp, recon, swap, target=centroids[y], source=centroids[x], truth=truth))
        out[x] = {k: round(v, 6) for k, v in m.items()}
    return out


def evaluate(settings: Settings, model_dir: Path = Path("models/final"), metrics_dir: Path = Path("metrics")) -> dict:
    import mlflow

    from autoswap import tracking
    from autoswap.model import check_geometry, load_final
    from autoswap.pipeline import BatchSpec, load_faces

    *nets, card = load_final(model_dir)
    check_geometry(card, settings, model_dir)
    spec = BatchSpec.from_settings(settings)
    root, size = settings.data.faces_dir, settings.data.face_size
    faces, gts, train_faces = {}, {}, {}
    for s in "ab":
        train_faces[s] = load_faces(root / s / "train", size)[0]
        faces[s] = load_faces(root / s / "val", size)[0]
        if len(faces[s]) == 0:
            raise UserError(f"{root / s / 'val'}: no validation faces; run `dvc repro prepare`")
        gt = load_faces(root / s / "val_gt", size)[0] if (root / s / "val_gt").is_dir() else None
        gts[s] = gt if gt is not None and len(gt) else None
    centroids = identity_centroids(spec, train_faces, settings.evaluate.identity_faces)
    result = evaluate_faces(nets, spec, faces, gts, settings.evaluate.batch_size, train_faces,
                            settings.evaluate.identity_faces, centroids)
    # the swapped photo itself, as an outside tool sees it (autoswap.photoscore)
    from autoswap.photoscore import score_pairs, swap_val_photos

    for x, y in (("a", "b"), ("b", "a")):
        pairs = swap_val_photos(settings, model_dir, x, settings.evaluate.photo_faces or None)
        if pairs:
            photo = score_pairs(pairs, centroids.get(y), centroids.get(x))
            result[x].update({k: round(v, 6) for k, v in photo.items()})
    metrics_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(metrics_dir / "eval.json", result)
    # the same numbers beside the model they score: not in git (metrics/eval.json is), so a fresh
    # clone, whose trained models/final is byte-identical to the committed one, still evaluates it
    # and its MLflow run gets the metrics
    atomic_write_json(model_dir.parent / "eval.json", result)

    with tracking.log_to_model_run(model_dir) as run:
        if run is not None:  # None: a model without its run (copied elsewhere), not logged
            mlflow.log_metrics({f"eval.{s}.{k}": v for s, m in result.items() for k, v in m.items()})
    return result
