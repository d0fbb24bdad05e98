"""The embedded demo data: two cartoon identities rendered under one law of pose, expression and light.

Each face is a small 2.5D model: the head is a stack of superellipse cross-sections (one shape per
identity: oval or square jaw, depth, crown), the eyes, brows, nose and mouth are 2D outlines lifted
onto a shared frontal surface, and everything is rotated (yaw, pitch, roll) and projected
orthographically. Silhouettes (hair, skin, beard, neck) are convex hulls of projected surface samples,
so a turned head shows its back and ears the way a real one does. Shapes are filled with PIL at 4x
(at 128 px) and box-reduced, which antialiases every edge; a Lambert term on an ellipsoid that follows
the pose shades the head, and brightness / colour temperature act on the whole image.

Persons A and B differ only in `Identity`; `Conditions` (pose, expression, light, background) are drawn
from one distribution for both. The ground truth for swapping a face is therefore exact: the same
`Conditions` rendered as the other person. The eye and mouth centres are shared by the identities (as
face alignment makes them in real data), so `landmarks` is the same for A and B under one pose.

Everything is deterministic: image i of (seed, person, split) is drawn from its own generator, so
changing one count leaves every other image as it was, and PNGs carry no timestamps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from autoswap.config import SyntheticSettings

RGB = tuple[int, int, int]

PERSONS = ("a", "b")
SPLITS = ("train", "val")

# Head units -> image: one unit is UNIT of the image size at scale 1; the head's pivot sits at
# (0.5, PIVOT_Y). With these, at neutral pose the eyes are at y=0.40, the mouth at y=0.68 and the
# cheeks span x=0.2..0.8 of the image, like an aligned face crop.
UNIT = 0.30
PIVOT_Y = 0.48
EYE_X = 0.42
EYE_Y = (0.40 - PIVOT_Y) / UNIT
MOUTH_Y = (0.68 - PIVOT_Y) / UNIT
_CHEEK_Y = -0.1  # widest level of the face
_LIGHT_ELEVATION = math.radians(50)  # angle between the light and the view axis
_HULL_ANGLES = np.linspace(0, 2 * math.pi, 128, endpoint=False)
_HULL_DIRS = np.stack([np.cos(_HULL_ANGLES), np.sin(_HULL_ANGLES)])  # support directions of `_hull`

_FILENAME = re.compile(r"^\d{5}\.png$")


# ----------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class Conditions:
    """Everything about one picture except who is in it (angles in radians)."""

    yaw: float  # > 0: the face turns so its features move right
    pitch: float  # > 0: the face tilts down
    roll: float  # in-plane rotation, clockwise on screen for > 0
    scale: float  # 1 = the nominal face size
    shift_x: float  # fraction of the image size
    shift_y: float
    mouth_open: float  # 0 closed .. 1 wide open
    smile: float  # -1 frown .. 1 broad smile
    blink: float  # 0 open .. 1 closed
    brow_raise: float  # -1 frown .. 1 raised
    light_azimuth: float  # direction the light comes from, in the image plane (0 = from the right)
    light_strength: float  # 0 flat .. 1 strong directional shading
    brightness: float  # overall exposure multiplier
    warmth: float  # -1 cold (blue) .. 1 warm (orange)
    background: tuple[int, int, int, int, int, int]  # two RGB colours of the background gradient
    background_angle: float  # direction of the gradient


@dataclass(frozen=True)
class Identity:
    """What makes a person: shape, colours and feature sizes (head units unless noted)."""

    skin: RGB
    hair: RGB
    lips: RGB
    iris: RGB
    brow: RGB
    shirt: RGB
    cheek_w: float  # half-width of the face at cheekbone level
    chin_w: float  # half-width of the flat bottom of the chin
    jaw_power: float  # 2 = oval jaw line, larger = squarer
    chin_y: float
    crown_y: float
    depth: float  # how far the face front stands out of the head's centre
    front_power: float  # superellipse exponent of the cross-sections (2 = elliptic)
    hairline: tuple[tuple[float, float], ...]  # (degrees round the head from the front, y)
    hair_thickness: float
    hair_volume: float  # extra thickness on top of the head
    long_hair: bool
    ears: bool
    neck_w: float
    eye_w: float
    eye_h: float
    iris_r: float
    lash: float  # width of the upper lid line
    brow_thickness: float
    brow_arch: float
    brow_y: float  # gap between the top of the eye and the brow
    nose_y: float  # y of the nose tip
    nose_w: float
    nose_protrusion: float
    mouth_w: float
    lip_upper: float
    lip_lower: float
    beard: RGB | None
    blush: float  # 0 none .. 1 pink cheeks


# One head layout for both (jaw, depth, hairline, ears, neck), as two real people of one framing
# share it; they differ in colouring and features, as two real people do. A swap therefore has to
# redraw skin, hair, eyes, brows, nose and mouth, and the output = input baseline stays far off
# (identity_swap_mae 0.26 on the demo). The first demo pair (a bearded man, a woman with long
# blonde hair) differed in layout too, and at the demo's budget never swapped (docs/EXPERIMENTS.md).
_HAIRLINE = ((0, -0.93), (30, -0.9), (55, -0.74), (70, -0.6), (78, 0.02), (95, 0.06), (130, 0.35), (180, 0.45))

IDENTITIES: dict[str, Identity] = {
    # A: a man with brown skin, black short hair, thick dark brows, small brown eyes, a long wide
    # nose and a wide mouth with dark lips
    "a": (_A := Identity(
        skin=(172, 120, 86),
        hair=(38, 30, 26),
        lips=(140, 84, 72),
        iris=(92, 58, 30),
        brow=(34, 26, 22),
        shirt=(38, 58, 96),
        cheek_w=1.02,
        chin_w=0.38,
        jaw_power=3.4,
        chin_y=1.26,
        crown_y=-1.58,
        depth=0.92,
        front_power=2.5,
        hairline=_HAIRLINE,
        hair_thickness=0.06,
        hair_volume=0.10,
        long_hair=False,
        ears=True,
        neck_w=0.52,
        eye_w=0.15,
        eye_h=0.065,
        iris_r=0.062,
        lash=0.022,
        brow_thickness=0.075,
        brow_arch=0.02,
        brow_y=0.10,
        nose_y=0.37,
        nose_w=0.15,
        nose_protrusion=0.30,
        mouth_w=0.30,
        lip_upper=0.045,
        lip_lower=0.06,
        beard=None,
        blush=0.0,
    )),
    # B: a woman with fair skin and pink cheeks, short red hair, thin arched light brows, large
    # blue eyes, a short narrow nose and a smaller red mouth; a slightly rounder jaw than A's
    "b": dataclasses.replace(
        _A,
        skin=(246, 210, 186),
        hair=(168, 72, 34),
        lips=(196, 58, 78),
        iris=(58, 120, 196),
        brow=(150, 108, 66),
        shirt=(132, 36, 64),
        chin_w=0.304,
        jaw_power=2.72,
        eye_w=0.19,
        eye_h=0.1,
        iris_r=0.088,
        lash=0.04,
        brow_thickness=0.03,
        brow_arch=0.06,
        brow_y=0.13,
        nose_y=0.27,
        nose_w=0.085,
        nose_protrusion=0.18,
        mouth_w=0.24,
        lip_upper=0.05,
        lip_lower=0.07,
        blush=1.0,
    ),
}
# Two more people with the same head layout, for pretraining a model that another pair then starts
# from (data.synthetic.identities: [c, d], train.init_from). C: an olive-skinned man with brown
# hair and green eyes; D: a woman with dark brown skin, black hair and amber eyes.
IDENTITIES["c"] = dataclasses.replace(
    IDENTITIES["a"], skin=(204, 160, 118), hair=(92, 60, 36), lips=(170, 100, 90), iris=(70, 120, 70),
    brow=(80, 52, 34), shirt=(60, 96, 60), eye_w=0.17, eye_h=0.08, iris_r=0.07, nose_w=0.12, mouth_w=0.27,
)
IDENTITIES["d"] = dataclasses.replace(
    IDENTITIES["b"], skin=(120, 78, 56), hair=(24, 20, 20), lips=(110, 50, 56), iris=(150, 100, 30),
    brow=(30, 24, 22), shirt=(200, 160, 40), blush=0.0, nose_w=0.11, mouth_w=0.26,
)


# ----------------------------------------------------------------------------- conditions
def sample_conditions(rng: np.random.Generator, cfg: SyntheticSettings) -> Conditions:
    """One draw of pose, expression, light and background; the same law for every person."""
    u = rng.uniform
    yaw = u(-cfg.max_yaw, cfg.max_yaw)
    pitch = u(-cfg.max_pitch, cfg.max_pitch)
    roll = u(-cfg.max_roll, cfg.max_roll)
    scale = 1.0 + u(-cfg.scale_jitter, cfg.scale_jitter)
    shift_x = u(-cfg.shift_jitter, cfg.shift_jitter)
    shift_y = u(-cfg.shift_jitter, cfg.shift_jitter)
    mouth_open = u(0.0, 1.0) if rng.random() < 0.5 else 0.0
    smile = u(-0.6, 1.0)
    blink = u(0.3, 1.0) if rng.random() < 0.2 else 0.0
    brow_raise = u(-1.0, 1.0)
    light_azimuth = u(0.0, 2 * math.pi)
    light_strength = u(0.15, 0.85)
    brightness = u(0.95 - cfg.brightness_jitter, 0.95 + cfg.brightness_jitter)
    warmth = u(-cfg.max_warmth, cfg.max_warmth)
    c1 = rng.integers(20, 236, size=3)
    c2 = np.clip(c1 + rng.integers(-90, 91, size=3), 0, 255)
    background = tuple(int(v) for v in (*c1, *c2))
    background_angle = u(0.0, 2 * math.pi)
    return Conditions(
        yaw=float(yaw),
        pitch=float(pitch),
        roll=float(roll),
        scale=float(scale),
        shift_x=float(shift_x),
        shift_y=float(shift_y),
        mouth_open=float(mouth_open),
        smile=float(smile),
        blink=float(blink),
        brow_raise=float(brow_raise),
        light_azimuth=float(light_azimuth),
        light_strength=float(light_strength),
        brightness=float(brightness),
        warmth=float(warmth),
        background=background,  # type: ignore[arg-type]
        background_angle=float(background_angle),
    )


def neutral_conditions() -> Conditions:
    """Frontal, relaxed, evenly lit face on a grey background."""
    return Conditions(
        yaw=0.0,
        pitch=0.0,
        roll=0.0,
        scale=1.0,
        shift_x=0.0,
        shift_y=0.0,
        mouth_open=0.0,
        smile=0.3,
        blink=0.0,
        brow_raise=0.0,
        light_azimuth=-math.pi / 2,
        light_strength=0.3,
        brightness=1.0,
        warmth=0.0,
        background=(150, 150, 150, 110, 110, 110),
        background_angle=math.pi / 2,
    )


def image_conditions(cfg: SyntheticSettings, seed: int, person: str, split: str, index: int) -> Conditions:
    """The conditions of image `index` of (person, split): its own generator, independent of counts."""
    rng = np.random.default_rng([seed, PERSONS.index(person), SPLITS.index(split), index])
    return sample_conditions(rng, cfg)


# ----------------------------------------------------------------------------- geometry
def _rotation(cond: Conditions) -> np.ndarray:
    cy, sy = math.cos(cond.yaw), math.sin(cond.yaw)
    cp, sp = math.cos(cond.pitch), math.sin(cond.pitch)
    cr, sr = math.cos(cond.roll), math.sin(cond.roll)
    yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    pitch = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return roll @ pitch @ yaw


class _Camera:
    """Head units -> canvas pixels for one pose."""

    def __init__(self, cond: Conditions, canvas: int):
        self.rot = _rotation(cond)
        self.px = UNIT * cond.scale * canvas  # canvas pixels per head unit
        self.ox = (0.5 + cond.shift_x) * canvas
        self.oy = (PIVOT_Y + cond.shift_y) * canvas
        cr, sr = math.cos(cond.roll), math.sin(cond.roll)
        self.torso = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])  # the body only rolls

    def project(self, pts: np.ndarray, body: bool = False) -> np.ndarray:
        v = pts @ (self.torso if body else self.rot).T
        return np.stack([self.ox + self.px * v[..., 0], self.oy + self.px * v[..., 1]], axis=-1)

    def facing(self, normal: np.ndarray) -> float:
        """z of a head-space direction after rotation (> 0: towards the camera)."""
        return float((self.rot @ normal)[2])


def _front_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The shared frontal surface the features lie on (the same for every identity)."""
    top = np.sqrt(np.clip(1 - ((y - _CHEEK_Y) / 1.5) ** 2, 0, 1))
    bottom = 1 - 0.25 * ((y - _CHEEK_Y) / 1.35) ** 2
    vertical = np.where(y < _CHEEK_Y, top, bottom)
    return 0.88 * vertical * np.sqrt(np.clip(1 - 0.85 * x**2, 0.05, 1))


