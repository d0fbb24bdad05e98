"""Face extraction on real photos (matplotlib's grace_hopper.jpg, scikit-image's astronaut) and on
videos built here from them with PyAV. CPU only; the MTCNN detector is built once per process."""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import skimage.data
from matplotlib import cbook
from PIL import Image

from autoswap.align import (
    EYE_DISTANCE,
    EYE_Y,
    TEMPLATE,
    align,
    apply_affine,
    blur_score,
    face_mask,
    hamming,
    invert_affine,
    phash,
    region_maps,
    template_points,
    umeyama,
)
from autoswap.config import ExtractSettings
from autoswap.errors import UserError
from autoswap.extract import DROP_REASONS, MANIFEST, _names, extract_to_dir
from autoswap.faces import Face, detect, detect_near, find_faces, select_faces, turn, turn_back
from autoswap.files import MARKER
from autoswap.images import load_rgb
from autoswap.video import BadVideo, iter_video_frames

SIZE = 128
CFG = ExtractSettings()
EYES, MOUTH = [0, 1], [3, 4]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def hopper_face(hopper) -> tuple[Face, np.ndarray]:
    faces = detect(hopper, CFG)
    _, affine = align(hopper, faces[0].landmarks, SIZE)
    return faces[0], affine


def _encode(path: Path, frames: list[np.ndarray], fps: int = 12, codec: str = "libx264",
            pix_fmt: str = "yuv420p", rotation: int | None = None, pts: list[int] | None = None) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        if codec == "libx264":
            s.options = {"crf": "16", "preset": "veryfast"}
        tb = Fraction(1, 1000)
        if pts is not None:
            s.time_base = s.codec_context.time_base = tb
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if pts is not None:
                vf.pts, vf.time_base = pts[i], tb
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _snapshot(folder: Path) -> dict[str, tuple[int, str, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


# ----------------------------------------------------------------------------- geometry
def test_template_matches_the_seed_framing():
    assert TEMPLATE.shape == (5, 2)
    # eyes 0.30 of the crop apart at y = 0.31, centred; nose and mouth below, mirror-symmetric
    assert TEMPLATE[1, 0] - TEMPLATE[0, 0] == pytest.approx(EYE_DISTANCE) == pytest.approx(0.30)
    assert TEMPLATE[0, 1] == TEMPLATE[1, 1] == pytest.approx(EYE_Y) == pytest.approx(0.31)
    assert TEMPLATE[:, 0].mean() == pytest.approx(0.5)
    assert TEMPLATE[0, 1] < TEMPLATE[2, 1] < TEMPLATE[3, 1] == TEMPLATE[4, 1] < 1
    # the training crop (centre 80 of 128) frames eyes and mouth: eyes 0.48 of its width apart
    lo, hi = (1 - 80 / 128) / 2, (1 + 80 / 128) / 2
    assert ((TEMPLATE > lo) & (TEMPLATE < hi)).all()
    assert EYE_DISTANCE / (80 / 128) == pytest.approx(0.48)


def test_umeyama_recovers_a_similarity_and_inverts():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, (5, 2))
    a = np.deg2rad(17)
    true = np.array([[0.4 * np.cos(a), -0.4 * np.sin(a), 31.0], [0.4 * np.sin(a), 0.4 * np.cos(a), -12.0]])
    est = umeyama(src, apply_affine(true, src))
    np.testing.assert_allclose(est, true, atol=1e-9)
    np.testing.assert_allclose(apply_affine(invert_affine(est), apply_affine(est, src)), src, atol=1e-9)


def test_face_mask_covers_the_face_and_turns_with_it():
    lm = template_points(SIZE)
    m = face_mask(lm, SIZE)
    assert m.shape == (SIZE, SIZE) and m.dtype == np.uint8 and set(np.unique(m)) == {0, 255}
    for x, y in lm:  # every landmark inside, the corners outside
        assert m[int(round(y)), int(round(x))] == 255
    assert m[0, 0] == m[0, -1] == m[-1, 0] == m[-1, -1] == 0
    assert 0.25 < (m > 0).mean() < 0.45
    # turning and scaling the landmarks turns and scales the mask
    rot = cv2.getRotationMatrix2D((float(lm[0, 0]), float(lm[0, 1])), 30, 0.9)
    turned = face_mask(apply_affine(rot, lm), SIZE)
    expected = cv2.warpAffine(m, rot, (SIZE, SIZE), flags=cv2.INTER_NEAREST)
    assert (turned != expected).mean() < 0.02
    assert (turned != m).mean() > 0.05


def test_region_maps_mask_eyes_and_mouth():
    lm = template_points(SIZE)
    maps = region_maps(lm, SIZE)
    assert maps.shape == (SIZE, SIZE, 3) and maps.dtype == np.uint8 and set(np.unique(maps)) == {0, 255}
    np.testing.assert_array_equal(maps[..., 0], face_mask(lm, SIZE))
    mask, eyes, mouth = (maps[..., k] > 0 for k in range(3))
    assert not (eyes & ~mask).any() and not (mouth & ~mask).any()  # the mask covers both regions
    at = {name: (int(round(y)), int(round(x))) for name, (x, y) in zip(("le", "re", "nose", "ml", "mr"), lm, strict=True)}
    mouth_centre = tuple(int(round(v)) for v in (lm[3] + lm[4])[::-1] / 2)
    assert eyes[at["le"]] and eyes[at["re"]] and not eyes[mouth_centre] and not eyes[at["nose"]]
    assert mouth[mouth_centre] and mouth[at["ml"]] and mouth[at["mr"]] and not mouth[at["le"]] and not mouth[at["re"]]
    assert not (eyes & mouth).any()
    # sizes follow the eye distance d: two discs of radius 0.25 d, an ellipse (corners / 2 + 0.15 d) x 0.22 d
    d = float(np.linalg.norm(lm[1] - lm[0]))
    assert eyes.sum() == pytest.approx(2 * np.pi * (0.25 * d) ** 2, rel=0.1)
    half = np.linalg.norm(lm[4] - lm[3]) / 2 + 0.15 * d
    assert mouth.sum() == pytest.approx(np.pi * half * 0.22 * d, rel=0.1)
    # they turn with the face, like the mask
    rot = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), 25, 1.0)
    turned = region_maps(apply_affine(rot, lm), SIZE)
    for k in (1, 2):
        expected = cv2.warpAffine(maps[..., k], rot, (SIZE, SIZE), flags=cv2.INTER_NEAREST)
        assert (turned[..., k] != expected).mean() < 0.01


