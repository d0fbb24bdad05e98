"""Reading the user's images safely: any mode PIL knows becomes 8-bit RGB, EXIF orientation is
applied, huge images are downscaled while decoding (or refused from their header where only a whole
decode is possible and it would take too much memory), and unreadable files raise `BadImage`
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
    """Any PIL image (L, LA, P, RGBA, CMYK, I;16, I, F) -> (H, W, 3) uint8 RGB.

    Converted a band of rows at a time into the one output array: converting the whole image at
    once made several full-size copies (float64 for 16-bit, four RGBA images for compositing),
    0.9 GB for a 40 MP RGBA photo."""
    if img.mode == "RGB":
        return np.asarray(img)  # convert() would copy an RGB image
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale the full range down to 8 bits instead of clipping
        hi = 65535.0 if img.mode.startswith("I;16") or img.getextrema()[1] > 255 else 255.0

        def band(b):
            a = np.clip(np.asarray(b, dtype=np.float64) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
            return a[..., None]
    elif img.mode == "F":
        scale = 255.0 if img.getextrema()[1] <= 1.0 else 1.0

        def band(b):
            return np.clip(np.asarray(b, dtype=np.float64) * scale + 0.5, 0, 255).astype(np.uint8)[..., None]
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # composite on white, like an image viewer, so transparent areas do not turn black
        def band(b):
            rgba = b.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    else:
        def band(b):
            return np.asarray(b.convert("RGB"))
    w, h = img.size
    out = np.empty((h, w, 3), np.uint8)
    rows = max(1, (1 << 22) // max(1, w))  # about 4 M pixels a band
    for y in range(0, h, rows):
        out[y : y + rows] = band(img.crop((0, y, w, min(h, y + rows))))  # (rows, w, 1 or 3)
    return out


def resize_by_bands(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """img.resize(size) (bicubic, to a rounding), made a band of rows at a time: PIL resizes an image with
    alpha through a premultiplied full-size copy, and back, so a whole RGBA photo took three times
    its own memory. Each band is resized from its rows of `img` plus the filter's reach above and
    below, with the whole image's scale, so the bands join without a seam."""
    import math

    w, h = img.size
    ow, oh = size
    scale = h / oh
    reach = math.ceil(2.0 * max(scale, 1.0)) + 2  # bicubic: 2 source pixels, times the downscale
    rows = max(1, int((1 << 20) / max(1, w) / scale))  # output rows from about 1 M source pixels
    out = Image.new(img.mode, size)
    for oy in range(0, oh, rows):
        oy1 = min(oh, oy + rows)
        y0, y1 = oy * scale, oy1 * scale
        c0, c1 = max(0, math.floor(y0) - reach), min(h, math.ceil(y1) + reach)
        band = img.crop((0, c0, w, c1))
        out.paste(band.resize((ow, oy1 - oy), Image.Resampling.BICUBIC, box=(0, y0 - c0, w, y1 - c0)), (0, oy))
    return out


def decode_bytes(src: Image.Image) -> int:
    """The memory a full decode of the opened (not yet loaded) `src` takes: the image as PIL
    holds it (1 byte a pixel for 1/L/P, 2 for 16-bit grey, 4 for everything else, RGB included),
    plus the decoder's own buffer where it keeps one: a TIFF's strip or tile of raw samples
    (libtiff), a whole WebP picture (libwebp)."""
    w, h = src.size
    per_pixel = 1 if src.mode in ("1", "L", "P") else 2 if src.mode.startswith("I;16") else 4
    extra = 0
    if src.format == "TIFF":
        tags = getattr(src, "tag_v2", {})
        bits = tags.get(258, 8)  # BitsPerSample: one value, or one a sample
        bits = bits if isinstance(bits, tuple) else (bits,)
        raw = max(bits) * int(tags.get(277, len(bits))) / 8  # bytes a pixel, as stored
        if 322 in tags and 323 in tags:  # tiled
            extra = int(tags[322]) * int(tags[323]) * raw
        else:
            extra = w * min(h, int(tags.get(278, h))) * raw
    elif src.format == "WEBP":
        extra = w * h * 4
    return int(w * h * per_pixel + extra)


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
                    # only JPEG decodes at a reduced size: anything else is decoded whole, so it is
                    # refused, before decoding, where that takes more than 2 x max_pixels of RGB (the
                    # most a JPEG's reduced decode takes; PIL holds an RGB pixel in 4 bytes)
                    need = decode_bytes(src) if src.format not in ("JPEG", "MPO") else 0
                    if need > 8 * max_pixels:
                        raise BadImage(f"too large to decode safely ({w}x{h} px, {src.mode}: {need / 1e6:.0f} MB "
                                       f"decoded, more than 2 x data.max_image_pixels {max_pixels} RGB pixels); "
                                       "downscale it or save it as JPEG")
                    if w * h > max_pixels:
                        # JPEG: decode at 1/2, 1/4 or 1/8 scale directly. Asking for 1/sqrt(2) of the
                        # target side bounds the decoded image to 2 x max_pixels (a 12000 px square
                        # decodes at 6000 px, never whole) and keeps at least max_pixels / 2 of it
                        s = (max_pixels / (w * h)) ** 0.5 / 2**0.5
                        src.draft("RGB", (max(1, int(w * s)), max(1, int(h * s))))
                    src.load()
                    img = src
                    if img.width * img.height > max_pixels:
                        factor = (img.width * img.height / max_pixels) ** 0.5
                        img = resize_by_bands(img, (max(1, int(img.width / factor)), max(1, int(img.height / factor))))
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
