"""Training batches: decoded faces are cached once as a uint8 tensor; every step draws a
batch per person (reshuffled every epoch), augments and warps each image on its own, and
centre-crops and resizes to the model's input.

The seed's chain (Keras augmentation layers -> sparse_image_warp -> CenterCrop(80) ->
Resizing(64)) resamples the face three times at 128 px. Here the three maps are composed into
one sampling grid at the 64 px output and the face is sampled once, bilinearly: the same
geometry (the spline is evaluated at the output pixels, then the affine is inverted), a third of
the interpolation blur, and the spline is evaluated at 4,096 points instead of 16,384.

Randomness is stateless: every draw is a hash of (seed, step, stream, index), so a batch is a pure
function of (seed, step) and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from autoswap.config import Settings
from autoswap.errors import UserError
from autoswap.images import BadImage, list_images, load_rgb
from autoswap.warp import interpolate_spline

# stream ids inside one step's seed, so that augment and warp draws of A and B never collide
_AUG, _WARP, _PERM = 0, 1, 2
_COLOR = 3  # colour augmentation: a stream of its own, so the other draws are unchanged


# ----------------------------------------------------------------------------- counter-based RNG
# Why not tf.random.stateless_*: under XLA (jit_compile, the GPU path) they return other numbers
# than the CPU kernels for the same seed (measured on TF 2.21), so the same params would train
# on other batches depending on where the batch is built. An integer hash is exact everywhere.
def _hash32(x):
    """lowbias32 (C. Wellons): a well-mixed bijection on uint32."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def random_bits(seed: int, counter, stream: int, n: int):
    """n uint32 draws, a pure function of (seed, counter, stream, index)."""
    key = _hash32(tf.constant(seed, tf.uint32))
    key = _hash32(key + tf.cast(counter, tf.uint32) * tf.constant(2654435761, tf.uint32))  # step or epoch
    key = _hash32(key ^ tf.constant(stream * 0x632BE5AB & 0xFFFFFFFF, tf.uint32))
    return _hash32(_hash32(tf.cast(tf.range(n), tf.uint32) + key) ^ key)


def random_uniform(seed: int, counter, stream: int, shape) -> tf.Tensor:
    n = int(np.prod(shape))
    bits = random_bits(seed, counter, stream, n)
    u = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / 16777216.0)  # [0, 1), 24 bits
    return tf.reshape(u, shape)


def random_normal(seed: int, counter, stream: int, shape) -> tf.Tensor:
    n = int(np.prod(shape))
    u = random_uniform(seed, counter, stream, [2, n])
    z = tf.sqrt(-2.0 * tf.math.log(1.0 - u[0])) * tf.cos(2.0 * math.pi * u[1])  # Box-Muller
    return tf.reshape(z, shape)


@dataclass(frozen=True)
class BatchSpec:
    """Everything a batch depends on, from the validated settings."""

    seed: int
    batch: int
    face_size: int  # S: the cached faces are (S, S, 3), or (S, S, 6) with the loss maps
    out_size: int  # model input
    crop: float  # centre fraction of the face fed to the model
    flip: float
    zoom: float
    rotation: float  # fraction of a full turn
    translation: float
    grid: int
    span: float
    stddev: float  # fraction of S, before the schedule
    schedule: str
    off_after: int | None
    order: int
    steps: int
    # colour augmentation (train.augment.color); all 0 = off
    color_lightness: float = 0.0
    color_ab: float = 0.0
    color_contrast: float = 0.0
    color_input_only: bool = False
    # a finished run lengthened with train.on_more_steps stretch_schedule: see stretched below
    stretch: tuple[float, float, float, float] | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> BatchSpec:
        t, a, w = s.train, s.train.augment, s.train.warp
        return cls(
            seed=s.seed, batch=t.batch_size, face_size=s.data.face_size, out_size=s.model.input_size,
            crop=t.crop, flip=a.flip, zoom=a.zoom, rotation=a.rotation, translation=a.translation,
            grid=w.grid, span=w.span, stddev=w.stddev, schedule=w.schedule, off_after=w.off_after,
            order=w.interpolation_order, steps=t.steps,
            color_lightness=a.color.lightness, color_ab=a.color.ab, color_contrast=a.color.contrast,
            color_input_only=a.color.input_only,
        )


