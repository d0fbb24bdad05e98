"""Scores of the swapped photo itself, as an outside tool sees it: what the user gets.

Why: the crop scores (autoswap.evaluate) judge the network's 64 px output. A user gets that
output aligned back, colour-matched, masked and blended into the photo, where a crop that reads
as the target can still become "the original person with a smeared face". Here every swap is
looked at the way a third party would: dlib's HOG face detector on the whole photo (not our
MTCNN and not our landmarks), then its 5-point landmarks and face-recognition ResNet on what it
found.

Per person X, over their scored photos (original, swapped) (named `photo_*` in eval.json):
- photo_found / photo_input_found: the share of swapped / original photos in which the detector
  finds the swapped face (a detection overlapping the face's known box, IoU >= 0.3);
  photo_found_ratio = found / input_found (1 = the swap loses no face; the issue's goal >= 0.95).
- photo_id_transfer, photo_id_dist_target, photo_id_dist_source: over the swapped photos with a
  face found, the share nearer the target's identity centroid than the source's, and the mean
  descriptor distances (below 0.6 reads as that person). photo_input_id_transfer: the same share
  for the originals (the "nothing swapped" baseline, near 0).
- photo_sharpness_kept: the median over photos of var(Laplacian) inside the face box, swapped
  over original, with the box resized to FEATURE_PX wide. At that scale eyes, brows and mouth are
  a few pixels each, while skin texture, JPEG noise and the camera's own sharpening (which weigh
  in at full scale but are not what a person reads a face by) are averaged away; it is also the
  same for a 250 px and a 4,000 px photo. 1 = as sharp as the original; a blurred paste is lower.
  photo_sharpness_kept_full: the same at the photo's own pixels.
- photo_landmark_shift: the mean distance of the swapped face's 5 landmarks from the original's,
  in the original's eye distances, where both are found (pose and expression kept: lower).

The face box is the detector's box on the original, or, where it finds none there, the box of
the face's known landmarks (what the swap aligned to), so sharpness is scored on every photo.
"""

from __future__ import annotations

import functools

import numpy as np

FEATURE_PX = 64  # px: the face box's width when sharpness is measured "at the scale of features"
MIN_IOU = 0.3  # a detection counts as the swapped face when it overlaps the face's box this much


@functools.lru_cache(maxsize=1)
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


def _iou(a, b) -> float:
    """Boxes (x0, y0, x1, y1)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def known_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """The face box implied by 5 landmarks (eye corners, nose base; or MTCNN's eyes, nose, mouth
    corners) (5, 2): about the box dlib's detector draws, eyebrows to chin."""
    lm = np.asarray(landmarks, np.float64)
    c = lm.mean(axis=0)
    d = max(float(np.ptp(lm[:, 0])), float(np.ptp(lm[:, 1])), 1.0)
    half = 1.0 * d
    return (c[0] - half, c[1] - 0.8 * half, c[0] + half, c[1] + 1.2 * half)


def detect(rgb: np.ndarray) -> list:
    """dlib's detections (rectangles) in `rgb`. Small photos are upsampled once, as dlib's examples
    do for faces < 80 px."""
    rgb = np.ascontiguousarray(rgb[..., :3])
    return list(_detector()(rgb, 1 if min(rgb.shape[:2]) < 400 else 0))


def find_face(rgb: np.ndarray, box) -> tuple[tuple, np.ndarray] | None:
    """The dlib detection overlapping `box` most (IoU >= MIN_IOU): (its box, its 5 landmarks
    (5, 2)), or None."""

    from autoswap.identity import _models

    rgb = np.ascontiguousarray(rgb[..., :3])
    best, best_iou = None, MIN_IOU
    for r in detect(rgb):
        b = (r.left(), r.top(), r.right(), r.bottom())
        iou = _iou(b, box)
        if iou >= best_iou:
            best, best_iou = r, iou
    if best is None:
        return None
    predictor, _ = _models()
    shape = predictor(rgb, best)
    pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
    return (best.left(), best.top(), best.right(), best.bottom()), pts


def _chip(rgb: np.ndarray, box) -> np.ndarray:
    import dlib

    from autoswap.identity import CHIP_SIZE, _models

    rgb = np.ascontiguousarray(rgb[..., :3])
    predictor, _ = _models()
    shape = predictor(rgb, dlib.rectangle(*(int(round(v)) for v in box)))
    return dlib.get_face_chip(rgb, shape, size=CHIP_SIZE)