def test_blur_score_and_phash(hopper, hopper_face):
    face, _ = hopper_face
    crop, affine = align(hopper, face.landmarks, SIZE)
    soft, _ = align(cv2.GaussianBlur(hopper, (0, 0), 4), face.landmarks, SIZE)
    mask = face_mask(apply_affine(affine, face.landmarks), SIZE)
    assert blur_score(crop, mask) > 10 * blur_score(soft, mask)
    assert hamming(phash(crop), phash(crop.copy())) == 0
    assert hamming(phash(crop), phash(np.ascontiguousarray(crop[:, ::-1]))) > 8


# ----------------------------------------------------------------------------- real photos
@pytest.mark.parametrize("photo", ["hopper", "astronaut"])
def test_one_face_aligned_onto_the_template(photo, request):
    image = request.getfixturevalue(photo)
    faces = detect(image, CFG)
    assert len(faces) == 1
    face = faces[0]
    assert face.confidence > 0.95 and face.size > 60
    crop, affine = align(image, face.landmarks, SIZE)
    assert crop.shape == (SIZE, SIZE, 3) and crop.dtype == np.uint8
    placed = apply_affine(affine, face.landmarks)
    target = template_points(SIZE)
    err = np.linalg.norm(placed - target, axis=1)
    assert err[EYES].max() < 2.0, err
    # the mouth as a whole sits on the template within 2 px; its corners within 3 px, since
    # the width of a mouth changes with expression (the astronaut's smile vs Grace Hopper)
    assert np.linalg.norm(placed[MOUTH].mean(0) - target[MOUTH].mean(0)) < 2.0
    assert err[MOUTH].max() < 3.0, err
    # the crop is the source warped by the affine (up to the anti-aliasing of strong downscales)
    direct = cv2.warpAffine(image, affine, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    soft = [cv2.GaussianBlur(c, (0, 0), 1.5).astype(float) for c in (direct, crop)]
    assert np.abs(soft[0] - soft[1]).mean() < 1.5
    shifted = cv2.GaussianBlur(np.roll(crop, 1, axis=1), (0, 0), 1.5).astype(float)
    assert np.abs(soft[0] - shifted).mean() > 2 * np.abs(soft[0] - soft[1]).mean()


def test_large_photo_is_searched_shrunk_and_mapped_back(hopper, hopper_face):
    face, affine = hopper_face
    k = 2.5
    big = cv2.resize(hopper, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)  # 1280x1500
    faces = detect(big, CFG)  # searched at 640 px
    assert len(faces) == 1
    crop_big, affine_big = align(big, faces[0].landmarks, SIZE)  # through the area-resize path
    # the big photo's alignment, expressed in the small photo's pixels, matches the small one's
    small_to_big = np.array([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2]])
    both = np.vstack([affine_big, [0, 0, 1]]) @ np.vstack([small_to_big, [0, 0, 1]])
    diff = apply_affine(both[:2], face.landmarks) - apply_affine(affine, face.landmarks)
    assert np.linalg.norm(diff, axis=1).max() < 2.0
    crop, _ = align(hopper, face.landmarks, SIZE)
    assert np.abs(crop_big.astype(int) - crop).mean() < 20


