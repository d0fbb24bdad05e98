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
