"""`autoswap swap`: put the other person's face into photos and videos, seamlessly, and mark
the result as AI-generated (autoswap.mark).

For every photo or video frame:
1. **Find faces** with the extraction code (MTCNN, extract.min_confidence / min_face_size /
   detect_size); pick the largest, all, or some by index (swap.faces; 0 = the largest, by box
   area). In a video the chosen faces are followed with `extract.detect_near` and the whole frame
   is searched again every extract.full_search_every frames (extract.track), and the landmarks
   are smoothed over time (swap.smooth) so the pasted face does not jitter.
2. **Align** each face onto the template at the model's face size (extract.align: the same
   template and margin as training) and take the model's view of it with
   `pipeline.center_crop`, with the geometry (face_size, crop, input_size) read from the
   model's model.json, never from params.yaml.
3. **Swap**: the shared encoder, then decoder A or B (swap.to).
4. **Colour**: the new face's LAB statistics are matched to the original face's inside the mask
   (mean/std, or full histograms), on the model-size images.
5. **Blend**: the landmark mask (extract.face_mask), cut to the part of the face the model
   sees, eroded (swap.mask_erode) and feathered (swap.mask_feather), is warped back with the
   inverse affine together with the new face; optional Poisson blending (OpenCV
   seamlessClone) first. Pixels where the mask is 0 are left exactly as they were, so
   bystanders and the background are untouched (before the watermark, which changes every pixel
   by about one grey level).
Faces are found on the input frame; each chosen face is blended into the output in turn.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoswap.config import ExtractSettings, Settings, SwapSettings
from autoswap.errors import UserError
from autoswap.files import atomic_write_json, check_output_dir, fresh_output_dir

# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Geometry:
    """How a `face_size` aligned face becomes the model's `input_size` input: its centre
    `crop` fraction, resized (pipeline._output_grid). Read from model.json."""

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


def _geometry_settings(meta: dict, where: Path) -> Settings:
    """A Settings tree carrying the model's own geometry, so that pipeline.BatchSpec and
    center_crop are used exactly as in training."""
    from autoswap.config import parse

    try:
        return parse({"data": {"face_size": meta["face_size"]}, "model": meta["model"],
                      "train": {"crop": meta["crop"]}}, where)
    except (KeyError, TypeError, UserError):
        raise UserError(f"{where}: no face_size / crop / model settings in it; retrain with this autoswap") from None


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
        encoder, decoder_a, decoder_b, meta = load_final(model_dir)
        # the training's MLflow run is no part of model.json: tracking.model_run finds it (None for a
        # model folder without its models/run.json), and the rest of swap reads it from self.meta
        run = tracking.model_run(model_dir)
        meta = {**meta, "mlflow_run_id": run and run[0], "mlflow_tracking_uri": run and run[1]}
        self.meta, self.dir = meta, model_dir
        settings = _geometry_settings(meta, model_dir / "model.json")
        self.spec = BatchSpec.from_settings(settings)
        self.geometry = Geometry(settings.data.face_size, settings.model.input_size, settings.train.crop)
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


# ----------------------------------------------------------------------------- finding faces
def choose_faces(faces: list, cfg: ExtractSettings, which) -> list:
    """Faces above the confidence and size thresholds, largest first, then swap.faces."""
    good = sorted((f for f in faces if f.confidence >= cfg.min_confidence and f.size >= cfg.min_face_size),
                  key=lambda f: -f.area)
    if which == "largest":
        return good[:1]
    if which == "all":
        return good
    return [good[i] for i in which if i < len(good)]


class FaceFinder:
    """The faces to swap in each photo or frame. In a video (extract.track) the chosen faces are
    searched for only around where they were, with a whole-frame search where one is lost and
    every extract.full_search_every frames (new faces join then)."""

    def __init__(self, cfg: ExtractSettings, which, video: bool) -> None:
        self.cfg, self.which, self.video = cfg, which, video
        self.prev: list = []
        self.since_full = 0

    def __call__(self, rgb: np.ndarray) -> list:
        from autoswap.extract import detect, detect_near

        cfg = self.cfg
        if self.video and cfg.track and self.prev and self.since_full < cfg.full_search_every:
            found = []
            for f in self.prev:
                near = choose_faces(detect_near(rgb, f.box, cfg), cfg, "all")
                if not near:
                    found = []
                    break
                found.append(min(near, key=lambda g, f=f: float(np.linalg.norm(g.centre - f.centre))))
            if found:
                self.since_full += 1
                self.prev = found
                return found
        chosen = choose_faces(detect(rgb, cfg), cfg, self.which)
        self.since_full = 0
        self.prev = chosen if self.video else []
        return chosen


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

    def finder(self, video: bool) -> FaceFinder:
        return FaceFinder(self.extract, self.cfg.faces, video)

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


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
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
        self.marker = Marker(self.model.meta, s.model, key_dir(s.key_dir), s.signer_cert, s.signer_key,
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
        return self.image(src, dst) if _kind(src) == "image" else self.video(src, dst)


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
    if _inside(dst, src):
        raise UserError(f"{dst}: the output folder is inside the input folder {src}; choose one outside it")
    if _inside(src, dst):
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


def tag_watermark_id(model_meta: dict, wm_id: int) -> bool:
    """Set the tag `autoswap.watermark_id` on the MLflow run that made the model (model.json's
    mlflow_run_id, in its mlflow_tracking_uri, else the project store), so the run says which ID
    its outputs carry. Skipped quietly (False) when the model has no run or the store is not
    there: the ID is in the local registry and in every output all the same."""
    run_id = model_meta.get("mlflow_run_id")
    if not run_id:
        return False
    from autoswap import tracking

    uri = (model_meta.get("mlflow_tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
           or f"sqlite:///{tracking.project_root() / 'mlruns' / 'mlflow.db'}")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return False  # opening it would create an empty store
    import logging

    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        mlflow.MlflowClient(uri).set_tag(run_id, "autoswap.watermark_id", f"{wm_id:08x}")
    except mlflow.exceptions.MlflowException:
        return False  # no such run in that store
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
    for a, b in pairs:
        try:
            results.append(run.file(a, b))
        except UserError as e:
            if len(pairs) == 1:
                raise
            _warn(f"skipped {e}")
            results.append({"input": str(a), "output": None, "status": f"skipped: {e}"})
    if any(r["status"] == "swapped" for r in results):
        tag_watermark_id(run.model.meta, run.marker.wm_id)
    return results


# ----------------------------------------------------------------------------- the DVC stage
DEMO_PHOTO = "grace_hopper.jpg"
DEMO_CLIP = "grace_hopper_clip.mp4"


def make_demo_inputs(folder: Path, frames: int) -> tuple[Path, Path]:
    """matplotlib's grace_hopper.jpg, and a short clip made from it: a slow zoom and pan over
    her face at 12 fps with a 440 Hz tone, whose last two frames show no face (a crop of the
    uniform)."""
    import av
    import cv2
    from matplotlib import cbook
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photo = folder / DEMO_PHOTO
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo.write_bytes(f.read())
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    clip = folder / DEMO_CLIP
    w, h, fps, rate = 320, 240, 12, 44100
    centre = np.array([265.0, 210.0])  # her face
    with av.open(str(clip), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": "18", "preset": "veryfast"}
        aus = c.add_stream("aac", rate=rate)
        aus.layout = "mono"
        for i in range(frames):
            u = i / max(1, frames - 1)
            if i >= frames - 2:  # no face: the uniform below her chin
                m = cv2.getRotationMatrix2D((265.0, 520.0), 0, 1.0)
                m[:, 2] += np.array([w / 2, h / 2]) - np.array([265.0, 520.0])
            else:
                m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), -4 + 8 * u, 0.75 + 0.15 * u)
                m[:, 2] += np.array([w * (0.45 + 0.1 * u), h * 0.5]) - centre
            frame = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            for p in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        n = round(frames / fps * rate)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
        for k in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(tone[None, k:k + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts = rate, k
            for p in aus.encode(af):
                c.mux(p)
        for s in (aus, vs):
            for p in s.encode(None):
                c.mux(p)
    return photo, clip


def swap_demo(settings: Settings, progress: bool = True) -> dict:
    """The `swap` DVC stage: swap the demo photo and clip with models/final, verify the marks,
    write swap.demo.out_dir/{photo, clip, verify.json}, and log them to the model's MLflow run."""
    from autoswap.mark import key_dir, verify

    d = settings.swap.demo
    run = SwapRun(settings, progress)  # the model (and signer) first: nothing is written without them
    inputs = (settings.swap.model, settings.data.dir_a, settings.data.dir_b)
    check_output_dir(d.input_dir, "params.yaml: key 'swap.demo.input_dir'", inputs, suggest="data/demo")
    out = fresh_output_dir(d.out_dir, "swap", "params.yaml: key 'swap.demo.out_dir'", (d.input_dir, *inputs),
                           suggest="swaps")
    photo, clip = make_demo_inputs(d.input_dir, d.frames)
    results = [run.file(photo, out / photo.name), run.file(clip, out / clip.name)]
    registry = key_dir(settings.swap.key_dir)
    checks = {Path(r["output"]).name: verify(Path(r["output"]), registry) for r in results}
    report = {"model": str(settings.swap.model), "to": settings.swap.to, "watermark_id": f"{run.marker.wm_id:08x}",
              "files": results, "verify": checks}
    atomic_write_json(out / "verify.json", report)
    run_id = run.model.meta.get("mlflow_run_id")
    if run_id:
        import mlflow

        from autoswap import tracking

        tracking.setup(settings.tracking.experiment)
        try:
            with mlflow.start_run(run_id=run_id):
                mlflow.log_artifacts(str(out), artifact_path="swaps")
                mlflow.set_tag("autoswap.watermark_id", f"{run.marker.wm_id:08x}")
        except mlflow.exceptions.MlflowException as e:
            _warn(f"MLflow run {run_id} not found in {tracking.tracking_uri()} ({type(e).__name__}); outputs not logged")
    return report
