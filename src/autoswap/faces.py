"""Finding faces: one set of rules for `extract` (training data) and `swap` (the faces to replace).

Why one module: extraction and swapping must agree on what a face is (MTCNN's box, confidence and
5 landmarks, the same thresholds) and on how a face is followed through a video; written twice,
the two drifted apart.

- `detect`: every face MTCNN finds in a photo or frame, searched on a copy shrunk to
  extract.detect_size (longest side), mapped back to full resolution, largest first.
- `detect_near`: the same, only around where a face was in the previous frame (a few times
  faster than a whole-frame search).
- `select_faces`: extract.min_confidence and extract.min_face_size, then a policy: the largest,
  the most central, all (largest first), or some by index (0 = the largest). Where none is kept,
  the reason: no_face, low_confidence or too_small.
- `turn` / `turn_back`: photos that are on their side or upside down (extract.rotate) are
  searched turned, and the faces mapped back onto the photo as it is, landmarks in their own
  order, so that aligning them turns the face upright.
- `FaceTracker`: the faces of one photo, or of one video's frames in order. In a video it
  follows each face it kept to the nearest usable face around where it was (`detect_near`),
  searching the whole frame where one is lost and every extract.full_search_every frames; where
  a whole-frame search keeps nothing, the frame is searched turned (its `rotate` angles) until a
  face is found, and a video then stays at that turn.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from autoswap.config import ExtractSettings

# which faces select_faces keeps: extract.keep's three, or swap.faces' indices (0 = the largest)
Policy = Literal["largest", "central", "all"] | tuple[int, ...]

# MTCNN's last stage keeps candidates above this confidence (or min_confidence if lower), so
# that faces just under min_confidence are reported as low_confidence rather than no_face.
_DETECTOR_FLOOR = 0.8

# the neighbourhood searched by detect_near, in sizes of the previous face's box either side of
# its centre, and the size the face is searched at there (enough for MTCNN's 48 px last stage)
_NEAR_REACH = 1.5
_NEAR_FACE_PX = 96


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


# ----------------------------------------------------------------------------- selection
def _usable(faces: list[Face], cfg: ExtractSettings) -> list[Face]:
    """The faces at extract.min_confidence and extract.min_face_size, in their order."""
    return [f for f in faces if f.confidence >= cfg.min_confidence and f.size >= cfg.min_face_size]


def select_faces(faces: list[Face], image_shape: tuple[int, ...], cfg: ExtractSettings, policy: Policy
                 ) -> tuple[list[Face], str | None]:
    """Apply the confidence and size thresholds, then `policy`: largest, central (nearest the
    centre of an image of `image_shape`), all (largest first), or indices into the faces ranked
    largest first (those that exist, in the order given). Returns (kept faces, None) or, when
    none is kept, ([], the reason: no_face, low_confidence or too_small; no_face also when no
    face has one of the indices)."""
    if not faces:
        return [], "no_face"
    good = _usable(faces, cfg)
    if not good:
        top = max(faces, key=lambda f: f.area)
        return [], "low_confidence" if top.confidence < cfg.min_confidence else "too_small"
    if policy == "largest":
        return [max(good, key=lambda f: f.area)], None
    if policy == "central":
        centre = np.array([image_shape[1] - 1, image_shape[0] - 1]) / 2
        return [min(good, key=lambda f: float(np.linalg.norm(f.centre - centre)))], None
    ranked = sorted(good, key=lambda f: -f.area)
    if policy == "all":
        return ranked, None
    kept = [ranked[i] for i in policy if i < len(ranked)]
    return kept, None if kept else "no_face"


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


def _best_turn(image: np.ndarray, cfg: ExtractSettings, policy: Policy, angles: Iterable[int]
               ) -> tuple[list[Face], int]:
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
        kept, _ = select_faces(detect(view, cfg), view.shape, cfg, policy)
        if kept and max(f.confidence for f in kept) > top:
            best, top = (kept, angle), max(f.confidence for f in kept)
    return best


# ----------------------------------------------------------------------------- one source
class FaceTracker:
    """The faces to use in each photo or frame of one source: a photo, or the frames of one
    video in order (one tracker per source).

    Each call searches the frame (turned by the angle that found faces so far, see below):
    - with `follow` (a video, extract.track) and faces kept in the previous call, fewer than
      extract.full_search_every calls ago: only around each of them (`detect_near`), each
      followed to the nearest usable face found there. New faces join at the next whole-frame
      search;
    - otherwise, or where any followed face is lost: the whole frame, then `select_faces` with
      `policy`;
    - where that keeps nothing, until a face has been found in this source: the frame turned
      counter-clockwise by each of `rotate` (`_best_turn`); from then on every frame is searched
      at that turn (a video does not turn midway).
    """

    def __init__(self, cfg: ExtractSettings, policy: Policy, follow: bool, rotate: Iterable[int] = ()) -> None:
        self.cfg, self.policy, self.follow, self.rotate = cfg, policy, follow, tuple(rotate)
        self.prev: list[Face] = []  # kept in the previous call, in the coordinates of the frame turned by angle
        self.since_full = 0  # calls since the last whole-frame search
        self.angle = 0  # the turn every frame is searched at
        self.settled = False  # a face was found: keep self.angle, try no other

    def find(self, rgb: np.ndarray) -> tuple[list[Face], str | None, int]:
        """(kept faces in `rgb` pixel coordinates, the reason when none, the turn that found
        them: 0 = upright, and 0 when none)."""
        cfg = self.cfg
        view = turn(rgb, self.angle)
        faces, reason = [], None
        if self.follow and self.prev and self.since_full < cfg.full_search_every:
            faces = self._followed(view)
        if faces:
            self.since_full += 1
        else:
            faces, reason = select_faces(detect(view, cfg), view.shape, cfg, self.policy)
            self.since_full = 0
        if not faces and not self.settled:
            faces, angle = _best_turn(rgb, cfg, self.policy, self.rotate)
            if faces:
                self.angle, reason = angle, None
        self.settled = self.settled or bool(faces)
        self.prev = faces if self.follow else []
        return turn_back(faces, self.angle, rgb.shape), reason, self.angle if faces else 0

    def _followed(self, view: np.ndarray) -> list[Face]:
        """Each previous face's successor: the usable face found around it nearest to it; [] as
        soon as one is lost."""
        found = []
        for f in self.prev:
            near = _usable(detect_near(view, f.box, self.cfg), self.cfg)
            if not near:
                return []
            found.append(min(near, key=lambda g, f=f: float(np.linalg.norm(g.centre - f.centre))))
        return found


def find_faces(image_rgb: np.ndarray, cfg: ExtractSettings) -> tuple[list[Face], str | None, int]:
    """The faces extract keeps in a photo (cfg.keep), turning it by each of cfg.rotate where
    none is kept upright and keeping the turn with the most confident face. Returns (kept faces
    in the photo's own pixel coordinates, None or the upright search's reason for keeping none,
    the angle that found them: 0 = upright). Costs nothing extra where a face is kept upright."""
    return FaceTracker(cfg, cfg.keep, follow=False, rotate=cfg.rotate).find(image_rgb)
