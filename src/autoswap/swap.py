"""`autoswap swap`: put the other person's face into photos and videos, seamlessly, and mark
the result as AI-generated (autoswap.mark).

Why one module: everything between a face found and a face pasted back (the model's view of it,
colour, mask, blend) must agree on one geometry, the model card's (models/final/model.json).

For every photo or video frame:
1. **Find faces** (autoswap.faces: MTCNN with extract.min_confidence / min_face_size /
   detect_size); pick the largest, all, or some by index (swap.faces; 0 = the largest, by box
   area). In a video the chosen faces are followed with `faces.detect_near` and the whole frame
   is searched again every extract.full_search_every frames (extract.track), and the landmarks
   are smoothed over time (swap.smooth) so the pasted face does not jitter.
2. **Align** each face onto the template at the model's face size (align.align: the same
   template and margin as training) and take the model's view of it with
   `pipeline.center_crop`, with the geometry (face_size, crop, input_size) read from the
   model's card (model.ModelCard), never from params.yaml.
3. **Swap**: the shared encoder, then decoder A or B (swap.to).
4. **Colour**: the new face's LAB statistics are matched to the original face's inside the mask
   (mean/std, or full histograms), on the model-size images.
5. **Blend**: the landmark mask (align.face_mask), cut to the part of the face the model
   sees, eroded (swap.mask_erode) and feathered (swap.mask_feather), is warped back with the
   inverse affine together with the new face; optional Poisson blending (OpenCV
   seamlessClone) first. Pixels where the mask is 0 are left exactly as they were, so
   bystanders and the background are untouched (before the watermark, which changes every pixel
   by about one grey level).
Faces are found on the input frame; each chosen face is blended into the output in turn.
The demo DVC stage that runs this on a real photo and clip is autoswap.demo.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoswap.config import ExtractSettings, Settings, SwapSettings
from autoswap.errors import UserError, naming
from autoswap.faces import FaceTracker
from autoswap.files import is_inside
from autoswap.progress import Progress


# ----------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Geometry:
    """How a `face_size` aligned face becomes the model's `input_size` input: its centre
    `crop` fraction, resized (pipeline._output_grid). From the model's card."""

    face_size: int
    input_size: int
    crop: float

    @property
    def crop_px(self) -> int:
        return round(self.crop * self.face_size)

    @property
    def model_to_face(self) -> np.ndarray:
        """2x3 affine: model pixel (x, y) -> aligned-face pixel, half-pixel centres as in
        pipeline._output_grid."""
        k = self.crop_px / self.input_size
        t = (self.face_size - self.crop_px) / 2.0 + 0.5 * k - 0.5
        return np.array([[k, 0.0, t], [0.0, k, t]])