def _variant(kind: str, image: np.ndarray, folder: Path) -> Path:
    im = Image.fromarray(image)
    if kind == "exif_rotated":  # pixels stored turned; EXIF orientation 6 turns them upright
        exif = Image.Exif()
        exif[0x0112] = 6
        path = folder / "exif.jpg"
        im.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    elif kind == "rgba":  # opaque face, transparent margins
        rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
        rgba[:24, :, 3] = 0
        rgba[:, :24, 3] = 0
        path = folder / "rgba.png"
        Image.fromarray(rgba).save(path)
    elif kind == "grayscale":
        path = folder / "grey.png"
        im.convert("L").save(path)
    elif kind == "grey16":
        path = folder / "grey16.png"
        Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257).save(path)
    elif kind == "palette":
        path = folder / "palette.png"
        im.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path)
    elif kind == "cmyk":
        path = folder / "cmyk.jpg"
        im.convert("CMYK").save(path, quality=95)
    return path


@pytest.mark.parametrize("kind", ["exif_rotated", "rgba", "grayscale", "grey16", "palette", "cmyk"])
def test_image_variants_align_like_the_plain_photo(kind, hopper, hopper_face, tmp_path):
    face, affine = hopper_face
    path = _variant(kind, hopper, tmp_path)
    with Image.open(path) as im:  # the variant really is what it says
        assert im.mode == {"exif_rotated": "RGB", "rgba": "RGBA", "grayscale": "L", "grey16": "I;16",
                           "palette": "P", "cmyk": "CMYK"}[kind]
    image = load_rgb(path)
    assert image.shape == hopper.shape and image.dtype == np.uint8
    faces = detect(image, CFG)
    assert len(faces) == 1
    _, affine_v = align(image, faces[0].landmarks, SIZE)
    diff = apply_affine(affine_v, face.landmarks) - apply_affine(affine, face.landmarks)
    assert np.linalg.norm(diff, axis=1).max() < 2.0


def test_keep_largest_central_all_and_thresholds(hopper, astronaut):
    canvas = np.full((620, 1400, 3), 200, np.uint8)
    canvas[:600, :512] = hopper  # the big face, on the left
    canvas[50:562, 500:1012] = astronaut  # the smaller face, near the centre
    faces = detect(canvas, CFG)
    assert len(faces) >= 2
    largest, _ = select_faces(faces, canvas.shape, CFG, "largest")
    central, _ = select_faces(faces, canvas.shape, CFG, "central")
    every, _ = select_faces(faces, canvas.shape, CFG, "all")
    assert len(largest) == len(central) == 1
    assert largest[0].centre[0] < 512 < central[0].centre[0]
    assert len(every) >= 2 and every[0].area >= every[1].area
    assert select_faces(faces, canvas.shape, CFG.model_copy(update={"min_confidence": 0.99999}), "largest")[1] in (
        "low_confidence",)
    assert select_faces(faces, canvas.shape, CFG.model_copy(update={"min_face_size": 1000}), "largest") == (
        [], "too_small")
    assert select_faces([], canvas.shape, CFG, "largest") == ([], "no_face")
    # swap.faces' indices: into the usable faces ranked largest first, those that exist
    assert [f.centre[0] for f in select_faces(faces, canvas.shape, CFG, (1, 0))[0]] == [
        every[1].centre[0], every[0].centre[0]]
    assert select_faces(faces, canvas.shape, CFG, (len(every),)) == ([], "no_face")