def stretched(step, stretch):
    """The step at which a schedule that depends on train.steps is read: `step` itself, or, after
    a finished run was lengthened with train.on_more_steps stretch_schedule, the steps from k on
    mapped linearly onto what was left of the schedule. stretch = (k, e_k, end_new, end_old):
    step k reads the schedule at e_k, and the new last step at the old last one."""
    step = tf.cast(step, tf.float32)
    if stretch is None:
        return step
    k, e, end_new, end_old = (float(v) for v in stretch)
    return tf.where(step >= k, e + (step - k) * ((end_old - e) / max(1.0, end_new - k)), step)


def warp_stddev(spec: BatchSpec, step) -> tf.Tensor:
    """Warp noise in pixels of the face at `step`: constant, linear to 0 at the last step, or
    off from `off_after` on (the seed suggests turning the warp off near the end)."""
    step = tf.cast(step, tf.float32)
    base = tf.constant(spec.stddev * spec.face_size, tf.float32)
    if spec.schedule == "linear":
        return base * tf.maximum(0.0, 1.0 - stretched(step, spec.stretch) / max(1, spec.steps - 1))
    if spec.schedule == "off_after":
        return tf.where(step < float(spec.off_after), base, 0.0)
    return base


def batch_indices(spec: BatchSpec, n: int, step, side: int) -> tf.Tensor:
    """Indices of the faces in this step's batch: epoch-wise permutations of range(n), each
    permutation seeded by (seed, epoch, side), so every face is seen once per epoch and the order
    changes every epoch (the seed cached batches and repeated them in the same order)."""
    pos = tf.cast(step, tf.int64) * spec.batch + tf.range(spec.batch, dtype=tf.int64)  # (B,)
    epoch = pos // n
    e0 = epoch[0]
    n_perm = spec.batch // n + 2  # a batch spans at most this many epochs
    keys = tf.stack(
        [random_bits(spec.seed, e0 + k, _PERM + 4 * side, n) for k in range(n_perm)]
    )  # (E, n) uint32
    perms = tf.argsort(tf.cast(keys, tf.int64), axis=1, stable=True)  # (E, n)
    return tf.gather_nd(perms, tf.stack([epoch - e0, pos % n], axis=1))  # (B,)


def _output_grid(spec: BatchSpec) -> np.ndarray:
    """(out*out, 2) (y, x) positions in the face image of the model-input pixels: the centre
    crop resized with half-pixel centres, as Keras CenterCrop + Resizing do."""
    s, o = spec.face_size, spec.out_size
    c = round(spec.crop * s)
    off = (s - c) / 2.0
    r = off + (np.arange(o) + 0.5) * (c / o) - 0.5
    yy, xx = np.meshgrid(r, r, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float32)


def _control_grid(spec: BatchSpec) -> np.ndarray:
    """(grid*grid, 2) (y, x): the seed's 5x5 points over centre +- 40 px of 128."""
    centre = spec.face_size / 2.0  # the seed's linspace(64 - 40, 64 + 40, 5), in pixel indices
    r = np.linspace(centre - spec.span * spec.face_size, centre + spec.span * spec.face_size, spec.grid)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _flow_operator(spec: BatchSpec) -> np.ndarray:
    """(out*out, grid*grid) float32 F: the warp's dense flow at the output pixels is F @ (the
    control points' displacements), for every image.

    sparse_image_warp fits its spline on the control grid, which never moves (only the values,
    dest - source, are random), and evaluates it at the output grid, which never moves either;
    the fit and the evaluation are both linear in the values. So the (N+3) x (N+3) solve and the
    (M, N) radial-basis matrix that tfa builds for every image on every step are done here once,
    in float64 (interpolate_spline with the identity as values), and a step costs one small
    matmul. It is also closer to the exact spline than tfa's float32 solve (see warp.py)."""
    c = _control_grid(spec).astype(np.float64)[None]  # (1, N, 2)
    q = _output_grid(spec).astype(np.float64)[None]  # (1, M, 2)
    eye = np.eye(c.shape[1])[None]  # (1, N, N): value k is 1 at control point k
    with tf.init_scope():  # eager even when first asked for while a graph is traced
        return interpolate_spline(c, eye, q, spec.order)[0].numpy().astype(np.float32)  # (M, N)


