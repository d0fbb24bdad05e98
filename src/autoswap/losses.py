"""Reconstruction losses for training: `make_loss(settings.train.loss)` -> a loss function.

The function takes `(y_true, y_pred, mask=None, weight=None)`, images (B, H, W, C) in [0, 1], and
returns a dict of scalar float32 tensors: "total" (what is minimised) and, when more than one term
is active, each term by name, unweighted (train logs them as `loss_a.mae`, `loss_a.dssim`, ...).

Terms (`train.loss.kind` picks one; `mix` sums `train.loss.weights[term] * term`):
- `mae`: mean absolute error, the seed's loss. With the default settings the total is exactly
  the seed's `mean(|y_true - y_pred|)`, bit for bit (no extra op).
- `dssim` (kind `ssim`): (1 - SSIM) / 2. SSIM with a Gaussian window (`ssim_window` px,
  `ssim_sigma`), VALID filtering and K1 0.01, K2 0.03 at max value 1: the definition of
  `tf.image.ssim`, which it matches to float rounding. Written with two 1-D plain convolutions
  (the channels folded into the batch), so it runs inside tf.function and XLA, and its gradient is
  finite everywhere (identical or constant images included).
- `ms_dssim` (kind `ms_ssim`): 1 - MS-SSIM. Wang et al.'s multi-scale SSIM: contrast-structure at
  every scale, luminance at the coarsest, each scale a 2x2 average pool of the one before. The
  power factors are the first `ms_ssim_scales` of the standard five (0.0448, 0.2856, 0.3001,
  0.2363, 0.1333), rescaled to sum to 1. Every scale needs at least `ssim_window` px: the standard
  five scales with an 11 px window need 176 px, so for the seed's 64 px the default is 3 scales
  (64, 32, 16 px) with the same 11 px window (`tf.image.ssim_multiscale` refuses 5 scales at
  64 px). Smaller inputs need fewer scales or a smaller window; a size that does not fit stops
  training with a message naming the keys. Values below 1e-6 are clamped before the fractional
  powers, so gradients stay finite.
- `gradient`: gradient-difference loss (Mathieu et al. 2016): the mean absolute difference of the
  horizontal and of the vertical finite differences, averaged. It penalises blur (edges) that MAE
  tolerates.
- `ffl`: focal frequency loss (Jiang et al. 2021, alpha 1): squared distance of the orthonormal
  2-D spectra, each frequency weighted by its own (normalised, not differentiated) distance, so
  the frequencies the model gets most wrong, usually the high ones, count most.

Everything is computed in float32: inputs are cast first, so under mixed precision (bfloat16
decoders) the losses, their sums and their logged values stay float32.

Masks and weight maps (optional, (B, H, W, 1), same H and W as the images):
- `mask`: the face mask in [0, 1]. Pixels are weighted by `mask + mask_outside_weight * (1 -
  mask)`: `mask_outside_weight` 1 (the default) ignores the mask, 0 ignores everything outside
  the face (the structural terms then also see both images multiplied by the mask, so the pixel
  values outside cannot reach the loss or its gradient), 0.25 makes a face pixel count 4x.
- `weight`: a multiplier map, e.g. from `region_weight(cfg, eyes, mouth)` = 1 + (eye_multiplier -
  1) * eyes + (mouth_multiplier - 1) * mouth (faceswap uses eyes x3, mouth x2).
Pixel terms (mae, gradient) become weighted means over the batch (sum(w |e|) / sum(w)); a finite
difference counts with the smaller weight of its two pixels. dssim and ms_dssim weight each SSIM
window position by the window's mean weight (the weight map filtered with the same Gaussian),
per image. ffl has no locality: it uses the mask (as a multiplier on both images) but not `weight`.

How the maps are fed: only when the settings need them (`needs_maps`: `mask_outside_weight` < 1,
an eye or mouth multiplier > 1), train draws three maps per face from the 5 landmarks in
data/faces/<side>/manifest.jsonl (extract writes the rows for real faces, `synthetic.generate`
for the demo set): the face mask, the eyes and the mouth (`align.region_maps`, 0/255), built by
`pipeline.load_maps` and cached as channels 3, 4, 5 of the uint8 face tensor. `make_batch` samples
them with the target's own grid (augmented like the face, not warped) and returns a (B, H, W, 6)
target; `forward_backward` splits it into the RGB target, `mask=` (channel 3) and
`weight=region_weight(cfg, eyes, mouth)`. Faces prepared from `data.aligned: true` folders have no
landmarks, so those settings stop there with a message. With the defaults nothing is loaded and
the batches are the 3-channel ones, bit for bit. Called without the maps it needs, the loss
function stops with a message instead of doing nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from autoswap.errors import UserError

# term names, in the order train logs them; train.loss.weights has one key for each
TERMS = ("mae", "dssim", "ms_dssim", "gradient", "ffl")
KIND_TERM = {"mae": "mae", "ssim": "dssim", "ms_ssim": "ms_dssim"}
# Wang, Simoncelli & Bovik 2003, finest scale first
MS_SSIM_POWERS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
K1, K2 = 0.01, 0.03
_EPS = 1e-6

LossFn = Callable[..., dict[str, tf.Tensor]]


def term_weights(cfg) -> dict[str, float]:
    """The active terms and their weights, in TERMS order."""
    if cfg.kind != "mix":
        return {KIND_TERM[cfg.kind]: 1.0}
    w = cfg.weights.model_dump()
    return {t: float(w[t]) for t in TERMS if w[t] > 0}


def component_names(cfg) -> list[str]:
    """The terms a loss function returns besides "total": none when only one term is active."""
    terms = list(term_weights(cfg))
    return terms if len(terms) > 1 else []


def mae(y_true, y_pred) -> tf.Tensor:
    """The seed's loss: mean(|y_true - y_pred|) in float32."""
    return tf.reduce_mean(tf.abs(tf.cast(y_true, tf.float32) - tf.cast(y_pred, tf.float32)))