def _lift(x, y, dz=0.0) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x, y = np.broadcast_arrays(x, y)
    return np.stack([x, y, _front_z(x, y) + dz], axis=-1)


def _superellipse(alpha: np.ndarray, power: float) -> tuple[np.ndarray, np.ndarray]:
    s, c = np.sin(alpha), np.cos(alpha)
    e = 2.0 / power
    return np.sign(s) * np.abs(s) ** e, np.sign(c) * np.abs(c) ** e


def _profile(ident: Identity, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Half-width and front/back depth of the head's cross-section at height y."""
    up = np.clip((_CHEEK_Y - y) / (_CHEEK_Y - ident.crown_y), 0, 1)
    dome = np.sqrt(1 - up**2)
    t = np.clip((y - _CHEEK_Y) / (ident.chin_y - _CHEEK_Y), 0, 1)
    p = ident.jaw_power
    jaw = ident.chin_w + (ident.cheek_w - ident.chin_w) * (1 - t**p) ** (1 / p)
    upper = y < _CHEEK_Y
    width = np.where(upper, ident.cheek_w * dome, jaw)
    front = np.where(upper, ident.depth * np.sqrt(1 - (up * 0.97) ** 2), ident.depth * (1 - 0.3 * t**2))
    below = np.clip((y - _CHEEK_Y) / 0.55, 0, 1)
    back_w = np.where(upper, width, ident.cheek_w + (0.55 - ident.cheek_w) * below)
    back_d = np.where(upper, 1.12 * np.sqrt(1 - (up * 0.97) ** 2), 1.12 + (0.45 - 1.12) * below)
    return width, front, back_w, back_d


def _surface(ident: Identity, y: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Points on the head at heights y and angles alpha round it (0 = the front)."""
    width, front, back_w, back_d = _profile(ident, y)
    sx, cz = _superellipse(alpha, ident.front_power)
    is_front = np.abs(alpha) <= math.pi / 2
    x = np.where(is_front, width, back_w) * sx
    z = np.where(is_front, front, back_d) * cz
    return np.stack([x, y, z], axis=-1)


def _hairline(ident: Identity, alpha: np.ndarray) -> np.ndarray:
    deg, ys = zip(*ident.hairline, strict=True)
    return np.interp(np.degrees(np.abs(alpha)), deg, ys)


@dataclass(frozen=True)
class _Shape:
    """Per-identity point clouds in head space whose projected hulls are the silhouettes."""

    hair: np.ndarray
    curtains: tuple[np.ndarray, ...]
    skin: np.ndarray
    beard: tuple[np.ndarray, ...]
    neck_top: np.ndarray
    neck_bottom: np.ndarray


def _outer(pts: np.ndarray, n_dirs: int = 3000) -> np.ndarray:
    """The points that are extreme in some direction: all that any projection's hull can use."""
    i = np.arange(n_dirs) + 0.5
    polar = np.arccos(1 - 2 * i / n_dirs)
    azim = math.pi * (1 + 5**0.5) * i
    dirs = np.stack([np.cos(azim) * np.sin(polar), np.sin(azim) * np.sin(polar), np.cos(polar)])
    return pts[np.unique(np.argmax(pts @ dirs, axis=0))]


@lru_cache(maxsize=8)
def _shape(person: str) -> _Shape:
    ident = IDENTITIES[person]
    ys = np.linspace(ident.crown_y, ident.chin_y, 36)
    alphas = np.radians(np.arange(-180, 180, 6.0))
    yy, aa = np.meshgrid(ys, alphas, indexing="ij")
    yy, aa = yy.ravel(), aa.ravel()
    line = _hairline(ident, alphas)
    ok = (line > ident.crown_y) & (line < ident.chin_y)

    # skin: the front of the head below the hairline, plus points exactly on the hairline
    front = np.abs(aa) <= math.radians(92)
    skin_sel = front & (yy > _hairline(ident, aa))
    fa = np.abs(alphas) <= math.radians(92)
    skin = np.concatenate(
        [_surface(ident, yy[skin_sel], aa[skin_sel]), _surface(ident, line[ok & fa], alphas[ok & fa])]
    )

    # hair: the head above the hairline (and down to the nape behind), pushed out by its thickness
    hair_sel = (yy < _hairline(ident, aa)) & ((np.abs(aa) <= math.pi / 2) | (yy < 0.45))
    raw = np.concatenate([_surface(ident, yy[hair_sel], aa[hair_sel]), _surface(ident, line[ok], alphas[ok])])
    centre = np.array([0.0, -0.25, 0.0])
    d = raw - centre
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    thick = ident.hair_thickness + ident.hair_volume * np.clip((-0.3 - raw[:, 1:2]) / 1.2, 0, 1)
    hair = raw + d / np.maximum(norm, 1e-6) * thick

    curtains: tuple[np.ndarray, ...] = ()
    if ident.long_hair:
        parts = []
        for side in (-1.0, 1.0):
            cy = np.linspace(-0.3, 2.2, 12)
            outer = ident.cheek_w + ident.hair_thickness + 0.06 + 0.12 * np.clip(cy / 2, 0, 1)
            inner = np.full_like(cy, ident.cheek_w * 0.62)
            pts = []
            for x, z in ((outer, 0.25), (outer, -0.9), (inner, 0.3), (inner, -0.9)):
                pts.append(np.stack([side * x, cy, np.full_like(cy, z)], axis=-1))
            parts.append(np.concatenate(pts))
        curtains = tuple(parts)
        hair = np.concatenate([hair, *curtains])

    # beard: a chin/moustache piece and two jaw pieces, each convex
    beard: tuple[np.ndarray, ...] = ()
    if ident.beard is not None:
        pieces = []
        dense_a = np.radians(np.arange(-92, 92.1, 2.0))
        dense_y = np.linspace(-0.2, ident.chin_y, 40)
        ya, aa2 = np.meshgrid(dense_y, dense_a, indexing="ij")
        ya, aa2 = ya.ravel(), aa2.ravel()
        deg = np.degrees(np.abs(aa2))
        top = np.interp(deg, [0, 22, 92], [ident.nose_y + 0.1, ident.nose_y + 0.1, 0.04])
        mid = ((deg <= 24) & (ya >= ident.nose_y + 0.1)) | (ya >= 0.85)
        for sel in (mid, (aa2 < -math.radians(20)) & (ya >= top), (aa2 > math.radians(20)) & (ya >= top)):
            pts = _surface(ident, ya[sel], aa2[sel])
            pts[:, 2] += 0.01
            pieces.append(pts)
        beard = tuple(pieces)

    t = np.radians(np.arange(0, 360, 20.0))
    ring = np.stack([ident.neck_w * np.cos(t), np.zeros_like(t), -0.2 + 0.38 * np.sin(t)], axis=-1)
    neck_top = ring + np.array([0.0, 0.8, 0.0])
    neck_bottom = ring * np.array([1.1, 1, 1]) + np.array([0.0, 1.75, 0.0])
    return _Shape(
        _outer(hair),
        tuple(_outer(c) for c in curtains),
        _outer(skin),
        tuple(_outer(b) for b in beard),
        neck_top,
        neck_bottom,
    )


def _jaw_drop(pts: np.ndarray, cond: Conditions) -> np.ndarray:
    """An open mouth lowers the chin."""
    drop = 0.12 * cond.mouth_open
    if drop == 0:
        return pts
    out = pts.copy()
    out[:, 1] += drop * np.clip((pts[:, 1] - 0.45) / 0.7, 0, 1)
    return out


def _hull(pts: np.ndarray) -> list[float]:
    """Convex hull of 2D points as a flat [x0, y0, x1, y1, ...] list, from support points."""
    idx = np.argmax(pts @ _HULL_DIRS, axis=0)
    keep = np.r_[True, idx[1:] != idx[:-1]]
    idx = idx[keep]
    if len(idx) > 1 and idx[0] == idx[-1]:
        idx = idx[:-1]
    return pts[idx].ravel().tolist()


def _flat(pts: np.ndarray) -> list[float]:
    return pts.reshape(-1).tolist()


# ----------------------------------------------------------------------------- features
def _mix(c1, c2, t: float) -> RGB:
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c1, c2, strict=True))  # type: ignore[return-value]


