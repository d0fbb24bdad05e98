"""autoswap.losses (and the colour augmentation of training batches): each term vanishes on
identical images, grows with a shift or a blur, has finite gradients, respects masks, and the
default is the seed's MAE exactly."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from autoswap import losses as L
from autoswap.config import LossSettings, parse
from autoswap.errors import ConfigError, UserError


def images(n=2, size=64, seed=0):
    """Smooth random colour images (B, size, size, 3) in [0, 1]."""
    rng = np.random.default_rng(seed)
    return tf.image.resize(rng.random((n, 8, 8, 3)).astype(np.float32), (size, size), "bicubic").numpy().clip(0, 1)


def only(term, **kw):
    """Settings whose loss is `term` alone."""
    weights = dict.fromkeys(L.TERMS, 0.0) | {term: 1.0}
    return LossSettings(kind="mix", weights=weights, **kw)


def total(cfg, t, p, **kw):
    return float(L.make_loss(cfg)(t, p, **kw)["total"])


def blur(x):
    return tf.nn.avg_pool2d(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge"), 5, 1, "VALID").numpy()


# ----------------------------------------------------------------------------- default
def test_default_loss_is_plain_mae_exactly():
    mae_loss = L.mae

    t, p = images(seed=1), images(seed=2)
    cfg = parse({}).train.loss
    assert cfg == LossSettings() and cfg.kind == "mae"
    out = L.make_loss(cfg, mae_loss)(t, p)
    assert list(out) == ["total"] and out["total"].dtype == tf.float32
    assert out["total"].numpy() == mae_loss(t, p).numpy()  # bit for bit
    assert L.make_loss(cfg)(t, p)["total"].numpy() == np.float32(np.mean(np.abs(t - p), dtype=np.float32))
    assert L.component_names(cfg) == []


def test_settings_bare_kind_mix_and_refusals():
    assert parse({"train": {"loss": "ssim"}}).train.loss.kind == "ssim"  # the old `loss: mae` spelling
    s = parse({"train": {"loss": {"kind": "mix", "weights": {"mae": 1.0, "dssim": 0.5}}}}).train.loss
    assert L.term_weights(s) == {"mae": 1.0, "dssim": 0.5} and L.component_names(s) == ["mae", "dssim"]
    with pytest.raises(ConfigError, match="at least one weight"):
        parse({"train": {"loss": {"kind": "mix", "weights": dict.fromkeys(L.TERMS, 0.0)}}})
    with pytest.raises(ConfigError, match="unknown key 'train.loss.weights.l2'"):
        parse({"train": {"loss": {"weights": {"l2": 1.0}}}})
    with pytest.raises(ConfigError, match="train.loss.kind"):
        parse({"train": {"loss": "l2"}})


# ----------------------------------------------------------------------------- every term
@pytest.mark.parametrize("term", L.TERMS)
def test_zero_when_identical_larger_when_shifted_or_blurred(term):
    cfg = only(term)
    t = images(seed=3)
    same = total(cfg, t, t.copy())
    shifted = total(cfg, t, np.roll(t, 3, axis=2))
    blurred = total(cfg, t, blur(t))
    assert abs(same) < 1e-6
    assert shifted > 1e-4 and blurred > 1e-4
    assert total(cfg, t, np.roll(t, 6, axis=2)) > shifted  # a larger shift costs more


@pytest.mark.parametrize("term", L.TERMS)
def test_gradients_are_finite(term):
    fn = L.make_loss(only(term))
    t = images(seed=4)
    for p in (t.copy(), blur(t), np.zeros_like(t), np.full_like(t, 0.5)):
        for target in (t, np.zeros_like(t)):
            v = tf.Variable(p)
            with tf.GradientTape() as tape:
                value = fn(target, v)["total"]
            g = tape.gradient(value, v)
            assert g is not None and np.isfinite(g.numpy()).all() and np.isfinite(float(value))


def test_mix_total_is_the_weighted_sum_and_returns_each_term():
    cfg = LossSettings(kind="mix", weights={"mae": 2.0, "dssim": 0.5, "ms_dssim": 1.0, "gradient": 3.0, "ffl": 4.0})
    t = images(seed=5)
    p = blur(t)
    out = L.make_loss(cfg)(t, p)
    assert set(out) == {"total", *L.TERMS}
    expect = sum(w * float(out[k]) for k, w in L.term_weights(cfg).items())
    assert float(out["total"]) == pytest.approx(expect, rel=1e-6)
    for k in L.TERMS:
        assert float(out[k]) == pytest.approx(total(only(k), t, p), rel=1e-6)


# ----------------------------------------------------------------------------- SSIM
@pytest.mark.parametrize("window,sigma,size", [(11, 1.5, 64), (7, 1.0, 32), (5, 0.8, 64)])
def test_ssim_matches_tf_image_ssim(window, sigma, size):
    t = images(3, size, seed=6)
    rng = np.random.default_rng(0)
    for p in (blur(t), np.clip(t + rng.normal(0, 0.08, t.shape), 0, 1).astype(np.float32), np.roll(t, 2, 1)):
        ours = L.ssim(t, p, window, sigma).numpy()
        ref = tf.image.ssim(t, p, 1.0, filter_size=window, filter_sigma=sigma).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-4)


@pytest.mark.parametrize("scales,window,size", [(3, 11, 64), (2, 7, 32), (5, 4, 64)])
def test_ms_ssim_matches_tf_image_ssim_multiscale(scales, window, size):
    t = images(3, size, seed=7)
    p = np.clip(blur(t) + np.random.default_rng(1).normal(0, 0.03, t.shape), 0, 1).astype(np.float32)
    powers = np.array(L.MS_SSIM_POWERS[:scales]) / sum(L.MS_SSIM_POWERS[:scales])
    ours = L.ms_ssim(t, p, scales, window, 1.5).numpy()
    ref = tf.image.ssim_multiscale(t, p, 1.0, power_factors=powers.tolist(), filter_size=window).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_ms_ssim_that_does_not_fit_names_the_keys():
    t = images(1, 32)
    with pytest.raises(UserError, match=r"ms_ssim with 3 scales and a 11 px window need images of at least 44 px"):
        L.make_loss(LossSettings(kind="ms_ssim"))(t, t)
    with pytest.raises(UserError, match="train.loss.ssim_window"):
        L.make_loss(LossSettings(kind="ssim", ssim_window=31))(images(1, 16), images(1, 16))


def test_compiles_under_xla_and_agrees_with_eager():
    cfg = LossSettings(kind="mix", ms_ssim_scales=2, ssim_window=7,
                       weights={"mae": 1.0, "dssim": 1.0, "ms_dssim": 1.0, "gradient": 1.0, "ffl": 1.0})
    fn = L.make_loss(cfg)
    t, p = images(2, 32, seed=8), images(2, 32, seed=9)

    def value_and_grad(y):
        with tf.GradientTape() as tape:
            tape.watch(y)
            v = fn(t, y)["total"]
        return v, tape.gradient(v, y)

    v_xla, g_xla = tf.function(value_and_grad, jit_compile=True)(tf.constant(p))
    v, g = value_and_grad(tf.constant(p))
    assert float(v_xla) == pytest.approx(float(v), rel=1e-5)
    np.testing.assert_allclose(g_xla.numpy(), g.numpy(), atol=1e-6)


def test_float32_for_bfloat16_inputs():
    cfg = LossSettings(kind="mix", weights={"mae": 1.0, "dssim": 1.0, "ms_dssim": 1.0, "gradient": 1.0, "ffl": 1.0})
    t = images(seed=10)
    out = L.make_loss(cfg)(tf.cast(t, tf.bfloat16), tf.cast(blur(t), tf.bfloat16))
    assert all(v.dtype == tf.float32 for v in out.values())
    assert np.isfinite([float(v) for v in out.values()]).all()


# ----------------------------------------------------------------------------- masks and weights
@pytest.mark.parametrize("term", L.TERMS)
def test_mask_only_ignores_pixels_outside(term):
    t = images(seed=11)
    mask = np.zeros(t.shape[:3] + (1,), np.float32)
    mask[:, 8:40, 8:40] = 1.0  # the "face"
    noise = np.random.default_rng(2).random(t.shape).astype(np.float32)
    outside = np.where(mask > 0, t, noise)  # wrong everywhere outside the face only
    inside = np.where(mask > 0, blur(t) * 0.5, t)  # wrong inside only
    fn = L.make_loss(only(term, mask_outside_weight=0.0))
    v = tf.Variable(outside)
    with tf.GradientTape() as tape:
        value = fn(t, v, mask=mask)["total"]
    assert abs(float(value)) < 1e-6
    g = tape.gradient(value, v).numpy()
    assert np.all(g[np.broadcast_to(mask, g.shape) == 0] == 0)  # no gradient reaches outside pixels
    assert float(fn(t, inside, mask=mask)["total"]) > 1e-3
    # the same images without the mask do count the outside
    assert total(only(term), t, outside) > 1e-3


def test_mask_weighting_and_region_weights_scale_mae():
    t = np.zeros((1, 16, 16, 3), np.float32)
    p = np.zeros_like(t)
    p[:, :, 8:] = 0.4  # error 0.4 on the right half
    mask = np.zeros((1, 16, 16, 1), np.float32)
    mask[:, :, :8] = 1.0  # the face is the left half: the error is all outside it
    # outside pixels weigh 0.25: sum(w e) / sum(w) = 0.25 * 0.4 * 128 / (128 + 0.25 * 128)
    cfg = only("mae", mask_outside_weight=0.25)
    assert total(cfg, t, p, mask=mask) == pytest.approx(0.25 * 0.4 / 1.25, rel=1e-5)
    # eyes x3 on the right half: sum(w e) / sum(w) = 3 * 0.4 * 128 / (128 + 3 * 128)
    cfg = only("mae", eye_multiplier=3.0, mouth_multiplier=2.0)
    eyes = 1.0 - mask
    w = L.region_weight(cfg, eyes=eyes, mouth=np.zeros_like(mask))
    assert float(tf.reduce_max(w)) == 3.0 and float(tf.reduce_min(w)) == 1.0
    assert total(cfg, t, p, weight=w) == pytest.approx(3 * 0.4 / 4, rel=1e-5)
    # an SSIM term weighted toward the face follows the face's error
    s = only("dssim", mask_outside_weight=0.1)
    face_err = np.where(mask > 0, 0.5, 0.0).astype(np.float32) * images(1, 16, seed=12)
    assert total(s, t, face_err, mask=mask) > total(s, t, face_err, mask=1.0 - mask)


def test_maps_that_are_not_fed_are_refused():
    t = images(1, 32)
    with pytest.raises(UserError, match="mask_outside_weight < 1 needs face masks"):
        L.make_loss(LossSettings(mask_outside_weight=0.5))(t, t)
    with pytest.raises(UserError, match="eye_multiplier / mouth_multiplier need eye and mouth maps"):
        L.make_loss(LossSettings(eye_multiplier=3.0))(t, t)
    assert L.region_weight(LossSettings(), eyes=np.ones((1, 4, 4, 1), np.float32)) is None


# ----------------------------------------------------------------------------- colour augmentation
def _spec(**kw):
    from autoswap.pipeline import BatchSpec

    s = parse({"seed": 5, "data": {"face_size": 64}, "model": {"input_size": 32, "width": 0.0625},
               "train": {"batch_size": 4}})
    return dataclasses.replace(BatchSpec.from_settings(s), **kw)


def _faces():
    rng = np.random.default_rng(3)
    return tf.constant((tf.image.resize(rng.random((6, 8, 8, 3)), (64, 64)).numpy() * 255).astype(np.uint8))


def test_lab_round_trip():
    from autoswap.pipeline import lab01_to_rgb, rgb_to_lab01

    rgb = np.random.default_rng(4).random((1000, 3)).astype(np.float32)
    rgb[:3] = [[0, 0, 0], [1, 1, 1], [1, 0, 0]]
    lab = rgb_to_lab01(rgb).numpy()
    np.testing.assert_allclose(lab[:2, 0], [0.0, 1.0], atol=1e-4)  # black and white: L 0 and 100
    np.testing.assert_allclose(lab[:2, 1:], 128 / 255, atol=1e-4)  # neutral: a = b = 0
    np.testing.assert_allclose(lab01_to_rgb(lab).numpy(), rgb, atol=2e-4)


def test_colour_augmentation_config_and_off_by_default():
    s = parse({})
    assert s.train.augment.color.lightness == s.train.augment.color.ab == s.train.augment.color.contrast == 0
    from autoswap.pipeline import BatchSpec

    spec = BatchSpec.from_settings(parse({"train": {"augment": {"color": {"lightness": 0.3, "ab": 0.08}}}}))
    assert (spec.color_lightness, spec.color_ab, spec.color_contrast) == (0.3, 0.08, 0.0)
    with pytest.raises(ConfigError, match="train.augment.color.lightness"):
        parse({"train": {"augment": {"color": {"lightness": 1.5}}}})


def test_colour_augmentation_same_change_on_input_and_target():
    from autoswap.pipeline import _COLOR, color_jitter, make_batch, random_uniform

    faces = _faces()
    on = dict(color_lightness=0.3, color_ab=0.08, color_contrast=0.2)
    # without warp, input and target are the same pixels: the colour change must keep them equal
    w_off, t_off = make_batch(_spec(stddev=0.0), faces, 7, 1)
    w_on, t_on = make_batch(_spec(stddev=0.0, **on), faces, 7, 1)
    np.testing.assert_array_equal(w_off.numpy(), t_off.numpy())
    np.testing.assert_array_equal(w_on.numpy(), t_on.numpy())
    change = np.abs(t_on.numpy() - t_off.numpy()).mean(axis=(1, 2, 3))
    assert (change > 1e-3).all() and len(set(np.round(change, 5))) == len(change)  # per image
    # with warp: the geometry draws are untouched (a new stream); colour = jitter of the plain batch
    spec = _spec(**on)
    w0, t0 = make_batch(_spec(), faces, 7, 1)
    w1, t1 = make_batch(spec, faces, 7, 1)
    b, o = spec.batch, spec.out_size
    u = random_uniform(spec.seed, 7, _COLOR + 4, [b, 4])
    px = color_jitter(spec, tf.reshape(tf.stack([w0, t0], 1), [b, 2 * o * o, 3]), u, o * o)
    px = tf.reshape(px, [b, 2, o, o, 3]).numpy()
    # make_batch runs color_jitter compiled with XLA, which rounds the LAB round trip differently
    np.testing.assert_allclose(w1.numpy(), px[:, 0], atol=1e-5)
    np.testing.assert_allclose(t1.numpy(), px[:, 1], atol=1e-5)
    assert 0.0 <= float(tf.reduce_min(w1)) and float(tf.reduce_max(w1)) <= 1.0
    # a replica's slice sees its part of the same change
    w_part, t_part = make_batch(spec, faces, 7, 1, part=1, parts=2)
    np.testing.assert_allclose(t_part.numpy(), t1.numpy()[2:], atol=1e-6)


def test_colour_augmentation_input_only_leaves_the_target_alone():
    from autoswap.pipeline import _COLOR, color_jitter, make_batch, random_uniform

    faces = _faces()
    w0, t0 = make_batch(_spec(), faces, 7, 1)
    spec = _spec(color_lightness=0.3, color_ab=0.08, color_contrast=0.2, color_input_only=True)
    w1, t1 = make_batch(spec, faces, 7, 1)
    np.testing.assert_array_equal(t1.numpy(), t0.numpy())  # the target: as with no colour change
    # the input: the same draws as the shared change, about its own mean
    b, o = spec.batch, spec.out_size
    u = random_uniform(spec.seed, 7, _COLOR + 4, [b, 4])
    expect = tf.reshape(color_jitter(spec, tf.reshape(w0, [b, o * o, 3]), u, o * o), [b, o, o, 3])
    np.testing.assert_allclose(w1.numpy(), expect.numpy(), atol=1e-5)  # XLA rounds differently
    assert np.abs(w1.numpy() - w0.numpy()).mean(axis=(1, 2, 3)).min() > 1e-3  # every image changed
    # params.yaml's switch reaches the batch spec
    raw = {"train": {"augment": {"color": {"lightness": 0.3, "input_only": True}}}}
    from autoswap.pipeline import BatchSpec

    assert BatchSpec.from_settings(parse(raw)).color_input_only


# ----------------------------------------------------------------------------- in training
def test_training_logs_each_term_to_mlflow(tmp_path, mlflow_store):
    import mlflow
    from conftest import tiny_raw
    from test_train import random_faces

    from autoswap.train import train

    random_faces(tmp_path / "faces", n_train=4, n_val=2)
    raw = tiny_raw(tmp_path, data={"faces_dir": str(tmp_path / "faces")}, train={
        "steps": 2, "log_every": 1, "save_every": 2, "preview_every": 2, "backup_every": 2,
        "loss": {"kind": "mix", "ssim_window": 7, "ms_ssim_scales": 2,
                 "weights": {"mae": 1.0, "dssim": 1.0, "ms_dssim": 0.5, "gradient": 0.0, "ffl": 0.0}},
        "augment": {"color": {"lightness": 0.3, "ab": 0.08, "contrast": 0.1}},
    })
    r = train(parse(raw), metrics_dir=tmp_path / "metrics", plots_dir=tmp_path / "plots")
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    m = run.data.metrics
    for side in "ab":
        for term in ("mae", "dssim", "ms_dssim"):
            assert np.isfinite(m[f"loss_{side}.{term}"])
        assert "loss_" + side + ".gradient" not in m
        expect = m[f"loss_{side}.mae"] + m[f"loss_{side}.dssim"] + 0.5 * m[f"loss_{side}.ms_dssim"]
        assert m[f"loss_{side}"] == pytest.approx(expect, rel=1e-5)
    assert r["loss_a"] == pytest.approx(m["loss_a"], abs=1e-6)
    assert run.data.params["train.loss.kind"] == "mix" and run.data.params["train.augment.color.ab"] == "0.08"
    steps = [x.step for x in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss_a.dssim")]
    assert steps == [1, 2]
