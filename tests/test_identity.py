"""autoswap.identity on two real photos that ship with packages (no downloads): matplotlib's
grace_hopper.jpg and scikit-image's astronaut, each cut to the model's view of an aligned face
(the centre 0.625 of autoswap's aligned crop, 64 px as the network sees it)."""

import io

import cv2
import numpy as np
import pytest
import skimage.data
from matplotlib import cbook
from PIL import Image

from autoswap.align import alignment_affine
from autoswap.identity import (
    SAME_PERSON,
    centroid,
    descriptors,
    eye_distance,
    identity_scores,
    landmark_shift,
    landmarks5,
)

# (5, 2) MTCNN landmarks of each photo's face (autoswap.extract.detect, measured once, so these
# tests need no detector): left eye, right eye, nose, mouth left, mouth right
LANDMARKS = {
    "hopper": [[220.4, 190.2], [308.2, 186.0], [268.3, 237.4], [231.7, 277.0], [303.6, 272.9]],
    "astronaut": [[203.5, 100.1], [245.4, 102.2], [224.2, 126.4], [201.8, 138.6], [244.4, 140.4]],
}
CROP = 0.625  # train.crop: the model sees the centre 0.625 of the aligned face


def photo(name: str) -> np.ndarray:
    if name == "astronaut":
        return skimage.data.astronaut()  # (512, 512, 3) uint8
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))  # (600, 512, 3) uint8


