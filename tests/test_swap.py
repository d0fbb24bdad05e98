"""`autoswap swap` with a small model trained here: the face (and only the face) changes, the
geometry comes from model.json, videos keep frames / rate / duration / audio, outputs carry the
marks, and bad inputs fail cleanly without writing anything."""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import mlflow
import numpy as np
import pytest
import skimage.data
import yaml
from conftest import fill, tiny_raw
from matplotlib import cbook
from PIL import Image
from test_train import random_faces

from autoswap import mark as M
from autoswap import tracking
from autoswap import watermark as W
from autoswap.align import align, apply_affine, face_mask, invert_affine
from autoswap.cli import main
from autoswap.config import parse
from autoswap.demo import demo as demo_stage
from autoswap.swap import FaceSwapModel, LandmarkSmoother, Swapper, tag_watermark_id
from autoswap.video import iter_video_frames


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private MLflow store and config folder (the C2PA signer, the watermark registry)."""
    root = tmp_path_factory.mktemp("env")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("DVC_ROOT", str(root / "project"))
        mp.setenv("XDG_CONFIG_HOME", str(root / "config"))
        (root / "project").mkdir()
        yield root


@pytest.fixture(scope="module")
def model_dir(env) -> Path:
    """A real model with the tiny geometry (64 px faces, centre 0.625 -> 32 px input), trained
    for two steps: a swap test needs the geometry, not a good swap."""
    from autoswap.train import train

    random_faces(env / "faces", n_train=4, n_val=2)
    s = parse(tiny_raw(env, data={"faces_dir": str(env / "faces")}, train={"steps": 2, "batch_size": 2}))
    train(s, metrics_dir=env / "metrics", plots_dir=env / "plots")
    return env / "models" / "final"


def model_meta(model_dir: Path) -> dict:
    """The model's MLflow run, as swap sees it (tracking.model_run: models/run.json)."""
    run_id, uri = tracking.model_run(model_dir)
    return {"mlflow_run_id": run_id, "mlflow_tracking_uri": uri}


@pytest.fixture(scope="module")
def params(env, model_dir) -> Path:
    p = env / "params.yaml"
    p.write_text(yaml.safe_dump({"swap": {"model": str(model_dir), "key_dir": str(env / "keys")}}))
    return p


@pytest.fixture(scope="module")
def settings(params):
    return parse(yaml.safe_load(params.read_text()))


@pytest.fixture(scope="module")
def model(model_dir) -> FaceSwapModel:
    return FaceSwapModel(model_dir, "b")


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


@pytest.fixture
def hopper_jpg(tmp_path) -> Path:
    p = tmp_path / "in" / "grace_hopper.jpg"
    p.parent.mkdir()
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        p.write_bytes(f.read())
    return p


def swap_cli(params: Path, *args) -> int:
    return main(["--params", str(params), "swap", "--quiet", *map(str, args)])


def frame_mask(rgb: np.ndarray, landmarks: np.ndarray, size: int, dilate: float) -> np.ndarray:
    """The landmark face mask in frame pixels, dilated by `dilate` x the face size (eroded
    where negative)."""
    _, affine = align(rgb, landmarks, size)
    m = face_mask(apply_affine(affine, landmarks), size)
    m = cv2.warpAffine(m, invert_affine(affine), (rgb.shape[1], rgb.shape[0]), flags=cv2.INTER_NEAREST)
    r = int(np.ceil(abs(dilate) * size / np.sqrt(abs(np.linalg.det(affine[:, :2])))))  # face px -> frame px
    if r == 0:
        return m > 0
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return (cv2.dilate(m, k) if dilate > 0 else cv2.erode(m, k)) > 0


def sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- one photo
def test_only_the_face_changes(model, settings, hopper):
    sw = Swapper(model, settings.swap, settings.extract)
    faces = sw.finder(video=False)(hopper)
    assert len(faces) == 1
    out = sw.swap(hopper, [faces[0].landmarks])
    assert out.shape == hopper.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - hopper).max(axis=2)
    s = model.geometry.face_size
    outside = ~frame_mask(hopper, faces[0].landmarks, s, dilate=0.03)
    assert diff[outside].max() <= 2  # measured: 0, pixels outside the blend weights are copied
    assert (diff[outside] == 0).all()
    core = frame_mask(hopper, faces[0].landmarks, s, dilate=-0.1)  # well inside the face
    assert (diff[core] > 0).mean() > 0.95 and diff[core].mean() > 8
    # what the watermark adds on top: every pixel may move, by about one grey level
    marked = W.embed_watermark(out, 0x1234ABCD)
    wdiff = np.abs(marked.astype(int) - out)
    psnr = 10 * np.log10(255.0**2 / np.mean(wdiff.astype(float) ** 2))
    assert psnr > 46 and wdiff.max() <= 10  # measured: 49.0 dB, max 6 grey levels


def test_identity_network_puts_the_face_back_in_place(model, settings, hopper, monkeypatch):
    """With an 'autoencoder' that returns its input the paste must land where the face was:
    the crop geometry from model.json and the inverse affine agree with the alignment."""
    sw = Swapper(model, settings.swap.model_copy(update={"color": "none"}), settings.extract)
    lm = sw.finder(video=False)(hopper)[0].landmarks
    monkeypatch.setattr(FaceSwapModel, "__call__", lambda self, x: x)
    out = sw.swap(hopper, [lm])
    core = frame_mask(hopper, lm, model.geometry.face_size, dilate=-0.08)
    err = np.abs(out.astype(float) - hopper)[core].mean()
    # the same, pasted 6 px off: alignment errors would look like this
    shifted = np.roll(hopper, 6, axis=1)
    err_shifted = np.abs(shifted.astype(float) - hopper)[core].mean()
    assert err < 0.6 * err_shifted, (err, err_shifted)


def test_sharpen_restores_detail_the_64px_round_trip_loses(model, settings, hopper, monkeypatch):
    """swap.sharpen (faceswap's convert sharpen): with "output = input" as the network, the crop,
    resize and paste round trip softens the face; a moderate unsharp mask brings the detail at
    the scale of facial features back toward the original's (photo_sharpness_kept toward 1),
    more, and neither touches anything outside the blend mask. Past 1, the face is sharper than
    the photo ever was: halos, not detail (bench/photo_losses.py)."""
    from autoswap.photoscore import score_pairs

    monkeypatch.setattr(FaceSwapModel, "__call__", lambda self, x: x)
    lm = Swapper(model, settings.swap, settings.extract).finder(video=False)(hopper)[0].landmarks
    kept = {}
    for amount in (0.0, 0.5, 2.0):
        cfg = settings.swap.model_copy(update={"color": "none", "sharpen": amount, "sharpen_radius": 0.01})
        out = Swapper(model, cfg, settings.extract).swap(hopper, [lm])
        kept[amount] = score_pairs([(hopper, out, lm)], None, None)["photo_sharpness_kept"]
        outside = ~frame_mask(hopper, lm, model.geometry.face_size, dilate=0.03)
        assert np.abs(out.astype(int) - hopper).max(axis=2)[outside].max() == 0
    # measured 0.58, 0.61, 0.75 with this test model's 32 px input (the demo's 64 px: 0.75, 0.91,
    # 1.5); what the 32 px view never held, no sharpening brings back
    assert kept[0.0] < 0.85
    assert kept[0.0] < kept[0.5] < kept[2.0]
    assert kept[2.0] - kept[0.0] > 0.1


@pytest.mark.parametrize("color,poisson", [("histogram", False), ("mean_std", True), ("none", False)])
def test_blend_options_keep_the_background(color, poisson, model, settings, hopper):
    cfg = settings.swap.model_copy(update={"color": color, "poisson": poisson})
    sw = Swapper(model, cfg, settings.extract)
    lm = sw.finder(video=False)(hopper)[0].landmarks
    out = sw.swap(hopper, [lm])
    outside = ~frame_mask(hopper, lm, model.geometry.face_size, dilate=0.03)
    assert np.abs(out.astype(int) - hopper).max(axis=2)[outside].max() == 0