def _shade_rgb(c, f: float) -> RGB:
    return tuple(int(max(0, min(255, round(v * f)))) for v in c)  # type: ignore[return-value]


def _eye_curves(ident: Identity, cond: Conditions, side: float, n: int = 15):
    t = np.linspace(-1.0, 1.0, n)
    x = side * EYE_X + t * ident.eye_w
    opening = ident.eye_h * max(0.0, 1.0 - cond.blink)
    bump = 1 - t**2
    upper = EYE_Y - opening * bump**0.75 * (1 - 0.15 * side * t)
    lower = EYE_Y + opening * 0.7 * bump**0.9
    return x, upper, lower, opening


def _mouth_curves(ident: Identity, cond: Conditions, n: int = 17):
    t = np.linspace(-1.0, 1.0, n)
    w = ident.mouth_w * (1 + 0.12 * cond.smile - 0.1 * cond.mouth_open)
    x = t * w
    corner = -0.07 * cond.smile
    bump = 1 - t**2
    mid = MOUTH_Y + corner * t**2 - 0.015 * cond.smile * bump
    upper_in = mid - 0.03 * cond.mouth_open * bump**0.7
    lower_in = mid + 0.22 * cond.mouth_open * bump**0.8
    bow = 0.35 * np.exp(-((t / 0.25) ** 2))
    upper_out = upper_in - ident.lip_upper * bump**0.5 * (1 - bow) - 0.004
    lower_out = lower_in + ident.lip_lower * bump**0.6 + 0.004
    return x, upper_out, upper_in, lower_in, lower_out


