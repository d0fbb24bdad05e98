"""The evaluate stage's scores, checked with hand-made "models" whose right answers are known."""

import numpy as np
import pytest
from conftest import TINY

from autoswap.config import parse
from autoswap.evaluate import evaluate_faces
from autoswap.pipeline import BatchSpec, center_crop
from autoswap.synthetic import image_conditions, render


@pytest.fixture(scope="module")
def data():
    s = parse(TINY, "test")
    spec = BatchSpec.from_settings(s)
    sets = {}
    for x, y in (("a", "b"), ("b", "a")):  # six faces of each person and their counterparts
        conds = [image_conditions(s.data.synthetic, s.seed, x, "val", i) for i in range(6)]
        sets[x] = {
            "faces": np.stack([render(x, c, 64) for c in conds]),  # (6, 64, 64, 3) uint8
            "gt": np.stack([render(y, c, 64) for c in conds]),
        }
    return spec, sets


def _nets(enc, dec_a, dec_b):
    return enc, dec_a, dec_b


def test_pass_through_model_scores_as_the_identity_baseline(data):
    spec, sets = data
    ident = lambda x, training=False: x  # noqa: E731 - encoder and decoders that copy their input
    faces = {s: sets[s]["faces"] for s in "ab"}
    gts = {s: sets[s]["gt"] for s in "ab"}
    m = evaluate_faces(_nets(ident, ident, ident), spec, faces, gts, batch=4, train_faces=faces)
    for s in "ab":
        assert m[s]["recon_mae"] == 0 and m[s]["cycle_mae"] == 0
        assert m[s]["swap_mae"] == pytest.approx(m[s]["identity_swap_mae"], abs=1e-6)
        assert m[s]["identity_swap_mae"] > 0.05  # the two people differ


def test_constant_model_scores_as_the_mean_face_baseline(data):
    spec, sets = data
    faces = {s: sets[s]["faces"] for s in "ab"}
    gts = {s: sets[s]["gt"] for s in "ab"}
    med = {s: np.median(np.asarray(center_crop(spec, faces[s])), 0) for s in "ab"}

    def const(person):
        return lambda x, training=False: np.broadcast_to(med[person], (len(x), *med[person].shape)).astype(np.float32)

    ident = lambda x, training=False: x  # noqa: E731
    m = evaluate_faces(_nets(ident, const("a"), const("b")), spec, faces, gts, batch=4, train_faces=faces)
    for s in "ab":
        assert m[s]["swap_mae"] == pytest.approx(m[s]["mean_face_swap_mae"], abs=1e-6)
        assert m[s]["swap_ssim"] == pytest.approx(m[s]["mean_face_swap_ssim"], abs=1e-5)
        # a constant image cannot follow pose and expression: the faces vary enough to punish it
        assert m[s]["mean_face_swap_mae"] > 0.02


def test_no_baseline_without_training_faces(data):
    spec, sets = data
    ident = lambda x, training=False: x  # noqa: E731
    faces = {s: sets[s]["faces"] for s in "ab"}
    m = evaluate_faces(_nets(ident, ident, ident), spec, faces, {s: sets[s]["gt"] for s in "ab"}, batch=4)
    assert "mean_face_swap_mae" not in m["a"] and "swap_mae" in m["a"]


ID_KEYS = {
    f"{p}{k}" for p in ("", "input_", "recon_", "truth_") for k in ("id_transfer", "id_dist_target", "id_dist_source")
} | {"landmark_shift", "recon_landmark_shift", "truth_landmark_shift"}


@pytest.fixture(scope="module")
def train_faces():
    s = parse(TINY, "test")
    return {x: np.stack([render(x, image_conditions(s.data.synthetic, s.seed, x, "train", i), 64) for i in range(8)])
            for x in "ab"}


def _perfect_swapper(spec, sets, y):
    """Decoder Y of a perfect swap (encoder = pass-through): each of X's faces becomes its ground
    truth counterpart (X's pose, expression and light rendered as Y); any other input is copied."""
    x = "a" if y == "b" else "b"
    src, dst = (np.asarray(center_crop(spec, sets[x][k])) for k in ("faces", "gt"))

    def dec(v, training=False):
        v = np.asarray(v)
        out = v.copy()
        for i, row in enumerate(v):
            j = np.flatnonzero(np.abs(src - row).max(axis=(1, 2, 3)) < 1e-6)
            if len(j):
                out[i] = dst[j[0]]
        return out

    return dec


def test_identity_scores_of_a_perfect_and_a_pass_through_swap(data, train_faces):
    spec, sets = data
    ident = lambda x, training=False: x  # noqa: E731
    faces = {s: sets[s]["faces"] for s in "ab"}
    gts = {s: sets[s]["gt"] for s in "ab"}
    nets = _nets(ident, _perfect_swapper(spec, sets, "a"), _perfect_swapper(spec, sets, "b"))
    plain = evaluate_faces(nets, spec, faces, gts, batch=4, train_faces=train_faces)
    m = evaluate_faces(nets, spec, faces, gts, batch=4, train_faces=train_faces, identity_faces=8)
    still = evaluate_faces(_nets(ident, ident, ident), spec, faces, gts, batch=4, train_faces=train_faces,
                           identity_faces=8)
    for s in "ab":
        assert not ID_KEYS & set(plain[s])  # identity_faces=0: off, and the other keys unchanged
        assert set(m[s]) == set(plain[s]) | ID_KEYS
        assert {k: m[s][k] for k in plain[s]} == plain[s]
        assert m[s]["swap_mae"] == 0  # the swapper really returns the counterparts
        for k in ID_KEYS:
            assert 0 <= m[s][k] <= (1 if "transfer" in k or "shift" in k else 2), (s, k, m[s][k])
        # the input and its copy (the reconstruction) stay X; the perfect swap reads as Y
        assert m[s]["input_id_transfer"] == m[s]["recon_id_transfer"] == 0
        assert m[s]["input_id_dist_source"] < 0.6 and m[s]["input_id_dist_source"] < m[s]["input_id_dist_target"]
        assert m[s]["id_transfer"] >= 0.5 and m[s]["id_dist_target"] < m[s]["input_id_dist_target"]  # measured 1.0
        assert m[s]["id_dist_source"] > m[s]["input_id_dist_source"]
        # the counterpart keeps X's pose, but Y's eyes and nose sit elsewhere on Y's face
        assert m[s]["recon_landmark_shift"] == 0 and 0 < m[s]["landmark_shift"] < 0.5  # measured 0.27, 0.18
        # a pass-through "swap" is the input itself: nothing moved, nothing transferred
        assert still[s]["id_transfer"] == 0 and still[s]["landmark_shift"] == 0
        assert still[s]["id_dist_target"] == m[s]["input_id_dist_target"]
        # the ground truth's own scores are the perfect swap's: here the swap is the ground truth
        for k in ("id_transfer", "id_dist_target", "id_dist_source", "landmark_shift"):
            assert m[s][f"truth_{k}"] == m[s][k] and still[s][f"truth_{k}"] == m[s][k]
