"""The invisible watermark: a 32-bit ID hidden in an image's pixels, and read back from them.

Why a module of its own: it is pure maths on arrays (no files, no MLflow, no C2PA), the part of
the marks (autoswap.mark) that needs its own tests for robustness and false positives, and whose
constants must never change once outputs carry them.

Why not the `invisible-watermark` package (its DWT-DCT method): it pulls in torch and the GUI
build of opencv-python (a few GB, and a second OpenCV next to opencv-python-headless) for one
feature, and its block grid is tied to the pixel grid, so it does not survive a resize. This is
~100 lines of NumPy + PyWavelets:

- The luma is resized to a fixed 256x256 canvas (any size and aspect ratio), so a resized copy
  maps onto the same canvas and detection needs neither the original nor its size.
- One level of Haar DWT; the LL band (128x128) in 8x8 blocks (256 blocks); in each block five
  low-mid DCT coefficients carry one bit each: 1280 slots, each of the 48 code bits
  (32-bit ID + CRC-16) repeated 26 or 27 times, spread over the image by a fixed permutation.
- Each slot is quantised (dithered QIM, step WM_STEP) onto the lattice of its bit, with a fixed
  pseudo-random dither per slot and the bits XORed with a fixed key, so flat or unmarked images
  decode to noise rather than to a fixed word.
- The change is made on the canvas, resized back to the image and added to R, G and B alike (a
  luma-only change); three passes correct what resizing and rounding undo.
- Detection: soft votes (cos of the lattice phase) summed per bit; the ID is reported only when
  the CRC-16 matches and the mean agreement of the slots with the decoded word is at least
  WM_MIN_CONFIDENCE = 0.2. On an unmarked image the slots are random: the agreement is
  0.11 +- 0.012 (at most 0.15 over 100 real photos and variants), so 0.2 is 7 sigma away, and the
  CRC must match as well (1 in 65,536). Marked photos of 300 px and more read 0.5-1.0 after a
  JPEG q75 re-encode or a 0.5x resize.
- Cost: 49 dB PSNR (an RMS change under one grey level, at most ~6 levels); the numbers are in
  docs/MARKS.md and come from bench/swap.py.
- Limits: the ID lives at a fixed resolution (a 256 px canvas), so images under ~200 px on their
  short side (or resized below that), or mostly pure black/white (nothing to modulate), may lose
  it; a crop, a rotation or a mirror image loses it.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field

import numpy as np

WM_CANVAS = 256  # the luma is resized to this square before the DWT
WM_BLOCK = 8
WM_POSITIONS = ((0, 2), (1, 1), (2, 0), (1, 2), (2, 1))  # DCT coefficients that carry bits
WM_STEP = 20.0  # QIM step, in units of the orthonormal DCT of the Haar LL band (0-255 luma)
WM_ID_BITS = 32
WM_CRC_BITS = 16
WM_BITS = WM_ID_BITS + WM_CRC_BITS
WM_MIN_CONFIDENCE = 0.2  # unmarked: 0.11 +- 0.012 in theory (random slots), <= 0.15 measured
WM_PASSES = 3
_WM_SEED = 0x5EED_A1F5


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


@dataclass(frozen=True)
class _Layout:
    n_slots: int
    bit_of: np.ndarray  # (S,) which code bit each slot carries
    dither: np.ndarray  # (S,) in [0, 1): the slot's lattice offset, in steps
    key: np.ndarray  # (WM_BITS,) XORed onto the code bits
    dct: np.ndarray = field(repr=False)


def _layout() -> _Layout:
    global _LAYOUT
    if _LAYOUT is None:
        rng = np.random.default_rng(_WM_SEED)
        n = WM_CANVAS // 2 // WM_BLOCK
        s = n * n * len(WM_POSITIONS)  # slots: block row, block column, position
        _LAYOUT = _Layout(
            n_slots=s, bit_of=rng.permutation(np.arange(s) % WM_BITS), dither=rng.random(s),
            key=rng.integers(0, 2, WM_BITS).astype(np.uint8), dct=_dct_matrix(WM_BLOCK),
        )
    return _LAYOUT


_LAYOUT: _Layout | None = None


def _basis() -> np.ndarray:
    """(K, 64): the 8x8 DCT basis functions of WM_POSITIONS, flattened (orthonormal)."""
    d = _layout().dct
    return np.stack([np.outer(d[u], d[v]).ravel() for u, v in WM_POSITIONS])


_BASIS = _basis()


def _grey(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)  # JPEG's Y, rounded (noise << step)


def _analyse(grey: np.ndarray) -> np.ndarray:
    """(H, W) luma -> (slots,) the watermark's DCT coefficients of the Haar LL band of the luma
    on the 256x256 canvas, in slot order (block row, block column, position)."""
    import cv2
    import pywt

    h, w = grey.shape[:2]
    interp = cv2.INTER_AREA if min(h, w) >= WM_CANVAS else cv2.INTER_CUBIC
    canvas = cv2.resize(grey, (WM_CANVAS, WM_CANVAS), interpolation=interp)
    ll, _ = pywt.dwt2(canvas.astype(np.float64), "haar")
    n, b = ll.shape[0] // WM_BLOCK, WM_BLOCK
    blocks = ll.reshape(n, b, n, b).transpose(0, 2, 1, 3).reshape(n * n, b * b)
    return (blocks @ _BASIS.T).ravel()


def _synthesise(coef: np.ndarray) -> np.ndarray:
    """Inverse of _analyse's projection: (slots,) coefficient changes -> (128, 128) LL change."""
    n, b = WM_CANVAS // 2 // WM_BLOCK, WM_BLOCK
    blocks = coef.reshape(n * n, len(WM_POSITIONS)) @ _BASIS
    return blocks.reshape(n, n, b, b).transpose(0, 2, 1, 3).reshape(n * b, n * b)


