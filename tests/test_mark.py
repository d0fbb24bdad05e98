"""The AI-generated marks (autoswap.mark): the invisible watermark (autoswap.watermark: robustness,
false positives, visibility), the metadata statement in every image format, the C2PA manifest,
and verify.
Swapped outputs end to end are in test_swap.py."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from autoswap import __version__
from autoswap import mark as M
from autoswap import watermark as W
from autoswap.cli import main

ID = 0x5A17C0DE


def _bench_photos():
    """bench/photos.py: the real photos and unmarked variants the watermark bench measures on,
    loaded by path (bench/ is no package), so the bench and these tests use one copy."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_photos", Path(__file__).parents[1] / "bench" / "photos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_P = _bench_photos()
jpeg, half, _unmarked_variants = _P.jpeg, _P.half, _P.unmarked_variants


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return _P.photos()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


ATTACKS = {"fresh": lambda a: a, "jpeg75": jpeg, "half": half, "half+jpeg75": lambda a: jpeg(half(a))}


# ----------------------------------------------------------------------------- the watermark
@pytest.mark.parametrize("name", ["grace_hopper", "astronaut", "coffee", "chelsea", "rocket", "camera"])
def test_watermark_survives_jpeg75_and_half_size(name, photos):
    img = photos[name]
    marked = W.embed_watermark(img, ID)
    assert marked.shape == img.shape and marked.dtype == np.uint8
    # invisible: ~49 dB, an RMS change under one grey level (measured 48.4-49.9 dB on these)
    assert psnr(img, marked) > 46
    for attack, fn in ATTACKS.items():
        r = W.detect_watermark(fn(marked))
        bits, slots = W.bit_accuracy(r, ID)
        assert r.found and r.id == ID, f"{name} {attack}: confidence {r.confidence:.2f}, bits {bits:.2f}"
        assert bits == 1.0  # measured: all 48 bits (ID + CRC) on every photo and attack
        floor = {"fresh": 0.97, "jpeg75": 0.85, "half": 0.8, "half+jpeg75": 0.7}[attack]
        assert slots > floor, f"{name} {attack}: {slots:.3f} of the single slots right"


def test_no_watermark_found_in_100_unmarked_images(photos):
    images = _unmarked_variants(photos)
    assert len(images) == 100
    readings = [W.detect_watermark(v) for v in images]
    assert not any(r.found for r in readings)
    # unmarked images agree with their best word at 0.11 +- 0.012 (measured max 0.15); the
    # threshold is 0.2 and the CRC-16 must match too
    assert max(r.confidence for r in readings) < 0.18 < W.WM_MIN_CONFIDENCE


def test_a_flat_or_black_image_decodes_to_nothing():
    for v in (0, 128, 255):
        assert not W.detect_watermark(np.full((200, 300, 3), v, np.uint8)).found


def test_watermark_id_is_tied_to_the_mlflow_run():
    a = M.watermark_id({"mlflow_run_id": "4922ba27fa914ad39bf9b5f13fd0a490"})
    assert a == M.watermark_id({"mlflow_run_id": "4922ba27fa914ad39bf9b5f13fd0a490"}) and 0 <= a < 2**32
    assert a != M.watermark_id({"mlflow_run_id": "eb3e3f56451548e884e1a26a1d2c6a71"})
    # no run: a hash of model.json instead
    assert M.watermark_id({}, b'{"a": 1}') != M.watermark_id({}, b'{"a": 2}')


def test_registry_maps_ids_to_runs(tmp_path):
    M.register_id(tmp_path, 0x12345678, {"mlflow_run_id": "run1"}, tmp_path / "model")
    M.register_id(tmp_path, 0x12345678, {"mlflow_run_id": "other"}, tmp_path / "model")  # first one stays
    assert M.lookup_registry(tmp_path)["12345678"]["mlflow_run_id"] == "run1"


def _register_many(folder: str, ids: list[int], start) -> None:
    start.wait()
    for i in ids:
        M.register_id(Path(folder), i, {"mlflow_run_id": f"run{i}"}, Path(folder) / "model")