def landmarks(person: str, cond: Conditions, size: int) -> dict[str, tuple[float, float]]:
    """Image positions (x, y in pixels, continuous) of the pupils and the mouth centre."""
    ident = IDENTITIES[person]
    cam = _Camera(cond, size)
    out: dict[str, tuple[float, float]] = {}
    for name, side in (("left_eye", -1.0), ("right_eye", 1.0)):
        p = cam.project(_lift(side * EYE_X, EYE_Y, -0.03))
        out[name] = (float(p[0]), float(p[1]))
    _, _, upper_in, lower_in, _ = _mouth_curves(ident, cond)
    mid = len(upper_in) // 2
    p = cam.project(_lift(0.0, 0.5 * (upper_in[mid] + lower_in[mid]), 0.01))
    out["mouth"] = (float(p[0]), float(p[1]))
    return out


def landmarks5(person: str, cond: Conditions, size: int) -> np.ndarray:
    """(5, 2) x, y of the drawn face in MTCNN's order and `autoswap.align`'s pixel convention
    (pixel centres on integers, so 0.5 less than `landmarks`' continuous positions): the pupils,
    the nose tip and the two mouth corners. Unlike `landmarks`, nose and mouth corners are the
    person's own (nose height and mouth width differ between the identities)."""
    ident = IDENTITIES[person]
    cam = _Camera(cond, size)
    x, _, upper_in, lower_in, _ = _mouth_curves(ident, cond)
    pts = [
        _lift(-EYE_X, EYE_Y, -0.03),  # as `landmarks` and `_draw_eye`
        _lift(EYE_X, EYE_Y, -0.03),
        _lift(0.0, ident.nose_y + 0.01, ident.nose_protrusion * 0.95),  # the tip, as `_draw_nose`
        _lift(x[0], 0.5 * (upper_in[0] + lower_in[0]), 0.02),  # the lip lines meet at the corners
        _lift(x[-1], 0.5 * (upper_in[-1] + lower_in[-1]), 0.02),
    ]
    return cam.project(np.stack(pts)) - 0.5


