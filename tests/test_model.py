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
    M.save_final(tmp_path / "final", nets, {"model": cfg.model_dump(mode="json"), "face_size": 64})
    enc2, dec_a2, dec_b2, meta = M.load_final(tmp_path / "final")
    x = np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(nets[2](nets[0](x))), np.asarray(dec_b2(enc2(x))))
    with pytest.raises(UserError, match="no trained model"):
        M.load_final(tmp_path / "missing")
    (tmp_path / "final" / "model.json").write_text('{"model": {"input_size": 64}, "face_size": 64}')
    with pytest.raises(UserError, match="does not match"):
        M.load_final(tmp_path / "final")


def test_pixel_shuffle_is_tf_depth_to_space():
    import numpy as np
    import tensorflow as tf

    from autoswap.model import PixelShuffle

    x = np.random.default_rng(0).normal(size=(2, 3, 5, 12)).astype(np.float32)  # (B, H, W, 4C)
    np.testing.assert_array_equal(np.asarray(PixelShuffle()(x)), tf.nn.depth_to_space(x, 2).numpy())
