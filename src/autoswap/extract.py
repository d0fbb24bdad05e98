"""Raw photos and videos -> aligned face crops, masks and a manifest (the `extract` command and
`prepare` with data.source=folders).

Per image or sampled video frame: MTCNN finds faces and their 5 landmarks (searching a copy
shrunk to `extract.detect_size` on its longest side, results mapped back to full resolution);
faces below `extract.min_confidence` or smaller than `extract.min_face_size` are set aside;
`extract.keep` picks the largest, the most central, or all of the rest. Where none is kept, the
photo is searched again turned counter-clockwise by each of `extract.rotate` (90, 180, 270), and
the turn with the most confident kept face wins (in a video, until a face is found: its turn is
then used for the rest of the video); the faces are mapped back onto the photo as it is, so the
alignment below turns them upright. Each kept face is warped
onto the template (autoswap.align) at `data.face_size`, gets a landmark mask, a blur score
(variance of the Laplacian inside the mask) and a perceptual hash; blurry faces and
near-duplicates of an already kept face are dropped when those filters are on.

Output (only ever under out_dir):
    out_dir/{name}.png          the aligned face, RGB
    out_dir/masks/{name}.png    its mask, uint8 0/255
    out_dir/manifest.jsonl      one JSON row per kept face (see `_row`)
Inputs are only read. A file that cannot be used is skipped and listed under its reason.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoswap.align import (
    TEMPLATE,
    align,
    apply_affine,
    blur_score,
    face_mask,
    invert_affine,
    phash,
    template_points,
    umeyama,
)
from autoswap.config import ExtractSettings
from autoswap.errors import UserError
from autoswap.files import MARKER, atomic_write_text, check_output_dir, mark_output_dir, output_owner
from autoswap.images import IMAGE_SUFFIXES, BadImage, load_rgb
from autoswap.video import VIDEO_SUFFIXES, BadVideo, VideoFrame, iter_video_frames, probe_frames

__all__ = [
    "TEMPLATE", "DROP_REASONS", "Face", "detect", "detect_near", "select_faces", "align", "face_mask", "apply_affine",
    "invert_affine", "template_points", "umeyama", "iter_video_frames", "VideoFrame", "BadVideo",
    "list_media", "extract_to_dir", "MANIFEST", "find_faces", "turn", "turn_back",
]

MANIFEST = "manifest.jsonl"
MASKS = "masks"

# Every reason a file, frame or face can be dropped for; the returned report lists all of them.
DROP_REASONS = (
    "unreadable",  # not an image or video we can decode (corrupt, truncated, wrong extension)
    "unsupported",  # a file in an input folder that is neither a photo nor a video
    "empty_folder",  # an input folder with no photos or videos in it
    "no_frames",  # a video that decodes to no frames
    "no_face",  # no face found at all
    "low_confidence",  # faces found, none at extract.min_confidence
    "too_small",  # faces found, none at extract.min_face_size
    "blurry",  # blur score below extract.min_blur
    "duplicate",  # within extract.dedup_hamming bits of an already kept face
)

# MTCNN's last stage keeps candidates above this confidence (or min_confidence if lower), so
# that faces just under min_confidence are reported as low_confidence rather than no_face.
_DETECTOR_FLOOR = 0.8


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in source pixels
    confidence: float
    landmarks: np.ndarray  # (5, 2) x, y: left eye, right eye, nose, mouth left, mouth right

    @property
    def size(self) -> float:
        """The shortest side of the box, in source pixels."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))

    @property
    def centre(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])


