"""Face alignment: the canonical 5-point template, the Umeyama similarity fit, the landmark mask
and eye/mouth region maps, and the per-crop quality measures (blur score, perceptual hash).

Coordinates are pixel coordinates with pixel centres on integers (OpenCV's convention): a point
at fraction f of a crop of size S sits at ``f * S - 0.5``. Landmarks are ordered as MTCNN gives
them: left eye, right eye, nose, mouth left, mouth right (left/right as seen in the image).

The template
------------
The seed's own face set (256 px crops) puts MTCNN's eyes at about x = 0.33 / 0.63, y = 0.31 of
the crop: eyes 0.30 of the crop width apart. TEMPLATE keeps that scale and height and centres the
face horizontally (eyes at 0.35 / 0.65). Nose and mouth are placed from MTCNN's landmarks on the
two frontal reference photos (grace_hopper, astronaut, each also mirrored), averaged, in units
of the eye distance d below the eye line: nose 0.58 d (measured 0.56-0.61), mouth corners 0.95 d
down (0.88-0.99) and 0.46 d either side of the centre line (0.41-0.52). As fractions of the crop:

    left eye (0.350, 0.310)   right eye (0.650, 0.310)   nose (0.500, 0.484)
    mouth left (0.362, 0.595) mouth right (0.638, 0.595)

A similarity cannot fit every face exactly: on the reference photos the eyes land within 1 px
of the template at 128 px and the mouth corners within about 2.5 px (a smile widens the mouth).

The margin
----------
The crop is 1 / 0.30 = 3.33 eye distances wide. Training takes the centre 80/128 = 0.625 of it
(then resizes to the model's input), so in the training crop the eyes are 0.30 / 0.625 = 0.48 of
the width apart and sit 0.20 from the top: the tight eyebrow-to-chin framing of the seed's data.
The rest of the crop (the border around the training window) is context for the random
zoom/rotation/warp augmentation and for blending when swapping.
"""

from __future__ import annotations

import numpy as np

# (5, 2) canonical landmark positions as fractions of the crop: left eye, right eye, nose,
# mouth left, mouth right. See the module docstring for where the numbers come from.
EYE_Y = 0.31
EYE_DISTANCE = 0.30
_SHAPE = np.array(  # in eye distances, relative to the midpoint of the eyes
    [[-0.50, 0.0], [0.50, 0.0], [0.0, 0.58], [-0.46, 0.95], [0.46, 0.95]]
)
TEMPLATE: np.ndarray = np.array([0.5, EYE_Y]) + _SHAPE * EYE_DISTANCE
TEMPLATE.setflags(write=False)