class FaceSwapModel:
    """The trained encoder + one decoder, with the crop geometry it was trained with."""

    def __init__(self, model_dir: Path, to: str) -> None:
        import tensorflow as tf

        from autoswap import tracking
        from autoswap.model import load_final
        from autoswap.pipeline import BatchSpec

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise UserError(f"{model_dir}: no such model folder; train one with `dvc repro train` or pass --model DIR")
        encoder, decoder_a, decoder_b, card = load_final(model_dir)
        self.card, self.dir = card, model_dir
        # the training's MLflow run is no part of the card: tracking.model_run finds it (None for a
        # model folder without its models/run.json); the marks carry it
        run_id, uri = tracking.model_run(model_dir) or (None, None)
        self.run = {"mlflow_run_id": run_id, "mlflow_tracking_uri": uri}
        self.spec = BatchSpec.from_settings(card.settings())
        self.geometry = Geometry(card.face_size, card.input_size, card.crop)
        decoder = decoder_a if to == "a" else decoder_b
        size = self.geometry.input_size

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)], reduce_retracing=True)
        def run(x):
            return decoder(encoder(x, training=False), training=False)

        self._run = run

    def model_input(self, faces: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 aligned faces -> (N, o, o, 3) float32 in [0, 1], as in training."""
        from autoswap.pipeline import center_crop

        return np.asarray(center_crop(self.spec, faces))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(x.astype(np.float32)))


# ----------------------------------------------------------------------------- colour and masks
def _lab(rgb01: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.clip(rgb01, 0, 1).astype(np.float32), cv2.COLOR_RGB2LAB)


def _rgb(lab: np.ndarray) -> np.ndarray:
    import cv2

    return np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB), 0, 1)


def match_colour(new: np.ndarray, target: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Match `new`'s colours (o, o, 3) in [0, 1] to `target`'s inside `mask` (o, o) bool, in LAB:
    mean/std per channel (Reinhard), or per-channel histogram matching."""
    if mode == "none" or mask.sum() < 16:
        return new
    a, b = _lab(new), _lab(target)
    out = a.copy()
    for ch in range(3):
        src, ref = a[..., ch][mask], b[..., ch][mask]
        if mode == "mean_std":
            out[..., ch] = (a[..., ch] - src.mean()) / max(float(src.std()), 1e-3) * ref.std() + ref.mean()
        else:  # histogram: map the new face's quantiles onto the original's
            q = np.linspace(0, 1, 257)
            out[..., ch] = np.interp(a[..., ch], np.quantile(src, q), np.quantile(ref, q))
    return _rgb(out)


def blend_mask(mask: np.ndarray, geometry: Geometry, erode: float, feather: float) -> np.ndarray:
    """The landmark mask (S, S) uint8 of an aligned face -> float32 blend weights in [0, 1]:
    cut to the part of the face the model sees, eroded by `erode` x S, feathered over `feather`
    x S (a Gaussian edge). Zero wherever the model's output does not reach."""
    import cv2

    s = geometry.face_size
    e = round(erode * s)
    k = round(feather * s) | 1  # odd kernel
    half = k // 2 if k >= 3 else 0
    hard = (mask > 0).astype(np.uint8)
    if e > 0:
        hard = cv2.erode(hard, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * e + 1, 2 * e + 1)))
    # the model sees face pixels [lo, hi]; keep the feathered edge inside them
    c = geometry.crop_px
    lo = int(np.ceil((s - c) / 2.0)) + half + 1
    hi = int(np.floor((s - c) / 2.0 + c - 1)) - half - 1
    window = np.zeros_like(hard)
    if hi > lo:
        window[lo:hi + 1, lo:hi + 1] = 1
    soft = (hard & window).astype(np.float32)
    if half:
        soft = cv2.GaussianBlur(soft, (k, k), sigmaX=k / 6.0, borderType=cv2.BORDER_CONSTANT)
    return soft


# ----------------------------------------------------------------------------- landmarks over time
class LandmarkSmoother:
    """Exponential smoothing of each face's landmarks across video frames; a face is matched to
    the nearest one of the previous frame, and fast moves are followed at once (less smoothing
    as the move approaches a third of the eye distance)."""

    def __init__(self, strength: float) -> None:
        self.strength = strength
        self.tracks: list[np.ndarray] = []

    def __call__(self, landmarks: list[np.ndarray]) -> list[np.ndarray]:
        if self.strength <= 0:
            return landmarks
        out = []
        for lm in landmarks:
            d = max(float(np.linalg.norm(lm[1] - lm[0])), 1.0)
            prev = min(self.tracks, key=lambda p, lm=lm: float(np.linalg.norm(p.mean(0) - lm.mean(0))), default=None)
            if prev is not None and np.linalg.norm(prev.mean(0) - lm.mean(0)) < 0.5 * d:
                motion = float(np.linalg.norm(lm - prev, axis=1).mean()) / d
                a = self.strength * float(np.clip(1.0 - motion / 0.33, 0.0, 1.0))
                lm = a * prev + (1.0 - a) * lm
            out.append(lm)
        self.tracks = out
        return out