def _inverse_affine(spec: BatchSpec, q, params) -> tf.Tensor:
    """Map output positions q (B, M, 2) of the augmented image back into the source image.
    params (B, 6) uniform in [0, 1): flip, zoom x, zoom y, rotation, shift y, shift x."""
    s = spec.face_size
    centre = (s - 1) / 2.0
    flip = tf.where(params[:, 0] < spec.flip, -1.0, 1.0)  # (B,)
    zx = 1.0 + spec.zoom * (2.0 * params[:, 1] - 1.0)
    zy = 1.0 + spec.zoom * (2.0 * params[:, 2] - 1.0)
    theta = spec.rotation * 2.0 * math.pi * (2.0 * params[:, 3] - 1.0)
    shift = spec.translation * s * (2.0 * params[:, 4:6] - 1.0)  # (B, 2) (y, x)
    d = q - centre - shift[:, None, :]  # (B, M, 2)
    cos, sin = tf.cos(theta)[:, None], tf.sin(theta)[:, None]
    dy, dx = d[..., 0], d[..., 1]
    ry, rx = cos * dy - sin * dx, sin * dy + cos * dx  # rotate back by -theta
    return tf.stack([ry / zy[:, None] + centre, rx / zx[:, None] * flip[:, None] + centre], axis=-1)


def sample_bilinear(images, pts) -> tf.Tensor:
    """images (B, S, S, C) uint8, pts (B, M, 2) (y, x) -> (B, M, C) float32 in [0, 1].
    Points are clamped to the image: with the seed's augmentation the centre crop never leaves
    the face, so the fill mode never shows."""
    b, s, c = tf.shape(images)[0], images.shape[1], images.shape[-1]
    y = tf.clip_by_value(pts[..., 0], 0.0, s - 1.0)
    x = tf.clip_by_value(pts[..., 1], 0.0, s - 1.0)
    y0 = tf.minimum(tf.floor(y), s - 2.0)
    x0 = tf.minimum(tf.floor(x), s - 2.0)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]  # (B, M, 1)
    base = (tf.range(b) * s * s)[:, None]  # (B, 1)
    i00 = base + tf.cast(y0, tf.int32) * s + tf.cast(x0, tf.int32)  # (B, M)
    flat = tf.reshape(images, [-1, c])  # (B*S*S, C)

    def at(i):
        return tf.cast(tf.gather(flat, i), tf.float32)

    top = at(i00) * (1 - wx) + at(i00 + 1) * wx
    bot = at(i00 + s) * (1 - wx) + at(i00 + s + 1) * wx
    return (top * (1 - wy) + bot * wy) / 255.0


# ----------------------------------------------------------------------------- colour
# sRGB (D65) <-> CIELAB, with L, a, b scaled as OpenCV's 8-bit LAB (L/100, (a+128)/255, (b+128)/255)
# so that faceswap's colour augmentation, defined on those, carries over
_RGB2XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                     [0.2126729, 0.7151522, 0.0721750],
                     [0.0193339, 0.1191920, 0.9503041]], np.float64)
_WHITE = np.array([0.95047, 1.0, 1.08883], np.float64)
_D = 6.0 / 29.0