class _Painter:
    """Draws on the colour canvas and, for head parts, on the shading mask too."""

    def __init__(self, img: Image.Image, cam: _Camera):
        self.draw = ImageDraw.Draw(img)
        self.mask_img = Image.new("L", img.size, 0)
        self.mask = ImageDraw.Draw(self.mask_img)
        self.cam = cam

    def poly(self, flat: list[float], fill: RGB, shaded: bool | None = None) -> None:
        if len(flat) < 6:
            return
        self.draw.polygon(flat, fill=(*fill, 255))
        if shaded is not None:
            self.mask.polygon(flat, fill=255 if shaded else 0)

    def surface_poly(self, pts3: np.ndarray, fill: RGB) -> None:
        self.poly(_flat(self.cam.project(pts3)), fill)

    def surface_line(self, pts3: np.ndarray, fill: RGB, width: float) -> None:
        w = max(1, int(round(width * self.cam.px)))
        self.draw.line(_flat(self.cam.project(pts3)), fill=(*fill, 255), width=w, joint="curve")

    def ellipse(self, cx, cy, rx, ry, dz, fill: RGB, n: int = 16) -> None:
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        self.surface_poly(_lift(cx + rx * np.cos(t), cy + ry * np.sin(t), dz), fill)


def _draw_ear(p: _Painter, ident: Identity, side: float, skin: RGB) -> None:
    y0 = -0.14
    w, _, _, _ = _profile(ident, np.array([y0]))
    base = np.array([side * w[0] * 0.97, y0, -0.08])
    flare = math.radians(32)
    out = np.array([side * math.sin(flare), 0.0, -math.cos(flare)])
    t = np.linspace(0, 2 * math.pi, 18, endpoint=False)
    length, half_h = 0.3, 0.22
    u = length / 2 * (1 + np.cos(t))
    v = half_h * np.sin(t) * (1 - 0.15 * np.cos(t))
    pts = base + u[:, None] * out + v[:, None] * np.array([0.0, 1.0, 0.0])
    p.poly(_flat(p.cam.project(pts)), skin, shaded=True)
    inner = base + (0.35 * u[:, None] + 0.06) * out + 0.6 * v[:, None] * np.array([0.0, 1.0, 0.0])
    p.poly(_flat(p.cam.project(inner)), _shade_rgb(skin, 0.82))


