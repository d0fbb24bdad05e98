import numpy as np
import pytest

from autoswap import model as M
from autoswap.config import ModelSettings
from autoswap.errors import UserError


def test_seed_network_parameter_counts():
    enc, dec_a, dec_b = M.build(ModelSettings())
    assert enc.count_params() == 69_662_976
    assert dec_a.count_params() == dec_b.count_params() == 6_199_747
    assert enc.output_shape == (None, 8, 8, 512)
    assert dec_a.output_shape == (None, 64, 64, 3)
    assert [m.name for m in (enc, dec_a, dec_b)] == ["encoder", "decoder_a", "decoder_b"]


@pytest.mark.parametrize("size, width", [(32, 0.125), (128, 0.25)])
def test_other_sizes_and_widths_round_trip(size, width):
    cfg = ModelSettings(input_size=size, width=width)
    enc, dec_a, _ = M.build(cfg)
    x = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
    y = np.asarray(dec_a(enc(x)))
    assert y.shape == (2, size, size, 3)
    assert (y > 0).all() and (y < 1).all()  # sigmoid output
    assert enc.count_params() < 69_662_976


def test_final_weights_round_trip_and_foreign_folder(tmp_path):
    cfg = ModelSettings(input_size=32, width=0.0625, latent_dim=64)
    nets = M.build(cfg)
    M.save_final(tmp_path / "final", nets, {"model": cfg.model_dump(mode="json"), "face_size": 64, "crop": 0.625})
    enc2, dec_a2, dec_b2, card = M.load_final(tmp_path / "final")
    assert card == M.ModelCard(model=cfg, face_size=64, crop=0.625) and card.input_size == 32
    x = np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(nets[2](nets[0](x))), np.asarray(dec_b2(enc2(x))))
    with pytest.raises(UserError, match="no trained model"):
        M.load_final(tmp_path / "missing")
    (tmp_path / "final" / "model.json").write_text('{"model": {"input_size": 64}, "face_size": 64, "crop": 0.625}')
    with pytest.raises(UserError, match="does not match"):
        M.load_final(tmp_path / "final")


def test_model_card_reads_older_model_json_and_writes_what_train_wrote(tmp_path):
    """model.json is the model's card: train's dict becomes the same bytes as before the card,
    an older model.json's run keys (now in models/run.json) are ignored, anything else unknown
    is refused."""
    import json

    from autoswap.config import parse

    s = parse({})
    meta = {"autoswap_version": "0.1.0", "model": s.model.model_dump(mode="json"), "face_size": 128,
            "crop": 0.625, "steps": 5000, "seed": 0}
    card = M.ModelCard.from_dict(meta)
    assert card.model_dump(mode="json", exclude_none=True) == meta
    assert (card.steps, card.seed, card.autoswap_version, card.input_size) == (5000, 0, "0.1.0", 64)
    older = {**meta, "mlflow_run_id": "4922ba27fa914ad39bf9b5f13fd0a490", "mlflow_tracking_uri": "sqlite:///x.db"}
    assert M.ModelCard.from_dict(older) == card
    (tmp_path / "model.json").write_text(json.dumps(older))
    assert M.read_card(tmp_path) == card
    (tmp_path / "model.json").write_text(json.dumps({**meta, "dropout": 0.1}))
    with pytest.raises(UserError, match="written by another autoswap version or config"):
        M.read_card(tmp_path)
    with pytest.raises(ValueError):  # frozen
        card.__setattr__("crop", 0.5)
    # the geometry check evaluate and preview make against params.yaml
    M.check_geometry(card, s, tmp_path)
    with pytest.raises(UserError, match="trained for other face/input sizes or crop"):
        M.check_geometry(card.model_copy(update={"crop": 0.5}), s, tmp_path)
    assert card.settings().train.crop == 0.625 and card.settings().data.face_size == 128