# ----------------------------------------------------------------------------- detection
@functools.lru_cache(maxsize=1)
def _detector():
    """The MTCNN detector, built once per process (weights ship inside the mtcnn wheel)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mtcnn import MTCNN
    from mtcnn.stages import StageONet, StagePNet, StageRNet
    from mtcnn.utils.bboxes import (
        generate_bounding_box,
        resize_to_square,
        smart_nms_from_bboxes,
        upscale_bboxes,
    )
    from mtcnn.utils.images import apply_scales

    class PNet(StagePNet):
        """mtcnn 1.0's PNet with a fixed image pyramid: upstream counts the pyramid levels as if
        min_face_size were 20, so any larger value makes the last levels smaller than PNet's
        12 px window, TensorFlow raises, and MTCNN silently reports no face at all."""

        def __call__(self, images_normalized, images_oshapes, min_face_size=20, min_size=12,
                     scale_factor=0.709, threshold_pnet=0.6, nms_pnet1=0.5, nms_pnet2=0.7, **kwargs):
            shortest = int(np.min(images_oshapes[:, :2]))
            scale, scales = min_size / min_face_size, []
            while shortest * scale >= min_size:
                scales.append(scale)
                scale *= scale_factor
            if not scales:
                return np.empty((0, 6))
            scaled, scales = apply_scales(images_normalized, [np.asarray(scales)])
            batch = images_normalized.shape[0]
            boxes = [generate_bounding_box(r[0], r[1], threshold_pnet) for r in (self._model(s) for s in scaled)]
            boxes = [upscale_bboxes(b, np.asarray([s] * batch)) for b, s in zip(boxes, scales, strict=True)]
            boxes = [smart_nms_from_bboxes(b, threshold=nms_pnet1, method="union", initial_sort=False) for b in boxes]
            boxes = np.concatenate(boxes, axis=0) if boxes else np.empty((0, 6))
            boxes = smart_nms_from_bboxes(boxes, threshold=nms_pnet2, method="union", initial_sort=True)
            return resize_to_square(boxes)

    import tensorflow as tf

    detector = MTCNN(stages=[PNet, StageRNet, StageONet])
    for stage in detector.stages:
        # one traced graph per network instead of eager Keras calls, layer by layer: 3-5x faster
        # on the many small pyramid levels and patch batches
        stage._model = tf.function(
            stage._model, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
        )
    return detector


def _search(image: np.ndarray, s: float, min_face: float, cfg: ExtractSettings) -> list[Face]:
    """Run MTCNN on `image` shrunk by `s` (<= 1), finding faces down to `min_face` pixels of the
    shrunk image; results in `image` pixel coordinates."""
    import cv2

    h, w = image.shape[:2]
    if s < 1.0:
        dw, dh = max(1, round(w * s)), max(1, round(h * s))
        small = cv2.resize(image, (dw, dh), interpolation=cv2.INTER_AREA)
    else:
        dw, dh, small = w, h, image
    sx, sy = w / dw, h / dh
    rows = _detector().detect_faces(
        np.ascontiguousarray(small), output_type="numpy", box_format="xyxy",
        min_face_size=max(12.0, min_face), threshold_onet=min(_DETECTOR_FLOOR, cfg.min_confidence),
    )
    faces = []
    for r in np.asarray(rows, dtype=np.float64).reshape(-1, 16):
        # pixel centres of the shrunk image -> pixel centres of `image`
        box = (r[1:5] + 0.5) * np.array([sx, sy, sx, sy]) - 0.5
        lm = (np.stack([r[6:11], r[11:16]], axis=1) + 0.5) * np.array([sx, sy]) - 0.5
        faces.append(Face(box=box, confidence=float(r[5]), landmarks=lm))
    faces.sort(key=lambda f: -f.area)
    return faces


def _rgb8(image_rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] < 3:
        raise ValueError("expected an (H, W, 3) uint8 RGB image")
    return image[..., :3]


def detect(image_rgb: np.ndarray, cfg: ExtractSettings) -> list[Face]:
    """All faces MTCNN finds in an (H, W, 3) uint8 RGB image, largest first, in its pixel
    coordinates. The search runs on a copy shrunk to cfg.detect_size (longest side) and finds
    faces down to half of cfg.min_face_size; confidence and size are not filtered here (see
    `select_faces`), except for MTCNN's own floor of min(0.8, cfg.min_confidence)."""
    image = _rgb8(image_rgb)
    h, w = image.shape[:2]
    s = min(1.0, cfg.detect_size / max(h, w))
    return _search(image, s, 0.5 * cfg.min_face_size * s, cfg)