def _spawn(target, jobs: list[tuple]) -> None:
    """Run target(*args, start) in one real process per job, all released at once."""
    ctx = multiprocessing.get_context("spawn")  # not fork: the test process may hold TF's threads
    start = ctx.Event()
    procs = [ctx.Process(target=target, args=(*args, start)) for args in jobs]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)


def test_registry_loses_no_id_when_swaps_run_at_once(tmp_path):
    """Two processes registering 40 IDs each at the same time: all 80 are kept (read-modify-write
    under a lock), nothing is left behind but the registry and its lock file."""
    ids = [list(range(1000, 1040)), list(range(2000, 2040))]
    _spawn(_register_many, [(str(tmp_path), part) for part in ids])
    reg = M.lookup_registry(tmp_path)
    assert sorted(reg) == sorted(f"{i:08x}" for part in ids for i in part)
    assert reg[f"{2039:08x}"]["mlflow_run_id"] == "run2039"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["watermark_ids.json", "watermark_ids.json.lock"]


@pytest.mark.parametrize("junk", [b'{"12345678": {"mlflow_run_id": "run1"}', b"[1, 2]", b"\xff\xfe"])
def test_corrupt_registry_is_kept_aside_not_overwritten(junk, tmp_path, capsys):
    (tmp_path / "watermark_ids.json").write_bytes(junk)
    M.register_id(tmp_path, 0xABCDEF01, {"mlflow_run_id": "run2"}, tmp_path / "model")
    aside = list(tmp_path.glob("watermark_ids.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == junk
    assert list(M.lookup_registry(tmp_path)) == ["abcdef01"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a valid watermark ID registry" in err and aside[0].name in err


# ----------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_statement_in_every_image_format(suffix, hopper, tmp_path):
    path = tmp_path / f"x{suffix}"
    M.save_image(path, hopper, M.IMAGE_FORMATS[suffix], 0xDEADBEEF, "run42")
    with Image.open(path) as im:
        assert im.size == (hopper.shape[1], hopper.shape[0])
        info = im.info
    assert M.DIGITAL_SOURCE_TYPE.encode() in info["xmp"]
    st = M.read_statement(path)
    assert st["found"] and "XMP" in st["where"]
    assert st["generator"] == f"autoswap {__version__}"
    assert st["watermark_id"] == "deadbeef" and st["mlflow_run_id"] == "run42"
    assert st["text"].startswith("AI-generated:")
    if suffix == ".jpg":
        assert "JPEG comment" in st["where"] and info["comment"].startswith(b"AI-generated")
    if suffix == ".png":
        assert "PNG text" in st["where"] and info["Description"].startswith("AI-generated")


def test_unmarked_file_has_no_statement(tmp_path, hopper):
    Image.fromarray(hopper).save(tmp_path / "plain.png")
    assert not M.read_statement(tmp_path / "plain.png")["found"]


# ----------------------------------------------------------------------------- C2PA + verify
@pytest.fixture
def marker(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text('{"mlflow_run_id": "run-abc"}')
    return M.Marker({"mlflow_run_id": "run-abc"}, model, M.key_dir(None))


def test_c2pa_manifest_with_a_locally_made_signer(marker, hopper, tmp_path):
    folder = tmp_path / "config" / "autoswap"
    key = folder / "c2pa-signer.key"
    assert key.is_file() and stat.S_IMODE(key.stat().st_mode) == 0o600
    chain = (folder / "c2pa-signer-chain.pem").read_bytes()
    src = tmp_path / "in.png"
    Image.fromarray(hopper).save(src)
    out = tmp_path / "out.png"
    marker.write_image(out, hopper, "PNG", src)
    c = M.read_c2pa(out)
    assert c["found"] and c["state"] == "Valid" and c["untrusted"] and c["errors"] == []
    assert c["actions"] == ["c2pa.opened", "c2pa.edited"]
    assert c["digital_source_type"] == M.DIGITAL_SOURCE_TYPE
    assert c["generator"] == f"autoswap {__version__}" and c["watermark_id"] == f"{marker.wm_id:08x}"
    assert c["signer"] == "autoswap local signer"
    # the signer is made once and reused
    M.Marker({"mlflow_run_id": "run-abc"}, tmp_path / "model", folder)
    assert (folder / "c2pa-signer-chain.pem").read_bytes() == chain
    # nothing but the output was left next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config", "in.png", "model", "out.png"]


def _load_signer(folder: str, out: str, start) -> None:
    start.wait()
    s = M.C2paSigner.load(Path(folder))
    Path(out).write_bytes(s.private_key + b"\n--\n" + s.cert_chain)


def test_signers_made_at_once_match_their_chain(tmp_path):
    """Six first runs at once: each process gets, and the folder ends with, a key that belongs
    to the chain's leaf certificate."""
    folder = tmp_path / "keys"
    _spawn(_load_signer, [(str(folder), str(tmp_path / f"got{i}")) for i in range(6)])
    key, chain = (folder / "c2pa-signer.key").read_bytes(), (folder / "c2pa-signer-chain.pem").read_bytes()
    assert M._key_matches_chain(key, chain)
    assert stat.S_IMODE((folder / "c2pa-signer.key").stat().st_mode) == 0o600
    for i in range(6):
        got_key, got_chain = (tmp_path / f"got{i}").read_bytes().split(b"\n--\n")
        assert M._key_matches_chain(got_key, got_chain), f"process {i} got a key and chain that do not match"
        assert (got_key, got_chain) == (key, chain), i  # the first one made it, the others read it
    assert sorted(p.name for p in folder.iterdir()) == [
        "c2pa-ca.pem", "c2pa-signer-chain.pem", "c2pa-signer.key", "c2pa-signer.lock"]
    M.C2paSigner.load(folder).signer()  # c2pa accepts the pair


def test_new_signer_key_is_private_from_the_start(tmp_path, monkeypatch):
    made = []
    real_open = os.open

    def watch(path, flags, mode=0o777, **kw):
        if "c2pa-signer.key" in Path(path).name and flags & os.O_CREAT:
            made.append(mode)
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(M.os, "open", watch)
    old = os.umask(0)
    try:
        M.C2paSigner.load(tmp_path)
    finally:
        os.umask(old)
    assert made == [0o600]  # created 0600 (even with umask 0), not made first and chmod-ed later
    assert stat.S_IMODE((tmp_path / "c2pa-signer.key").stat().st_mode) == 0o600


def test_a_private_key_open_to_others_is_refused_or_fixed(tmp_path, capsys):
    own = tmp_path / "own"
    M._make_local_signer(own)
    key, cert = own / "c2pa-signer.key", own / "c2pa-signer-chain.pem"
    key.chmod(0o644)
    # your own key (swap.signer_key): refused, with the command that fixes it
    with pytest.raises(M.UserError) as e:
        M.C2paSigner.load(tmp_path / "unused", cert, key)
    msg = str(e.value)
    assert "\n" not in msg and str(key) in msg and f"chmod 600 {key}" in msg and "0644" in msg
    assert stat.S_IMODE(key.stat().st_mode) == 0o644  # left as it is: it is yours
    # the key autoswap made: set back to 0600, with a one-line warning
    signer = M.C2paSigner.load(own)
    assert signer.local and stat.S_IMODE(key.stat().st_mode) == 0o600
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(key) in err and "0600" in err
    M.C2paSigner.load(own)
    assert capsys.readouterr().err == ""


def test_a_local_key_that_does_not_match_its_chain_is_replaced(tmp_path, capsys):
    """What two first runs at once could leave before the lock: a key from one, the chain from
    the other. The next run makes a new pair rather than failing to sign forever."""
    a, b = tmp_path / "a", tmp_path / "b"
    M._make_local_signer(a)
    M._make_local_signer(b)
    os.replace(b / "c2pa-signer.key", a / "c2pa-signer.key")
    signer = M.C2paSigner.load(a)
    assert M._key_matches_chain(signer.private_key, signer.cert_chain)
    assert M._key_matches_chain((a / "c2pa-signer.key").read_bytes(), (a / "c2pa-signer-chain.pem").read_bytes())
    assert "does not match" in capsys.readouterr().err


def test_unmarked_copy_appears_only_complete(tmp_path, monkeypatch):
    """A copy that fails half-way (a full disk) leaves the old output as it was and no partial
    file, under OUTPUT's name or any other."""
    src, dst = tmp_path / "in.jpg", tmp_path / "out" / "in.jpg"
    src.write_bytes(os.urandom(5000))
    dst.parent.mkdir()
    dst.write_bytes(b"the previous output")

    def full_disk(a, b, **kw):
        Path(b).write_bytes(Path(a).read_bytes()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(M.shutil, "copyfile", full_disk)
    with pytest.raises(OSError):
        M.copy_unmarked(src, dst)
    assert dst.read_bytes() == b"the previous output" and os.listdir(dst.parent) == ["in.jpg"]
    monkeypatch.undo()
    M.copy_unmarked(src, dst)
    assert dst.read_bytes() == src.read_bytes() and os.listdir(dst.parent) == ["in.jpg"]


def test_c2pa_with_your_own_certificate(tmp_path, hopper):
    own = tmp_path / "own"
    M._make_local_signer(own)  # stands in for a certificate the user was issued
    signer = M.C2paSigner.load(tmp_path / "unused", own / "c2pa-signer-chain.pem", own / "c2pa-signer.key")
    assert not signer.local and not (tmp_path / "unused").exists()
    src, out = tmp_path / "in.jpg", tmp_path / "out.jpg"
    Image.fromarray(hopper).save(src)
    M.save_image(tmp_path / "plain.jpg", hopper, "JPEG", 1, None)
    M.sign_c2pa(signer, tmp_path / "plain.jpg", out, "image/jpeg", src, "image/jpeg", 1, None)
    assert M.read_c2pa(out)["state"] == "Valid"
    with pytest.raises(M.UserError, match="not found"):
        M.C2paSigner.load(tmp_path, tmp_path / "missing.pem", own / "c2pa-signer.key")


def test_verify_reports_all_three_and_survives_reencoding(marker, hopper, tmp_path, capsys):
    src = tmp_path / "in.jpg"
    Image.fromarray(hopper).save(src)
    out = tmp_path / "out.jpg"
    marker.write_image(out, hopper, "JPEG", src)
    r = M.verify(out, M.key_dir(None))
    assert r["metadata"]["found"] and r["c2pa"]["found"] and r["watermark"]["found"]
    assert r["watermark"]["id"] == f"{marker.wm_id:08x}" and r["watermark"]["mlflow_run_id"] == "run-abc"
    # the pixels alone re-encoded at q75 (no metadata, no manifest): the watermark remains
    Image.fromarray(np.asarray(Image.open(out))).save(tmp_path / "q75.jpg", quality=75)
    r = M.verify(tmp_path / "q75.jpg", M.key_dir(None))
    assert not r["metadata"]["found"] and not r["c2pa"]["found"]
    assert r["watermark"]["found"] and r["watermark"]["id"] == f"{marker.wm_id:08x}"
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    assert main(["--params", str(params), "verify", str(tmp_path / "q75.jpg")]) == 0
    text = capsys.readouterr().out
    assert f"watermark: ID {marker.wm_id:08x}" in text and "MLflow run run-abc" in text
    assert "metadata:  no AI-generated statement" in text and "c2pa:      no manifest" in text


def test_verify_unmarked_photo_finds_nothing(tmp_path, capsys):
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        (tmp_path / "gh.jpg").write_bytes(f.read())
    (tmp_path / "params.yaml").write_text("{}\n")
    assert main(["--params", str(tmp_path / "params.yaml"), "verify", str(tmp_path / "gh.jpg")]) == 1
    out = capsys.readouterr().out
    assert "watermark: none found" in out and "no manifest" in out and "no AI-generated statement" in out
    assert main(["--params", str(tmp_path / "params.yaml"), "verify", str(tmp_path / "nope.jpg")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_visible_label_only_touches_its_corner(hopper):
    out = M.draw_label(hopper, "AI-generated")
    diff = np.abs(out.astype(int) - hopper).max(axis=2) > 0
    ys, xs = np.nonzero(diff)
    assert diff.any() and ys.min() > hopper.shape[0] * 0.8 and xs.max() < hopper.shape[1] * 0.6
