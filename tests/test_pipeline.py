import numpy as np
import pytest
import tensorflow as tf

from autoswap.config import Settings
from autoswap.pipeline import BatchSpec, batch_indices, center_crop, make_batch, warp_stddev
from autoswap.warp import sparse_image_warp


def spec(**train):
    return BatchSpec.from_settings(Settings(**{"train": train} if train else {}))


@pytest.fixture(scope="module")
def faces():
    from skimage import data
    from skimage.transform import resize

    # a real, smooth photo so interpolation differences are meaningful
    img = resize(data.astronaut()[:300, 100:400], (128, 128), anti_aliasing=True)
    img = (img * 255).astype(np.uint8)
    return tf.constant(np.stack([img, img[:, ::-1], img[::-1], img.transpose(1, 0, 2)] * 5))  # (20, 128, 128, 3)


def test_batches_are_a_pure_function_of_seed_and_step(faces):
    s = spec()
    w1, t1 = make_batch(s, faces, 7, 0)
    w2, t2 = make_batch(s, faces, 7, 0)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(t1, t2)
    w3, _ = make_batch(s, faces, 8, 0)
    wb, _ = make_batch(s, faces, 7, 1)  # person B's stream differs from A's at the same step
    assert not np.array_equal(w1, w3) and not np.array_equal(w1, wb)
    other = BatchSpec.from_settings(Settings(seed=1))
    assert not np.array_equal(w1, make_batch(other, faces, 7, 0)[0])


def test_every_face_once_per_epoch_and_reshuffled(faces):
    s = spec(batch_size=6)
    n = 20
    idx = np.concatenate([batch_indices(s, n, st, 0).numpy() for st in range(20)])  # 120 = 6 epochs
    epochs = idx.reshape(6, n)
    for e in epochs:
        assert sorted(e) == list(range(n))
    assert len({tuple(e) for e in epochs}) == 6  # a new order every epoch


def test_each_image_gets_its_own_warp(faces):
    s = spec(augment={"flip": 0, "zoom": 0, "rotation": 0, "translation": 0})
    same = tf.constant(np.repeat(faces[:1].numpy(), 20, axis=0))
    w, t = make_batch(s, same, 0, 0)
    np.testing.assert_allclose(t[0], t[5], atol=1e-6)  # no augmentation: identical targets
    assert float(tf.reduce_mean(tf.abs(w[0] - w[5]))) > 1e-3  # but different warps


def test_no_warp_means_input_equals_target(faces):
    s = spec(warp={"stddev": 0.0})
    w, t = make_batch(s, faces, 3, 0)
    np.testing.assert_allclose(w, t, atol=1e-5)


def test_composed_sampling_matches_the_seed_chain(faces):
    """Our one-pass sampling vs the seed's chain: sparse_image_warp on the 128 px face, then
    centre crop 80 and bilinear resize to 64 (augmentation off to compare the warp alone)."""
    s = spec(augment={"flip": 0, "zoom": 0, "rotation": 0, "translation": 0}, batch_size=8)
    w, t = make_batch(s, faces, 0, 0)
    # rebuild the same control points the batch used
    from autoswap import pipeline as P

    dest = tf.broadcast_to(tf.constant(P._control_grid(s)), [8, 25, 2])
    noise = P.random_normal(s.seed, 0, P._WARP, [8, 25, 2])
    source = dest + noise * warp_stddev(s, 0)
    imgs = tf.cast(tf.gather(faces, batch_indices(s, 20, 0, 0)), tf.float32) / 255.0
    warped, _ = sparse_image_warp(imgs, source, dest, interpolation_order=2)
    ref = tf.image.resize(warped[:, 24:104, 24:104], (64, 64))
    ref_t = tf.image.resize(imgs[:, 24:104, 24:104], (64, 64))
    np.testing.assert_allclose(t, ref_t, atol=1e-5)  # same crop geometry exactly
    assert float(tf.reduce_mean(tf.abs(w - ref))) < 0.01  # same warp, one resampling fewer


