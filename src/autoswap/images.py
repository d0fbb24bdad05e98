"""Reading the user's images safely: any mode PIL knows becomes 8-bit RGB, EXIF orientation is
applied, huge images are downscaled while decoding, and unreadable files raise `BadImage`
(the caller skips them and reports them; nothing is ever deleted or rewritten)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


class BadImage(Exception):
    """A file that cannot be used as an image; the message says why."""


def list_images(folder: Path) -> list[Path]:
    """Image files in `folder` (recursively), sorted so that every run sees the same order."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def to_rgb8(img: Image.Image) -> np.ndarray:
    """Any PIL image (L, LA, P, RGBA, CMYK, I;16, I, F) -> (H, W, 3) uint8 RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale the full range down to 8 bits instead of clipping
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # composite on white, like an image viewer, so transparent areas do not turn black
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # convert() would copy an RGB image


def load_rgb(path: Path, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decode `path` to (H, W, 3) uint8, EXIF-upright; downscale anything above `max_pixels`."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            # PIL warns (then errors) on decompression bombs; we downscale with draft/reduce instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as src:
                    w, h = src.size
                    if w * h > max_pixels:
                        if src.format not in ("JPEG", "MPO") and w * h > 4 * max_pixels:
                            # only JPEG decodes at a reduced size: anything else would be decoded whole
                            raise BadImage(f"too large to decode safely ({w}x{h} px, more than 4 x "
                                           f"data.max_image_pixels {max_pixels}); downscale it or save it as JPEG")
                        # JPEG: decode at 1/2, 1/4 or 1/8 scale directly. Asking for 1/sqrt(2) of the
                        # target side bounds the decoded image to 2 x max_pixels (a 12000 px square
                        # decodes at 6000 px, never whole) and keeps at least max_pixels / 2 of it
                        s = (max_pixels / (w * h)) ** 0.5 / 2**0.5
                        src.draft("RGB", (max(1, int(w * s)), max(1, int(h * s))))
                    src.load()
                    img = src
                    if img.width * img.height > max_pixels:
                        factor = (img.width * img.height / max_pixels) ** 0.5
                        img = img.resize((max(1, int(img.width / factor)), max(1, int(img.height / factor))))
                        src.close()  # free the full-size decode before any copy is made
                    ImageOps.exif_transpose(img, in_place=True)
                    return to_rgb8(img)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except BadImage:
        raise
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"unreadable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