# ----------------------------------------------------------------------------- one frame
class Swapper:
    """Swap the chosen faces of photos and frames (unmarked; marking is autoswap.mark's)."""

    def __init__(self, model: FaceSwapModel, swap: SwapSettings, extract: ExtractSettings) -> None:
        self.model, self.cfg, self.extract = model, swap, extract

    def finder(self, video: bool):
        """rgb -> the faces to swap in it (autoswap.faces.Face, swap.faces of them): one finder
        per photo, or per video, called on its frames in order (it follows the faces)."""
        tracker = FaceTracker(self.extract, self.cfg.faces, follow=video and self.extract.track)
        return lambda rgb: tracker.find(rgb)[0]

    def swap(self, rgb: np.ndarray, landmarks: list[np.ndarray]) -> np.ndarray:
        """Replace the faces with these (5, 2) landmarks in an (H, W, 3) uint8 image."""
        from autoswap.align import align, apply_affine, face_mask

        if not landmarks:
            return rgb
        g = self.model.geometry
        aligned = [align(rgb, lm, g.face_size) for lm in landmarks]
        crops = np.stack([c for c, _ in aligned])
        x = self.model.model_input(crops)  # (N, o, o, 3)
        y = self.model(x)
        out = rgb.copy()
        for i, (lm, (_, affine)) in enumerate(zip(landmarks, aligned, strict=True)):
            mask = face_mask(apply_affine(affine, lm), g.face_size)
            weights = blend_mask(mask, g, self.cfg.mask_erode, self.cfg.mask_feather)
            new = self._colour(y[i], x[i], mask)
            self._paste(out, rgb, new, weights, affine)
        return out

    def _colour(self, new: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import cv2

        if self.cfg.color == "none":
            return new
        g = self.model.geometry
        o = g.input_size
        inside = cv2.warpAffine(mask, g.model_to_face, (o, o), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
        return match_colour(new, target, inside, self.cfg.color)

    def _paste(self, out: np.ndarray, frame: np.ndarray, new: np.ndarray, weights: np.ndarray,
               affine: np.ndarray) -> None:
        """Warp the model's output `new` (o, o, 3) and the blend `weights` (S, S) back onto the
        frame with the inverse of the alignment `affine`, and blend into `out` in place."""
        import cv2

        from autoswap.align import apply_affine, invert_affine

        g = self.model.geometry
        h, w = frame.shape[:2]
        face_to_frame = np.vstack([invert_affine(affine), [0, 0, 1]])
        model_to_frame = face_to_frame @ np.vstack([g.model_to_face, [0, 0, 1]])
        # the region of the frame the face covers, +2 px for interpolation
        s = g.face_size
        corners = apply_affine(face_to_frame[:2], np.array([[-0.5, -0.5], [s - 0.5, -0.5], [-0.5, s - 0.5], [s - 0.5, s - 0.5]]))
        x0, y0 = (max(0, int(np.floor(corners[:, i].min())) - 2) for i in (0, 1))
        x1 = min(w, int(np.ceil(corners[:, 0].max())) + 3)
        y1 = min(h, int(np.ceil(corners[:, 1].max())) + 3)
        if x1 <= x0 or y1 <= y0:
            return
        shift = np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1]])
        size = (x1 - x0, y1 - y0)
        face = cv2.warpAffine(new.astype(np.float32), (shift @ model_to_frame)[:2], size,
                              flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        m = cv2.warpAffine(weights, (shift @ face_to_frame)[:2], size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        m = np.clip(m, 0.0, 1.0)
        if not (m > 0).any():
            return
        roi = frame[y0:y1, x0:x1]
        if self.cfg.sharpen > 0:
            # unsharp mask at the frame's scale: sigma is a fraction of the face's size there
            face_px = g.face_size / float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
            soft = cv2.GaussianBlur(face, (0, 0), max(0.5, self.cfg.sharpen_radius * face_px))
            face = face + self.cfg.sharpen * (face - soft)
        face = np.clip(face * 255.0, 0, 255)
        if self.cfg.poisson:
            face = _poisson(face, roi, m)
        base = roi.astype(np.float32)
        blended = np.rint(base + m[..., None] * (face - base)).astype(np.uint8)
        region = out[y0:y1, x0:x1]
        keep = m > 0
        region[keep] = blended[keep]


def _poisson(face: np.ndarray, roi: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """OpenCV seamlessClone of the warped face into the frame region where the weights are
    above zero; padded so the mask never touches the border (which seamlessClone rejects)."""
    import cv2

    pad = 4
    src = cv2.copyMakeBorder(np.rint(face).astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_REFLECT)
    dst = cv2.copyMakeBorder(roi, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    mask = cv2.copyMakeBorder((weights > 0.01).astype(np.uint8) * 255, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    ys, xs = np.nonzero(mask)
    if len(xs) < 9:
        return face
    # seamlessClone puts the mask's bounding box (min..max) centred on `p`: p = min + (max - min) // 2
    p = (int(xs.min() + (xs.max() - xs.min()) // 2), int(ys.min() + (ys.max() - ys.min()) // 2))
    try:
        cloned = cv2.seamlessClone(src, dst, mask, p, cv2.NORMAL_CLONE)
    except cv2.error:
        return face
    return cloned[pad:-pad, pad:-pad].astype(np.float32)


# ----------------------------------------------------------------------------- files
# x264's default dead zones round the watermark's small, smooth change away in P and B frames
# (measured on the demo clip at crf 18: ~40% of frames kept a readable ID on their own); dead
# zones of 6 keep it in every frame (slot accuracy 0.73 -> 0.83) for about 20% more bytes.
X264_PARAMS = "deadzone-inter=6:deadzone-intra=6"


def _warn(msg: str) -> None:
    print(f"autoswap: warning: {msg}", file=sys.stderr)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _kind(path: Path) -> str | None:
    from autoswap.images import IMAGE_SUFFIXES
    from autoswap.video import VIDEO_SUFFIXES

    s = path.suffix.lower()
    return "image" if s in IMAGE_SUFFIXES else "video" if s in VIDEO_SUFFIXES else None


def _image_format(path: Path) -> str | None:
    from autoswap.mark import IMAGE_FORMATS

    return IMAGE_FORMATS.get(path.suffix.lower())


def _check_output(src: Path, dst: Path, force: bool) -> None:
    """Refuse what would overwrite the input, an existing file (unless force), or a format that
    cannot carry the marks."""
    from autoswap.mark import VIDEO_OUT_SUFFIXES

    if _same_file(src, dst):
        raise UserError(f"{dst}: OUTPUT is the INPUT; autoswap never overwrites its input, choose another path")
    kind = _kind(src)
    if kind == "image":
        fmt, want = _image_format(dst), _image_format(src)
        if want is None:
            raise UserError(f"{src}: {src.suffix} cannot carry the AI-generated marks; convert it to PNG or JPEG first")
        if fmt != want:
            raise UserError(f"{dst}: OUTPUT must have the input's format ({src.suffix}); "
                            f"name it {dst.with_suffix(src.suffix).name}")
    elif dst.suffix.lower() not in VIDEO_OUT_SUFFIXES:
        raise UserError(f"{dst}: videos are written as H.264 in MP4 or MOV (C2PA can sign those); "
                        f"name it {dst.with_suffix('.mp4').name}")
    if dst.exists() and not force:
        raise UserError(f"{dst}: exists; choose another OUTPUT or pass --force to replace it")
    if dst.exists() and dst.is_dir():
        raise UserError(f"{dst}: is a folder; name an output file")


class SwapRun:
    """One `autoswap swap`: the model, the marker, and the files."""

    def __init__(self, settings: Settings, progress: bool = True) -> None:
        from autoswap.mark import Marker, key_dir

        s = settings.swap
        self.settings, self.progress = settings, progress
        self.model = FaceSwapModel(s.model, s.to)
        self.swapper = Swapper(self.model, s, settings.extract)
        self.marker = Marker(self.model.run, s.model, key_dir(s.key_dir), s.signer_cert, s.signer_key,
                             s.label_text if s.label else None)

    # -- photos
    def image(self, src: Path, dst: Path) -> dict:
        from PIL import Image

        from autoswap.images import BadImage, load_rgb
        from autoswap.mark import copy_unmarked

        limit = self.settings.data.max_image_pixels
        try:
            with Image.open(src) as im:
                n, icc = im.width * im.height, im.info.get("icc_profile")
        except Exception:
            n, icc = 0, None
        if n > limit:
            raise UserError(f"{src}: {n} pixels, above data.max_image_pixels ({limit}); raise it in params.yaml")
        try:
            rgb = load_rgb(src, limit)
        except BadImage as e:
            raise UserError(f"{src}: {e}") from None
        faces = self.swapper.finder(video=False)(rgb)
        if not faces:
            copy_unmarked(src, dst)
            _warn(f"{src}: no face found; copied unchanged to {dst}")
            return {"input": str(src), "output": str(dst), "kind": "image", "faces": 0, "status": "copied"}
        out = self.swapper.swap(rgb, [f.landmarks for f in faces])
        self.marker.write_image(dst, out, _image_format(dst), src, icc)
        return {"input": str(src), "output": str(dst), "kind": "image", "faces": len(faces), "status": "swapped"}

    # -- videos
    def video(self, src: Path, dst: Path) -> dict:
        from autoswap.mark import video_tags
        from autoswap.video import BadVideo, transcode

        find = self.swapper.finder(video=True)
        smooth = LandmarkSmoother(self.settings.swap.smooth)
        faces_per_frame: list[int] = []

        def process(index: int, time_s: float, rgb: np.ndarray):
            faces = find(rgb)
            faces_per_frame.append(len(faces))
            if not faces:
                smooth.tracks = []
                return None
            out = self.swapper.swap(rgb, smooth([f.landmarks for f in faces]))
            return self.marker.pixels(out)

        s = self.settings.swap
        with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".autoswap-") as tmp:
            plain = Path(tmp) / f"plain{dst.suffix.lower()}"
            try:
                stats = transcode(src, plain, process, crf=s.crf, preset=s.preset, x264_params=X264_PARAMS,
                                  metadata=video_tags(self.marker.wm_id, self.marker.run_id),
                                  progress=self.progress, desc=src.name)
            except BadVideo as e:
                raise UserError(f"{src}: {e}") from None
            swapped = sum(1 for n in faces_per_frame if n)
            if swapped == 0 and src.suffix.lower() == dst.suffix.lower():
                from autoswap.mark import copy_unmarked

                copy_unmarked(src, dst)
                _warn(f"{src}: no face in any frame; copied unchanged to {dst}")
                status = "copied"
            else:
                if swapped == 0:
                    _warn(f"{src}: no face in any frame; re-encoded to {dst} (marked all the same)")
                self.marker.finish_video(plain, dst, src)
                status = "swapped"
        for name in stats["audio_dropped"]:
            _warn(f"{src}: its {name} audio cannot be copied into {dst.suffix}; left out")
        return {"input": str(src), "output": str(dst), "kind": "video", "frames": stats["frames"],
                "swapped_frames": swapped, "fps": stats["fps"], "status": status}

    def file(self, src: Path, dst: Path) -> dict:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self.image(src, dst) if _kind(src) == "image" else self.video(src, dst)
        except OSError as e:  # disk full, read-only: about `dst`, not the temporary names it is made under
            if _temporary(e.filename, dst):
                raise naming(e, dst, e.filename) from None
            raise


def _temporary(name, dst: Path) -> bool:
    """Whether `name` is no file, or one of the hidden temporary names `dst` is written under
    in its folder (`.autoswap-*/...`, `.NAME.*.tmp`)."""
    if not name:
        return True
    try:
        rel = Path(os.fsdecode(name)).resolve().relative_to(dst.parent.resolve())
    except (ValueError, OSError, TypeError):
        return False
    return bool(rel.parts) and rel.parts[0].startswith(".")


def _plan(src: Path, dst: Path, force: bool) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(input, output) pairs and skipped files; raises UserError for bad INPUT / OUTPUT."""
    from autoswap.extract import list_media
    from autoswap.mark import VIDEO_OUT_SUFFIXES

    if not src.exists():
        raise UserError(f"{src}: no such file or folder; check the path")
    if _same_file(src, dst):
        raise UserError(f"{dst}: OUTPUT is the INPUT; autoswap never overwrites its input, choose another path")
    if src.is_file():
        if _kind(src) is None:
            raise UserError(f"{src}: not a photo or video autoswap reads ({src.suffix or 'no suffix'}); "
                            "use JPEG, PNG, WebP or TIFF photos, or MP4, MOV, MKV, WebM, AVI videos")
        if dst.is_dir():
            dst = dst / (src.name if _kind(src) == "image" or src.suffix.lower() in VIDEO_OUT_SUFFIXES
                         else src.with_suffix(".mp4").name)
        _check_output(src, dst, force)
        return [(src, dst)], []
    # a folder: the same tree of names under OUTPUT
    if dst.exists() and not dst.is_dir():
        raise UserError(f"{dst}: INPUT is a folder, so OUTPUT must be a folder too")
    if is_inside(dst, src):
        raise UserError(f"{dst}: the output folder is inside the input folder {src}; choose one outside it")
    if is_inside(src, dst):
        raise UserError(f"{dst}: the input folder {src} is inside the output folder; choose another")
    media, other = list_media(src)
    skipped = [f"{p}: not a photo or video" for p in other]
    pairs = []
    for p in media:
        rel = p.relative_to(src)
        if _kind(p) == "image" and _image_format(p) is None:
            skipped.append(f"{p}: {p.suffix} cannot carry the AI-generated marks; convert it to PNG or JPEG")
            continue
        if _kind(p) == "video" and p.suffix.lower() not in VIDEO_OUT_SUFFIXES:
            rel = rel.with_suffix(".mp4")
        out = dst / rel
        _check_output(p, out, force)
        pairs.append((p, out))
    if not pairs:
        raise UserError(f"{src}: no photos or videos autoswap can swap in this folder")
    return pairs, skipped


def tag_watermark_id(model_dir: Path, wm_id: int) -> bool:
    """Set the tag `autoswap.watermark_id` on the MLflow run that made the model
    (tracking.log_to_model_run), so the run says which ID its outputs carry. Skipped quietly
    (False) when the model has no run or its store is not there: the ID is in the local registry
    and in every output all the same."""
    import mlflow

    from autoswap import tracking

    with tracking.log_to_model_run(model_dir) as run:
        if run is None:
            return False
        mlflow.set_tag("autoswap.watermark_id", f"{wm_id:08x}")
    return True


def swap_files(settings: Settings, src: Path, dst: Path, force: bool = False, progress: bool = True) -> list[dict]:
    """`autoswap swap INPUT OUTPUT`: a photo, a video, or a folder of them. Everything is
    checked (paths, formats, the model, the signer) before anything is written."""
    src, dst = Path(src), Path(dst)
    pairs, skipped = _plan(src, dst, force)
    run = SwapRun(settings, progress)
    for s in skipped:
        _warn(f"skipped {s}")
    results = []
    with Progress("swap", len(pairs), unit="file", enabled=progress and len(pairs) > 1) as bar:
        for a, b in pairs:
            try:
                results.append(run.file(a, b))
            except UserError as e:
                if len(pairs) == 1:
                    raise
                _warn(f"skipped {e}")
                results.append({"input": str(a), "output": None, "status": f"skipped: {e}"})
            bar.update()
    if any(r["status"] == "swapped" for r in results):
        tag_watermark_id(run.model.dir, run.marker.wm_id)
    return results
