"""autoswap.photoscore on real photos that ship in packages (matplotlib's grace_hopper.jpg,
scikit-image's astronaut): the scores of a swapped photo, as an outside tool sees it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from autoswap import photoscore as P


@pytest.fixture(scope="module")
def hopper():
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        from PIL import Image

        return np.asarray(Image.open(f).convert("RGB"))


@pytest.fixture(scope="module")
def astronaut():
    import skimage

    return skimage.data.astronaut()


def landmarks(rgb):
    """The largest face's 5 MTCNN landmarks, as `autoswap swap` finds them."""
    from autoswap.config import ExtractSettings
    from autoswap.faces import find_faces

    faces, _, _ = find_faces(rgb, ExtractSettings())
    face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    return np.asarray(face.landmarks, np.float64)


def descriptor(rgb, lm):
    from autoswap.identity import _describe

    found = P.find_face(rgb, P.known_box(lm))
    assert found is not None
    return _describe([P._chip(rgb, found[0])])[0]


def paste(dst, lm_dst, src, lm_src, blur: int = 0):
    """src's face moved onto dst's (aligned with both faces' landmarks, as the swap aligns),
    blended inside an ellipse around dst's face; `blur` px of Gaussian blur on the pasted face
    first: a stand-in for a swap whose network draws another face, or a blurred one."""
    from autoswap.align import alignment_affine, invert_affine

    s = 256
    a_src, a_dst = alignment_affine(lm_src, s), alignment_affine(lm_dst, s)
    face = cv2.warpAffine(src, a_src, (s, s), flags=cv2.INTER_CUBIC)
    if blur:
        face = cv2.GaussianBlur(face, (0, 0), blur)
    h, w = dst.shape[:2]
    back = cv2.warpAffine(face, invert_affine(a_dst), (w, h), flags=cv2.INTER_CUBIC)
    mask = np.zeros((s, s), np.float32)
    cv2.ellipse(mask, (s // 2, s // 2 + 10), (s // 3, int(s / 2.4)), 0, 0, 360, 1.0, -1)
    mask = cv2.warpAffine(cv2.GaussianBlur(mask, (0, 0), 6), invert_affine(a_dst), (w, h))[..., None]
    return np.clip(dst * (1 - mask) + back * mask + 0.5, 0, 255).astype(np.uint8)


def test_an_unchanged_photo_keeps_every_face_and_all_its_sharpness(hopper, astronaut):
    pairs = [(im, im.copy(), landmarks(im)) for im in (hopper, astronaut)]
    m = P.score_pairs(pairs, None, None)
    assert m["photo_n"] == 2
    assert m["photo_input_found"] == 1.0 and m["photo_found"] == 1.0 and m["photo_found_ratio"] == 1.0
    assert m["photo_sharpness_kept"] == pytest.approx(1.0) and m["photo_sharpness_kept_full"] == pytest.approx(1.0)
    assert m["photo_landmark_shift"] == pytest.approx(0.0)


def test_a_blurred_paste_keeps_less_sharpness(hopper):
    lm_h = landmarks(hopper)
    sharp = P.score_pairs([(hopper, paste(hopper, lm_h, hopper, lm_h), lm_h)], None, None)
    blurred = P.score_pairs([(hopper, paste(hopper, lm_h, hopper, lm_h, blur=3), lm_h)], None, None)
    # the same face pasted back barely changes; blurred, it loses most of its detail at both scales
    assert sharp["photo_sharpness_kept"] > 0.8
    assert blurred["photo_sharpness_kept"] < 0.6 * sharp["photo_sharpness_kept"]
    assert blurred["photo_sharpness_kept_full"] < 0.6 * sharp["photo_sharpness_kept_full"]


def test_another_persons_face_moves_the_identity_score(hopper, astronaut):
    lm_h, lm_a = landmarks(hopper), landmarks(astronaut)
    target, source = descriptor(astronaut, lm_a), descriptor(hopper, lm_h)
    unchanged = P.score_pairs([(hopper, hopper.copy(), lm_h)], target, source)
    swapped = P.score_pairs([(hopper, paste(hopper, lm_h, astronaut, lm_a), lm_h)], target, source)
    assert unchanged["photo_id_transfer"] == 0.0 and unchanged["photo_input_id_transfer"] == 0.0
    assert swapped["photo_found"] == 1.0
    assert swapped["photo_id_transfer"] == 1.0  # nearer the astronaut than Grace Hopper
    assert swapped["photo_id_dist_target"] < unchanged["photo_id_dist_target"] - 0.2
    assert swapped["photo_id_dist_source"] > unchanged["photo_id_dist_source"] + 0.2


def test_a_face_painted_over_is_not_found(hopper):
    lm = landmarks(hopper)
    box = P.find_face(hopper, P.known_box(lm))[0]  # dlib's box on the original: where sharpness is read
    x0, y0, x1, y1 = box[0] - 4, box[1] - 4, box[2] + 5, box[3] + 5
    flat = hopper.copy()
    flat[y0:y1, x0:x1] = flat[y0:y1, x0:x1].reshape(-1, 3).mean(0).astype(np.uint8)  # a smear of skin tone
    m = P.score_pairs([(hopper, flat, lm)], None, None)
    assert m["photo_input_found"] == 1.0 and m["photo_found"] == 0.0 and m["photo_found_ratio"] == 0.0
    assert m["photo_sharpness_kept"] < 0.05


def test_the_sheet_puts_each_original_beside_its_swap(tmp_path, hopper):
    lm = landmarks(hopper)
    out = tmp_path / "sheet.png"
    P.sheet([("A to B", [(hopper, 255 - hopper, lm)] * 3), ("B to A", [(hopper, hopper, lm)])], out, per_row=2, height=50)
    from PIL import Image

    im = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert im.shape == (20 + 2 * 58 + 20 + 58, 2 * (104 + 8), 3)
    left, right = im[20:70, 0:50], im[20:70, 54:104]  # first pair: original, then its (inverted) swap
    assert np.abs(left + right - 255).mean() < 12