# ----------------------------------------------------------------------------- turned photos
def _turned_points(p: np.ndarray, k: int, shape: tuple[int, ...]) -> np.ndarray:
    """Where the (x, y) pixels of an image of `shape` land in np.rot90(image, k)."""
    h, w = shape[:2]
    x, y = p[:, 0], p[:, 1]
    return {1: np.stack([y, w - 1 - x], 1), 2: np.stack([w - 1 - x, h - 1 - y], 1),
            3: np.stack([h - 1 - y, x], 1)}[k]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_turn_back_maps_turned_pixels_onto_the_photo(k, hopper):
    turned = np.rot90(hopper, k)
    assert np.array_equal(turn(hopper, 90 * k), turned) and turn(hopper, 90 * k).flags.c_contiguous
    assert np.array_equal(turn(turned, 360 - 90 * k), hopper)
    rng = np.random.default_rng(k)
    pts = np.stack([rng.integers(0, hopper.shape[1], 50), rng.integers(0, hopper.shape[0], 50)], 1)
    at = _turned_points(pts.astype(float), k, hopper.shape).astype(int)
    assert np.array_equal(turned[at[:, 1], at[:, 0]], hopper[pts[:, 1], pts[:, 0]])  # the test's own map
    # a face found in the turned image (box and 5 points) comes back onto the photo
    lm = pts[:5].astype(float)
    box = np.array([10.0, 20.0, 110.0, 140.0])
    corners = _turned_points(box.reshape(2, 2), k, hopper.shape)
    found = Face(box=np.concatenate([corners.min(0), corners.max(0)]), confidence=0.99,
                 landmarks=_turned_points(lm, k, hopper.shape))
    (back,) = turn_back([found], 90 * k, hopper.shape)
    np.testing.assert_allclose(back.landmarks, lm, atol=1e-9)
    np.testing.assert_allclose(back.box, box, atol=1e-9)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_turned_photo_is_found_turned_back_and_aligned_upright(k, hopper, hopper_face):
    face, affine = hopper_face
    turned = np.ascontiguousarray(np.rot90(hopper, k))  # turned counter-clockwise by 90k degrees
    # MTCNN finds nothing at all in Grace Hopper turned by 90, 180 or 270 degrees
    assert detect(turned, CFG) == []
    assert find_faces(turned, CFG.model_copy(update={"rotate": ()})) == ([], "no_face", 0)
    faces, reason, angle = find_faces(turned, CFG)
    assert reason is None and angle == 360 - 90 * k and len(faces) == 1  # the turn that undoes it
    # box and landmarks in the turned photo's pixels, where the upright face's landed
    expected = _turned_points(face.landmarks, k, hopper.shape)
    assert np.linalg.norm(faces[0].landmarks - expected, axis=1).max() < 1.0
    corners = _turned_points(face.box.reshape(2, 2), k, hopper.shape)
    np.testing.assert_allclose(faces[0].box, np.concatenate([corners.min(0), corners.max(0)]), atol=1.0)
    assert faces[0].confidence == pytest.approx(face.confidence, abs=1e-3)
    # aligned from the turned pixels, the crop is the upright one
    crop, affine_t = align(turned, faces[0].landmarks, SIZE)
    upright, _ = align(hopper, face.landmarks, SIZE)
    assert np.abs(crop.astype(int) - upright).mean() < 2.0
    np.testing.assert_allclose(apply_affine(affine_t, expected), apply_affine(affine, face.landmarks), atol=1.0)


def test_the_most_confident_turn_wins(astronaut):
    face = detect(astronaut, CFG)[0]
    turned = np.ascontiguousarray(np.rot90(astronaut, 1))
    # MTCNN keeps a face upside down too (0.97 against 0.999 at the right turn, 270)
    assert max(f.confidence for f in detect(turn(turned, 180), CFG)) >= CFG.min_confidence
    faces, reason, angle = find_faces(turned, CFG)
    assert angle == 270 and reason is None
    expected = _turned_points(face.landmarks, 1, astronaut.shape)
    assert np.linalg.norm(faces[0].landmarks - expected, axis=1).max() < 1.0


def test_turned_photos_in_the_manifest_and_report(hopper, tmp_path, monkeypatch):
    import autoswap.faces as F
    from autoswap.config import parse

    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(4):
        Image.fromarray(np.ascontiguousarray(np.rot90(hopper, k))).save(raw / f"ccw{90 * k}.png")
    calls = []
    real = F.detect
    monkeypatch.setattr(F, "detect", lambda image, cfg: calls.append(image.shape) or real(image, cfg))
    # params.yaml's extract.rotate reaches the extractor through Settings
    off = parse({"extract": {"rotate": []}}).extract
    report = extract_to_dir([raw], tmp_path / "off", off, SIZE, progress=False)
    assert report["kept"] == 1 and report["rotated"] == {}
    assert sorted(Path(p).name for p in report["dropped"]["no_face"]) == ["ccw180.png", "ccw270.png", "ccw90.png"]
    assert len(calls) == 4  # one search per photo

    calls.clear()
    on = parse({"extract": {"rotate": [90, 180, 270]}}).extract
    report = extract_to_dir([raw], tmp_path / "on", on, SIZE, progress=False)
    assert report["kept"] == 4 and not any(report["dropped"].values())
    assert {a: [Path(p).name for p in v] for a, v in report["rotated"].items()} == {
        "90": ["ccw270.png"], "180": ["ccw180.png"], "270": ["ccw90.png"]}
    # the upright photo is searched once, each turned one upright and then at all 3 turns
    assert len(calls) == 1 + 3 * (1 + 3)
    rows = {r["source"].rsplit("/", 1)[1]: r for r in _rows(tmp_path / "on")}
    assert {n: r["rotation"] for n, r in rows.items()} == {"ccw0.png": 0, "ccw90.png": 270, "ccw180.png": 180,
                                                           "ccw270.png": 90}
    crops = {n: np.asarray(Image.open(tmp_path / "on" / f"{r['crop']}.png")).astype(int) for n, r in rows.items()}
    for n, r in rows.items():
        k = int(n[3:-4]) // 90
        assert r["source_size"] == list(np.rot90(hopper, k).shape[1::-1])
        assert np.abs(crops[n] - crops["ccw0.png"]).mean() < 2.0
        # the affine maps the photo's own pixels (as stored, turned) onto the upright crop
        src = np.array(r["landmarks_source"])
        np.testing.assert_allclose(apply_affine(np.array(r["affine"]), src), r["landmarks_crop"], atol=1e-3)
        np.testing.assert_allclose(r["landmarks_crop"], rows["ccw0.png"]["landmarks_crop"], atol=1.0)
        if k:
            up = np.array(rows["ccw0.png"]["landmarks_source"])
            assert np.abs(src - _turned_points(up, k, hopper.shape)).max() < 1.0