# the neighbourhood searched by detect_near, in sizes of the previous face's box either side of
# its centre, and the size the face is searched at there (enough for MTCNN's 48 px last stage)
_NEAR_REACH = 1.5
_NEAR_FACE_PX = 96


def detect_near(image_rgb: np.ndarray, box: np.ndarray, cfg: ExtractSettings) -> list[Face]:
    """Like `detect`, searching only around `box` (x1, y1, x2, y2: a face in the previous frame)
    for faces of at least half its size: a few times faster than a whole-frame search."""
    image = _rgb8(image_rgb)
    h, w = image.shape[:2]
    size = float(max(box[2] - box[0], box[3] - box[1], 1.0))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    reach = _NEAR_REACH * size
    x0, y0 = max(0, int(cx - reach)), max(0, int(cy - reach))
    x1, y1 = min(w, int(np.ceil(cx + reach)) + 1), min(h, int(np.ceil(cy + reach)) + 1)
    if x1 - x0 < 12 or y1 - y0 < 12:
        return []
    s = min(1.0, _NEAR_FACE_PX / size)
    faces = _search(np.ascontiguousarray(image[y0:y1, x0:x1]), s, 0.5 * size * s, cfg)
    off = np.array([x0, y0], dtype=np.float64)
    return [Face(box=f.box + np.tile(off, 2), confidence=f.confidence, landmarks=f.landmarks + off)
            for f in faces]


def select_faces(faces: list[Face], image_shape: tuple[int, ...], cfg: ExtractSettings
                 ) -> tuple[list[Face], str | None]:
    """Apply the confidence and size thresholds, then cfg.keep. Returns (kept faces, None) or,
    when none is kept, ([], the reason: no_face, low_confidence or too_small)."""
    if not faces:
        return [], "no_face"
    good = [f for f in faces if f.confidence >= cfg.min_confidence and f.size >= cfg.min_face_size]
    if not good:
        top = max(faces, key=lambda f: f.area)
        return [], "low_confidence" if top.confidence < cfg.min_confidence else "too_small"
    if cfg.keep == "all":
        return sorted(good, key=lambda f: -f.area), None
    if cfg.keep == "largest":
        return [max(good, key=lambda f: f.area)], None
    centre = np.array([image_shape[1] - 1, image_shape[0] - 1]) / 2
    return [min(good, key=lambda f: float(np.linalg.norm(f.centre - centre)))], None


# ----------------------------------------------------------------------------- turned photos
def turn(image: np.ndarray, angle: int) -> np.ndarray:
    """`image` turned counter-clockwise by `angle` degrees (a multiple of 90), C-contiguous."""
    k = angle // 90 % 4
    return image if k == 0 else np.ascontiguousarray(np.rot90(image, k))


def turn_back(faces: list[Face], angle: int, shape: tuple[int, ...]) -> list[Face]:
    """Faces found in `turn(image, angle)` -> the pixel coordinates of `image` (shape
    `shape`). Landmarks keep their order (the face's own left eye stays first), so aligning
    them onto the template turns the face upright."""
    k = angle // 90 % 4
    if k == 0:
        return list(faces)
    h, w = shape[:2]

    def back(p: np.ndarray) -> np.ndarray:  # (n, 2) x, y of the turned image; pixel centres exact
        x, y = p[:, 0], p[:, 1]
        if k == 1:
            return np.stack([w - 1 - y, x], axis=1)
        if k == 2:
            return np.stack([w - 1 - x, h - 1 - y], axis=1)
        return np.stack([y, h - 1 - x], axis=1)

    out = []
    for f in faces:
        corners = back(np.asarray(f.box, dtype=np.float64).reshape(2, 2))
        box = np.concatenate([corners.min(axis=0), corners.max(axis=0)])
        out.append(Face(box=box, confidence=f.confidence, landmarks=back(np.asarray(f.landmarks, np.float64))))
    return out


