import hashlib
import json

import numpy as np
import pytest
from conftest import tiny_raw
from PIL import Image

from autoswap.config import parse
from autoswap.errors import UserError
from autoswap.prepare import prepare


def tree_digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def make_raw(root, n=10, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = (rng.random((80, 80, 3)) * 255).astype(np.uint8)
        Image.fromarray(a).save(root / f"face{i:02d}.jpg", quality=90)


def settings(tmp_path, **data):
    raw = tiny_raw(tmp_path, data={"source": "folders", "aligned": True, "dir_a": str(tmp_path / "raw/a"),
                                   "dir_b": str(tmp_path / "raw/b"), "min_faces": 4, **data})
    return parse(raw)


def test_aligned_folders_skip_bad_files_and_never_touch_raw(tmp_path):
    make_raw(tmp_path / "raw/a", 10)
    make_raw(tmp_path / "raw/b", 10, seed=1)
    a = tmp_path / "raw/a"
    good = (a / "face00.jpg").read_bytes()
    (a / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (a / "notes.jpg").write_text("this is not an image")
    (a / "empty.png").write_bytes(b"")
    arr = (np.random.default_rng(5).random((70, 90)) * 65535).astype(np.uint16)
    Image.fromarray(arr).save(a / "sixteen.png")  # 16-bit grey, non-square
    Image.new("RGBA", (64, 64), (200, 10, 10, 128)).save(a / "alpha.png")
    Image.new("L", (64, 64), 90).save(a / "grey.png")
    before = tree_digest(tmp_path / "raw")

    report = prepare(settings(tmp_path), metrics_dir=tmp_path / "metrics")

    assert tree_digest(tmp_path / "raw") == before  # nothing modified or deleted
    ra = report["persons"]["a"]
    assert ra["kept"] == 13  # 10 + 16-bit + RGBA + grey
    assert ra["files"] == 16 and ra["dropped"] == {"unreadable": 3}
    dropped = " ".join(ra["dropped_files"]["unreadable"])
    assert "truncated.jpg" in dropped and "notes.jpg" in dropped and "empty.png: empty file" in dropped
    assert ra["train"] + ra["val"] == 13 and ra["val"] >= 1
    faces = sorted((tmp_path / "faces/a/train").glob("*.png"))
    assert len(faces) == ra["train"]
    assert all(Image.open(f).size == (64, 64) and Image.open(f).mode == "RGB" for f in faces)
    saved = json.loads((tmp_path / "metrics/prepare.json").read_text())
    assert saved["persons"]["a"]["dropped"] == {"unreadable": 3}
    assert (tmp_path / "faces/contact_sheet.png").is_file()


def test_too_few_faces_says_how_many(tmp_path):
    make_raw(tmp_path / "raw/a", 2)
    make_raw(tmp_path / "raw/b", 10)
    with pytest.raises(UserError, match=r"2 usable face\(s\) for person A, need at least 4"):
        prepare(settings(tmp_path), metrics_dir=tmp_path / "metrics")


def test_missing_folder_and_overlapping_output(tmp_path):
    with pytest.raises(UserError, match="folder not found"):
        prepare(settings(tmp_path), metrics_dir=tmp_path / "metrics")
    make_raw(tmp_path / "raw/a", 5)
    make_raw(tmp_path / "raw/b", 5)
    with pytest.raises(UserError, match=r"data\.faces_dir': .*raw is, holds or lies inside .*raw/a \(an input\)"):
        prepare(settings(tmp_path, faces_dir=str(tmp_path / "raw")), metrics_dir=tmp_path / "metrics")
    assert len(list((tmp_path / "raw/a").iterdir())) == 5


def test_split_is_seeded(tmp_path):
    make_raw(tmp_path / "raw/a", 12)
    make_raw(tmp_path / "raw/b", 12)
    prepare(settings(tmp_path), metrics_dir=tmp_path / "m")
    first = tree_digest(tmp_path / "faces")
    prepare(settings(tmp_path), metrics_dir=tmp_path / "m")
    assert tree_digest(tmp_path / "faces") == first


def test_synthetic_source_writes_the_tree_with_ground_truth(tmp_path):
    report = prepare(parse(tiny_raw(tmp_path)), metrics_dir=tmp_path / "metrics")
    for side in "ab":
        assert len(list((tmp_path / f"faces/{side}/train").glob("*.png"))) == 24
        val = sorted(p.name for p in (tmp_path / f"faces/{side}/val").glob("*.png"))
        gt = sorted(p.name for p in (tmp_path / f"faces/{side}/val_gt").glob("*.png"))
        assert val == gt and len(val) == 4
    assert report["source"] == "synthetic"


def test_synthetic_faces_have_landmarks_for_the_loss_maps(tmp_path):
    from autoswap.pipeline import load_faces, load_maps

    prepare(parse(tiny_raw(tmp_path)), metrics_dir=tmp_path / "metrics")
    for side in "ab":
        rows = [json.loads(x) for x in (tmp_path / f"faces/{side}/manifest.jsonl").read_text().splitlines()]
        for split in ("train", "val"):
            names = sorted(p.stem for p in (tmp_path / f"faces/{side}/{split}").glob("*.png"))
            assert sorted(r["crop"] for r in rows if r["split"] == split) == names
            assert all(np.shape(r["landmarks_crop"]) == (5, 2) for r in rows)
            faces, files, _ = load_faces(tmp_path / f"faces/{side}/{split}", 64)
            maps = load_maps(tmp_path / f"faces/{side}/{split}", files, 64)
            assert maps.shape == (len(files), 64, 64, 3)
            # every face has a mask, two eyes and a mouth, inside the mask
            area = (maps > 0).mean((1, 2))  # (N, 3)
            assert (area[:, 0] > 0.15).all() and (area[:, 1] > 0.005).all() and (area[:, 2] > 0.005).all()
            assert ((maps[..., 1:] > 0) & (maps[..., :1] == 0)).mean() < 0.001


def _photo_variants(img, out, n):
    """n distinct photos of one real face: crops, mirror, brightness and small rotations."""
    from PIL import ImageEnhance

    out.mkdir(parents=True, exist_ok=True)
    w, h = img.size
    for i in range(n):
        v = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else img
        v = v.rotate((i - n / 2) * 2.0, resample=Image.Resampling.BILINEAR)
        m = i * 0.02
        v = v.crop((int(w * m), int(h * m), int(w * (1 - m / 2)), int(h * (1 - m / 2))))
        v = ImageEnhance.Brightness(v).enhance(0.8 + 0.08 * i)
        v.save(out / f"photo{i}.jpg", quality=92)


@pytest.mark.slow
def test_raw_photos_are_extracted_aligned_and_split(tmp_path):
    from matplotlib import cbook
    from skimage import data

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = Image.open(f).convert("RGB")
    _photo_variants(hopper, tmp_path / "raw/a", 5)
    _photo_variants(Image.fromarray(data.astronaut()), tmp_path / "raw/b", 5)
    (tmp_path / "raw/a/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    before = tree_digest(tmp_path / "raw")

    s = settings(tmp_path, aligned=False)
    report = prepare(s, metrics_dir=tmp_path / "metrics")

    assert tree_digest(tmp_path / "raw") == before
    for side in "ab":
        r = report["persons"][side]
        assert r["kept"] == 5 and r["train"] + r["val"] == 5
        crops = sorted((tmp_path / f"faces/{side}/train").glob("*.png"))
        masks = sorted((tmp_path / f"faces/{side}/train/masks").glob("*.png"))
        assert [c.name for c in crops] == [m.name for m in masks]
        assert Image.open(crops[0]).size == (64, 64)
        rows = [json.loads(x) for x in (tmp_path / f"faces/{side}/manifest.jsonl").read_text().splitlines()]
        assert len(rows) == 5 and all(len(r["affine"]) == 2 for r in rows)
        # the loss maps come from these rows; their mask is the one extract wrote
        from autoswap.pipeline import load_maps

        maps = load_maps(tmp_path / f"faces/{side}/train", crops, 64)
        written = np.stack([np.asarray(Image.open(m)) for m in masks])
        assert (maps[..., 0] != written).mean() < 0.01
    assert report["persons"]["a"]["dropped"]["unreadable"] == 1


# ----------------------------------------------------------------------------- what prepare may delete
def test_faces_dir_holding_the_raw_data_is_refused_and_nothing_deleted(tmp_path, monkeypatch):
    """`data.faces_dir: data` once deleted the whole data/ folder, data/raw with it, and exited 0."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    make_raw(tmp_path / "data/raw/a", 2)
    before = tree_digest(tmp_path / "data")
    for faces_dir, why in (("data", "data is, holds or lies inside data/raw (an input)"),
                           ("data/raw/a/faces", "data/raw/a/faces is, holds or lies inside data/raw (an input)"),
                           (".", ". is or holds the project root")):
        with pytest.raises(UserError) as e:
            prepare(parse(tiny_raw(tmp_path, data={"faces_dir": faces_dir})), metrics_dir=tmp_path / "metrics")
        assert str(e.value).startswith(f"params.yaml: key 'data.faces_dir': {why}")
        assert tree_digest(tmp_path / "data") == before
    assert not (tmp_path / "metrics").exists()


def test_faces_dir_not_written_by_prepare_is_refused_not_emptied(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    with pytest.raises(UserError, match=r"mine is not empty and not written by autoswap; move its files"):
        prepare(parse(tiny_raw(tmp_path, data={"faces_dir": str(mine)})), metrics_dir=tmp_path / "metrics")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # its own folder (marked) is emptied and rewritten on the next run, as `dvc repro` needs
    prepare(parse(tiny_raw(tmp_path)), metrics_dir=tmp_path / "metrics")
    faces = tmp_path / "faces"
    assert (faces / ".autoswap-output").read_text().splitlines()[0] == "prepare"
    (faces / "a/train/stale.png").write_bytes(b"a face from an older run")
    prepare(parse(tiny_raw(tmp_path)), metrics_dir=tmp_path / "metrics")
    assert not (faces / "a/train/stale.png").exists()
    assert len(list((faces / "a/train").glob("*.png"))) == 24
    assert sorted(p.name for p in faces.iterdir()) == [".autoswap-output", "a", "b", "contact_sheet.png"]