def test_turned_video_keeps_the_turn_that_found_the_face(hopper, tmp_path, monkeypatch):
    import autoswap.faces as F

    # a sideways clip with no rotation metadata: 4 frames turned counter-clockwise by 90 degrees
    small = cv2.resize(hopper, (320, 376), interpolation=cv2.INTER_AREA)
    path = tmp_path / "sideways.mp4"
    _encode(path, [np.ascontiguousarray(np.rot90(small, 1))] * 4)
    calls = {"detect": 0, "detect_near": 0}
    for name in calls:
        real = getattr(F, name)
        monkeypatch.setattr(F, name, lambda *a, _n=name, _r=real: calls.__setitem__(_n, calls[_n] + 1) or _r(*a))
    report = extract_to_dir([path], tmp_path / "out", CFG.model_copy(update={"every_nth_frame": 1}), SIZE,
                            progress=False)
    assert report["kept"] == 4 and [i.rsplit(":", 1)[1] for i in report["rotated"]["270"]] == ["0", "1", "2", "3"]
    # first frame: upright, then 90, 180, 270 (found); then tracked at 270, never searched upright again
    assert calls == {"detect": 4, "detect_near": 3}
    rows = _rows(tmp_path / "out")
    assert [r["rotation"] for r in rows] == [270] * 4
    face = detect(small, CFG)[0]
    expected = _turned_points(face.landmarks, 1, small.shape)
    assert np.abs(np.array(rows[0]["landmarks_source"]) - expected).max() < 3.0  # through the codec
    first = np.asarray(Image.open(tmp_path / "out" / f"{rows[0]['crop']}.png")).astype(int)
    upright, _ = align(small, face.landmarks, SIZE)
    assert np.abs(first - upright).mean() < 0.5 * np.abs(first - upright[::-1, ::-1]).mean()


# ----------------------------------------------------------------------------- video
VIDEO_FRAMES, VIDEO_FPS, VIDEO_SIZE = 36, 12, (320, 240)


def _camera(i: int) -> np.ndarray:
    """Photo -> frame transform of frame i: pan right, zoom in, turn from -4 to +4 degrees."""
    u = i / (VIDEO_FRAMES - 1)
    face = (224.0, 120.0)  # the astronaut's face in the photo
    m = cv2.getRotationMatrix2D(face, -4 + 8 * u, 0.95 + 0.25 * u)
    m[:, 2] += np.array([VIDEO_SIZE[0] * (0.4 + 0.2 * u), VIDEO_SIZE[1] * (0.45 + 0.05 * u)]) - face
    return m