def _pow(x, a: float) -> tf.Tensor:
    """x ** a for x > 0 (every caller clamps x away from 0 first), as exp(a log x): the same values
    to float32 rounding (7.7e-6 at most over the colour change) and, under XLA on the CPU, less
    than half the time of tf.pow, which was most of the colour change's cost (bench/demo_speed.py)."""
    return tf.exp(a * tf.math.log(x))


def rgb_to_lab01(rgb) -> tf.Tensor:
    """(..., 3) sRGB in [0, 1] -> (..., 3) LAB, each channel scaled to about [0, 1]."""
    lin = tf.where(rgb <= 0.04045, rgb / 12.92, _pow((tf.maximum(rgb, 0.04045) + 0.055) / 1.055, 2.4))
    t = tf.tensordot(lin, tf.constant((_RGB2XYZ / _WHITE[:, None]).T, tf.float32), 1)
    f = tf.where(t > _D**3, _pow(tf.maximum(t, _D**3), 1.0 / 3.0), t / (3 * _D**2) + 4.0 / 29.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return tf.stack([(116.0 * fy - 16.0) / 100.0, (500.0 * (fx - fy) + 128.0) / 255.0,
                     (200.0 * (fy - fz) + 128.0) / 255.0], axis=-1)


def lab01_to_rgb(lab) -> tf.Tensor:
    """The inverse of rgb_to_lab01, clipped to [0, 1]."""
    fy = (lab[..., 0] * 100.0 + 16.0) / 116.0
    f = tf.stack([fy + (lab[..., 1] * 255.0 - 128.0) / 500.0, fy, fy - (lab[..., 2] * 255.0 - 128.0) / 200.0], -1)
    t = tf.where(f > _D, f * f * f, 3 * _D**2 * (f - 4.0 / 29.0))
    lin = tf.tensordot(t, tf.constant(np.linalg.inv(_RGB2XYZ / _WHITE[:, None]).T, tf.float32), 1)
    rgb = tf.where(lin <= 0.0031308, 12.92 * lin, 1.055 * _pow(tf.maximum(lin, 0.0031308), 1.0 / 2.4) - 0.055)
    return tf.clip_by_value(rgb, 0.0, 1.0)


def color_jitter(spec: BatchSpec, px, u, m: int) -> tf.Tensor:
    """faceswap's colour augmentation on px (b, 2M, 3) in [0, 1]: per image, L scaled about its mean
    by 1 +- contrast, then L, a and b each moved by r in +-(lightness, ab, ab): toward the top of
    their range by r where r > 0, toward 0 by |r| where r < 0. u (b, 4) uniform draws. The input
    and target halves of an image get the same change; the mean is the target's (last m pixels)."""
    lab = rgb_to_lab01(px)
    lum, ab = lab[..., :1], lab[..., 1:]
    if spec.color_contrast:
        mean = tf.reduce_mean(lum[:, -m:], axis=1, keepdims=True)  # (b, 1, 1)
        c = 1.0 + spec.color_contrast * (2.0 * u[:, 3] - 1.0)
        lum = tf.clip_by_value(mean + (lum - mean) * c[:, None, None], 0.0, 1.0)
    lab = tf.concat([lum, ab], -1)
    amount = tf.constant([spec.color_lightness, spec.color_ab, spec.color_ab], tf.float32)
    r = (amount * (2.0 * u[:, :3] - 1.0))[:, None, :]  # (b, 1, 3)
    lab = tf.where(r >= 0, lab + (1.0 - lab) * r, lab * (1.0 + r))
    return lab01_to_rgb(lab)


@functools.lru_cache(maxsize=8)
def _color_jitter_compiled(spec: BatchSpec, m: int):
    """color_jitter compiled with XLA, which fuses the LAB round trip's ~40 elementwise ops into a
    few loops: about 2x faster on the CPU, where it runs in the input pipeline beside the training
    step (with the demo's input-only colour, about 10 ms a person a step on 2 cores otherwise)."""
    return tf.function(lambda px, u: color_jitter(spec, px, u, m), jit_compile=True)


def make_batch(spec: BatchSpec, faces, step, side: int, part: int = 0, parts: int = 1):
    """faces (N, S, S, C) uint8 -> (warped (B, out, out, 3), target (B, out, out, C)), float32 in [0, 1].

    C is 3, or 6 when the faces carry the loss maps behind RGB (mask, eyes, mouth: `load_maps`).
    The maps go through the target's geometry only, augmented but not warped, because the loss
    compares the output with the unwarped target; they get no colour change. The RGB channels are
    the 3-channel batch exactly (same draws, same ops), so adding maps changes no image bit.

    With parts > 1, only slice `part` of the global batch (B / parts images) is built, with the
    very draws the whole batch would use: replicas of a distribution strategy each build their
    own slice on their own device, and together they see exactly the single-device batch."""
    n = faces.shape[0] if faces.shape[0] is not None else tf.shape(faces)[0]
    b, o = spec.batch // parts, spec.out_size
    lo = part * b
    idx = batch_indices(spec, n, step, side)[lo : lo + b]  # (b,)
    imgs = tf.gather(faces, idx)  # (b, S, S, C) uint8
    c = faces.shape[-1]
    q = tf.broadcast_to(tf.constant(_output_grid(spec)), [b, o * o, 2])  # (b, M, 2)

    # the warp: control points on the seed's grid, each source point moved by N(0, stddev)
    noise = random_normal(spec.seed, step, _WARP + 4 * side, [spec.batch, spec.grid**2, 2])[lo : lo + b]
    moved = noise * warp_stddev(spec, step)  # (b, 25, 2): source - dest
    # sparse_image_warp's dense flow at the output points (its spline on the values dest - source);
    # the warped image samples at q - flow
    flow = tf.einsum("mk,bkc->bmc", tf.constant(_flow_operator(spec)), -moved)  # (b, M, 2)
    params = random_uniform(spec.seed, step, _AUG + 4 * side, [spec.batch, 6])[lo : lo + b]
    src_warped = _inverse_affine(spec, q - flow, params)
    src_target = _inverse_affine(spec, q, params)
    rgb = imgs if c == 3 else imgs[..., :3]
    px = sample_bilinear(rgb, tf.concat([src_warped, src_target], axis=1))  # (b, 2M, 3)
    if spec.color_lightness or spec.color_ab or spec.color_contrast:  # off: not in the graph at all
        u = random_uniform(spec.seed, step, _COLOR + 4 * side, [spec.batch, 4])[lo : lo + b]
        jitter = _color_jitter_compiled(spec, o * o)
        if spec.color_input_only:  # the input half alone, about its own mean
            px = tf.concat([jitter(px[:, : o * o], u), px[:, o * o :]], axis=1)
        else:
            px = jitter(px, u)
    px = tf.reshape(px, [b, 2, o, o, 3])
    if c == 3:
        return px[:, 0], px[:, 1]
    maps = tf.reshape(sample_bilinear(imgs[..., 3:], src_target), [b, o, o, c - 3])  # target grid only
    return px[:, 0], tf.concat([px[:, 1], maps], -1)


@functools.lru_cache(maxsize=8)
def _make_batch_compiled(spec: BatchSpec, side: int):
    """make_batch compiled with XLA for the host pipeline. On the CPU, where the pipeline shares
    the cores with the training step, XLA fuses the sampling's gathers and the colour's ~40
    elementwise ops into a few loops: a third of a plain tf.function's time on 2 cores
    (bench/results/demo_speed.json). The faces are an argument, not a captured constant, so they
    are not baked into the compiled program."""
    return tf.function(lambda faces, step: make_batch(spec, faces, step, side), jit_compile=True)


def make_dataset(spec, faces_a, faces_b, start: int, stop: int):
    """The host-side input pipeline: (step, (warped A, target A, warped B, target B)) for each
    step in [start, stop). Batches are a pure function of (seed, step), so a resumed run and a
    parallel map see the same data as a sequential, uninterrupted one."""
    fa = tf.constant(faces_a)  # (Na, S, S, 3 or 6) uint8, decoded once
    fb = tf.constant(faces_b)
    batch_a, batch_b = _make_batch_compiled(spec, 0), _make_batch_compiled(spec, 1)

    @tf.autograph.experimental.do_not_convert  # plain TF code; autograph only warns about it
    def batches(s):
        return s, (*batch_a(fa, s), *batch_b(fb, s))

    return (
        tf.data.Dataset.range(start, stop)
        .map(batches, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(2)
    )


def center_crop(spec_or_settings, faces) -> tf.Tensor:
    """(N, S, S, C) uint8 -> (N, out, out, C) float32: the model's view of a face without
    augmentation (evaluate, preview, swap). Same geometry as training batches."""
    spec = spec_or_settings if isinstance(spec_or_settings, BatchSpec) else BatchSpec.from_settings(spec_or_settings)
    faces = tf.convert_to_tensor(faces)
    n, o = tf.shape(faces)[0], spec.out_size
    q = tf.broadcast_to(tf.constant(_output_grid(spec)), [n, o * o, 2])
    return tf.reshape(sample_bilinear(faces, q), [n, o, o, faces.shape[-1]])


# ----------------------------------------------------------------------------- faces on disk
def load_faces(folder: Path, size: int, max_pixels: int = 40_000_000) -> tuple[np.ndarray, list[Path], dict]:
    """Decode every face image in `folder` (not recursive) once, resized to (size, size).
    Returns (faces (N, size, size, 3) uint8, files, skipped {file: reason})."""
    from PIL import Image

    files = [p for p in list_images(folder) if p.parent == Path(folder)]
    out, kept, skipped = [], [], {}
    for f in files:
        try:
            a = load_rgb(f, max_pixels)
        except BadImage as e:
            skipped[str(f)] = str(e)
            continue
        if a.shape[:2] != (size, size):
            a = np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.LANCZOS))
        out.append(a)
        kept.append(f)
    if not out:
        return np.zeros((0, size, size, 3), np.uint8), kept, skipped
    return np.stack(out), kept, skipped