def _crc16(wm_id: int) -> int:
    return binascii.crc_hqx(wm_id.to_bytes(4, "big"), 0xFFFF)


def _code_bits(wm_id: int) -> np.ndarray:
    word = (wm_id << WM_CRC_BITS) | _crc16(wm_id)
    return np.array([(word >> (WM_BITS - 1 - i)) & 1 for i in range(WM_BITS)], np.uint8)


def embed_watermark(rgb: np.ndarray, wm_id: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the same image carrying `wm_id` (32 bits) invisibly."""
    import cv2

    if not 0 <= wm_id < 2**WM_ID_BITS:
        raise ValueError("watermark ID must fit in 32 bits")
    lay = _layout()
    code = (_code_bits(wm_id) ^ lay.key)[lay.bit_of]
    h, w = rgb.shape[:2]
    offset = (lay.dither + code / 2.0) * WM_STEP
    grey = _grey(rgb).astype(np.float32)
    c = _analyse(grey)
    target = np.round((c - offset) / WM_STEP) * WM_STEP + offset  # the nearest lattice point
    total = np.zeros((WM_CANVAS // 2, WM_CANVAS // 2))
    for i in range(WM_PASSES):
        total += _synthesise(target - c)
        # an LL change of x is a change of x/2 per pixel of the canvas (Haar LL = 2 x the mean);
        # each pass measures what resizing the change to the image and back leaves of it
        change = cv2.resize((total / 2.0).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        if i + 1 < WM_PASSES:
            c = _analyse(grey + change)
    # the same change on R, G and B is a luma-only change (rounded and clipped to 0-255)
    return cv2.add(np.ascontiguousarray(rgb), cv2.merge([change, change, change]), dtype=cv2.CV_8U)


@dataclass(frozen=True)
class WatermarkReading:
    found: bool
    id: int | None  # set only when found
    confidence: float  # mean agreement of the slots with the decoded word, in [-1, 1]
    bits: np.ndarray  # (48,) the decoded code word (ID + CRC), found or not
    soft: np.ndarray = field(repr=False)  # (S,) per-slot soft values, +1 = code bit 0


def _decide(soft: np.ndarray) -> WatermarkReading:
    lay = _layout()
    votes = np.bincount(lay.bit_of, weights=soft, minlength=WM_BITS)
    code = (votes < 0).astype(np.uint8)
    bits = code ^ lay.key
    confidence = float(np.mean(soft * (1.0 - 2.0 * code[lay.bit_of])))
    word = int("".join(map(str, bits)), 2)
    wm_id, crc = word >> WM_CRC_BITS, word & (2**WM_CRC_BITS - 1)
    found = crc == _crc16(wm_id) and confidence >= WM_MIN_CONFIDENCE
    return WatermarkReading(found, wm_id if found else None, confidence, bits, soft)


def watermark_soft(rgb: np.ndarray) -> np.ndarray:
    """Per-slot soft values of an image: +1 on the lattice of code bit 0, -1 on that of bit 1."""
    lay = _layout()
    c = _analyse(_grey(rgb))
    return np.cos(2.0 * np.pi * (c / WM_STEP - lay.dither))


def detect_watermark(rgb: np.ndarray) -> WatermarkReading:
    """Read the watermark of an (H, W, 3) uint8 image; found only with a CRC match and enough
    agreement (see module docstring)."""
    return _decide(watermark_soft(rgb))


def detect_watermark_frames(frames: list[np.ndarray]) -> tuple[WatermarkReading, int]:
    """Several frames of a video: (the reading of the frames' summed soft votes over the frames
    that agree with a word at all, how many single frames carry the ID on their own)."""
    readings = [_decide(watermark_soft(f)) for f in frames]
    alone = sum(r.found for r in readings)
    useful = [r.soft for r in readings if r.confidence >= WM_MIN_CONFIDENCE] or [r.soft for r in readings]
    if not useful:
        return _decide(np.zeros(len(_layout().bit_of))), 0
    return _decide(np.mean(useful, axis=0)), alone


def bit_accuracy(reading: WatermarkReading, wm_id: int) -> tuple[float, float]:
    """(ID + CRC bits right, single slots right): how much of the mark survived."""
    lay = _layout()
    truth = _code_bits(wm_id)
    code = (truth ^ lay.key)[lay.bit_of]
    slot_ok = (reading.soft < 0).astype(np.uint8) == code
    return float(np.mean(reading.bits == truth)), float(np.mean(slot_ok))