@pytest.fixture(scope="module")
def pan_zoom_video(astronaut, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "pan zoom.mp4"
    frames = [cv2.warpAffine(astronaut, _camera(i), VIDEO_SIZE, flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT) for i in range(VIDEO_FRAMES)]
    _encode(path, frames, fps=VIDEO_FPS)
    return path


@pytest.fixture(scope="module")
def pan_zoom_result(pan_zoom_video, tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    cfg = CFG.model_copy(update={"every_nth_frame": 3})
    report = extract_to_dir([pan_zoom_video], out, cfg, SIZE, progress=False)
    return report, out


def test_video_one_stable_face_per_sampled_frame(pan_zoom_result, astronaut):
    report, out = pan_zoom_result
    sampled = list(range(0, VIDEO_FRAMES, 3))
    assert report["videos"] == 1 and report["frames"] == len(sampled) and report["kept"] == len(sampled)
    assert not any(report["dropped"].values())
    rows = _rows(out)
    assert [r["frame"] for r in rows] == sampled
    assert [r["time_s"] for r in rows] == pytest.approx([f / VIDEO_FPS for f in sampled], abs=1e-3)
    assert all(r["kind"] == "video" and r["source_size"] == list(VIDEO_SIZE) for r in rows)
    assert len({r["crop"] for r in rows}) == len(rows)
    # stable crops: landmarks in crop space move by under 2 px between frames (and overall)
    lm = np.array([r["landmarks_crop"] for r in rows])
    assert np.abs(np.diff(lm, axis=0)).max() < 2.0
    assert np.ptp(lm, axis=0).max() < 2.0
    # the detections follow the camera: photo landmarks through the known camera motion
    # (within MTCNN's own noise of a pixel or two, largest on the nose)
    photo_lm = detect(astronaut, CFG)[0].landmarks
    err = np.array([np.linalg.norm(np.array(r["landmarks_source"]) - apply_affine(_camera(r["frame"]), photo_lm),
                                   axis=1) for r in rows])
    assert err.mean() < 1.5 and err.max() < 4.0, err.round(2)


def test_video_manifest_affine_maps_crops_back_onto_frames(pan_zoom_result, pan_zoom_video):
    _, out = pan_zoom_result
    rows = {r["frame"]: r for r in _rows(out)}
    frames = {f.index: f.rgb for f in iter_video_frames(pan_zoom_video, every_nth=3)}
    assert sorted(frames) == sorted(rows)
    for index, r in rows.items():
        affine = np.array(r["affine"])
        back = apply_affine(invert_affine(affine), np.array(r["landmarks_crop"]))
        assert np.linalg.norm(back - np.array(r["landmarks_source"]), axis=1).max() < 1.0
        # the saved crop is the frame sampled through the saved affine
        crop = np.asarray(Image.open(out / f"{r['crop']}.png"))
        warped = cv2.warpAffine(frames[index], affine, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        assert np.abs(warped.astype(int) - crop).mean() < 1.0
        mask = np.asarray(Image.open(out / "masks" / f"{r['crop']}.png"))
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) == {0, 255}
        for x, y in np.array(r["landmarks_crop"]):
            assert mask[int(round(y)), int(round(x))] == 255
        for key in ("source", "time_s", "landmarks_source", "confidence", "blur", "box"):
            assert r[key] is not None


def test_video_tracking_matches_full_search(pan_zoom_result, pan_zoom_video, tmp_path, monkeypatch):
    _, out = pan_zoom_result
    import autoswap.faces as F

    calls = {"detect": 0, "detect_near": 0}

    def counted(name):
        real = getattr(F, name)

        def spy(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return spy

    for name in calls:
        monkeypatch.setattr(F, name, counted(name))
    # 12 searched frames: the whole frame at the first and at every 5th search, the rest tracked
    cfg = CFG.model_copy(update={"every_nth_frame": 3, "full_search_every": 4})
    assert extract_to_dir([pan_zoom_video], tmp_path / "t", cfg, SIZE, progress=False)["kept"] == 12
    assert calls == {"detect": 3, "detect_near": 9}
    calls.update(detect=0, detect_near=0)
    cfg = CFG.model_copy(update={"every_nth_frame": 3, "track": False})
    extract_to_dir([pan_zoom_video], tmp_path, cfg, SIZE, progress=False)
    assert calls == {"detect": 12, "detect_near": 0}
    tracked = np.array([r["landmarks_source"] for r in _rows(out)])
    full = np.array([r["landmarks_source"] for r in _rows(tmp_path)])
    assert tracked.shape == full.shape
    assert np.linalg.norm(tracked - full, axis=2).max() < 2.0
    # and detect_near on its own finds the face around last frame's box
    frames = list(iter_video_frames(pan_zoom_video, every_nth=18))
    first = detect(frames[0].rgb, CFG)[0]
    near = detect_near(frames[1].rgb, first.box, CFG)
    assert len(near) == 1 and np.abs(near[0].landmarks - full[6]).max() < 2.0


def test_video_rotation_metadata_is_applied(astronaut, tmp_path):
    upright = np.ascontiguousarray(astronaut[:240, 96:416])
    path = tmp_path / "phone.mp4"
    # stored turned clockwise; the display matrix says: turn 90 degrees counter-clockwise
    _encode(path, [np.ascontiguousarray(np.rot90(upright, -1))] * 4, rotation=90)
    frames = list(iter_video_frames(path))
    assert [f.index for f in frames] == [0, 1, 2, 3]
    for f in frames:
        assert f.rgb.shape == upright.shape
        assert np.abs(f.rgb.astype(int) - upright).mean() < 6


def test_video_variable_frame_rate_and_odd_size(astronaut, tmp_path):
    path = tmp_path / "vfr.mkv"
    times_ms = [0, 100, 120, 500, 550, 990, 1000, 1700, 2600]
    odd = np.ascontiguousarray(astronaut[40:89, 180:245])  # 65 x 49
    _encode(path, [odd] * len(times_ms), codec="ffv1", pix_fmt="yuv420p", pts=times_ms)
    at_2fps = list(iter_video_frames(path, target_fps=2))
    # the first frame of every half second that has one
    assert [f.index for f in at_2fps] == [0, 3, 6, 7, 8]
    assert [f.time_s for f in at_2fps] == pytest.approx([0, 0.5, 1.0, 1.7, 2.6], abs=1e-3)
    assert all(f.rgb.shape == (49, 65, 3) for f in at_2fps)
    assert np.abs(at_2fps[0].rgb.astype(int) - odd).mean() < 6
    assert [f.index for f in iter_video_frames(path, every_nth=4)] == [0, 4, 8]


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_are_skipped_and_reported(hopper, tmp_path):
    raw = tmp_path / "raw" / "a"
    raw.mkdir(parents=True)
    Image.fromarray(hopper).save(raw / "good.jpg", quality=92)
    good = (raw / "good.jpg").read_bytes()
    (raw / "corrupt.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (raw / "truncated.jpg").write_bytes(good[: len(good) * 2 // 5])
    (raw / "text.jpg").write_text("not a photo at all\n")
    (raw / "empty.jpg").write_bytes(b"")
    Image.fromarray(skimage.data.coffee()).save(raw / "no_face.png")
    with av.open(str(raw / "no_frames.mp4"), "w") as c:  # a header and no frames
        s = c.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()
    (raw / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    (raw / "notes.txt").write_text("what these photos are\n")
    (raw / ".hidden.jpg").write_bytes(b"junk")
    empty = tmp_path / "raw" / "b"
    empty.mkdir()
    before = _snapshot(tmp_path / "raw")

    out = tmp_path / "faces"
    report = extract_to_dir([raw, empty], out, CFG, SIZE, progress=True)

    assert _snapshot(tmp_path / "raw") == before  # nothing under raw changed
    assert report["files"] == 8 and report["kept"] == 1
    assert set(report["dropped"]) == set(DROP_REASONS)
    d = {k: sorted(Path(p).name for p in v) for k, v in report["dropped"].items() if v}
    assert d == {
        "unreadable": ["broken.mp4", "corrupt.jpg", "empty.jpg", "text.jpg", "truncated.jpg"],
        "no_face": ["no_face.png"],
        "no_frames": ["no_frames.mp4"],
        "unsupported": ["notes.txt"],
        "empty_folder": ["b"],
    }
    assert all(report["errors"][p] for p in report["dropped"]["unreadable"])
    assert "0 bytes" in report["errors"][str(raw / "empty.jpg")]
    (row,) = _rows(out)
    assert row["source"] == (raw / "good.jpg").as_posix() and row["kind"] == "image"
    assert row["frame"] == 0 and row["time_s"] is None
    assert (out / f"{row['crop']}.png").is_file() and (out / "masks" / f"{row['crop']}.png").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{row['crop']}.png", "masks", MANIFEST, MARKER])


def test_nothing_usable_is_a_clear_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(UserError, match=r"raw: no photos or videos found"):
        extract_to_dir([raw], tmp_path / "out", CFG, SIZE, progress=False)
    Image.fromarray(skimage.data.coffee()).save(raw / "cup.png")
    with pytest.raises(UserError, match=r"raw: no usable face in 1 file\(s\) \(1 no_face\)"):
        extract_to_dir([raw], tmp_path / "out", CFG, SIZE, progress=False)
    report = extract_to_dir([raw], tmp_path / "out", CFG, SIZE, progress=False, allow_empty=True)
    assert report["kept"] == 0 and report["dropped"]["no_face"] == [str(raw / "cup.png")]
    assert (tmp_path / "out" / MANIFEST).read_text() == ""
    with pytest.raises(UserError, match="no such file or folder"):
        extract_to_dir([tmp_path / "missing"], tmp_path / "out", CFG, SIZE, progress=False)
    with pytest.raises(UserError, match="inside the input folder"):
        extract_to_dir([raw], raw / "faces", CFG, SIZE, progress=False)
    assert not (raw / "faces").exists()


def test_filters_blur_duplicates_and_reruns(hopper, astronaut, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(hopper).save(raw / "a.png")
    Image.fromarray(np.ascontiguousarray(hopper[:, 4:])).save(raw / "b_shifted_copy.png")  # near-duplicate
    Image.fromarray(cv2.GaussianBlur(hopper, (0, 0), 4)).save(raw / "c_blurred.png")
    Image.fromarray(astronaut).save(raw / "d.png")
    out = tmp_path / "faces"
    (out / "masks").mkdir(parents=True)
    (out / "notes.md").write_text("mine")
    cfg = CFG.model_copy(update={"min_blur": 100.0, "dedup_hamming": 8})
    report = extract_to_dir([raw], out, cfg, SIZE, progress=False)
    assert report["kept"] == 2
    assert report["dropped"]["blurry"] == [str(raw / "c_blurred.png")]
    assert report["dropped"]["duplicate"] == [str(raw / "b_shifted_copy.png")]
    rows = _rows(out)
    assert [r["crop"] for r in rows] == ["a_000000_0", "d_000000_0"]
    assert all(r["blur"] >= 100 for r in rows)
    # a second run into the same folder replaces the first run's faces, and only those
    extract_to_dir([raw / "d.png"], out, CFG, SIZE, progress=False)
    assert sorted(p.name for p in out.glob("*.png")) == ["d_000000_0.png"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["d_000000_0.png"]
    assert (out / "notes.md").read_text() == "mine"


def test_crop_names_are_unique_and_stable():
    files = [Path("raw/a/x.jpg"), Path("raw/a/sub/x.jpg"), Path("raw/a/y z!.png"), Path("raw/a/x.mp4")]
    names = _names(files)
    assert len(set(names.values())) == len(files)
    assert names[Path("raw/a/y z!.png")] == "y_z"
    assert names == _names(list(files))
    assert all(n.startswith("x-") for f, n in names.items() if f.stem == "x")


def test_bad_video_errors(tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(BadVideo, match="0 bytes"):
        list(iter_video_frames(tmp_path / "zero.mp4"))
    (tmp_path / "junk.mov").write_bytes(b"junk" * 50)
    with pytest.raises(BadVideo) as e:
        list(iter_video_frames(tmp_path / "junk.mov"))
    assert e.value.reason == "unreadable"


# ----------------------------------------------------------------------------- what extract may delete
def test_force_removes_only_what_its_own_manifest_lists_inside_out(hopper, tmp_path, monkeypatch, capsys):
    from autoswap.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    raw = tmp_path / "in"
    raw.mkdir()
    Image.fromarray(hopper).save(raw / "h.png")

    def extract(out, *flags):
        rc = main(["extract", str(raw), "--out", str(out), *flags])
        return rc, capsys.readouterr().err

    # a folder of the user's with another tool's manifest.jsonl naming their photo: never touched
    album = tmp_path / "album"
    album.mkdir()
    (album / "IMG_1.png").write_bytes(b"my photo")
    (album / MANIFEST).write_text(json.dumps({"crop": "IMG_1"}) + "\n")
    before = _snapshot(album)
    rc, err = extract(album, "--force")
    assert rc == 1 and err == (f"autoswap: --out: {album} is not empty and not written by autoswap; "
                               "move its files or choose another folder\n")
    with pytest.raises(UserError, match=r"manifest\.jsonl: not written by `autoswap extract`"):
        extract_to_dir([raw], album, CFG, SIZE, progress=False)
    assert _snapshot(album) == before

    # inside data/raw, or the project itself: refused before anything is written
    rc, err = extract(Path("data/raw/a/faces"))
    assert rc == 1 and err.startswith("autoswap: --out: data/raw/a/faces is, holds or lies inside data/raw (an input)")
    rc, err = extract(Path("."), "--force")
    assert rc == 1 and "is or holds the project root" in err
    assert not (tmp_path / "data").exists()

    # its own folder: --force replaces the faces its manifest lists, and nothing else
    out = tmp_path / "faces"
    assert extract(out)[0] == 0
    (crop,) = [r["crop"] for r in _rows(out)]
    (out / "notes.md").write_text("mine")
    assert extract(out)[1].startswith(f"autoswap: {out}: not empty; choose an empty folder or pass --force")
    (out / f"{crop}.png").write_bytes(b"old crop")
    assert extract(out, "--force")[0] == 0
    assert (out / f"{crop}.png").read_bytes() != b"old crop" and (out / "notes.md").read_text() == "mine"
    # a masks link out of --out is neither followed to delete nor to write
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f"{crop}.png").write_bytes(b"someone else's")
    for p in (out / "masks").iterdir():
        p.unlink()
    (out / "masks").rmdir()
    (out / "masks").symlink_to(elsewhere, target_is_directory=True)
    rc, err = extract(out, "--force")
    assert rc == 1 and "masks: a link to another folder" in err
    assert (elsewhere / f"{crop}.png").read_bytes() == b"someone else's"
