"""The real photos the watermark figures are measured on (bench/swap.py), and the unmarked
variants its false-positive count uses. Nothing is downloaded: the photos ship with
scikit-image and matplotlib.

tests/test_mark.py loads this file too: the bench and the tests measure on the same photos and
the same seeded variants.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import skimage
from matplotlib import cbook
from PIL import Image

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
# photos bundled with scikit-image (no download): colour and grey, faces, texture, text, space
PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "coins.png", "page.png", "moon.png", "text.png", "brick.png",
          "grass.png", "gravel.png", "horse.png", "ihc.png", "cell.png", "microaneurysms.png"]


def rgb(a: np.ndarray) -> np.ndarray:
    """Any of those arrays (bool, grey, RGBA) as contiguous 8-bit RGB."""
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def photos() -> dict[str, np.ndarray]:
    """matplotlib's grace_hopper.jpg and the PHOTOS, by name, as RGB arrays."""
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        out = {"grace_hopper": np.asarray(Image.open(f).convert("RGB"))}
    for name in PHOTOS:
        with Image.open(SKIMAGE_DATA / name) as im:
            out[name.split(".")[0]] = rgb(im.convert("RGB"))
    return out


def jpeg(a: np.ndarray, quality: int = 75) -> np.ndarray:
    """PIL's JPEG at `quality` with its default chroma subsampling (4:2:0)."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def half(a: np.ndarray) -> np.ndarray:
    """A 0.5x bicubic resize."""
    im = Image.fromarray(a)
    return np.asarray(im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC))


def unmarked_variants(photos: dict[str, np.ndarray], n: int = 100) -> list[np.ndarray]:
    """n images: crops (10-100% of a side), flips, rotations, resizes, JPEG, grey and brightness
    variants of the real photos, none of them marked."""
    rng = np.random.default_rng(7)
    names = sorted(photos)
    out = []
    while len(out) < n:
        img = photos[names[len(out) % len(names)]]
        h, w = img.shape[:2]
        ch, cw = (max(48, int(s * rng.uniform(0.1, 1.0))) for s in (h, w))
        y, x = rng.integers(0, h - min(ch, h) + 1), rng.integers(0, w - min(cw, w) + 1)
        v = img[y:y + ch, x:x + cw]
        kind = len(out) // len(names) % 5
        if kind == 1:
            v = v[:, ::-1]
        elif kind == 2:
            v = np.rot90(v)
        elif kind == 3:
            v = jpeg(np.ascontiguousarray(v), int(rng.integers(50, 95)))
        elif kind == 4:
            v = np.clip(v.astype(np.float64) * rng.uniform(0.6, 1.3), 0, 255).astype(np.uint8)
        if rng.random() < 0.3:
            v = half(np.ascontiguousarray(v)) if min(v.shape[:2]) >= 96 else v
        out.append(np.ascontiguousarray(v))
    return out