def _best_turn(image: np.ndarray, cfg: ExtractSettings, angles: Iterable[int]) -> tuple[list[Face], int]:
    """The faces kept (`select_faces`) in `image` turned by each of `angles`: those of the turn
    whose kept face has the highest confidence (the earlier turn on a tie), in that turned
    image's coordinates, and that angle; ([], 0) when no turn keeps any. Every turn is searched,
    not just up to the first that keeps a face: MTCNN does find faces upside down or lying on
    their side now and then (grace_hopper.jpg as a JPEG at quality 30, upside down: 0.965; the
    astronaut turned clockwise: 0.973), with lower confidence than at the right turn."""
    best: tuple[list[Face], int] = ([], 0)
    top = -1.0
    for angle in angles:
        view = turn(image, angle)
        kept, _ = select_faces(detect(view, cfg), view.shape, cfg)
        if kept and max(f.confidence for f in kept) > top:
            best, top = (kept, angle), max(f.confidence for f in kept)
    return best


def find_faces(image_rgb: np.ndarray, cfg: ExtractSettings) -> tuple[list[Face], str | None, int]:
    """`detect` + `select_faces` on a photo; where nothing is kept, the same on the photo turned
    counter-clockwise by each of cfg.rotate, keeping the turn with the most confident face.
    Returns (kept faces in the photo's own pixel coordinates, None or the upright search's
    reason for keeping none, the angle that found them: 0 = upright). Costs nothing extra where
    a face is kept upright."""
    faces, reason = select_faces(detect(image_rgb, cfg), image_rgb.shape, cfg)
    if faces:
        return faces, None, 0
    kept, angle = _best_turn(image_rgb, cfg, cfg.rotate)
    if kept:
        return turn_back(kept, angle, image_rgb.shape), None, angle
    return [], reason, 0