def needs_maps(cfg) -> bool:
    """Whether the loss of `cfg` uses the face mask or the eye/mouth maps (train loads them then)."""
    return cfg.mask_outside_weight < 1 or cfg.eye_multiplier != 1 or cfg.mouth_multiplier != 1


def region_weight(cfg, eyes=None, mouth=None) -> tf.Tensor | None:
    """(B, H, W, 1) multiplier map from eye and mouth region masks in [0, 1]: 1 elsewhere,
    eye_multiplier on the eyes, mouth_multiplier on the mouth. None when there is nothing to weight."""
    w = None
    for region, mult in ((eyes, cfg.eye_multiplier), (mouth, cfg.mouth_multiplier)):
        if region is not None and mult != 1:
            term = (mult - 1.0) * tf.cast(region, tf.float32)
            w = term if w is None else w + term
    return None if w is None else 1.0 + w


# ----------------------------------------------------------------------------- SSIM
def _gaussian(window: int, sigma: float) -> np.ndarray:
    """1-D Gaussian, normalised: its outer product is tf.image.ssim's 2-D window."""
    x = np.arange(window, dtype=np.float64) - (window - 1) / 2.0
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def _blur(x, g: np.ndarray) -> tf.Tensor:
    """(B, H, W, C) -> (B, H - n + 1, W - n + 1, C): the separable Gaussian, VALID. The channels
    are folded into the batch and filtered by plain 1-channel convolutions (deterministic on GPU,
    fine under XLA)."""
    n = len(g)
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    y = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, h, w, 1])
    k = tf.constant(g)
    y = tf.nn.conv2d(y, tf.reshape(k, [n, 1, 1, 1]), 1, "VALID")
    y = tf.nn.conv2d(y, tf.reshape(k, [1, n, 1, 1]), 1, "VALID")
    return tf.transpose(tf.reshape(y, [-1, c, h - n + 1, w - n + 1]), [0, 2, 3, 1])