def test_warp_schedules():
    assert float(warp_stddev(spec(), 0)) == pytest.approx(2.5)
    lin = spec(steps=101, warp={"schedule": "linear"})
    assert float(warp_stddev(lin, 0)) == pytest.approx(2.5)
    assert float(warp_stddev(lin, 50)) == pytest.approx(1.25)
    assert float(warp_stddev(lin, 100)) == 0.0
    off = spec(warp={"schedule": "off_after", "off_after": 10})
    assert float(warp_stddev(off, 9)) == pytest.approx(2.5) and float(warp_stddev(off, 10)) == 0.0


def test_center_crop_is_the_seeds_crop_and_resize(faces):
    s = spec()
    ours = center_crop(s, faces[:4])
    ref = tf.image.resize(tf.cast(faces[:4, 24:104, 24:104], tf.float32) / 255.0, (64, 64))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_batch_works_inside_xla(faces):
    s = spec()
    f = tf.function(lambda st: make_batch(s, faces, st, 0), jit_compile=True)
    w, t = f(tf.constant(5, tf.int64))
    w0, t0 = make_batch(s, faces, 5, 0)
    np.testing.assert_allclose(t, t0, atol=1e-4)  # same draws: an integer hash, exact under XLA
    np.testing.assert_allclose(w, w0, atol=1e-4)  # the flow is one matmul: no solve to round apart


def test_flow_operator_is_the_warps_spline():
    """The precomputed flow matrix gives sparse_image_warp's spline flow (solved per image in
    float64) at the output pixels, for any displacement of the control points."""
    from autoswap import pipeline as P
    from autoswap.warp import interpolate_spline

    for s in (spec(), spec(warp={"interpolation_order": 3, "grid": 4})):
        moved = np.random.default_rng(0).normal(0, 2.5, (3, s.grid**2, 2))  # source - dest, px
        dest = np.broadcast_to(P._control_grid(s).astype(np.float64), moved.shape)
        q = np.broadcast_to(P._output_grid(s).astype(np.float64), (3, s.out_size**2, 2))
        exact = interpolate_spline(dest, -moved, q, s.order).numpy()  # (3, M, 2)
        ours = np.einsum("mk,bkc->bmc", P._flow_operator(s), -moved)
        assert np.abs(exact).max() > 1.0  # a real warp
        np.testing.assert_allclose(ours, exact, atol=1e-4)