def _draw_eye(p: _Painter, ident: Identity, cond: Conditions, side: float, skin: RGB) -> None:
    x, upper, lower, opening = _eye_curves(ident, cond, side)
    dz = -0.03
    if opening > 0.012:
        p.surface_poly(_lift(np.r_[x, x[::-1]], np.r_[upper, lower[::-1]], dz), (238, 236, 230))

        def clipped(cx, cy, r, n=20):
            t = np.linspace(0, 2 * math.pi, n, endpoint=False)
            px = np.clip(cx + r * np.cos(t), x[0], x[-1])
            py = np.clip(cy + r * np.sin(t), np.interp(px, x, upper), np.interp(px, x, lower))
            return _lift(px, py, dz + 0.005)

        cx = side * EYE_X
        p.surface_poly(clipped(cx, EYE_Y, ident.iris_r), ident.iris)
        p.surface_poly(clipped(cx, EYE_Y, ident.iris_r * 0.62), _shade_rgb(ident.iris, 0.6))
        p.surface_poly(clipped(cx, EYE_Y, ident.iris_r * 0.42), (14, 12, 12))
        hx, hy = cx + 0.35 * ident.iris_r, EYE_Y - 0.35 * ident.iris_r
        p.surface_poly(clipped(hx, hy, ident.iris_r * 0.2, 10), (250, 250, 250))
        # lower lid
        p.surface_line(_lift(x[2:-2], lower[2:-2] + 0.004, dz), _shade_rgb(skin, 0.78), 0.012)
    # upper lid / lashes; a closed eye is a lower, flatter curve
    lid = upper if opening > 0.012 else EYE_Y + 0.2 * ident.eye_h * (1 - np.linspace(-1, 1, len(x)) ** 2)
    lash = _lift(x, lid, dz + 0.005)
    if ident.lash > 0.03:  # long lashes: a flick up and out at the outer corner
        outer = -1 if side > 0 else 0
        flick = _lift(x[outer] + side * 0.05, lid[outer] - 0.04, dz)[None]
        lash = np.concatenate([lash, flick]) if side > 0 else np.concatenate([flick, lash])
    p.surface_line(lash, (24, 16, 14), ident.lash)
    # a crease above the eye
    crease_y = EYE_Y - ident.eye_h * 1.45 - 0.01
    t = np.linspace(-0.8, 0.8, 9)
    p.surface_line(
        _lift(side * EYE_X + t * ident.eye_w, crease_y + 0.35 * ident.eye_h * t**2, dz),
        _shade_rgb(skin, 0.85),
        0.012,
    )


def _draw_brow(p: _Painter, ident: Identity, cond: Conditions, side: float) -> None:
    t = np.linspace(0, 1, 11)  # inner -> outer
    x_in = side * (EYE_X - ident.eye_w * 1.1)
    x_out = side * (EYE_X + ident.eye_w * 1.25)
    x = x_in + (x_out - x_in) * t
    base = EYE_Y - ident.eye_h - ident.brow_y - 0.07 * cond.brow_raise
    frown = max(0.0, -cond.brow_raise) * 0.05 * (1 - t)
    arch = (ident.brow_arch + 0.02 * max(0.0, cond.brow_raise)) * np.sin(math.pi * (0.1 + 0.75 * t))
    y = base - arch + frown + 0.03 * t**2
    th = ident.brow_thickness * (1 - 0.55 * t) * (0.6 + 0.4 * np.sqrt(np.clip(t * 6, 0, 1)))
    p.surface_poly(_lift(np.r_[x, x[::-1]], np.r_[y - th / 2, (y + th / 2)[::-1]], 0.01), ident.brow)


def _draw_nose(p: _Painter, ident: Identity, cond: Conditions, skin: RGB) -> None:
    ty, w, prot = ident.nose_y, ident.nose_w, ident.nose_protrusion

    def bulge(x, y):
        along = np.clip((y + 0.2) / (ty + 0.2), 0, 1)
        return prot * along**1.5 * (1 - 0.6 * np.clip(np.abs(x) / w, 0, 1))

    # the lower nose: wings and tip, a little darker than the cheeks
    t = np.linspace(0, 2 * math.pi, 20, endpoint=False)
    lx = w * np.cos(t)
    ly = ty + 0.015 + 0.075 * np.sin(t) * np.where(np.sin(t) < 0, 1.6, 0.9)
    p.surface_poly(_lift(lx, ly, bulge(lx, ly)), _shade_rgb(skin, 0.92))
    # the ridge: a soft line on the side away from the light
    side = -1.0 if math.cos(cond.light_azimuth) > 0 else 1.0
    ry = np.linspace(-0.12, ty - 0.07, 8)
    rx = side * (0.045 + 0.35 * w * np.clip((ry - ty + 0.2) / 0.2, 0, 1))
    p.surface_line(_lift(rx, ry, bulge(rx, ry)), _shade_rgb(skin, 0.84), 0.016)
    # tip and nostrils
    p.surface_poly(
        _lift(0.5 * w * np.cos(t), ty + 0.01 + 0.045 * np.sin(t), prot * 0.95), _shade_rgb(skin, 1.03)
    )
    for s in (-1.0, 1.0):
        p.surface_poly(
            _lift(s * 0.45 * w + 0.032 * np.cos(t), ty + 0.055 + 0.015 * np.sin(t), prot * 0.45),
            _shade_rgb(skin, 0.45),
        )