def ssim_maps(x, y, window: int = 11, sigma: float = 1.5) -> tuple[tf.Tensor, tf.Tensor]:
    """Luminance and contrast-structure maps, each (B, H - window + 1, W - window + 1, C), of
    images in [0, 1] (tf.image.ssim's `_ssim_helper` with compensation 1)."""
    x, y = tf.cast(x, tf.float32), tf.cast(y, tf.float32)
    c = x.shape[-1]
    # one filtering pass for all four statistics
    stats = _blur(tf.concat([x, y, x * y, tf.square(x) + tf.square(y)], -1), _gaussian(window, sigma))
    mx, my, sxy, sxx_yy = stats[..., :c], stats[..., c : 2 * c], stats[..., 2 * c : 3 * c], stats[..., 3 * c :]
    c1, c2 = K1**2, K2**2
    num0 = mx * my * 2.0
    den0 = tf.square(mx) + tf.square(my)
    luminance = (num0 + c1) / (den0 + c1)
    cs = (sxy * 2.0 - num0 + c2) / (sxx_yy - den0 + c2)
    return luminance, cs


def _image_mean(v, omega) -> tf.Tensor:
    """(B, h, w, C) -> (B, C): the mean over positions, weighted by omega (B, h, w, 1) when given.
    An image whose weights are all 0 scores 1 (a perfect match: it has nothing to compare)."""
    if omega is None:
        return tf.reduce_mean(v, [1, 2])
    return (tf.reduce_sum(v * omega, [1, 2]) + _EPS) / (tf.reduce_sum(omega, [1, 2]) + _EPS)


def _check_size(h: int, w: int, window: int, scales: int = 1) -> None:
    need = window * 2 ** (scales - 1)
    if min(h, w) < need:
        what = f"ms_ssim with {scales} scales" if scales > 1 else "ssim"
        raise UserError(
            f"train.loss: {what} and a {window} px window need images of at least {need} px, these are "
            f"{h}x{w}; lower train.loss.ssim_window" + (" or train.loss.ms_ssim_scales" if scales > 1 else "")
        )


def ssim(x, y, window: int = 11, sigma: float = 1.5, weight=None) -> tf.Tensor:
    """SSIM per image (B,), mean over positions and channels, as tf.image.ssim(max_val=1)."""
    _check_size(x.shape[1], x.shape[2], window)
    lum, cs = ssim_maps(x, y, window, sigma)
    omega = None if weight is None else _blur(tf.cast(weight, tf.float32), _gaussian(window, sigma))
    return tf.reduce_mean(_image_mean(lum * cs, omega), -1)


def ms_ssim(x, y, scales: int = 3, window: int = 11, sigma: float = 1.5, weight=None) -> tf.Tensor:
    """MS-SSIM per image (B,) with the first `scales` standard power factors, rescaled to sum to 1.
    Equals tf.image.ssim_multiscale(max_val=1, power_factors=those, filter_size=window) for
    images whose sides halve evenly."""
    _check_size(x.shape[1], x.shape[2], window, scales)
    powers = np.array(MS_SSIM_POWERS[:scales], np.float64)
    powers = (powers / powers.sum()).astype(np.float32)
    x, y = tf.cast(x, tf.float32), tf.cast(y, tf.float32)
    w = None if weight is None else tf.cast(weight, tf.float32)
    g = _gaussian(window, sigma)
    values = []
    for k in range(scales):
        if k:
            x, y = tf.nn.avg_pool2d(x, 2, 2, "VALID"), tf.nn.avg_pool2d(y, 2, 2, "VALID")
            if w is not None:
                w = tf.nn.avg_pool2d(w, 2, 2, "VALID")
        lum, cs = ssim_maps(x, y, window, sigma)
        omega = None if w is None else _blur(w, g)
        values.append(_image_mean(lum * cs if k == scales - 1 else cs, omega))  # (B, C)
    v = tf.maximum(tf.stack(values, -1), _EPS)  # (B, C, scales); tf uses relu: equal where > 0
    return tf.reduce_mean(tf.reduce_prod(tf.pow(v, tf.constant(powers)), -1), -1)


# ----------------------------------------------------------------------------- other terms
def _weighted_mean(err, w) -> tf.Tensor:
    """err (B, h, w, C), w (B, h, w, 1) or None -> scalar sum(w err) / sum(w) over the batch."""
    if w is None:
        return tf.reduce_mean(err)
    c = err.shape[-1]
    return tf.reduce_sum(err * w) / (tf.reduce_sum(w) * c + _EPS)