# ----------------------------------------------------------------------------- inputs
def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_media(folder: Path) -> tuple[list[Path], list[Path]]:
    """(photos and videos, other files) under `folder`, recursively, sorted; hidden files and
    folders (names starting with a dot) are ignored."""
    folder = Path(folder)
    media, other = [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or _hidden(p, folder):
            continue
        (media if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES else other).append(p)
    return media, other


def _is_inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _gather(inputs: Iterable[Path], out_dir: Path, dropped: dict[str, list[str]]) -> list[Path]:
    out = out_dir.resolve()
    files: list[Path] = []
    for p in map(Path, inputs):
        if not p.exists():
            raise UserError(f"{p}: no such file or folder; check the path")
        rp = p.resolve()
        if p.is_dir() and _is_inside(out, rp):
            raise UserError(f"{out_dir}: the output folder is inside the input folder {p}; choose one outside it")
        if _is_inside(rp, out):
            raise UserError(f"{p}: an input inside the output folder {out_dir}; choose another output folder")
        if p.is_dir():
            media, other = list_media(p)
            dropped["unsupported"].extend(str(o) for o in other)
            if not media:
                dropped["empty_folder"].append(str(p))
            files.extend(media)
        else:
            files.append(p)
    seen, unique = set(), []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _names(files: list[Path]) -> dict[Path, str]:
    """A file-name-safe stem per source: the file's own stem, plus a short hash of its path
    where two sources share a stem. Stable for the same inputs."""
    stems = {f: re.sub(r"[^A-Za-z0-9._-]+", "_", f.stem).strip("._") or "face" for f in files}
    counts: dict[str, int] = {}
    for s in stems.values():
        counts[s] = counts.get(s, 0) + 1
    return {
        f: s if counts[s] == 1 else f"{s}-{hashlib.sha1(f.as_posix().encode()).hexdigest()[:6]}"
        for f, s in stems.items()
    }


# ----------------------------------------------------------------------------- the run
class _Hashes:
    """The perceptual hashes of the faces kept so far, for near-duplicate checks."""

    def __init__(self) -> None:
        self._a = np.zeros(256, dtype=np.uint64)
        self._n = 0

    def near(self, h: int, max_bits: int) -> bool:
        if not self._n:
            return False
        x = np.bitwise_xor(self._a[: self._n], np.uint64(h))
        bits = np.unpackbits(x.view(np.uint8)).reshape(self._n, 64).sum(axis=1)
        return bool((bits <= max_bits).any())

    def add(self, h: int) -> None:
        if self._n == len(self._a):
            self._a = np.concatenate([self._a, np.zeros_like(self._a)])
        self._a[self._n] = h
        self._n += 1


class _Tracker:
    """Finds the faces of each photo or frame: in a video (keep=largest/central, extract.track)
    it searches only around the face kept in the previous searched frame, falling back to the
    whole frame when that finds nothing usable and every extract.full_search_every searches.
    Where the whole-frame search keeps nothing, the frame is searched turned by each of
    extract.rotate (see `find_faces`); in a video only until a face is found, after which every
    frame of that video is searched at the turn that found it (a video does not turn midway)."""

    def __init__(self, cfg: ExtractSettings) -> None:
        self.cfg = cfg
        self.source: Path | None = None
        self.face: Face | None = None  # in the coordinates of the frame turned by self.angle
        self.since_full = 0
        self.angle = 0  # the turn searched first in this source
        self.settled = False  # a face was found in this video: keep self.angle, try no other

    def find(self, rgb: np.ndarray, source: Path, is_video: bool) -> tuple[list[Face], str | None, int]:
        """(kept faces in `rgb` pixel coordinates, the reason when none, the turn that found them)."""
        cfg = self.cfg
        tracking = is_video and cfg.track and cfg.keep != "all"
        if source != self.source:
            self.source, self.face, self.angle, self.settled = source, None, 0, False
        view = turn(rgb, self.angle)
        faces, reason = [], None
        if tracking and self.face is not None and self.since_full < cfg.full_search_every:
            faces, reason = select_faces(detect_near(view, self.face.box, cfg), view.shape, cfg)
            self.since_full += 1
        if not faces:
            faces, reason = select_faces(detect(view, cfg), view.shape, cfg)
            self.since_full = 0
        if not faces and not self.settled:
            faces, angle = _best_turn(rgb, cfg, cfg.rotate)
            if faces:
                self.angle, reason = angle, None
        self.settled = is_video and (self.settled or bool(faces))
        self.face = faces[0] if tracking and faces else None
        return turn_back(faces, self.angle, rgb.shape), reason, self.angle if faces else 0


def _floats(a: np.ndarray, nd: int = 4) -> list:
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def _remove_previous(out_dir: Path) -> None:
    """Delete the crops and masks listed in a previous run's manifest (and nothing else), only
    when that manifest is extract's own (out_dir carries extract's MARKER) and only inside
    out_dir (a `masks` link to another folder is not followed)."""
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        return
    if output_owner(out_dir) != "extract":
        raise UserError(f"{manifest}: not written by `autoswap extract` ({out_dir} has no {MARKER} of its own); "
                        "move it or choose another folder")
    root = out_dir.resolve()
    for line in manifest.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            name = json.loads(line)["crop"]
        except (ValueError, KeyError, TypeError):
            continue
        if not isinstance(name, str) or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
            continue
        for p in (out_dir / f"{name}.png", out_dir / MASKS / f"{name}.png"):
            if _is_inside(p.parent.resolve(), root):
                p.unlink(missing_ok=True)  # a link: the link only
    manifest.unlink()


def _sources(path: Path, cfg: ExtractSettings, max_image_pixels: int, errors: dict[str, str],
             dropped: dict[str, list[str]], bar) -> Iterator[tuple[int, float | None, np.ndarray, str]]:
    """(frame index, time or None, rgb, report item) for a photo or each sampled video frame;
    records unreadable files and videos without frames in `dropped`."""
    suffix = path.suffix.lower()
    is_video = suffix in VIDEO_SUFFIXES
    if not is_video:
        try:
            yield 0, None, load_rgb(path, max_image_pixels), str(path)
            return
        except BadImage as e:
            unknown = suffix not in IMAGE_SUFFIXES and "unrecognised format" in str(e)
            if not unknown:
                dropped["unreadable"].append(str(path))
                errors[str(path)] = str(e)
                return
    # a video (by extension, or a file of unknown type that is not an image)
    from tqdm import tqdm

    total = probe_frames(path)
    n = 0
    with tqdm(total=(total + cfg.every_nth_frame - 1) // cfg.every_nth_frame if total and cfg.target_fps is None
              else None, unit="frame", leave=False, disable=bar.disable, desc=path.name) as frames:
        try:
            for fr in iter_video_frames(path, cfg.every_nth_frame, cfg.target_fps):
                n += 1
                frames.update()
                yield fr.index, fr.time_s, fr.rgb, f"{path}:{fr.index}"
        except BadVideo as e:
            if not is_video and n == 0:
                dropped["unreadable"].append(str(path))
                errors[str(path)] = "neither an image nor a video that can be read"
                return
            item = str(path) if n == 0 else f"{path}:{fr.index + 1}"
            dropped[e.reason if n == 0 else "unreadable"].append(item)
            errors[item] = str(e)
            return
    if n == 0:
        dropped["no_frames"].append(str(path))
        errors[str(path)] = "the video has no frames"


def extract_to_dir(inputs: list[Path], out_dir: Path, cfg: ExtractSettings, face_size: int,
                   max_image_pixels: int = 40_000_000, progress: bool = True,
                   allow_empty: bool = False, where: str = "--out") -> dict:
    """Detect, align and filter faces from the images, videos and folders in `inputs`.

    Writes out_dir/{name}.png crops (name = f"{source_stem}_{frame:06d}_{k}", k counting the
    faces kept from that image or frame), out_dir/masks/{name}.png masks (uint8 0/255, same size)
    and out_dir/manifest.jsonl (one row per kept face). Crops, masks and manifest of a previous
    run in out_dir are replaced; nothing outside out_dir is written and inputs are only read.
    out_dir is refused (autoswap.files.check_output_dir; `where` names it in the error) when it is,
    holds or lies inside an input or data/raw, or is or holds the project root, home or `/`; it
    is marked as extract's (autoswap.files.MARKER), and only a marked folder's previous manifest
    is trusted to say what may be deleted.

    Returns {"files", "images", "videos", "frames", "kept", "dropped": {reason: ["path[:frame]",
    ...]} for every reason in DROP_REASONS, "errors": {"path[:frame]": why}, "rotated": {"90":
    ["path[:frame]", ...]} for every angle in cfg.rotate: where the faces were found only with the
    photo or frame turned counter-clockwise by that angle}. Photos and frames with no usable face
    are listed once under no_face / low_confidence / too_small; blurry and duplicate are per face. Raises UserError when no face at all is kept (unless allow_empty)."""
    from PIL import Image
    from tqdm import tqdm

    out_dir = Path(out_dir)
    check_output_dir(out_dir, where)
    dropped: dict[str, list[str]] = {r: [] for r in DROP_REASONS}
    errors: dict[str, str] = {}
    rotated: dict[str, list[str]] = {str(a): [] for a in cfg.rotate}
    files = _gather(inputs, out_dir, dropped)
    names = _names(files)
    owner = output_owner(out_dir)
    if owner not in (None, "extract"):
        raise UserError(f"{where}: {out_dir} holds the output of `autoswap {owner}`, not extract; "
                        "choose another folder")
    if (out_dir / MANIFEST).exists() and owner != "extract":
        raise UserError(f"{out_dir / MANIFEST}: not written by `autoswap extract` ({out_dir} has no {MARKER} of "
                        "its own); move it or choose another folder")
    if (out_dir / MASKS).is_symlink():
        raise UserError(f"{out_dir / MASKS}: a link to another folder; extract writes and removes masks only inside "
                        f"{out_dir}: replace the link with a folder or choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous(out_dir)
    mark_output_dir(out_dir, "extract")
    (out_dir / MASKS).mkdir(exist_ok=True)

    hashes = _Hashes()
    counts = {"images": 0, "videos": 0, "frames": 0}
    kept = 0
    last_video = None
    tracker = _Tracker(cfg)
    manifest: list[str] = []  # written atomically once every crop is
    with tqdm(files, unit="file", disable=not progress, desc="extract") as bar:
        for path in bar:
            for frame, time_s, rgb, item in _sources(path, cfg, max_image_pixels, errors, dropped, bar):
                if time_s is None:
                    counts["images"] += 1
                else:
                    counts["frames"] += 1
                    if last_video != path:
                        counts["videos"] += 1
                        last_video = path
                faces, reason, angle = tracker.find(rgb, path, is_video=time_s is not None)
                if reason:
                    dropped[reason].append(item)
                if angle:
                    rotated[str(angle)].append(item)
                for k, face in enumerate(faces):
                    crop, affine = align(rgb, face.landmarks, face_size)
                    lm_crop = apply_affine(affine, face.landmarks)
                    mask = face_mask(lm_crop, face_size)
                    blur = blur_score(crop, mask)
                    if blur < cfg.min_blur:
                        dropped["blurry"].append(item)
                        continue
                    h = phash(crop)
                    if cfg.dedup_hamming and hashes.near(h, cfg.dedup_hamming):
                        dropped["duplicate"].append(item)
                        continue
                    hashes.add(h)
                    name = f"{names[path]}_{frame:06d}_{k}"
                    Image.fromarray(crop).save(out_dir / f"{name}.png")
                    Image.fromarray(mask).save(out_dir / MASKS / f"{name}.png")
                    manifest.append(json.dumps(_row(name, path, frame, time_s, k, rgb.shape, face,
                                                   affine, lm_crop, blur, h, angle)) + "\n")
                    kept += 1
            bar.set_postfix(kept=kept)
    atomic_write_text(out_dir / MANIFEST, "".join(manifest))

    report = {"files": len(files), **counts, "kept": kept, "dropped": dropped, "errors": errors,
              "rotated": rotated}
    if kept == 0 and not allow_empty:
        raise UserError(_nothing_usable(inputs, report))
    return report


def _row(name: str, path: Path, frame: int, time_s: float | None, k: int, shape: tuple[int, ...],
         face: Face, affine: np.ndarray, lm_crop: np.ndarray, blur: float, h: int, rotation: int = 0) -> dict:
    """One manifest row. `affine` maps source pixel coordinates (of the upright, full-resolution
    photo or frame, `source_size` = [width, height]) to crop pixel coordinates; invert it to paste
    the crop back. Pixel centres sit on integer coordinates. `rotation`: 0, or the angle
    (extract.rotate, counter-clockwise) the photo or frame was turned by to find the face; box,
    landmarks and affine are in the pixels of the photo or frame as loaded all the same."""
    return {
        "crop": name,
        "source": path.as_posix(),
        "kind": "image" if time_s is None else "video",
        "frame": frame,
        "time_s": None if time_s is None else round(time_s, 6),
        "face_index": k,
        "source_size": [int(shape[1]), int(shape[0])],
        "box": _floats(face.box, 2),
        "affine": _floats(affine, 8),
        "landmarks_source": _floats(face.landmarks),
        "landmarks_crop": _floats(lm_crop),
        "confidence": round(face.confidence, 6),
        "blur": round(blur, 3),
        "phash": f"{h:016x}",
        "rotation": int(rotation),
    }


def _nothing_usable(inputs: list[Path], report: dict) -> str:
    where = ", ".join(str(p) for p in inputs) or "(no inputs)"
    reasons = ", ".join(f"{len(v)} {k}" for k, v in report["dropped"].items() if v)
    if report["files"] == 0:
        return f"{where}: no photos or videos found; add some (jpg, png, mp4, mov, ...)"
    return (f"{where}: no usable face in {report['files']} file(s) ({reasons}); add photos or videos "
            f"where the face is clear, or relax extract.min_confidence / extract.min_face_size in params.yaml")
