"""Raw photos and videos -> aligned face crops, masks and a manifest (the `extract` command and
`prepare` with data.source=folders).

Why a module of its own: a training set needs more than the faces. It needs them aligned the way
training cuts them, filtered (blurry, near-duplicate), named stably and listed with where they
came from, and it must never write outside its folder or delete what it did not write.

Per image or sampled video frame, the faces are found by autoswap.faces (`FaceTracker`, with
`extract.keep`: the largest, the most central, or all faces at `extract.min_confidence` and
`extract.min_face_size`; photos that yield none upright are searched turned by each of
`extract.rotate`; in a video the kept face is followed between frames with `extract.track`, but
not with keep=all, which wants every face of every frame). Each kept face is warped onto the
template (autoswap.align) at `data.face_size`, gets a landmark mask, a blur score (variance of
the Laplacian inside the mask) and a perceptual hash; blurry faces and near-duplicates of an
already kept face are dropped when those filters are on.

Output (only ever under out_dir):
    out_dir/{name}.png          the aligned face, RGB
    out_dir/masks/{name}.png    its mask, uint8 0/255
    out_dir/manifest.jsonl      one JSON row per kept face (see `_row`)
Inputs are only read. A file that cannot be used is skipped and listed under its reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from autoswap.align import align, apply_affine, blur_score, face_mask, phash
from autoswap.config import ExtractSettings
from autoswap.errors import UserError
from autoswap.faces import Face, FaceTracker
from autoswap.files import (
    MARKER,
    atomic_write_text,
    check_output_dir,
    is_inside,
    mark_output_dir,
    output_owner,
    save_png,
)
from autoswap.images import IMAGE_SUFFIXES, BadImage, load_rgb
from autoswap.progress import Progress
from autoswap.video import VIDEO_SUFFIXES, BadVideo, iter_video_frames, probe_frames

MANIFEST = "manifest.jsonl"
MASKS = "masks"

# Every reason a file, frame or face can be dropped for; the returned report lists all of them.
DROP_REASONS = (
    "unreadable",  # not an image or video we can decode (corrupt, truncated, wrong extension)
    "unsupported",  # a file in an input folder that is neither a photo nor a video
    "empty_folder",  # an input folder with no photos or videos in it
    "no_frames",  # a video that decodes to no frames
    "bad_aspect",  # a video whose pixel aspect ratio is outside 1:4..4:1 (autoswap.video.MAX_SAR)
    "no_face",  # no face found at all
    "low_confidence",  # faces found, none at extract.min_confidence
    "too_small",  # faces found, none at extract.min_face_size
    "blurry",  # blur score below extract.min_blur
    "duplicate",  # within extract.dedup_hamming bits of an already kept face
)


# ----------------------------------------------------------------------------- inputs
def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_media(folder: Path) -> tuple[list[Path], list[Path]]:
    """(photos and videos, other files) under `folder`, recursively, sorted; hidden files and
    folders (names starting with a dot) are ignored."""
    folder = Path(folder)
    media, other = [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or _hidden(p, folder):
            continue
        (media if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES else other).append(p)
    return media, other


def _gather(inputs: Iterable[Path], out_dir: Path, dropped: dict[str, list[str]]) -> list[Path]:
    out = out_dir.resolve()
    files: list[Path] = []
    for p in map(Path, inputs):
        if not p.exists():
            raise UserError(f"{p}: no such file or folder; check the path")
        rp = p.resolve()
        if p.is_dir() and is_inside(out, rp):
            raise UserError(f"{out_dir}: the output folder is inside the input folder {p}; choose one outside it")
        if is_inside(rp, out):
            raise UserError(f"{p}: an input inside the output folder {out_dir}; choose another output folder")
        if p.is_dir():
            media, other = list_media(p)
            dropped["unsupported"].extend(str(o) for o in other)
            if not media:
                dropped["empty_folder"].append(str(p))
            files.extend(media)
        else:
            files.append(p)
    seen, unique = set(), []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _names(files: list[Path]) -> dict[Path, str]:
    """A file-name-safe stem per source: the file's own stem, plus a short hash of its path
    where two sources share a stem. Stable for the same inputs."""
    stems = {f: re.sub(r"[^A-Za-z0-9._-]+", "_", f.stem).strip("._") or "face" for f in files}
    counts: dict[str, int] = {}
    for s in stems.values():
        counts[s] = counts.get(s, 0) + 1
    return {
        f: s if counts[s] == 1 else f"{s}-{hashlib.sha1(f.as_posix().encode()).hexdigest()[:6]}"
        for f, s in stems.items()
    }


# ----------------------------------------------------------------------------- the run
class _Hashes:
    """The perceptual hashes of the faces kept so far, for near-duplicate checks."""

    def __init__(self) -> None:
        self._a = np.zeros(256, dtype=np.uint64)
        self._n = 0

    def near(self, h: int, max_bits: int) -> bool:
        if not self._n:
            return False
        x = np.bitwise_xor(self._a[: self._n], np.uint64(h))
        bits = np.unpackbits(x.view(np.uint8)).reshape(self._n, 64).sum(axis=1)
        return bool((bits <= max_bits).any())

    def add(self, h: int) -> None:
        if self._n == len(self._a):
            self._a = np.concatenate([self._a, np.zeros_like(self._a)])
        self._a[self._n] = h
        self._n += 1


def _floats(a: np.ndarray, nd: int = 4) -> list:
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def _remove_previous(out_dir: Path) -> None:
    """Delete the crops and masks listed in a previous run's manifest (and nothing else), only
    when that manifest is extract's own (out_dir carries extract's MARKER) and only inside
    out_dir (a `masks` link to another folder is not followed)."""
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        return
    if output_owner(out_dir) != "extract":
        raise UserError(f"{manifest}: not written by `autoswap extract` ({out_dir} has no {MARKER} of its own); "
                        "move it or choose another folder")
    root = out_dir.resolve()
    for line in manifest.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            name = json.loads(line)["crop"]
        except (ValueError, KeyError, TypeError):
            continue
        if not isinstance(name, str) or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
            continue
        for p in (out_dir / f"{name}.png", out_dir / MASKS / f"{name}.png"):
            if is_inside(p.parent.resolve(), root):
                p.unlink(missing_ok=True)  # a link: the link only
    manifest.unlink()


def _sources(path: Path, cfg: ExtractSettings, max_image_pixels: int, errors: dict[str, str],
             dropped: dict[str, list[str]], bar) -> Iterator[tuple[int, float | None, np.ndarray, str]]:
    """(frame index, time or None, rgb, report item) for a photo or each sampled video frame;
    records unreadable files and videos without frames in `dropped`."""
    suffix = path.suffix.lower()
    is_video = suffix in VIDEO_SUFFIXES
    if not is_video:
        try:
            yield 0, None, load_rgb(path, max_image_pixels), str(path)
            return
        except BadImage as e:
            unknown = suffix not in IMAGE_SUFFIXES and "unrecognised format" in str(e)
            if not unknown:
                dropped["unreadable"].append(str(path))
                errors[str(path)] = str(e)
                return
    # a video (by extension, or a file of unknown type that is not an image)
    total = probe_frames(path)
    n = 0
    with Progress(path.name, (total + cfg.every_nth_frame - 1) // cfg.every_nth_frame
                  if total and cfg.target_fps is None else None,
                  unit="frame", leave=False, enabled=not bar.disable) as frames:
        try:
            for fr in iter_video_frames(path, cfg.every_nth_frame, cfg.target_fps):
                n += 1
                frames.update()
                yield fr.index, fr.time_s, fr.rgb, f"{path}:{fr.index}"
        except BadVideo as e:
            if not is_video and n == 0:
                dropped["unreadable"].append(str(path))
                errors[str(path)] = "neither an image nor a video that can be read"
                return
            item = str(path) if n == 0 else f"{path}:{fr.index + 1}"
            dropped[e.reason if n == 0 else "unreadable"].append(item)
            errors[item] = str(e)
            return
    if n == 0:
        dropped["no_frames"].append(str(path))
        errors[str(path)] = "the video has no frames"


def extract_to_dir(inputs: list[Path], out_dir: Path, cfg: ExtractSettings, face_size: int,
                   max_image_pixels: int = 40_000_000, progress: bool = True,
                   allow_empty: bool = False, where: str = "--out", desc: str = "extract") -> dict:
    """Detect, align and filter faces from the images, videos and folders in `inputs`.

    Writes out_dir/{name}.png crops (name = f"{source_stem}_{frame:06d}_{k}", k counting the
    faces kept from that image or frame), out_dir/masks/{name}.png masks (uint8 0/255, same size)
    and out_dir/manifest.jsonl (one row per kept face). Crops, masks and manifest of a previous
    run in out_dir are replaced; nothing outside out_dir is written and inputs are only read.
    out_dir is refused (autoswap.files.check_output_dir; `where` names it in the error) when it is,
    holds or lies inside an input or data/raw, or is or holds the project root, home or `/`; it
    is marked as extract's (autoswap.files.MARKER), and only a marked folder's previous manifest
    is trusted to say what may be deleted.

    Returns {"files", "images", "videos", "frames", "kept", "dropped": {reason: ["path[:frame]",
    ...]} for every reason in DROP_REASONS, "errors": {"path[:frame]": why}, "rotated": {"90":
    ["path[:frame]", ...]} for every angle in cfg.rotate: where the faces were found only with the
    photo or frame turned counter-clockwise by that angle}. Photos and frames with no usable face
    are listed once under no_face / low_confidence / too_small; blurry and duplicate are per face. Raises UserError when no face at all is kept (unless allow_empty).

    `progress`: a bar named `desc` on a terminal, plain lines otherwise (autoswap.progress)."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, where)
    dropped: dict[str, list[str]] = {r: [] for r in DROP_REASONS}
    errors: dict[str, str] = {}
    rotated: dict[str, list[str]] = {str(a): [] for a in cfg.rotate}
    files = _gather(inputs, out_dir, dropped)
    names = _names(files)
    owner = output_owner(out_dir)
    if owner not in (None, "extract"):
        raise UserError(f"{where}: {out_dir} holds the output of `autoswap {owner}`, not extract; "
                        "choose another folder")
    if (out_dir / MANIFEST).exists() and owner != "extract":
        raise UserError(f"{out_dir / MANIFEST}: not written by `autoswap extract` ({out_dir} has no {MARKER} of "
                        "its own); move it or choose another folder")
    if (out_dir / MASKS).is_symlink():
        raise UserError(f"{out_dir / MASKS}: a link to another folder; extract writes and removes masks only inside "
                        f"{out_dir}: replace the link with a folder or choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous(out_dir)
    mark_output_dir(out_dir, "extract")
    (out_dir / MASKS).mkdir(exist_ok=True)

    hashes = _Hashes()
    counts = {"images": 0, "videos": 0, "frames": 0}
    kept = 0
    last_video = None
    manifest: list[str] = []  # written atomically once every crop is
    with Progress(desc, len(files), unit="file", enabled=progress) as bar:
        for path in files:
            # one tracker per file: it follows the kept face through a video's frames (not with
            # keep=all, which wants every face of every frame, new ones included)
            tracker = FaceTracker(cfg, cfg.keep, follow=cfg.track and cfg.keep != "all", rotate=cfg.rotate)
            for frame, time_s, rgb, item in _sources(path, cfg, max_image_pixels, errors, dropped, bar):
                if time_s is None:
                    counts["images"] += 1
                else:
                    counts["frames"] += 1
                    if last_video != path:
                        counts["videos"] += 1
                        last_video = path
                faces, reason, angle = tracker.find(rgb)
                if reason:
                    dropped[reason].append(item)
                if angle:
                    rotated[str(angle)].append(item)
                for k, face in enumerate(faces):
                    crop, affine = align(rgb, face.landmarks, face_size)
                    lm_crop = apply_affine(affine, face.landmarks)
                    mask = face_mask(lm_crop, face_size)
                    blur = blur_score(crop, mask)
                    if blur < cfg.min_blur:
                        dropped["blurry"].append(item)
                        continue
                    h = phash(crop)
                    if cfg.dedup_hamming and hashes.near(h, cfg.dedup_hamming):
                        dropped["duplicate"].append(item)
                        continue
                    hashes.add(h)
                    name = f"{names[path]}_{frame:06d}_{k}"
                    save_png(crop, out_dir / f"{name}.png")
                    save_png(mask, out_dir / MASKS / f"{name}.png")
                    manifest.append(json.dumps(_row(name, path, frame, time_s, k, rgb.shape, face,
                                                   affine, lm_crop, blur, h, angle)) + "\n")
                    kept += 1
            bar.set_postfix(kept=kept)
            bar.update()
    atomic_write_text(out_dir / MANIFEST, "".join(manifest))

    report = {"files": len(files), **counts, "kept": kept, "dropped": dropped, "errors": errors,
              "rotated": rotated}
    if kept == 0 and not allow_empty:
        raise UserError(_nothing_usable(inputs, report))
    return report


def _row(name: str, path: Path, frame: int, time_s: float | None, k: int, shape: tuple[int, ...],
         face: Face, affine: np.ndarray, lm_crop: np.ndarray, blur: float, h: int, rotation: int = 0) -> dict:
    """One manifest row. `affine` maps source pixel coordinates (of the upright, full-resolution
    photo or frame, `source_size` = [width, height]) to crop pixel coordinates; invert it to paste
    the crop back. Pixel centres sit on integer coordinates. `rotation`: 0, or the angle
    (extract.rotate, counter-clockwise) the photo or frame was turned by to find the face; box,
    landmarks and affine are in the pixels of the photo or frame as loaded all the same."""
    return {
        "crop": name,
        "source": path.as_posix(),
        "kind": "image" if time_s is None else "video",
        "frame": frame,
        "time_s": None if time_s is None else round(time_s, 6),
        "face_index": k,
        "source_size": [int(shape[1]), int(shape[0])],
        "box": _floats(face.box, 2),
        "affine": _floats(affine, 8),
        "landmarks_source": _floats(face.landmarks),
        "landmarks_crop": _floats(lm_crop),
        "confidence": round(face.confidence, 6),
        "blur": round(blur, 3),
        "phash": f"{h:016x}",
        "rotation": int(rotation),
    }


def _nothing_usable(inputs: list[Path], report: dict) -> str:
    where = ", ".join(str(p) for p in inputs) or "(no inputs)"
    reasons = ", ".join(f"{len(v)} {k}" for k, v in report["dropped"].items() if v)
    if report["files"] == 0:
        return f"{where}: no photos or videos found; add some (jpg, png, mp4, mov, ...)"
    return (f"{where}: no usable face in {report['files']} file(s) ({reasons}); add photos or videos "
            f"where the face is clear, or relax extract.min_confidence / extract.min_face_size in params.yaml")