def _draw_mouth(p: _Painter, ident: Identity, cond: Conditions) -> None:
    x, upper_out, upper_in, lower_in, lower_out = _mouth_curves(ident, cond)
    dz = 0.02
    if cond.mouth_open > 0.03:
        p.surface_poly(_lift(np.r_[x, x[::-1]], np.r_[upper_in, lower_in[::-1]], dz - 0.01), (70, 18, 22))
        teeth = np.minimum(upper_in + 0.055 * (1 - (x / x[-1]) ** 2) ** 0.5, lower_in)
        p.surface_poly(
            _lift(np.r_[x[1:-1], x[-2:0:-1]], np.r_[upper_in[1:-1], teeth[-2:0:-1]], dz - 0.005),
            (236, 232, 222),
        )
    lips = ident.lips
    p.surface_poly(_lift(np.r_[x, x[::-1]], np.r_[upper_out, upper_in[::-1]], dz), _shade_rgb(lips, 0.88))
    p.surface_poly(_lift(np.r_[x, x[::-1]], np.r_[lower_in, lower_out[::-1]], dz), lips)
    mid = len(x) // 2
    p.surface_poly(
        _lift(
            x[mid - 3 : mid + 4] * 0.6,
            lower_in[mid]
            + 0.35 * (lower_out[mid] - lower_in[mid])
            + 0.008 * np.cos(np.linspace(-1.5, 1.5, 7)),
            dz,
        ),
        _shade_rgb(lips, 1.12),
    )
    p.surface_line(
        _lift(x, 0.5 * (upper_in + lower_in) if cond.mouth_open <= 0.03 else upper_in, dz + 0.002),
        _shade_rgb(lips, 0.5),
        0.012,
    )


# ----------------------------------------------------------------------------- image
def _background(cond: Conditions, size: int) -> np.ndarray:
    """A linear two-colour gradient, (size, size, 3) float32 in 0..255."""
    g = ((np.arange(size) + 0.5) / size - 0.5).astype(np.float32)
    ca, sa = math.cos(cond.background_angle), math.sin(cond.background_angle)
    t = np.clip(0.5 + 1.2 * (g[None, :] * ca + g[:, None] * sa), 0, 1)[..., None]
    c = np.array(cond.background, dtype=np.float32).reshape(2, 3)
    return c[0] + (c[1] - c[0]) * t


