import dataclasses
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from autoswap import synthetic as S
from autoswap.config import SyntheticSettings

CFG = SyntheticSettings()


def conds(n, seed=1, person="a", split="val"):
    return [S.image_conditions(CFG, seed, person, split, i) for i in range(n)]


def mad(x, y):
    """Mean absolute difference on a 0..1 scale."""
    return float(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)).mean() / 255)


def tree(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*.png")
    }


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("person", ["a", "b"])
def test_render_shape_dtype_and_not_blank(person, size):
    img = S.render(person, conds(1)[0], size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert img.std() > 20  # a face on a background, not a flat fill


def test_render_and_sampling_are_deterministic():
    c1 = S.sample_conditions(np.random.default_rng(5), CFG)
    c2 = S.sample_conditions(np.random.default_rng(5), CFG)
    assert c1 == c2 and hash(c1) == hash(c2)
    assert c1 != S.sample_conditions(np.random.default_rng(6), CFG)
    assert np.array_equal(S.render("a", c1, 64), S.render("a", c2, 64))
    assert S.image_conditions(CFG, 0, "a", "train", 3) == S.image_conditions(CFG, 0, "a", "train", 3)
    # every (seed, person, split, index) has its own draw
    keys = [
        (0, "a", "train", 0),
        (1, "a", "train", 0),
        (0, "b", "train", 0),
        (0, "a", "val", 0),
        (0, "a", "train", 1),
    ]
    assert len({S.image_conditions(CFG, *k) for k in keys}) == len(keys)


def test_conditions_follow_the_settings():
    cs = [S.sample_conditions(np.random.default_rng(i), CFG) for i in range(300)]
    for name, limit in (("yaw", CFG.max_yaw), ("pitch", CFG.max_pitch), ("roll", CFG.max_roll)):
        v = np.array([getattr(c, name) for c in cs])
        assert np.abs(v).max() <= limit and np.abs(v).max() > 0.8 * limit  # the range is used
    assert all(abs(c.scale - 1) <= CFG.scale_jitter for c in cs)
    assert all(abs(c.shift_x) <= CFG.shift_jitter and abs(c.shift_y) <= CFG.shift_jitter for c in cs)
    assert 0.2 < np.mean([c.mouth_open > 0 for c in cs]) < 0.8
    assert 0.05 < np.mean([c.blink > 0 for c in cs]) < 0.5
    frozen = CFG.model_copy(update={"max_yaw": 0.0, "max_pitch": 0.0, "max_roll": 0.0})
    c = S.sample_conditions(np.random.default_rng(0), frozen)
    assert c.yaw == c.pitch == c.roll == 0.0
    # exposure and colour temperature: fixed by default (one shoot), ranges when asked for
    assert {(c.brightness, c.warmth) for c in cs} == {(0.95, 0.0)}
    lit = CFG.model_copy(update={"brightness_jitter": 0.2, "max_warmth": 1.0})
    ls = [S.sample_conditions(np.random.default_rng(i), lit) for i in range(300)]
    b, w = np.array([c.brightness for c in ls]), np.array([c.warmth for c in ls])
    assert 0.75 <= b.min() < 0.8 and 1.1 < b.max() <= 1.15 and -1 <= w.min() < -0.9 and 0.9 < w.max() <= 1


def test_persons_differ_under_the_same_conditions_and_vary_across_conditions():
    cs = conds(6)
    a = [S.render("a", c, 64) for c in cs]
    b = [S.render("b", c, 64) for c in cs]
    # identity: every pair of counterparts differs clearly (measured ~0.14..0.25)
    assert min(mad(x, y) for x, y in zip(a, b, strict=True)) > 0.08
    # variation: the same person under other conditions differs too
    assert min(mad(a[i], a[i + 1]) for i in range(5)) > 0.05
    assert min(mad(b[i], b[i + 1]) for i in range(5)) > 0.05
    # and the identity is what is left when only the light and background change
    n = S.neutral_conditions()
    relit = dataclasses.replace(
        n, light_azimuth=0.0, light_strength=0.8, warmth=0.8, background=(20, 90, 40, 200, 60, 30)
    )
    assert mad(S.render("a", n, 64), S.render("b", n, 64)) > 0.08
    assert mad(S.render("a", n, 64), S.render("a", relit, 64)) > 0.03


def test_landmarks_are_shared_by_the_identities_and_follow_the_pose():
    n = S.neutral_conditions()
    base = S.landmarks("a", n, 128)
    # an aligned face crop: eyes at y~0.40, mouth at y~0.68, centred
    assert base["left_eye"][1] / 128 == pytest.approx(0.40, abs=0.01)
    assert base["mouth"][1] / 128 == pytest.approx(0.68, abs=0.02)
    assert (base["left_eye"][0] + base["right_eye"][0]) / 2 == pytest.approx(64, abs=0.5)
    for c in conds(8):
        la, lb = S.landmarks("a", c, 128), S.landmarks("b", c, 128)
        assert la == lb
    # 2.5D pose: yaw moves features sideways, pitch up/down, and yaw foreshortens the eye distance
    turned = S.landmarks("a", dataclasses.replace(n, yaw=0.5), 128)
    assert turned["mouth"][0] > base["mouth"][0] + 10
    assert turned["right_eye"][0] - turned["left_eye"][0] < 0.95 * (
        base["right_eye"][0] - base["left_eye"][0]
    )
    down = S.landmarks("a", dataclasses.replace(n, pitch=0.3), 128)
    assert down["left_eye"][1] > base["left_eye"][1] + 5
    moved = S.landmarks("a", dataclasses.replace(n, shift_x=0.05), 128)
    assert moved["mouth"][0] == pytest.approx(base["mouth"][0] + 0.05 * 128)


def luminance(img, xy, r=1):
    """Darkest mean-RGB value in the 3x3 pixels round a continuous (x, y) position."""
    x, y = int(xy[0]), int(xy[1])
    return float(img[y - r : y + r + 1, x - r : x + r + 1].astype(np.float32).mean(-1).min())


def test_landmarks_sit_on_the_drawn_features_for_both_persons():
    # pupils and an open mouth are dark, the bridge of the nose between the eyes is skin: the
    # landmarks of a counterpart pair land on these features in both images
    for c in conds(6, seed=7):
        c = dataclasses.replace(c, blink=0.0, mouth_open=1.0, brightness=1.0, light_strength=0.3)
        marks = S.landmarks("a", c, 128)
        bridge = np.add(marks["left_eye"], marks["right_eye"]) / 2
        for person in ("a", "b"):
            img = S.render(person, c, 128)
            for name in ("left_eye", "right_eye", "mouth"):
                assert luminance(img, marks[name]) < 55, (person, name, c)
            assert float(img[int(bridge[1]), int(bridge[0])].mean()) > 100, (person, c)


def test_ground_truth_counterpart_has_the_same_silhouette_position():
    # the head's centre of mass (non-background pixels) moves with the pose, identically for A and B
    def centre(img, c):
        bg = S._background(c, img.shape[0])
        fg = np.abs(img.astype(np.float32) - bg).max(-1) > 40
        ys, xs = np.nonzero(fg[: int(0.85 * img.shape[0])])  # above the shoulders
        return xs.mean(), ys.mean()

    n = dataclasses.replace(S.neutral_conditions(), light_strength=0.0)
    for dx in (-0.05, 0.05):
        c = dataclasses.replace(n, shift_x=dx)
        xa, _ = centre(S.render("a", c, 64), c)
        xb, _ = centre(S.render("b", c, 64), c)
        assert xa == pytest.approx(32 + dx * 64, abs=2.5) and xb == pytest.approx(32 + dx * 64, abs=2.5)


def test_generate_writes_the_tree_counts_and_ground_truth(tmp_path):
    cfg = SyntheticSettings(train_per_person=4, val_per_person=3)
    calls = []
    counts = S.generate(cfg, 32, 11, tmp_path / "d", progress=calls.append)
    assert counts == {p: {"train": 4, "val": 3, "val_gt": 3} for p in ("a", "b")}
    files = tree(tmp_path / "d")
    expected = {
        f"{p}/{s}/{i:05d}.png"
        for p in "ab"
        for s, n in (("train", 4), ("val", 3), ("val_gt", 3))
        for i in range(n)
    }
    assert set(files) == expected
    assert calls == list(range(1, S.total_images(cfg) + 1)) and S.total_images(cfg) == len(expected)
    for person, other in (("a", "b"), ("b", "a")):
        cond = S.image_conditions(cfg, 11, person, "val", 2)
        val = np.asarray(Image.open(tmp_path / "d" / person / "val" / "00002.png"))
        gt = np.asarray(Image.open(tmp_path / "d" / person / "val_gt" / "00002.png"))
        assert np.array_equal(val, S.render(person, cond, 32))
        assert np.array_equal(gt, S.render(other, cond, 32))
    # training sets are unpaired: A's and B's image 0 have different conditions
    assert S.image_conditions(cfg, 11, "a", "train", 0) != S.image_conditions(cfg, 11, "b", "train", 0)
    # a manifest per person, like extract's: the 5 landmarks of every train and val face
    for person in "ab":
        rows = [json.loads(x) for x in (tmp_path / "d" / person / "manifest.jsonl").read_text().splitlines()]
        assert [(r["split"], r["crop"]) for r in rows] == [
            (s, f"{i:05d}") for s, n in (("train", 4), ("val", 3)) for i in range(n)
        ]
        cond = S.image_conditions(cfg, 11, person, "val", 2)
        np.testing.assert_allclose(rows[-1]["landmarks_crop"], S.landmarks5(person, cond, 32), atol=1e-4)


def test_five_landmarks_are_the_drawn_eyes_nose_and_mouth_corners():
    for c in conds(6, seed=7):
        c = dataclasses.replace(c, blink=0.0, mouth_open=1.0, brightness=1.0, light_strength=0.3)
        marks = S.landmarks("a", c, 128)
        for person in ("a", "b"):
            lm = S.landmarks5(person, c, 128)
            assert lm.shape == (5, 2)
            # the pupils are `landmarks`' eyes in align's convention (pixel centres on integers)
            np.testing.assert_allclose(lm[:2], np.array([marks["left_eye"], marks["right_eye"]]) - 0.5, atol=1e-9)
            # MTCNN's order: nose below the eyes, the mouth corners below the nose, left of right
            eye_mid, corner_mid = lm[:2].mean(0), lm[3:].mean(0)
            d = np.linalg.norm(lm[1] - lm[0])
            # the corners flank the mouth centre (an open mouth's centre drops below their line)
            assert np.linalg.norm(corner_mid - (np.array(marks["mouth"]) - 0.5)) < 0.3 * d
            down = corner_mid - eye_mid
            along = (lm[2] - eye_mid) @ down / (down @ down)
            assert 0.3 < along < 1.0, (person, c)
            assert (lm[4] - lm[3]) @ (lm[1] - lm[0]) > 0
    # the mouth corners are the person's own: B's mouth is narrower than A's
    n = S.neutral_conditions()
    width = {p: np.linalg.norm(np.diff(S.landmarks5(p, n, 128)[3:], axis=0)) for p in "ab"}
    assert width["b"] < 0.9 * width["a"]


def test_generate_is_byte_identical_and_counts_do_not_shift_images(tmp_path):
    cfg = SyntheticSettings(train_per_person=3, val_per_person=2)
    for name, seed in (("1", 5), ("2", 5), ("3", 6)):
        S.generate(cfg, 32, seed, tmp_path / name)
    one, two, other = (tree(tmp_path / name) for name in ("1", "2", "3"))
    assert one == two
    assert all(one[k] != other[k] for k in one)
    # more training images: the old ones stay as they were, the validation set too
    bigger = SyntheticSettings(train_per_person=5, val_per_person=2)
    S.generate(bigger, 32, 5, tmp_path / "1")
    grown = tree(tmp_path / "1")
    assert {k: grown[k] for k in one} == one and len(grown) == len(one) + 4
    # fewer again: stale numbered files are removed, the rest is untouched
    (tmp_path / "1" / "a" / "train" / "notes.txt").write_text("kept")
    S.generate(cfg, 32, 5, tmp_path / "1")
    assert tree(tmp_path / "1") == one
    assert (tmp_path / "1" / "a" / "train" / "notes.txt").exists()


def test_a_model_that_ignores_its_input_scores_badly():
    """The per-pixel mean of the training faces against the validation faces (and the swap targets)."""
    size = 64
    for person, other in (("a", "b"), ("b", "a")):
        train = np.stack([S.render(person, c, size) for c in conds(48, 2, person, "train")]).astype(
            np.float32
        )
        mean = train.mean(0)
        val_conds = conds(12, 2, person, "val")
        val = np.stack([S.render(person, c, size) for c in val_conds])
        # measured ~0.16 (A) and ~0.18 (B) on the full face; ~0.13..0.15 on the model's centre crop
        assert mad(val, mean[None]) > 0.11
        c0, c1 = size * 3 // 16, size * 13 // 16
        assert mad(val[:, c0:c1, c0:c1], mean[None, c0:c1, c0:c1]) > 0.09
        # the swap target of the other person's validation faces is this person under their conditions
        swap_targets = np.stack([S.render(person, c, size) for c in conds(12, 2, other, "val")])
        assert mad(swap_targets, mean[None]) > 0.11