def test_pixel_shuffle_is_tf_depth_to_space():
    import numpy as np
    import tensorflow as tf

    from autoswap.model import PixelShuffle

    x = np.random.default_rng(0).normal(size=(2, 3, 5, 12)).astype(np.float32)  # (B, H, W, 4C)
    np.testing.assert_array_equal(np.asarray(PixelShuffle()(x)), tf.nn.depth_to_space(x, 2).numpy())


@pytest.mark.parametrize(
    "side, kernel, stride",
    [(8, 5, 2), (4, 3, 1), (7, 5, 2)],  # the seed's down3 and up_conv; odd side: uneven "same" padding
)
@pytest.mark.parametrize("jit", [False, True])
def test_conv_as_matmul_is_the_convolution(side, kernel, stride, jit):
    """model.Conv2D(as_matmul=True) gives Conv2D's outputs and gradients (input, kernel, bias)
    with the same variables, eagerly and under XLA."""
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(2).normal(size=(3, side, side, 24)).astype(np.float32))
    convs = [M.Conv2D(40, kernel, strides=stride, padding="same", activation="leaky_relu", as_matmul=m)
             for m in (False, True)]
    convs[0].build(x.shape)
    convs[1].build(x.shape)
    convs[1].set_weights(convs[0].get_weights())
    assert [v.path for v in convs[0].weights] == [v.path.replace(convs[1].name, convs[0].name) for v in convs[1].weights]
    dy = tf.constant(np.random.default_rng(3).normal(size=convs[0].compute_output_shape(x.shape)).astype(np.float32))

    def grads(conv):
        @tf.function(jit_compile=jit)
        def f(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = conv(x)
                loss = tf.reduce_sum(y * dy)
            return y, tape.gradient(loss, [x, *conv.trainable_variables])

        return f(x)

    (y0, g0), (y1, g1) = grads(convs[0]), grads(convs[1])
    assert y1.shape == y0.shape == (3, -(-side // stride), -(-side // stride), 40)
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(tf.reduce_max(tf.abs(b))))


def test_conv_as_matmul_under_bfloat16():
    import keras
    import tensorflow as tf

    x = np.random.default_rng(4).normal(size=(2, 8, 8, 16)).astype(np.float32)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        convs = [M.Conv2D(32, 5, strides=2, padding="same", as_matmul=m) for m in (False, True)]
        for c in convs:
            c.build(x.shape)
        convs[1].set_weights(convs[0].get_weights())
        y0, y1 = (c(x) for c in convs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert y1.dtype == y0.dtype == tf.bfloat16
    assert convs[1].kernel.dtype == "float32"  # weights stay float32
    np.testing.assert_allclose(np.float32(y1), np.float32(y0), rtol=0.05, atol=0.05)


def test_seed_network_as_matmul_shares_the_weights(tmp_path):
    """build(conv_as_matmul=True) changes only how down3 and up_conv compute, at the seed's
    widths (not at the demo's, where oneDNN's convolution is faster): weight files load either way."""
    assert [layer.name for n in M.build(ModelSettings(width=0.125), True) for layer in n.layers
            if getattr(layer, "as_matmul", False)] == []
    cfg = ModelSettings()
    enc_mm, dec_mm, _ = M.build(cfg, conv_as_matmul=True)
    assert [layer.name for layer in enc_mm.layers if getattr(layer, "as_matmul", False)] == ["down3", "up_conv"]
    enc_mm.save_weights(tmp_path / "encoder.weights.h5")
    enc, _, _ = M.build(cfg)
    enc.load_weights(tmp_path / "encoder.weights.h5")
    x = np.random.default_rng(5).random((2, 64, 64, 3), dtype=np.float32)
    z, z_mm = np.asarray(enc(x)), np.asarray(enc_mm(x))
    assert np.abs(z).max() > 0
    np.testing.assert_allclose(z_mm, z, rtol=1e-4, atol=1e-4 * np.abs(z).max())