def load_maps(folder: Path, files: list[Path], size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 loss maps (face mask, eyes, mouth: `align.region_maps`) of the
    faces `files` in the split folder `folder` (data/faces/<side>/train), from the landmarks in
    the manifest.jsonl next to it: extract's rows ({"crop": file name without .png,
    "landmarks_crop"}) or synthetic's (the same, with "split", since train and val reuse names). Landmarks are in the pixels of
    the crop as written; a crop of another size is scaled to `size`, as load_faces scales it."""
    import json

    from PIL import Image

    from autoswap.align import region_maps

    folder = Path(folder)
    manifest = folder.parent / "manifest.jsonl"
    if not manifest.is_file():
        raise UserError(
            f"{folder.parent}: no manifest.jsonl with face landmarks (faces from data.aligned: true folders have "
            "none), which train.loss.mask_outside_weight < 1 and eye/mouth_multiplier > 1 need; set them to 1.0, "
            "or prepare from photos with data.aligned: false"
        )
    marks = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            marks[(row.get("split", folder.name), row["crop"])] = row["landmarks_crop"]
    out = np.zeros((len(files), size, size, 3), np.uint8)
    for i, f in enumerate(files):
        lm = marks.get((folder.name, Path(f).stem))
        if lm is None:
            raise UserError(
                f"{f}: no landmarks for this face in {manifest}; run `dvc repro prepare` again, or remove the file"
            )
        with Image.open(f) as im:
            crop = im.size[0]  # square crops
        # pixel centres on integers: position p of a `crop` px image is (p + 0.5) * size / crop - 0.5
        lm = (np.asarray(lm, np.float64) + 0.5) * (size / crop) - 0.5
        out[i] = region_maps(lm, size)
    return out