def template_points(face_size: int) -> np.ndarray:
    """TEMPLATE in pixel coordinates of a `face_size` crop."""
    return TEMPLATE * face_size - 0.5


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) taking the
    points `src` (N, 2) onto `dst` (N, 2): Umeyama 1991, as scikit-image implements it.
    Returns the 2x3 matrix [s*R | t]."""
    from skimage.transform import SimilarityTransform

    tform = SimilarityTransform.from_estimate(np.asarray(src, np.float64), np.asarray(dst, np.float64))
    if not tform:  # degenerate points (all equal): a failed estimate is falsy
        raise ValueError(f"cannot fit a similarity transform: {tform}")
    return np.asarray(tform.params[:2], np.float64)


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a 2x3 affine."""
    points = np.asarray(points, dtype=np.float64)
    return points @ affine[:, :2].T + affine[:, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """The 2x3 inverse of a 2x3 affine (crop -> source for the manifest's source -> crop)."""
    m = np.vstack([affine, [0.0, 0.0, 1.0]])
    return np.linalg.inv(m)[:2]


def alignment_affine(landmarks: np.ndarray, face_size: int) -> np.ndarray:
    """The source -> crop similarity taking the 5 landmarks onto the template."""
    return umeyama(landmarks, template_points(face_size))


def align(image_rgb: np.ndarray, landmarks: np.ndarray, face_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Warp the face with these 5 landmarks to a `face_size` square crop on the template.

    Returns (crop (face_size, face_size, 3) uint8, affine 2x3 float64 mapping source pixel
    coordinates to crop pixel coordinates). Outside the source the edge pixels are repeated.
    Strong downscales go through an area resize of the face's neighbourhood first, so small crops
    of large photos do not alias."""
    import cv2

    affine = alignment_affine(landmarks, face_size)
    h, w = image_rgb.shape[:2]
    scale = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
    # the region of the source the crop covers (+2 px for interpolation)
    corners = np.array([[-0.5, -0.5], [face_size - 0.5, -0.5], [-0.5, face_size - 0.5], [face_size - 0.5] * 2])
    src_corners = apply_affine(invert_affine(affine), corners)
    x0 = int(np.clip(np.floor(src_corners[:, 0].min()) - 2, 0, w - 1))
    y0 = int(np.clip(np.floor(src_corners[:, 1].min()) - 2, 0, h - 1))
    x1 = int(np.clip(np.ceil(src_corners[:, 0].max()) + 3, x0 + 1, w))
    y1 = int(np.clip(np.ceil(src_corners[:, 1].max()) + 3, y0 + 1, h))
    region = image_rgb[y0:y1, x0:x1]
    # region pixel (u, v) is source pixel (u + x0, v + y0)
    local = affine.copy()
    local[:, 2] += affine[:, :2] @ np.array([x0, y0], dtype=np.float64)
    if scale < 0.5:
        r = 1.5 * scale  # area-resize so that the warp itself scales by about 1/1.5
        rw, rh = max(1, round(region.shape[1] * r)), max(1, round(region.shape[0] * r))
        region = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
        sx, sy = (x1 - x0) / rw, (y1 - y0) / rh
        # resized pixel (a, b) is region pixel ((a + .5) * sx - .5, (b + .5) * sy - .5)
        to_region = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        local = np.vstack([local, [0, 0, 1]]) @ to_region
        local = local[:2]
    crop = cv2.warpAffine(
        np.ascontiguousarray(region), local, (face_size, face_size),
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE,
    )
    return crop, affine


# ----------------------------------------------------------------------------- mask
# The mask is an ellipse laid on the face's own landmark frame: its centre lies on the line from
# the eye midpoint to the mouth midpoint, its axes follow the eye line. In units of the eye
# distance d it spans 1.0 d either side of the centre line (cheek to cheek) and from 0.6 d above
# the eye line (eyebrows, lower forehead) to 0.65 d below the mouth corners (chin).
MASK_HALF_WIDTH = 1.0
MASK_ABOVE_EYES = 0.6
MASK_BELOW_MOUTH = 0.65


def face_mask(landmarks_in_crop: np.ndarray, face_size: int) -> np.ndarray:
    """(face_size, face_size) uint8 mask, 255 on the face and 0 elsewhere, from the 5 landmarks
    in crop coordinates (see MASK_* above for the ellipse it draws)."""
    import cv2

    lm = np.asarray(landmarks_in_crop, dtype=np.float64)
    eyes = (lm[0] + lm[1]) / 2
    mouth = (lm[3] + lm[4]) / 2
    across = lm[1] - lm[0]
    d = float(np.linalg.norm(across))
    mask = np.zeros((face_size, face_size), np.uint8)
    if d < 1e-6:
        return mask
    u = across / d  # along the eye line
    down = mouth - eyes  # eyes -> mouth
    # the component of eyes->mouth perpendicular to the eye line gives the face's "down"
    v = np.array([-u[1], u[0]])
    if np.dot(v, down) < 0:
        v = -v
    mouth_depth = max(float(np.dot(down, v)), 0.5 * d)
    top = -MASK_ABOVE_EYES * d
    bottom = mouth_depth + MASK_BELOW_MOUTH * d
    # the centre follows the eyes->mouth line so that a turned head's mask turns with the face
    lateral = float(np.dot(down, u)) / mouth_depth
    mid = (top + bottom) / 2
    centre = eyes + v * mid + u * lateral * mid
    angle = np.degrees(np.arctan2(u[1], u[0]))
    shift = 4  # sub-pixel precision for cv2.ellipse
    cv2.ellipse(
        mask,
        (int(round(centre[0] * 2**shift)), int(round(centre[1] * 2**shift))),
        (int(round(MASK_HALF_WIDTH * d * 2**shift)), int(round((bottom - top) / 2 * 2**shift))),
        angle, 0, 360, 255, thickness=-1, lineType=cv2.LINE_8, shift=shift,
    )
    return mask


# ----------------------------------------------------------------------------- region maps
# The eye and mouth regions that train.loss.eye_multiplier / mouth_multiplier weight, in units of
# the eye distance d: a disc of radius 0.25 d round each eye (an eye is about half d wide, so the
# disc holds the eye and its lids, not the brow) and an ellipse along the mouth-corner line,
# reaching 0.15 d past each corner and 0.22 d above and below it (both lips, a smile, an open
# mouth). faceswap draws its regions from 68-point hulls; 5 points give only centres and corners,
# so these are generous shapes round them.
EYE_RADIUS = 0.25
MOUTH_PAST_CORNERS = 0.15
MOUTH_HALF_HEIGHT = 0.22


def region_maps(landmarks_in_crop: np.ndarray, face_size: int) -> np.ndarray:
    """(face_size, face_size, 3) uint8 maps, each 255 inside and 0 outside: the face mask
    (`face_mask`), the eyes and the mouth (see EYE_RADIUS and MOUTH_* above), from the 5 landmarks
    in crop coordinates. Training stacks them behind the RGB channels (train.loss)."""
    import cv2

    lm = np.asarray(landmarks_in_crop, dtype=np.float64)
    eyes = np.zeros((face_size, face_size), np.uint8)
    mouth = np.zeros((face_size, face_size), np.uint8)
    d = float(np.linalg.norm(lm[1] - lm[0]))
    if d >= 1e-6:
        shift = 4  # sub-pixel precision, as in face_mask

        def fixed(p):
            return int(round(p[0] * 2**shift)), int(round(p[1] * 2**shift))

        r = int(round(EYE_RADIUS * d * 2**shift))
        for eye in lm[:2]:
            cv2.circle(eyes, fixed(eye), r, 255, thickness=-1, lineType=cv2.LINE_8, shift=shift)
        corners = lm[4] - lm[3]
        half_len = float(np.linalg.norm(corners)) / 2 + MOUTH_PAST_CORNERS * d
        angle = float(np.degrees(np.arctan2(corners[1], corners[0])))
        axes = (int(round(half_len * 2**shift)), int(round(MOUTH_HALF_HEIGHT * d * 2**shift)))
        cv2.ellipse(mouth, fixed((lm[3] + lm[4]) / 2), axes, angle, 0, 360, 255,
                    thickness=-1, lineType=cv2.LINE_8, shift=shift)
    return np.stack([face_mask(lm, face_size), eyes, mouth], axis=-1)


# ----------------------------------------------------------------------------- quality
def blur_score(crop_rgb: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Variance of the Laplacian of the grey crop, over the mask where one is given: low means
    blurry. Measured on the aligned crop so that it compares across photos of any resolution."""
    import cv2

    grey = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(grey, cv2.CV_64F)
    if mask is not None and mask.any():
        lap = lap[mask > 0]
    return float(lap.var())


def phash(crop_rgb: np.ndarray) -> int:
    """64-bit perceptual hash: the signs of the lowest 8x8 DCT frequencies of the 32x32 grey
    image against their median. Near-duplicate faces differ in few bits."""
    import cv2

    grey = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