def _supersample(size: int) -> int:
    return max(2, min(4, -(-512 // size)))


def _shading(cond: Conditions, size: int) -> np.ndarray:
    """Lambert term of an ellipsoid that follows the head, per pixel: 1 where lit like frontal."""
    rot = _rotation(cond)
    centre = rot @ np.array([0.0, -0.2, -0.05])
    axes = np.array([1.05, 1.45, 1.0])
    m = rot @ np.diag(1.0 / axes**2) @ rot.T
    g = (np.arange(size) + 0.5) / size
    px = UNIT * cond.scale
    dx = ((g - 0.5 - cond.shift_x) / px - centre[0])[None, :]
    dy = ((g - PIVOT_Y - cond.shift_y) / px - centre[1])[:, None]
    a = m[2, 2]
    b = m[0, 2] * dx + m[1, 2] * dy
    c = m[0, 0] * dx**2 + 2 * m[0, 1] * dx * dy + m[1, 1] * dy**2 - 1
    dz = (-b + np.sqrt(np.maximum(b * b - a * c, 0))) / a
    nx = m[0, 0] * dx + m[0, 1] * dy + m[0, 2] * dz
    ny = m[1, 0] * dx + m[1, 1] * dy + m[1, 2] * dz
    nz = m[2, 0] * dx + m[2, 1] * dy + m[2, 2] * dz + 0.5 / axes.mean() ** 2  # soften the rim
    norm = np.sqrt(nx * nx + ny * ny + nz * nz)
    se, ce = math.sin(_LIGHT_ELEVATION), math.cos(_LIGHT_ELEVATION)
    lx, ly = se * math.cos(cond.light_azimuth), se * math.sin(cond.light_azimuth)
    lam = np.maximum((lx * nx + ly * ny + ce * nz) / norm, 0)
    return np.clip(1 + cond.light_strength * 1.3 * (lam - ce), 0.3, 1.25)


def render(person: str, cond: Conditions, size: int) -> np.ndarray:
    """`person` ("a" or "b") under `cond`, as a (size, size, 3) uint8 RGB array."""
    ident = IDENTITIES[person]
    shape = _shape(person)
    k = _supersample(size)
    canvas = size * k
    # premultiplied RGBA: the box reduction then gives coverage-weighted colour sums directly
    img = Image.new("RGBa", (canvas, canvas), (0, 0, 0, 0))
    cam = _Camera(cond, canvas)
    p = _Painter(img, cam)
    skin = ident.skin
    hair = ident.hair

    # back to front: hair mass, neck, clothes, hair over the shoulders, far ear, face, near ear
    p.poly(_hull(cam.project(shape.hair)), hair, shaded=True)
    neck = np.concatenate(
        [cam.project(_jaw_drop(shape.neck_top, cond)), cam.project(shape.neck_bottom, body=True)]
    )
    p.poly(_hull(neck), _shade_rgb(skin, 0.86), shaded=True)
    _draw_shirt(p, ident)
    for curtain in shape.curtains:
        p.poly(_hull(cam.project(curtain)), hair, shaded=True)
    ears = []
    if ident.ears:
        for side in (-1.0, 1.0):
            facing = cam.facing(np.array([side * math.cos(0.5), 0.0, math.sin(0.5)]))
            ears.append((facing, side))
        for facing, side in ears:
            if facing < 0:
                _draw_ear(p, ident, side, skin)
    p.poly(_hull(cam.project(_jaw_drop(shape.skin, cond))), skin, shaded=True)
    for piece in shape.beard:
        p.poly(_hull(cam.project(_jaw_drop(piece, cond))), ident.beard)  # type: ignore[arg-type]
    for facing, side in ears:
        if facing >= 0:
            _draw_ear(p, ident, side, skin)
    if ident.blush > 0:
        for side in (-1.0, 1.0):
            p.ellipse(
                side * (EYE_X + 0.08), 0.22, 0.15, 0.08, 0.0, _mix(skin, (235, 120, 120), 0.22 * ident.blush)
            )
    for side in (-1.0, 1.0):
        _draw_eye(p, ident, cond, side, skin)
        _draw_brow(p, ident, cond, side)
    _draw_nose(p, ident, cond, skin)
    _draw_mouth(p, ident, cond)
    if ident.long_hair:
        _draw_fringe(p, ident)

    fg = np.asarray(img.reduce(k), dtype=np.float32)
    alpha = fg[..., 3:] / 255.0
    mask = np.asarray(p.mask_img.reduce(k), dtype=np.float32)[..., None] / 255.0
    lit = np.clip(mask / np.maximum(alpha, 1e-3), 0, 1)
    shade = _shading(cond, size)[..., None]
    out = _background(cond, size) * (1 - alpha) + fg[..., :3] * (1 + lit * (shade - 1))
    w = cond.warmth
    tint = np.array([1 + 0.1 * w, 1 + 0.01 * w, 1 - 0.12 * w], dtype=np.float32)
    out = out * (cond.brightness * tint)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _draw_shirt(p: _Painter, ident: Identity) -> None:
    t = np.linspace(0, 1, 9)
    xs = 0.55 + 1.5 * np.sin(t * math.pi / 2)
    ys = 1.55 + 0.45 * (1 - np.cos(t * math.pi / 2)) ** 1.2
    right = np.stack([xs, ys, np.zeros_like(t)], axis=-1)
    left = right * np.array([-1, 1, 1])
    collar = np.stack(
        [np.linspace(0.55, -0.55, 7), 1.62 + 0.12 * np.sin(np.linspace(0, math.pi, 7)), np.zeros(7)], axis=-1
    )
    bottom = np.array([[-2.3, 2.6, 0.0], [2.3, 2.6, 0.0]])
    pts = np.concatenate([collar, left, bottom, right[::-1]])
    p.poly(_flat(p.cam.project(pts, body=True)), ident.shirt, shaded=False)


def _draw_fringe(p: _Painter, ident: Identity) -> None:
    """Strands on the fringe of long hair: a few darker curves from the parting down."""
    dark = _shade_rgb(ident.hair, 0.78)
    for x0 in (-0.55, -0.3, -0.05, 0.2, 0.45):
        t = np.linspace(0, 1, 7)
        x = x0 + 0.12 * t + 0.05 * np.sin(t * 3)
        y = -1.05 + 0.42 * t
        p.surface_line(_lift(x, y, 0.12 + 0.05 * (1 - t)), dark, 0.014)


# ----------------------------------------------------------------------------- data set
def total_images(cfg: SyntheticSettings) -> int:
    """How many files `generate` writes (for a progress bar's total)."""
    return len(PERSONS) * (cfg.train_per_person + 2 * cfg.val_per_person)


def _save_png(arr: np.ndarray, path: Path) -> None:
    # no pnginfo: PIL writes no tIME/text chunks, so equal pixels give equal bytes
    Image.fromarray(arr).save(path, format="PNG", compress_level=6)


def generate(
    cfg: SyntheticSettings,
    size: int,
    seed: int,
    out_dir: Path,
    progress: Callable[[int], object] | None = None,
) -> dict:
    """Write the two-person data set under `out_dir` and return the counts.

    Layout: `{a,b}/train/00000.png ...` (unpaired: conditions drawn per person), `{a,b}/val/...` and
    `{a,b}/val_gt/...`, where `a/val_gt/i.png` is `a/val/i.png`'s conditions rendered as B (and
    `b/val_gt/i.png` is `b/val/i.png` rendered as A), and `{a,b}/manifest.jsonl`: one row per
    train and val face, {"crop": "00000", "split": ..., "landmarks_crop": 5 points}, as extract
    writes for real faces (`landmarks5`; training draws its loss maps from them). Stale numbered
    PNGs from a run with larger counts are removed so the tree always matches `cfg`. `progress(n)` is called after each file with
    the number of files written so far (of `total_images(cfg)`).
    """
    out_dir = Path(out_dir)
    counts: dict[str, dict[str, int]] = {}
    done = 0
    who = dict(zip(PERSONS, cfg.identities, strict=True))  # person folder -> the identity drawn there
    for person in PERSONS:
        other = PERSONS[1 - PERSONS.index(person)]
        n_train, n_val = cfg.train_per_person, cfg.val_per_person
        dirs = {name: out_dir / person / name for name in ("train", "val", "val_gt")}
        for name, d in dirs.items():
            d.mkdir(parents=True, exist_ok=True)
            keep = n_train if name == "train" else n_val
            for f in d.iterdir():
                if _FILENAME.match(f.name) and int(f.name[:5]) >= keep:
                    f.unlink()
        rows = []
        for split, n in (("train", n_train), ("val", n_val)):
            for i in range(n):
                cond = image_conditions(cfg, seed, person, split, i)
                _save_png(render(who[person], cond, size), dirs[split] / f"{i:05d}.png")
                lm = [[round(float(v), 4) for v in p] for p in landmarks5(who[person], cond, size)]
                rows.append({"crop": f"{i:05d}", "split": split, "landmarks_crop": lm})  # the name, as extract
                done += 1
                if progress is not None:
                    progress(done)
                if split == "val":
                    _save_png(render(who[other], cond, size), dirs["val_gt"] / f"{i:05d}.png")
                    done += 1
                    if progress is not None:
                        progress(done)
        # train and val reuse the file names, hence "split" in each row
        (out_dir / person / "manifest.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
        )
        counts[person] = {"train": n_train, "val": n_val, "val_gt": n_val}
    return counts