def gradient_difference(y_true, y_pred, weight=None) -> tf.Tensor:
    t, p = tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)
    dy = tf.abs((t[:, 1:] - t[:, :-1]) - (p[:, 1:] - p[:, :-1]))
    dx = tf.abs((t[:, :, 1:] - t[:, :, :-1]) - (p[:, :, 1:] - p[:, :, :-1]))
    wy = wx = None
    if weight is not None:
        w = tf.cast(weight, tf.float32)
        wy, wx = tf.minimum(w[:, 1:], w[:, :-1]), tf.minimum(w[:, :, 1:], w[:, :, :-1])
    return 0.5 * (_weighted_mean(dy, wy) + _weighted_mean(dx, wx))


def focal_frequency(y_true, y_pred) -> tf.Tensor:
    t, p = tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)
    h, w = t.shape[1], t.shape[2]

    def spectrum(x):  # (B, C, H, W) complex, orthonormal
        x = tf.transpose(x, [0, 3, 1, 2])
        return tf.signal.fft2d(tf.complex(x, tf.zeros_like(x))) / complex(np.sqrt(h * w), 0.0)

    d = spectrum(t) - spectrum(p)
    dist = tf.square(tf.math.real(d)) + tf.square(tf.math.imag(d))  # (B, C, H, W)
    focus = tf.stop_gradient(tf.sqrt(dist))
    focus = tf.math.divide_no_nan(focus, tf.reduce_max(focus, [2, 3], keepdims=True))
    return tf.reduce_mean(focus * dist)


# ----------------------------------------------------------------------------- factory
def make_loss(cfg, mae_fn: Callable | None = None) -> LossFn:
    """The loss of `cfg` (a `LossSettings`). `mae_fn(y_true, y_pred)` is the unweighted MAE kernel
    (default `mae`, looked up when the loss is made: tests swap it for a poisoned one)."""
    weights = term_weights(cfg)
    mae_fn = mae_fn or mae
    outside = float(cfg.mask_outside_weight)

    def loss(y_true, y_pred, mask=None, weight=None) -> dict[str, tf.Tensor]:
        if mask is None and outside < 1:
            raise UserError(
                "train.loss.mask_outside_weight < 1 needs face masks with the training batches (mask=), none were "
                "given; set it to 1.0"
            )
        if weight is None and (cfg.eye_multiplier != 1 or cfg.mouth_multiplier != 1):
            raise UserError(
                "train.loss.eye_multiplier / mouth_multiplier need eye and mouth maps with the training batches "
                "(weight=), none were given; set them to 1.0"
            )
        t, p = tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)
        w = None  # per-pixel weight (B, H, W, 1)
        ts, ps = t, p  # what the structural terms see
        if mask is not None and outside < 1:
            m = tf.cast(mask, tf.float32)
            w = m if outside == 0 else m + outside * (1.0 - m)
            ts, ps = (t * m, p * m) if outside == 0 else (t, p)
        fm = w  # ffl: the mask only
        if weight is not None:
            w = tf.cast(weight, tf.float32) if w is None else w * tf.cast(weight, tf.float32)
        terms = {}
        for name in weights:
            if name == "mae":
                terms[name] = mae_fn(y_true, y_pred) if w is None else _weighted_mean(tf.abs(t - p), w)
            elif name == "dssim":
                terms[name] = tf.reduce_mean(1.0 - ssim(ts, ps, cfg.ssim_window, cfg.ssim_sigma, w)) / 2.0
            elif name == "ms_dssim":
                s = ms_ssim(ts, ps, cfg.ms_ssim_scales, cfg.ssim_window, cfg.ssim_sigma, w)
                terms[name] = tf.reduce_mean(1.0 - s)
            elif name == "gradient":
                terms[name] = gradient_difference(t, p, w)
            elif name == "ffl":
                terms[name] = focal_frequency(t, p) if fm is None else focal_frequency(t * fm, p * fm)
        if len(terms) == 1:
            return {"total": next(iter(terms.values()))}
        total = tf.add_n([weights[k] * v for k, v in terms.items()])
        return {"total": total, **terms}

    return loss