def view(img: np.ndarray, landmarks, size: int = 64, shift=(0.0, 0.0), degrees: float = 0.0) -> np.ndarray:
    """The model's view (size, size, 3) of the face with these landmarks: the centre CROP of the
    aligned face of size / CROP px, then moved by `shift` px and turned by `degrees` about the centre."""
    full = size / CROP
    affine = alignment_affine(np.asarray(landmarks, np.float64), full)  # photo -> aligned face
    affine[:, 2] -= (full - size) / 2  # -> its centre crop
    turn = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), degrees, 1.0)
    affine = turn @ np.vstack([affine, [0.0, 0.0, 1.0]])
    affine[:, 2] += shift
    return cv2.warpAffine(img, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def degraded(img: np.ndarray) -> np.ndarray:
    """The photo at half size, saved as JPEG quality 75."""
    h, w = img.shape[:2]
    small = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    buf = io.BytesIO()
    Image.fromarray(small).save(buf, "JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.fixture(scope="module")
def faces():
    """{name: {"view", "degraded", "flipped"}} 64 px views of each photo's face."""
    out = {}
    for name in LANDMARKS:
        img, lm = photo(name), np.asarray(LANDMARKS[name])
        v = view(img, lm)
        out[name] = {
            "view": v,
            # landmarks at half size: pixel centres on integers, (x + 0.5) / 2 - 0.5
            "degraded": view(degraded(img), (lm + 0.5) / 2 - 0.5),
            "flipped": np.ascontiguousarray(v[:, ::-1]),
        }
    return out


@pytest.fixture(scope="module")
def desc(faces):
    """{name: {variant: (128,)}} descriptors, computed as one batch."""
    keys = [(n, k) for n in faces for k in faces[n]]
    d = descriptors([faces[n][k] for n, k in keys])
    out = {}
    for (n, k), v in zip(keys, d, strict=True):
        out.setdefault(n, {})[k] = v
    return out


def test_two_people_are_far_apart_and_one_photo_degraded_is_near(desc):
    hopper, astronaut = desc["hopper"], desc["astronaut"]
    assert hopper["view"].shape == (128,)
    # measured: 0.72 apart (dlib calls < 0.6 the same person)
    assert np.linalg.norm(hopper["view"] - astronaut["view"]) > SAME_PERSON
    for name in desc:
        # measured: 0.10 (hopper) and 0.20 (astronaut) after a 0.5x resize and JPEG q75
        assert np.linalg.norm(desc[name]["degraded"] - desc[name]["view"]) < 0.4
        assert np.linalg.norm(desc[name]["flipped"] - desc[name]["view"]) < 0.4  # measured 0.17, 0.17
    for a in hopper.values():  # every variant of one person is far from the other (measured >= 0.70)
        for b in astronaut.values():
            assert np.linalg.norm(a - b) > SAME_PERSON


def test_float_views_in_0_1_give_the_same_descriptor(faces, desc):
    v = faces["astronaut"]["view"].astype(np.float32) / 255.0  # the model's view is float
    d, lm = descriptors(v[None], with_landmarks=True)
    assert d.shape == (1, 128) and lm.shape == (1, 5, 2)
    np.testing.assert_allclose(d[0], desc["astronaut"]["view"], atol=1e-6)
    np.testing.assert_allclose(lm[0], landmarks5(faces["astronaut"]["view"]))
    assert descriptors([]).shape == (0, 128)


def test_id_transfer_of_a_toy_setup(desc):
    hopper = np.stack(list(desc["hopper"].values()))  # (3, 128): view, degraded, flipped
    astronaut = np.stack(list(desc["astronaut"].values()))
    c_hopper, c_astronaut = centroid(hopper), centroid(astronaut)
    assert c_hopper.shape == (128,)
    toward_hopper = identity_scores(hopper, target=c_hopper, source=c_astronaut)
    toward_astronaut = identity_scores(hopper, target=c_astronaut, source=c_hopper)
    assert toward_hopper["id_transfer"] == 1.0 and toward_astronaut["id_transfer"] == 0.0
    assert toward_hopper["id_dist_target"] < 0.3 < SAME_PERSON < toward_hopper["id_dist_source"]
    assert toward_astronaut["id_dist_target"] == pytest.approx(toward_hopper["id_dist_source"])
    # half of the faces swapped: id_transfer counts the share
    mixed = np.concatenate([hopper[:2], astronaut[:2]])
    assert identity_scores(mixed, target=c_astronaut, source=c_hopper)["id_transfer"] == 0.5


def test_id_scores_arithmetic():
    target, source = np.zeros(128), np.zeros(128)
    source[0] = 1.0
    d = np.zeros((4, 128))
    d[:, 0] = [0.0, 0.2, 0.7, 1.0]  # on the line from target (0) to source (1)
    s = identity_scores(d, target, source)
    assert s["id_transfer"] == 0.5
    assert s["id_dist_target"] == pytest.approx(np.mean([0.0, 0.2, 0.7, 1.0]))
    assert s["id_dist_source"] == pytest.approx(np.mean([1.0, 0.8, 0.3, 0.0]))


def test_landmark_shift_arithmetic():
    ref = np.array([[[30.0, 50], [10, 50], [-10, 50], [-30, 50], [0, 80]]])  # eye centres 40 apart
    assert eye_distance(ref)[0] == 40.0
    assert landmark_shift(ref, ref)[0] == 0.0
    assert landmark_shift(ref + [4.0, 0.0], ref)[0] == pytest.approx(0.1)
    assert landmark_shift(ref, 2 * ref)[0] == pytest.approx(np.mean(np.hypot(*ref[0].T)) / 80)


@pytest.mark.parametrize("name", list(LANDMARKS))
def test_landmarks_sit_on_the_eyes_at_any_size(name):
    img, lm = photo(name), LANDMARKS[name]
    big = landmarks5(view(img, lm, 256))  # (5, 2)
    small = landmarks5(view(img, lm, 64))
    d = eye_distance(big)
    # the template puts the eyes at 0.26 / 0.74 of the view's width and 0.196 of its height
    eyes = np.sort([big[0:2].mean(0), big[2:4].mean(0)], axis=0)  # left one first
    np.testing.assert_allclose(eyes / 256, [[0.26, 0.196], [0.74, 0.196]], atol=0.04)
    assert d == pytest.approx(0.48 * 256, rel=0.05)  # eyes 0.30 / 0.625 of the width apart
    # the 64 px view, upscaled inside, gives the same points in its own pixels
    assert landmark_shift(((small + 0.5) * 4 - 0.5)[None], big[None])[0] < 0.03


@pytest.mark.parametrize("name", list(LANDMARKS))
def test_landmark_shift_measures_a_known_move(name):
    img, lm = photo(name), LANDMARKS[name]
    face = view(img, lm, 256)  # eyes about 123 px apart
    ref = landmarks5(face)[None]  # (1, 5, 2)
    assert landmark_shift(landmarks5(face.copy())[None], ref)[0] == 0.0  # same image, same points
    # 4 px to the right: every point moves 4 px, 4 / 123 = 0.033 eye distances
    moved = landmarks5(view(img, lm, 256, shift=(4.0, 0.0)))[None]
    expected = 4.0 / eye_distance(ref)[0]
    assert landmark_shift(moved, ref)[0] == pytest.approx(expected, abs=0.015)  # measured 0.031, 0.036
    assert np.linalg.norm((moved - ref)[0].mean(0) - [4.0, 0.0]) < 2.0
    # turned 10 degrees about the centre: each point moves by its own amount
    turned = landmarks5(view(img, lm, 256, degrees=10.0))[None]
    rot = cv2.getRotationMatrix2D((127.5, 127.5), 10.0, 1.0)
    expected = landmark_shift(ref @ rot[:, :2].T + rot[:, 2], ref)[0]  # about 0.11
    assert landmark_shift(turned, ref)[0] == pytest.approx(expected, abs=0.03)  # measured 0.116, 0.109


def test_descriptors_on_all_cores_equal_one_at_a_time(faces):
    """12 faces are split between this process and helper processes (one per spare core); each
    descriptor is the one the face gets alone, and they come back in order."""
    import os

    from autoswap import identity

    imgs = [faces[n][k] for n in faces for k in faces[n]] * 2  # 12
    together = descriptors(imgs)
    alone = np.stack([descriptors([img])[0] for img in imgs])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    assert len(os.sched_getaffinity(0)) == 1 or identity._helpers() is not None  # the split ran