def test_host_pipeline_gives_make_batchs_batches(faces):
    """make_dataset runs make_batch compiled with XLA: the same draws and the same pixels."""
    from autoswap.pipeline import make_dataset

    s = spec(augment={"color": {"lightness": 0.3, "ab": 0.08, "input_only": True}})
    f = faces.numpy()
    (step, (wa, ta, wb, tb)), = make_dataset(s, f, f[::-1], 7, 8)
    assert int(step) == 7
    for got, want in zip((wa, ta, wb, tb), (*make_batch(s, f, 7, 0), *make_batch(s, f[::-1], 7, 1)), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


# ----------------------------------------------------------------------------- loss maps
def template_maps(n, size=128):
    """(n, size, size, 3) uint8 region maps of a face on the alignment template."""
    from autoswap.align import region_maps, template_points

    return np.repeat(region_maps(template_points(size), size)[None], n, axis=0)


def test_maps_ride_along_without_changing_the_rgb_batch(faces):
    with_maps = tf.concat([faces, tf.constant(template_maps(20))], -1)  # (20, 128, 128, 6)
    for s in (spec(), spec(augment={"color": {"lightness": 0.3, "ab": 0.08, "contrast": 0.2}})):
        w3, t3 = make_batch(s, faces, 7, 1)
        w6, t6 = make_batch(s, with_maps, 7, 1)
        assert w6.shape == w3.shape == (16, 64, 64, 3) and t6.shape == (16, 64, 64, 6)
        np.testing.assert_array_equal(w6, w3)  # bit for bit: the default path does not change
        np.testing.assert_array_equal(t6[..., :3], t3)
        maps = t6[..., 3:].numpy()
        assert maps.min() >= 0.0 and maps.max() <= 1.0
        assert 0.05 < maps[..., 1].mean() < maps[..., 0].mean() < 0.9  # eyes inside the mask, both present
    # a map that is 255 everywhere stays 1 under any augmentation (no colour change, no fill)
    full = tf.concat([faces, tf.fill([20, 128, 128, 3], tf.constant(255, tf.uint8))], -1)
    _, t = make_batch(spec(augment={"color": {"lightness": 0.3}}), full, 3, 0)
    np.testing.assert_allclose(t[..., 3:], 1.0, atol=1e-6)


def test_maps_follow_the_target_geometry(faces):
    from autoswap.align import template_points

    # no augmentation, no warp: the eye map's centre of mass is the eye landmark, seen through the
    # centre crop (80 of 128 px, resized to 64)
    s = spec(augment={"flip": 0, "zoom": 0, "rotation": 0, "translation": 0}, warp={"stddev": 0.0})
    _, t = make_batch(s, tf.concat([faces, tf.constant(template_maps(20))], -1), 0, 0)
    eyes = t[0, ..., 4].numpy()
    yy, xx = np.mgrid[:64, :64]
    for eye, half in zip(template_points(128)[:2], (xx < 32, xx >= 32), strict=True):
        m = eyes * half
        centre = np.array([(m * xx).sum(), (m * yy).sum()]) / m.sum()
        expect = (eye + 0.5 - 24) * 64 / 80 - 0.5
        np.testing.assert_allclose(centre, expect, atol=0.25)
    # with augmentation the maps move with the target face, not with the warped input: a
    # flipped target has its mask flipped, and the warp does not reach the maps
    flip = spec(augment={"flip": 1.0, "zoom": 0, "rotation": 0, "translation": 0}, warp={"stddev": 0.0})
    _, tf_ = make_batch(flip, tf.concat([faces, tf.constant(template_maps(20))], -1), 0, 0)
    np.testing.assert_allclose(tf_[0, ..., 3:], t[0, :, ::-1, 3:], atol=1e-5)
    warped = spec(augment={"flip": 0, "zoom": 0, "rotation": 0, "translation": 0})
    _, tw = make_batch(warped, tf.concat([faces, tf.constant(template_maps(20))], -1), 0, 0)
    np.testing.assert_array_equal(tw[..., 3:], t[..., 3:])


def test_maps_in_xla_match_eager(faces):
    s = spec()
    with_maps = tf.concat([faces, tf.constant(template_maps(20))], -1)
    f = tf.function(lambda st: make_batch(s, with_maps, st, 0), jit_compile=True)
    _, t = f(tf.constant(5, tf.int64))
    _, t0 = make_batch(s, with_maps, 5, 0)
    np.testing.assert_allclose(t, t0, atol=1e-4)


def test_load_maps_reads_the_manifest_and_names_what_is_missing(tmp_path):
    import json

    from PIL import Image

    from autoswap.align import region_maps, template_points
    from autoswap.errors import UserError
    from autoswap.pipeline import load_maps

    split = tmp_path / "a" / "train"
    split.mkdir(parents=True)
    files = []
    for i in range(2):
        Image.new("RGB", (64, 64), (90, 90, 90)).save(split / f"{i:05d}.png")
        files.append(split / f"{i:05d}.png")
    lm = template_points(64)
    row = {"crop": "00000", "landmarks_crop": lm.tolist()}  # extract's rows: the name, no split
    (tmp_path / "a" / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    maps = load_maps(split, files[:1], 64)
    np.testing.assert_array_equal(maps[0], region_maps(lm, 64))
    # a crop of another size: the landmarks scale with it
    big = load_maps(split, files[:1], 128)
    np.testing.assert_array_equal(big[0], region_maps(template_points(128), 128))
    with pytest.raises(UserError, match=r"00001.png: no landmarks for this face in .*manifest.jsonl"):
        load_maps(split, files, 64)
    (tmp_path / "a" / "manifest.jsonl").unlink()
    with pytest.raises(UserError, match=r"no manifest.jsonl with face landmarks \(faces from data.aligned: true"):
        load_maps(split, files, 64)
