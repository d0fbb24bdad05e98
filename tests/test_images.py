"""autoswap.images: every image mode to 8-bit RGB (16-bit scaled, not clipped; transparency on
white), EXIF orientation, one clear reason per unusable file, and the order files are read in.
Huge images and max_image_pixels are in test_reliability.py."""

import numpy as np
import pytest
from PIL import Image

from autoswap.images import BadImage, list_images, load_rgb, to_rgb8


def test_16_bit_and_float_greys_are_scaled_to_8_bits():
    grey16 = Image.fromarray(np.array([[0, 32768, 65535]], np.uint16))  # mode I;16
    np.testing.assert_array_equal(to_rgb8(grey16)[0], [[0, 0, 0], [128, 128, 128], [255, 255, 255]])
    grey32 = Image.fromarray(np.array([[0, 100, 255]], np.int32))  # mode I, 8-bit values: kept
    np.testing.assert_array_equal(to_rgb8(grey32)[0, :, 0], [0, 100, 255])
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))  # mode F in [0, 1]
    np.testing.assert_array_equal(to_rgb8(unit)[0, :, 0], [0, 128, 255])


def test_transparency_is_composited_on_white():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black
    rgba[0, 1] = (255, 0, 0, 128)  # half-transparent red
    rgba[0, 2] = (0, 0, 255, 255)  # opaque blue
    out = to_rgb8(Image.fromarray(rgba, "RGBA"))
    assert out.shape == (1, 3, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == pytest.approx((255, 127, 127), abs=1)
    assert tuple(out[0, 2]) == (0, 0, 255)
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0  # palette entry 0 is transparent
    np.testing.assert_array_equal(to_rgb8(pal)[0], [[255, 255, 255], [10, 200, 30]])


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)  # left half red, right half blue, as stored
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(a).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    out = load_rgb(tmp_path / "phone.jpg")
    assert out.shape == (40, 20, 3)  # upright: portrait
    top, bottom = out[:15].reshape(-1, 3).mean(0), out[-15:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_unusable_files_raise_one_reason_each(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    limit = Image.MAX_IMAGE_PIXELS
    for name, reason in (("empty.png", "empty file (0 bytes)"), ("missing.png", "file not found"),
                         ("notes.jpg", "not an image (unrecognised format)"), ("cut.png", "unreadable image")):
        with pytest.raises(BadImage, match=reason.replace("(", r"\(").replace(")", r"\)")):
            load_rgb(tmp_path / name)
        assert Image.MAX_IMAGE_PIXELS == limit  # PIL's bomb guard is put back after a failure too
    assert load_rgb(tmp_path / "ok.png")[0, 0].tolist() == [1, 2, 3]


def test_list_images_is_recursive_sorted_and_by_suffix(tmp_path):
    for rel in ("b.JPG", "a.png", "sub/c.webp", "sub/deeper/d.TIFF", "notes.txt", "clip.mp4", "noext"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "folder.jpg").mkdir()  # a folder with an image's name is no image
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a.png", "b.JPG", "sub/c.webp", "sub/deeper/d.TIFF"]
