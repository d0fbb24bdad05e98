"""autoswap.align without a face detector: the crop is sampled where the affine says, with pixel
centres on integers, edge pixels repeated outside the photo, and strong downscales averaged
rather than aliased. The template, mask and region maps on real photos are in test_extract.py."""

import numpy as np
import pytest

from autoswap.align import align, alignment_affine, apply_affine, invert_affine, template_points, umeyama

S = 64


def crop_to_source(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = scale * np.cos(a), scale * np.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_crop_samples_the_source_where_the_affine_says_and_repeats_edges():
    # a photo whose red and green are 1.5 x the pixel's x and y: bilinear sampling is exact on it
    h, w = 160, 140
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    photo = np.round(np.stack([1.5 * xx, 1.5 * yy, np.full_like(xx, 90.0)], -1)).astype(np.uint8)
    m = crop_to_source(1.6, 12, 20.0, -10.0)  # the crop's top edge lies partly above the photo
    landmarks = apply_affine(m, template_points(S))

    crop, affine = align(photo, landmarks, S)

    assert crop.shape == (S, S, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(invert_affine(affine), m, atol=1e-9)
    np.testing.assert_allclose(apply_affine(affine, landmarks), template_points(S), atol=1e-9)
    v, u = np.mgrid[0:S, 0:S].astype(np.float64)
    at = apply_affine(m, np.stack([u.ravel(), v.ravel()], -1))
    assert (at[:, 1] < 0).any(), "the test means part of the crop to lie outside the photo"
    x, y = np.clip(at[:, 0], 0, w - 1), np.clip(at[:, 1], 0, h - 1)  # outside: the nearest edge pixel
    expected = np.stack([1.5 * x, 1.5 * y], -1).reshape(S, S, 2)
    err = np.abs(crop[..., :2] - expected)
    # measured 0.32 mean, 0.87 max; half a pixel off (another pixel-centre convention) gives 1.19 mean
    assert err.mean() < 0.5 and err.max() < 1.0
    assert (crop[..., 2] == 90).all()


def test_strong_downscale_averages_instead_of_aliasing():
    # 1 px black and white stripes, the crop covering ~580 px of them: a plain bilinear warp picks
    # whole stripes (pure black or white pixels, std ~127); the area resize first gives flat grey
    stripes = np.zeros((1200, 1200, 3), np.uint8)
    stripes[:, ::2] = 255
    landmarks = apply_affine(crop_to_source(9.0, 0, 100.0, 100.0), template_points(S))
    crop, _ = align(stripes, landmarks, S)
    assert abs(crop.mean() - 127.5) < 3 and crop.std() < 5


def test_alignment_affine_is_the_inverse_of_the_pose():
    # landmarks that are the template moved by a similarity come back onto the template exactly
    m = crop_to_source(0.7, -33, 250.0, 40.0)
    affine = alignment_affine(apply_affine(m, template_points(128)), 128)
    np.testing.assert_allclose(np.vstack([affine, [0, 0, 1]]) @ np.vstack([m, [0, 0, 1]]), np.eye(3), atol=1e-9)


def test_degenerate_landmarks_are_refused():
    with pytest.raises(ValueError, match="cannot fit a similarity"):
        umeyama(np.full((5, 2), 7.0), template_points(S))
