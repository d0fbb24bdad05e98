"""DVC stage `prepare`: the aligned face sets that training reads.

    data/faces/{a,b}/train/*.png   faces of each person (data.face_size square)
    data/faces/{a,b}/val/*.png     held-out faces
    data/faces/{a,b}/val_gt/*.png  synthetic only: each val face rendered as the other person
    data/faces/{a,b}/manifest.jsonl  the 5 landmarks of each train/val face (not for data.aligned:
                                   true); train draws the loss's mask and eye/mouth maps from them
    data/faces/contact_sheet.png   a sample of each person's faces
    metrics/prepare.json           counts kept and dropped, per person and reason

data.source:
- synthetic: the embedded demo set (autoswap.synthetic), no user data needed.
- folders + data.aligned: true: data.dir_a / data.dir_b already hold aligned face crops.
- folders + data.aligned: false: photos and videos; faces are detected and aligned
  (autoswap.extract).
User folders are only read: files that cannot be used are skipped and listed in the report.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from autoswap.config import Settings
from autoswap.errors import UserError
from autoswap.files import atomic_write_json, fresh_output_dir, save_png
from autoswap.images import BadImage, list_images, load_rgb
from autoswap.progress import Progress


def _split(names: list, val_fraction: float, seed: int, side: int) -> tuple[list, list]:
    order = np.random.default_rng([seed, 7, side]).permutation(len(names))
    n_val = max(1, round(val_fraction * len(names)))
    val = sorted(names[i] for i in order[:n_val])
    train = sorted(names[i] for i in order[n_val:])
    return train, val


def _aligned_folder(settings: Settings, side: str, src: Path, dst: Path) -> dict:
    """Resize and copy already-aligned face crops, skipping unusable files."""
    d = settings.data
    if not src.is_dir():
        raise UserError(f"{src}: folder not found; put person {side.upper()}'s face images there (data.dir_{side})")
    files = list_images(src)
    dropped: dict[str, list[str]] = {}
    faces = []
    with Progress(f"prepare: person {side.upper()}", len(files), unit="file") as bar:
        for f in files:
            bar.update()
            try:
                a = load_rgb(f, d.max_image_pixels)
            except BadImage as e:
                dropped.setdefault("unreadable", []).append(f"{f}: {e}")
                continue
            if a.shape[0] != a.shape[1]:
                # aligned crops are square; centre-crop anything else rather than squash the face
                m = min(a.shape[:2])
                y, x = (a.shape[0] - m) // 2, (a.shape[1] - m) // 2
                a = a[y : y + m, x : x + m]
            if a.shape[:2] != (d.face_size, d.face_size):
                # now, not when writing: held at full size, a folder of big photos would fill the memory
                a = np.asarray(Image.fromarray(a).resize((d.face_size, d.face_size), Image.Resampling.LANCZOS))
            faces.append((f, a))
    return _write_split(settings, side, faces, dst, dropped, len(files))


def _write_split(settings: Settings, side: str, faces: list, dst: Path, dropped: dict, n_files: int) -> dict:
    d = settings.data
    if len(faces) < d.min_faces:
        raise UserError(
            f"{getattr(d, f'dir_{side}')}: {len(faces)} usable face(s) for person {side.upper()}, "
            f"need at least {d.min_faces} (data.min_faces); add photos or videos"
        )
    train, val = _split(list(range(len(faces))), d.val_fraction, settings.seed, ord(side))
    for split, idx in (("train", train), ("val", val)):
        (dst / split).mkdir(parents=True, exist_ok=True)
        for i in idx:
            _, a = faces[i]  # already data.face_size square (_aligned_folder resized it once)
            save_png(a, dst / split / f"{i:05d}.png")
    return {
        "files": n_files,
        "kept": len(faces),
        "train": len(train),
        "val": len(val),
        "dropped": {k: len(v) for k, v in dropped.items()},
        "dropped_files": dropped,
    }


def _extracted_folder(settings: Settings, side: str, src: Path, dst: Path) -> dict:
    """Detect and align faces in photos and videos, then split the crops into train/val."""
    from autoswap.extract import extract_to_dir

    d = settings.data
    if not src.is_dir():
        raise UserError(f"{src}: folder not found; put person {side.upper()}'s photos and videos there (data.dir_{side})")
    pool = dst / "all"
    report = extract_to_dir([src], pool, settings.extract, d.face_size, d.max_image_pixels, allow_empty=True,
                            where="params.yaml: key 'data.faces_dir'", desc=f"prepare: person {side.upper()}")
    crops = sorted(p for p in pool.glob("*.png"))
    if len(crops) < d.min_faces:
        raise UserError(
            f"{src}: {len(crops)} usable face(s) found for person {side.upper()}, need at least "
            f"{d.min_faces} (data.min_faces); add photos or videos, or relax the extract.* filters"
        )
    train, val = _split(crops, d.val_fraction, settings.seed, ord(side))
    for split, names in (("train", train), ("val", val)):
        (dst / split / "masks").mkdir(parents=True, exist_ok=True)
        for p in names:
            p.replace(dst / split / p.name)
            m = pool / "masks" / p.name
            if m.is_file():
                m.replace(dst / split / "masks" / p.name)
    if (pool / "manifest.jsonl").is_file():
        (pool / "manifest.jsonl").replace(dst / "manifest.jsonl")
    shutil.rmtree(pool, ignore_errors=True)
    dropped = report.get("dropped", {})
    # photos and frames whose faces were found only turned by extract.rotate, per angle
    rotated = report.get("rotated", {})
    return {
        "files": report.get("files", 0),
        "kept": len(crops),
        "train": len(train),
        "val": len(val),
        "dropped": {k: len(v) for k, v in dropped.items()},
        "dropped_files": dropped,
        "rotated": {k: len(v) for k, v in rotated.items()},
        "rotated_files": rotated,
    }


def contact_sheet(faces_dir: Path, out: Path, per_person: int = 16, cols: int = 8, tile: int = 64) -> None:
    rows = []
    for side in ("a", "b"):
        files = sorted((faces_dir / side / "train").glob("*.png"))[:per_person]
        tiles = [np.asarray(Image.open(f).convert("RGB").resize((tile, tile))) for f in files]
        tiles += [np.full((tile, tile, 3), 255, np.uint8)] * (-len(tiles) % cols)
        for r in range(0, len(tiles), cols):
            rows.append(np.concatenate(tiles[r : r + cols], axis=1))
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def prepare(settings: Settings, metrics_dir: Path = Path("metrics")) -> dict:
    d = settings.data
    out = d.faces_dir
    report: dict = {"source": d.source, "face_size": d.face_size, "persons": {}}
    # prepare owns faces_dir (a DVC out): start clean so no stale face survives, but only a folder
    # prepare itself made, never one that is, holds or lies inside the user's data (autoswap.files)
    fresh_output_dir(out, "prepare", "params.yaml: key 'data.faces_dir'", (d.dir_a, d.dir_b), suggest="data/faces")
    if d.source == "synthetic":
        from autoswap.synthetic import generate, total_images

        with Progress("prepare: demo faces", total_images(d.synthetic), unit="file") as bar:
            counts = generate(d.synthetic, d.face_size, settings.seed, out, progress=lambda n: bar.update(n - bar.n))
        for side in ("a", "b"):
            c = counts[side]
            report["persons"][side] = {"kept": c["train"] + c["val"], **c, "dropped": {}}
    else:
        for side, src in (("a", d.dir_a), ("b", d.dir_b)):
            fn = _aligned_folder if d.aligned else _extracted_folder
            report["persons"][side] = fn(settings, side, src, out / side)
    out.mkdir(parents=True, exist_ok=True)
    contact_sheet(out, out / "contact_sheet.png")
    metrics_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(metrics_dir / "prepare.json", report)
    for side, r in report["persons"].items():
        n_drop = sum(r.get("dropped", {}).values())
        if n_drop:
            print(f"autoswap: person {side.upper()}: skipped {n_drop} file(s), see {metrics_dir / 'prepare.json'}")
    return report