def test_which_faces_largest_all_or_by_index(model, settings, hopper):
    astro = skimage.data.astronaut()  # the smaller face
    canvas = np.full((620, 1160, 3), 90, np.uint8)
    canvas[10:610, 10:522] = hopper
    canvas[60:572, 640:1152] = astro
    left, right = (slice(None), slice(0, 580)), (slice(None), slice(580, None))

    def changed(which):
        sw = Swapper(model, settings.swap.model_copy(update={"faces": which}), settings.extract)
        faces = sw.finder(video=False)(canvas)
        d = np.abs(sw.swap(canvas, [f.landmarks for f in faces]).astype(int) - canvas).max(axis=2)
        return bool(d[left].any()), bool(d[right].any())

    assert changed("largest") == (True, False)  # the bystander is left alone
    assert changed("all") == (True, True)
    assert changed((1,)) == (False, True)
    assert changed((5,)) == (False, False)


def test_landmark_smoothing_steadies_jitter_and_follows_moves():
    rng = np.random.default_rng(0)
    base = np.array([[100, 100], [160, 100], [130, 135], [108, 165], [152, 165]], float)
    sm = LandmarkSmoother(0.6)
    raw = [base + rng.normal(0, 1.5, base.shape) for _ in range(40)]
    out = [sm([lm])[0] for lm in raw]
    assert np.std([o[0] for o in out[5:]], axis=0).mean() < 0.7 * np.std([r[0] for r in raw[5:]], axis=0).mean()
    moved = sm([base + 40])[0]  # a jump of 2/3 of the eye distance: followed at once
    assert np.allclose(moved, base + 40)
    assert LandmarkSmoother(0.0)([base])[0] is base