def sharpness(rgb: np.ndarray, box, width: int | None = FEATURE_PX) -> float:
    """var(Laplacian) of the grey `box` region of `rgb`, resized to `width` px wide first (None:
    the photo's own pixels)."""
    import cv2

    h, w = rgb.shape[:2]
    x0, y0 = max(0, int(round(box[0]))), max(0, int(round(box[1])))
    x1, y1 = min(w, int(round(box[2]))), min(h, int(round(box[3])))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return float("nan")
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1, :3]), cv2.COLOR_RGB2GRAY)
    if width is not None:
        hh = max(4, round(grey.shape[0] * width / grey.shape[1]))
        grey = cv2.resize(grey, (width, hh), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey.astype(np.float64), cv2.CV_64F).var())


def score_pairs(pairs: list, target: np.ndarray | None, source: np.ndarray | None) -> dict:
    """pairs: [(original (H, W, 3) uint8, swapped (H, W, 3) uint8, landmarks (5, 2) of the
    swapped face in the original)]; target / source: (128,) identity centroids (None: no
    identity scores). -> the photo_* scores of the module docstring."""
    from autoswap.identity import _describe, identity_scores, landmark_shift

    n = len(pairs)
    found_in = found_out = 0
    sharp, sharp_full, shifts = [], [], []
    chips_in, chips_out = [], []
    for orig, swapped, lm in pairs:
        box = known_box(lm)
        f_in, f_out = find_face(orig, box), find_face(swapped, box)
        found_in += f_in is not None
        found_out += f_out is not None
        ref = f_in[0] if f_in is not None else box
        for out, width in ((sharp, FEATURE_PX), (sharp_full, None)):
            s0, s1 = sharpness(orig, ref, width), sharpness(swapped, ref, width)
            if np.isfinite(s0) and s0 > 0 and np.isfinite(s1):
                out.append(s1 / s0)
        if f_in is not None:
            chips_in.append(_chip(orig, f_in[0]))
        if f_out is not None:
            chips_out.append(_chip(swapped, f_out[0]))
        if f_in is not None and f_out is not None:
            shifts.append(float(landmark_shift(f_out[1][None], f_in[1][None])[0]))
    m = {
        "photo_n": n,
        "photo_input_found": found_in / n if n else float("nan"),
        "photo_found": found_out / n if n else float("nan"),
        "photo_found_ratio": found_out / found_in if found_in else float("nan"),
        "photo_sharpness_kept": float(np.median(sharp)) if sharp else float("nan"),
        "photo_sharpness_kept_full": float(np.median(sharp_full)) if sharp_full else float("nan"),
        "photo_landmark_shift": float(np.mean(shifts)) if shifts else float("nan"),
    }
    if target is not None and source is not None:
        nan = {"id_transfer": float("nan"), "id_dist_target": float("nan"), "id_dist_source": float("nan")}
        s_out = identity_scores(_describe(chips_out), target, source) if chips_out else nan
        s_in = identity_scores(_describe(chips_in), target, source) if chips_in else nan
        m.update({f"photo_{k}": v for k, v in s_out.items()})
        m["photo_input_id_transfer"] = s_in["id_transfer"]
    return m