# ----------------------------------------------------------------------------- the command
@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_swap_photo_cli_marks_and_verify(fmt, params, model_dir, hopper, tmp_path, capsys):
    src = tmp_path / f"gh.{fmt}"
    Image.fromarray(hopper).save(src, quality=95) if fmt == "jpg" else Image.fromarray(hopper).save(src)
    before = sha(src)
    out = tmp_path / f"out.{fmt}"
    assert swap_cli(params, src, out) == 0
    assert sha(src) == before
    with Image.open(out) as im:
        assert im.size == (hopper.shape[1], hopper.shape[0]) and im.format == {"jpg": "JPEG", "png": "PNG"}[fmt]
    assert "swapped 1 face(s)" in capsys.readouterr().out

    wm = M.watermark_id(model_meta(model_dir))
    assert main(["--params", str(params), "verify", "--json", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["metadata"]["found"] and r["metadata"]["watermark_id"] == f"{wm:08x}"
    assert r["c2pa"]["state"] == "Valid" and r["c2pa"]["untrusted"]
    assert r["c2pa"]["actions"] == ["c2pa.opened", "c2pa.edited"]
    assert r["watermark"]["id"] == f"{wm:08x}"
    assert r["watermark"]["mlflow_run_id"] == model_meta(model_dir)["mlflow_run_id"]  # via the ID registry

    # the watermark after a JPEG re-encode at q75 (PIL's default 4:2:0) and a 0.5x resize
    pixels = np.asarray(Image.open(out).convert("RGB"))
    for name, attacked in (("fresh", pixels),
                           ("jpeg75", Image.open(_jpeg(pixels, tmp_path / "q75.jpg")).convert("RGB")),
                           ("half", Image.fromarray(pixels).resize((pixels.shape[1] // 2, pixels.shape[0] // 2)))):
        reading = W.detect_watermark(np.asarray(attacked))
        bits, slots = W.bit_accuracy(reading, wm)
        assert reading.found and reading.id == wm, name
        assert bits == 1.0 and slots > {"fresh": 0.97, "jpeg75": 0.85, "half": 0.8}[name], (name, slots)


def test_swap_tags_the_models_mlflow_run_with_the_watermark_id(params, model_dir, hopper_jpg, tmp_path):
    """`autoswap swap` (not only the demo stage) sets autoswap.watermark_id on the run that made
    the model, in the store models/run.json names."""
    meta = model_meta(model_dir)
    client = mlflow.MlflowClient(meta["mlflow_tracking_uri"])
    if "autoswap.watermark_id" in client.get_run(meta["mlflow_run_id"]).data.tags:
        client.delete_tag(meta["mlflow_run_id"], "autoswap.watermark_id")  # set by an earlier test
    assert swap_cli(params, hopper_jpg, tmp_path / "out.jpg") == 0
    tags = client.get_run(meta["mlflow_run_id"]).data.tags
    assert tags["autoswap.watermark_id"] == f"{M.watermark_id(meta):08x}"


def test_no_mlflow_store_means_no_tag_and_no_new_store(tmp_path):
    model = tmp_path / "models" / "final"
    model.mkdir(parents=True)
    (model / "model.json").write_text("{}")
    assert not tag_watermark_id(model, 1)  # no run.json: no run
    gone = tmp_path / "moved" / "mlflow.db"
    tracking.write_model_run(model, "abc", f"sqlite:///{gone}")
    assert tracking.model_run(model) == ("abc", f"sqlite:///{gone}")
    assert not tag_watermark_id(model, 1)  # its store is not there
    assert not (tmp_path / "moved").exists()


def _jpeg(a: np.ndarray, path: Path) -> Path:
    Image.fromarray(a).save(path, quality=75)
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")  # Keras, loading the mismatched weights
def test_other_geometry_is_read_from_model_json(env, hopper_jpg, params, tmp_path):
    """A model of another resolution (96 px faces, centre half, 48 px input) is used with its
    own saved geometry (its card), whatever params.yaml says."""
    from autoswap.config import ModelSettings
    from autoswap.model import ModelCard, build, save_final

    cfg = ModelSettings(input_size=48, width=0.0625, latent_dim=64)
    d = tmp_path / "m96"
    save_final(d, build(cfg), ModelCard(model=cfg, face_size=96, crop=0.5))
    m = FaceSwapModel(d, "a")
    assert m.card == ModelCard(model=cfg, face_size=96, crop=0.5) and m.run["mlflow_run_id"] is None
    assert (m.geometry.face_size, m.geometry.input_size, m.geometry.crop) == (96, 48, 0.5)
    assert m.model_input(np.zeros((1, 96, 96, 3), np.uint8)).shape == (1, 48, 48, 3)
    out = tmp_path / "o.jpg"
    assert swap_cli(params, hopper_jpg, out, "--model", d, "--to", "a") == 0
    assert Image.open(out).size == Image.open(hopper_jpg).size
    # weights that do not match model.json: refused, nothing written
    meta = json.loads((d / "model.json").read_text())
    meta["model"]["input_size"] = 32
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(M.UserError, match="does not match"):
        FaceSwapModel(d, "a")


def test_bad_inputs_fail_cleanly(params, hopper_jpg, tmp_path, capsys):
    out = tmp_path / "out.jpg"
    before = sha(hopper_jpg)

    def fails(*args, match):
        assert swap_cli(params, *args) == 1
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()

    (tmp_path / "notes.txt").write_text("hello")
    fails(tmp_path / "notes.txt", out, match="not a photo or video autoswap reads (.txt)")
    fails(tmp_path / "missing.jpg", out, match="no such file or folder")
    fails(hopper_jpg, out, "--model", tmp_path / "nomodel", match="no such model folder")
    (tmp_path / "empty").mkdir()
    fails(hopper_jpg, out, "--model", tmp_path / "empty", match="no trained model here")
    fails(hopper_jpg, hopper_jpg, match="OUTPUT is the INPUT")
    fails(hopper_jpg, hopper_jpg.parent / "." / hopper_jpg.name, match="OUTPUT is the INPUT")
    fails(hopper_jpg, tmp_path / "out.png", match="must have the input's format")
    fails(hopper_jpg, out, "--faces", "some", match="--faces: Value error")
    fails(hopper_jpg, out, "--crf", "99", match="--crf:")
    fails(hopper_jpg.parent, hopper_jpg.parent / "sub", match="inside the input folder")
    assert sha(hopper_jpg) == before
    out.write_bytes(b"x")
    assert swap_cli(params, hopper_jpg, out) == 1 and "pass --force" in capsys.readouterr().err
    assert swap_cli(params, hopper_jpg, out, "--force") == 0 and out.stat().st_size > 1000


# ----------------------------------------------------------------------------- I/O errors
NO_SPACE = "no space left on the device; free space there (or write elsewhere: another OUTPUT) and re-run"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_swap_onto_a_full_disk_names_the_output_and_leaves_nothing(params, hopper_jpg, small_disk, capsys):
    with small_disk("64k") as disk:
        out = disk / "out.jpg"
        assert swap_cli(params, hopper_jpg, out) == 1
        assert _one_line(capsys) == f"autoswap: {out}: {NO_SPACE}"
        assert list(disk.iterdir()) == []


@pytest.mark.parametrize("recorded", [True, False])
def test_c2pa_signing_onto_a_full_disk_is_no_space_left(recorded, params, hopper_jpg, small_disk, capsys,
                                                        monkeypatch):
    """The disk fills up between the marked photo and its signed copy, where c2pa says only
    "asset could not be parsed: JPEG write error": the write's own error, kept (or raised again
    when the file is closed), says why; without it (`recorded` False), the free space left does."""
    with small_disk("1m") as disk:
        sign = M.sign_c2pa

        def fill_then_sign(*args):
            fill(disk)
            return sign(*args)

        monkeypatch.setattr(M, "sign_c2pa", fill_then_sign)
        if not recorded:  # as it happened: c2pa's own error only, and a file that closes cleanly (unbuffered)
            def unbuffered(self, f):
                self.f, self.error = open(f.fileno(), "w+b", buffering=0, closefd=False), None

            monkeypatch.setattr(M._Written, "__init__", unbuffered)
            monkeypatch.setattr(M._Written, "_keep", lambda self, call, *a: call(*a))
        full, asked = M._disk_full, []
        monkeypatch.setattr(M, "_disk_full", lambda *a: asked.append(full(*a)) or asked[-1])
        out = disk / "out.jpg"
        assert swap_cli(params, hopper_jpg, out) == 1
        assert _one_line(capsys) == f"autoswap: {out}: {NO_SPACE}"
        assert [p.name for p in disk.iterdir()] == ["filler"]
        assert asked == ([] if recorded else [True])  # c2pa's error it was, and the free space said why


def test_swap_onto_a_read_only_file_system(params, hopper_jpg, small_disk, capsys):
    with small_disk("64k", read_only=True) as disk:
        out = disk / "out.jpg"
        assert swap_cli(params, hopper_jpg, out) == 1
        assert _one_line(capsys) == (f"autoswap: {out}: read-only file system; write elsewhere: another OUTPUT "
                                     "(or remount it read-write) and re-run")


def test_a_folder_prints_plain_progress_lines(params, hopper, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("AUTOSWAP_PROGRESS_INTERVAL", "0")
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(hopper).save(src / "a.png")
    Image.fromarray(skimage.data.coffee()).save(src / "b.png")
    assert main(["--params", str(params), "swap", str(src), str(tmp_path / "out")]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err
    lines = [x for x in err.splitlines() if x.startswith("swap: ")]
    assert [x.split(",")[0] for x in lines] == ["swap: 1/2 files", "swap: 2/2 files", "swap: 2/2 files"], err
    assert "ETA" in lines[0] and "done in" in lines[-1]


def test_photo_without_a_face_is_copied_unchanged(params, tmp_path, capsys):
    src = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(src)
    out = tmp_path / "coffee_out.png"
    assert swap_cli(params, src, out) == 0
    assert sha(out) == sha(src)
    assert "no face found; copied unchanged" in capsys.readouterr().err


def test_a_folder(params, hopper, tmp_path, capsys):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(hopper).save(src / "a.png")
    Image.fromarray(skimage.data.astronaut()).save(src / "sub" / "b.jpg")
    Image.fromarray(skimage.data.coffee()).save(src / "c.webp")
    (src / "notes.txt").write_text("x")
    Image.fromarray(hopper).save(src / "d.bmp")
    out = tmp_path / "out"
    assert swap_cli(params, src, out) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["a.png", "c.webp", "sub/b.jpg"]
    assert sha(out / "c.webp") == sha(src / "c.webp")  # no face
    assert M.read_c2pa(out / "sub" / "b.jpg")["state"] == "Valid"
    err = capsys.readouterr().err
    assert "notes.txt: not a photo or video" in err and "d.bmp: .bmp cannot carry" in err


# ----------------------------------------------------------------------------- video
FPS, N, NO_FACE = 12, 10, (8, 9)


def _clip(path: Path, hopper: np.ndarray) -> None:
    """A 320x240 pan over Grace Hopper's face at 12 fps with a 440 Hz tone; frames 8 and 9 show
    only her uniform (no face)."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        vs.options = {"crf": "18", "preset": "veryfast"}
        a = c.add_stream("aac", rate=44100)
        a.layout = "mono"
        for i in range(N):
            centre = (265.0, 520.0) if i in NO_FACE else (265.0 + 3 * i, 210.0)
            m = cv2.getRotationMatrix2D(centre, 0, 0.8)
            m[:, 2] += np.array([160.0, 120.0]) - np.array(centre)
            f = cv2.warpAffine(hopper, m, (320, 240), borderMode=cv2.BORDER_REFLECT)
            for p in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        n = int(N / FPS * 44100)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 44100)).astype(np.float32)
        for k in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(tone[None, k:k + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts = 44100, k
            for p in a.encode(af):
                c.mux(p)
        for s in (a, vs):
            for p in s.encode(None):
                c.mux(p)


def _probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        audio = [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]
        return {"frames": v.frames, "rate": v.average_rate, "duration": c.duration,
                "audio_codec": c.streams.audio[0].codec_context.name, "audio": audio,
                "size": (v.codec_context.width, v.codec_context.height)}


def test_swap_video_keeps_timing_audio_and_faceless_frames(params, model_dir, hopper, tmp_path, capsys):
    src, out = tmp_path / "clip.mp4", tmp_path / "clip_swapped.mp4"
    _clip(src, hopper)
    assert swap_cli(params, src, out, "--crf", "0") == 0  # lossless, to compare frames exactly
    assert f"swapped {N - len(NO_FACE)} of {N} frames" in capsys.readouterr().out
    a, b = _probe(src), _probe(out)
    assert (b["frames"], b["rate"], b["duration"], b["size"]) == (a["frames"], a["rate"], a["duration"], a["size"])
    assert b["frames"] == N and b["rate"] == Fraction(FPS)
    assert b["audio_codec"] == "aac" and b["audio"] == a["audio"]  # copied packet for packet
    fa, fb = list(iter_video_frames(src)), list(iter_video_frames(out))
    assert [f.time_s for f in fa] == [f.time_s for f in fb]
    for i in NO_FACE:
        np.testing.assert_array_equal(fa[i].rgb, fb[i].rgb)  # no face: the frame as it was
    assert all(np.abs(fa[i].rgb.astype(int) - fb[i].rgb).max() > 30 for i in range(N) if i not in NO_FACE)

    assert main(["--params", str(params), "verify", "--json", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    wm = M.watermark_id(model_meta(model_dir))
    assert r["metadata"]["found"] and r["metadata"]["where"] == ["container tags"]
    assert r["c2pa"]["state"] == "Valid" and r["c2pa"]["actions"] == ["c2pa.opened", "c2pa.edited"]
    assert r["watermark"]["id"] == f"{wm:08x}"
    assert r["watermark"]["frames"] == {"sampled": N, "carrying_id": N - len(NO_FACE)}


def test_swap_video_onto_a_full_disk(params, hopper, small_disk, tmp_path, capsys):
    src = tmp_path / "clip.mp4"
    _clip(src, hopper)
    with small_disk("16k") as disk:
        out = disk / "out.mp4"
        assert swap_cli(params, src, out) == 1
        assert _one_line(capsys) == f"autoswap: {out}: {NO_SPACE}"
        assert list(disk.iterdir()) == []


def test_video_output_must_be_mp4_or_mov(params, hopper, tmp_path, capsys):
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"not really")
    assert swap_cli(params, src, tmp_path / "o.mkv") == 1
    assert "MP4 or MOV" in capsys.readouterr().err
    assert swap_cli(params, src, tmp_path / "o.mp4") == 1  # an unreadable video: no output left
    assert "cannot open video" in capsys.readouterr().err and not (tmp_path / "o.mp4").exists()
    assert not list(tmp_path.glob(".autoswap-*"))


# ----------------------------------------------------------------------------- the DVC stage (autoswap.demo)
def test_demo_stage_swaps_verifies_and_logs(settings, model_dir, env, tmp_path):
    from autoswap.config import SyntheticSettings
    from autoswap.synthetic import generate

    # the showcase's frames: a few rendered validation faces at the tiny model's face size
    generate(SyntheticSettings(train_per_person=2, val_per_person=2), 64, 0, tmp_path / "faces")
    s = settings.model_copy(update={"swap": settings.swap.model_copy(update={"demo": settings.swap.demo.model_copy(
        update={"input_dir": tmp_path / "demo", "out_dir": tmp_path / "swaps", "frames": 8})}),
        "data": settings.data.model_copy(update={"faces_dir": tmp_path / "faces"})})
    r = demo_stage(s, progress=False)
    files = sorted(p.name for p in (tmp_path / "swaps").iterdir())
    assert files == [".autoswap-output", "demo.json", "grace_hopper.jpg", "grace_hopper_clip.mp4", "showcase.png",
                     "verify.json"]
    assert r["files"][0]["output"].endswith("showcase.png") and r["files"][0]["faces"] == 4  # 2 a person
    for name, check in r["verify"].items():
        assert check["watermark"]["found"] and check["c2pa"]["found"] and check["metadata"]["found"], name
    # the default crf 18: the video's ID read from its frames together
    video = r["verify"]["grace_hopper_clip.mp4"]["watermark"]
    assert video["id"] == r["watermark_id"] and video["frames"]["carrying_id"] >= 3
    run_id = model_meta(model_dir)["mlflow_run_id"]
    client = mlflow.MlflowClient()
    arts = {a.path for a in client.list_artifacts(run_id, "swaps")}
    assert {"swaps/grace_hopper.jpg", "swaps/grace_hopper_clip.mp4", "swaps/verify.json"} <= arts
    assert client.get_run(run_id).data.tags["autoswap.watermark_id"] == r["watermark_id"]


def _demo_settings(settings, **demo):
    return settings.model_copy(update={"swap": settings.swap.model_copy(update={
        "demo": settings.swap.demo.model_copy(update=demo)})})


def test_demo_stage_looks_for_the_model_before_it_touches_a_folder(tmp_path):
    """With no model it once deleted swap.demo.out_dir first (the user's photos there), then failed."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "me.jpg").write_bytes(b"a photo")
    s = parse({"swap": {"model": str(tmp_path / "no_model"), "key_dir": str(tmp_path / "keys"),
                        "demo": {"input_dir": str(tmp_path / "demo"), "out_dir": str(photos)}}})
    from autoswap.errors import UserError

    with pytest.raises(UserError, match=r"no_model: no such model folder"):
        demo_stage(s, progress=False)
    assert [p.name for p in photos.iterdir()] == ["me.jpg"] and (photos / "me.jpg").read_bytes() == b"a photo"
    assert not (tmp_path / "demo").exists()


def test_demo_stage_refuses_output_folders_it_did_not_write(settings, env, tmp_path, monkeypatch):
    from autoswap.errors import UserError

    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "data/raw/a"
    raw.mkdir(parents=True)
    (raw / "me.jpg").write_bytes(b"a photo")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    demo = tmp_path / "demo"
    for out, msg in (("data/raw/a", "params.yaml: key 'swap.demo.out_dir': data/raw/a is, holds or lies inside "
                                    "data/raw (an input); choose a folder of its own such as swaps"),
                     (str(mine), f"params.yaml: key 'swap.demo.out_dir': {mine} is not empty and not written by "
                                 "autoswap; move its files or choose another folder"),
                     (str(demo / "out"), f"params.yaml: key 'swap.demo.out_dir': {demo / 'out'} is, holds or lies "
                                         f"inside {demo} (an input)")):
        with pytest.raises(UserError) as e:
            demo_stage(_demo_settings(settings, input_dir=demo, out_dir=Path(out), frames=4), progress=False)
        assert str(e.value).startswith(msg)
    with pytest.raises(UserError, match=r"key 'swap.demo.input_dir': data/raw/a is, holds or lies inside data/raw"):
        demo_stage(_demo_settings(settings, input_dir=Path("data/raw/a"), out_dir=tmp_path / "swaps"), progress=False)
    assert [p.name for p in raw.iterdir()] == ["me.jpg"] and (raw / "me.jpg").read_bytes() == b"a photo"
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert not demo.exists() and not (tmp_path / "swaps").exists()