def sheet_image(groups: list[tuple[str, list]], per_row: int = 4, height: int = 160):
    """A PIL picture of originals beside their swaps, one block per (title, rows) group. Each row
    is (original, swapped, landmarks) or (original, swapped, landmarks, truth): cropped around
    the face (twice its box), scaled to `height` px and laid left to right (original, swap, and
    the truth where given), `per_row` rows a line. None when there is nothing to draw."""
    from PIL import Image, ImageDraw

    blocks = []
    for title, rows in groups:
        tiles = []
        for orig, swapped, lm, *truth in rows:
            x0, y0, x1, y1 = known_box(lm)
            cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)
            box = (int(cx - r), int(cy - r), int(cx + r), int(cy + r))
            ims = [Image.fromarray(np.ascontiguousarray(im[..., :3])).crop(box).resize((height, height), Image.Resampling.LANCZOS)
                   for im in (orig, swapped, *truth)]
            t = Image.new("RGB", (len(ims) * (height + 4) - 4, height), "white")
            for i, im in enumerate(ims):
                t.paste(im, (i * (height + 4), 0))
            tiles.append(t)
        if not tiles:
            continue
        w, h = tiles[0].size
        lines = -(-len(tiles) // per_row)
        block = Image.new("RGB", (per_row * (w + 8), 20 + lines * (h + 8)), "white")
        ImageDraw.Draw(block).text((4, 4), title, fill="black")
        for i, t in enumerate(tiles):
            block.paste(t, ((i % per_row) * (w + 8), 20 + (i // per_row) * (h + 8)))
        blocks.append(block)
    if not blocks:
        return None
    canvas = Image.new("RGB", (max(b.width for b in blocks), sum(b.height for b in blocks)), "white")
    y = 0
    for b in blocks:
        canvas.paste(b, (0, y))
        y += b.height
    return canvas


def sheet(groups: list[tuple[str, list]], out_path, per_row: int = 4, height: int = 160) -> None:
    """sheet_image, saved to `out_path` (nothing written when there is nothing to draw)."""
    im = sheet_image(groups, per_row, height)
    if im is not None:
        im.save(out_path)


def val_frames(settings, person: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each validation face of `person` as (its source frame (H, W, 3) uint8, the face's 5
    landmarks (5, 2) in that frame), in the order of the val folder's files. Extracted folders:
    the photo or video frame the crop came from (manifest `source`, `frame`, `landmarks_source`),
    read as extract read it. Synthetic: the rendered val image itself, with its landmarks (the
    face is not template-aligned there: rotation, scale and shift jitter). [] for data.aligned
    crops, which have no frame to paste into."""
    import json

    from autoswap.images import BadImage, load_rgb

    d = settings.data
    if d.source == "folders" and d.aligned:
        return []
    root = d.faces_dir / person
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        return []
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    val = sorted((root / "val").glob("*.png"))
    out = []
    if d.source == "synthetic":
        by_name = {r["crop"]: r for r in rows if r.get("split") == "val"}
        for f in val:
            r = by_name.get(f.stem)
            if r is not None:
                out.append((load_rgb(f), np.asarray(r["landmarks_crop"], np.float64)))
        return out
    by_name = {r["crop"]: r for r in rows}
    frames: dict = {}  # video path -> {frame index: rgb}, read in one pass per video
    wanted = [(f, by_name.get(f.stem) or by_name.get(f.name)) for f in val]
    for _, r in wanted:
        if r is not None and r.get("kind") == "video":
            frames.setdefault(r["source"], set()).add(int(r["frame"]))
    decoded: dict = {}
    for src, idx in frames.items():
        from autoswap.video import BadVideo, iter_video_frames

        try:
            for fr in iter_video_frames(src):
                if fr.index in idx:
                    decoded[(src, fr.index)] = fr.rgb
                if fr.index >= max(idx):
                    break
        except BadVideo:
            continue
    for _, r in wanted:
        if r is None:
            continue
        try:
            rgb = decoded.get((r["source"], int(r["frame"]))) if r.get("kind") == "video" else \
                load_rgb(r["source"], d.max_image_pixels)
        except (BadImage, OSError):
            rgb = None
        # a photo that changed size since extract (edited, replaced) no longer fits its landmarks
        if rgb is not None and [rgb.shape[1], rgb.shape[0]] == list(r.get("source_size", [rgb.shape[1], rgb.shape[0]])):
            out.append((rgb, np.asarray(r["landmarks_source"], np.float64)))
    return out


def swap_val_photos(settings, model_dir, person: str, limit: int | None = None) -> list[tuple]:
    """[(original, swapped, landmarks)]: `person`'s validation frames swapped to the other person
    by `autoswap swap`'s own path (autoswap.swap.Swapper: align, network, colour, mask, blend,
    with params.yaml's swap settings), on the face's known landmarks. Unmarked: the marks are for
    files that leave the tool; these are scored and shown only."""
    from autoswap.swap import FaceSwapModel, Swapper

    frames = val_frames(settings, person)[:limit]
    if not frames:
        return []
    other = "b" if person == "a" else "a"
    swapper = Swapper(FaceSwapModel(model_dir, to=other), settings.swap, settings.extract)
    return [(rgb, swapper.swap(rgb, [lm]), lm) for rgb, lm in frames]


def val_truths(settings, person: str) -> list[np.ndarray] | None:
    """The synthetic set's ground truth for `person`'s validation frames (each rendered as the
    other person, in val_frames' order), or None where the data set has none (your photos)."""
    from autoswap.images import load_rgb

    root = settings.data.faces_dir / person
    if settings.data.source != "synthetic" or not (root / "val_gt").is_dir():
        return None
    return [load_rgb(root / "val_gt" / f.name) for f in sorted((root / "val").glob("*.png"))]
