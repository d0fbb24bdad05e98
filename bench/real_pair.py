"""A real swap, measured end to end as a user makes it: the own-data path on photos of two real
people, then `autoswap swap` of held-out photos, scored on the swapped photos (the measurement
behind docs/EXPERIMENTS.md, "A real swap", and the README's "What to expect").

    python bench/real_pair.py --photos /work/exp/realpair --work /work/exp/real1
    python bench/real_pair.py --photos DIR --work DIR --set train.steps=2000   # a shorter trial
    python bench/real_pair.py --photos DIR --work DIR --score-only             # re-score a finished run
    python bench/real_pair.py --photos DIR --work DIR --reswap    # params.yaml's swap section changed:
                                    # dvc repro (evaluate, preview, demo), swap and score again

--photos holds a/ and b/, one real person each (not in this repository; docs/EXPERIMENTS.md names
the public set and commit used). Every 12th photo of each (sorted by name) is held out of
training; the rest are copied to data/raw/{a,b} of a fresh clone of this repository, whose
params.yaml gets `data.source: folders` and nothing else (plus --set keys, for trials), as the
README's "Using your own data" says. Then:

1. `dvc repro` (prepare, train, evaluate, preview, demo), timed per stage;
2. `autoswap swap` of the held-out photos of A to B and of B to A (the committed swap settings);
3. each held-out photo and its swap scored with autoswap.photoscore (dlib's detector, identity
   against each person's centroid of training faces, sharpness kept at the scale of features and
   at full scale, landmark shift), and a sheet of originals beside swaps in --work (real
   people's photos: it stays there, never in git).

Writes bench/results/real_pair.json (or --out): the timings, evaluate's metrics, the held-out
scores per direction and the recipe used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
HOLD_EVERY = 12
EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def _run(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {r.returncode}); see {log}")
    return round(time.time() - t0, 1)


def setup(photos: Path, work: Path, sets: list[str]) -> Path:
    """A fresh clone with the working tree's code, the training photos in data/raw and the
    held-out ones in work/held; returns the clone."""
    proj = work / "project"
    if proj.exists():
        shutil.rmtree(proj)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(proj)], check=True)
    # the code under test is the working tree's, committed or not
    for rel in ("src", "dvc.yaml", "params.yaml", "params", ".dvc/config"):
        src = ROOT / rel
        if src.is_dir():
            shutil.rmtree(proj / rel, ignore_errors=True)
            shutil.copytree(src, proj / rel)
        elif src.exists():
            shutil.copyfile(src, proj / rel)
    for s in "ab":
        files = sorted(p for p in (photos / s).iterdir() if p.suffix.lower() in EXTS)
        held, raw = work / "held" / s, proj / "data" / "raw" / s
        shutil.rmtree(held, ignore_errors=True)
        held.mkdir(parents=True)
        raw.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files):
            shutil.copyfile(f, (held if i % HOLD_EVERY == HOLD_EVERY - 1 else raw) / f.name)
    # the README's one edit, as text, so the file keeps its comments
    text = (proj / "params.yaml").read_text()
    assert "  source: synthetic" in text
    text = text.replace("  source: synthetic", "  source: folders", 1)
    (proj / "params.yaml").write_text(text)
    if sets:
        raw = yaml.safe_load(text)
        own = raw.setdefault("own_data", {}) or {}
        for kv in sets:
            k, v = kv.split("=", 1)
            own[k] = yaml.safe_load(v)
        raw["own_data"] = own
        (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return proj


def own_sharpness(folder: Path) -> float:
    """The median var(Laplacian) of a person's own photos in `folder`, in the largest detected
    face box resized to photoscore.FEATURE_PX, as photo_sharpness_kept measures it. The ratio of
    the target's to the source's is what a perfect swap would keep: some faces are smoother than
    others (a context for photo_sharpness_kept, not a goal)."""
    from autoswap.images import load_rgb
    from autoswap.photoscore import detect, sharpness

    values = []
    for f in sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTS):
        try:
            rgb = load_rgb(f)
        except Exception:  # noqa: BLE001 - what prepare would drop is not a face to measure
            continue
        found = detect(rgb)
        if found:
            r = max(found, key=lambda r: r.area())
            values.append(sharpness(rgb, (r.left(), r.top(), r.right(), r.bottom())))
    return float(np.median(values)) if values else float("nan")


def score(proj: Path, work: Path) -> dict:
    """The held-out photos' swaps, scored as an outside tool sees them."""
    os.chdir(proj)
    sys.path.insert(0, str(proj / "src"))
    from autoswap.config import load
    from autoswap.evaluate import identity_centroids
    from autoswap.faces import find_faces
    from autoswap.images import load_rgb
    from autoswap.photoscore import score_pairs, sheet
    from autoswap.pipeline import BatchSpec, load_faces

    settings = load("params.yaml")
    spec = BatchSpec.from_settings(settings)
    train = {s: load_faces(settings.data.faces_dir / s / "train", settings.data.face_size)[0] for s in "ab"}
    centroids = identity_centroids(spec, train, max(settings.evaluate.identity_faces, 64))
    out = {}
    own = {s: own_sharpness(proj / "data" / "raw" / s) for s in "ab"}
    for x, y in (("a", "b"), ("b", "a")):
        pairs, missing = [], 0
        for f in sorted((work / "held" / x).iterdir()):
            swapped_file = work / "swapped" / x / f.name
            swapped_file = swapped_file if swapped_file.is_file() else swapped_file.with_suffix(".jpg")
            orig = load_rgb(f)
            faces, _, _ = find_faces(orig, settings.extract)
            if not faces or not swapped_file.is_file():
                missing += 1  # no face for swap to replace: the photo was copied unchanged
                continue
            face = max(faces, key=lambda fc: (fc.box[2] - fc.box[0]) * (fc.box[3] - fc.box[1]))
            pairs.append((orig, load_rgb(swapped_file), np.asarray(face.landmarks, np.float64)))
        m = score_pairs(pairs, centroids[y], centroids[x])
        m["held_out"] = len(list((work / "held" / x).iterdir()))
        m["no_face_to_swap"] = missing
        m["target_over_source_sharpness"] = own[y] / own[x]  # what a perfect swap would keep
        out[f"{x}_to_{y}"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
        sheet([(f"held-out {x.upper()} (left) swapped to {y.upper()} (right)", pairs[:24])], work / f"sheet_{x}_to_{y}.png")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=Path, required=True, help="a folder with a/ and b/ (one real person each)")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--set", nargs="*", default=[], help="own_data keys for a trial: train.steps=2000 ...")
    p.add_argument("--score-only", action="store_true", help="score the finished run in --work again")
    p.add_argument("--reswap", action="store_true",
                   help="take this repository's params.yaml swap section into the finished run, then "
                   "dvc repro (only the stages that read it rerun), swap and score again")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "real_pair.json")
    args = p.parse_args()
    from autoswap.tracking import cpu_model

    work = args.work.resolve()
    proj = work / "project"
    # dvc runs each stage's `autoswap ...` through the shell: this interpreter's bin first, so an
    # unactivated venv's python runs the bench as an activated one would
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PYTHONPATH": str(proj / "src"), "PATH": path}
    env.pop("DVC_ROOT", None)
    log = work / "log.txt"
    times = {}
    if (args.score_only or args.reswap) and args.out.is_file():  # keep the first run's timings
        times = json.loads(args.out.read_text()).get("seconds", {})
    if args.reswap:
        raw = yaml.safe_load((proj / "params.yaml").read_text())
        text = (proj / "params.yaml").read_text()
        head, _, tail = text.partition("\nswap:\n")
        ours = (ROOT / "params.yaml").read_text().partition("\nswap:\n")[2]
        assert raw["data"]["source"] == "folders" and tail
        (proj / "params.yaml").write_text(head + "\nswap:\n" + ours)
        times["dvc_repro_after_swap_change"] = _run([sys.executable, "-m", "dvc", "repro"], proj, env, log)
    if not args.score_only and not args.reswap:
        work.mkdir(parents=True, exist_ok=True)
        proj = setup(args.photos.resolve(), work, args.set)
        t0 = time.time()
        times["dvc_repro"] = _run([sys.executable, "-m", "dvc", "repro"], proj, env, log)
        print(f"dvc repro: {times['dvc_repro'] / 60:.1f} min (from {time.ctime(t0)})", flush=True)
    if not args.score_only:
        for x, y in (("a", "b"), ("b", "a")):
            shutil.rmtree(work / "swapped" / x, ignore_errors=True)
            times[f"swap_{x}"] = _run([sys.executable, "-m", "autoswap.cli", "swap", str(work / "held" / x),
                                       str(work / "swapped" / x), "--to", y, "--quiet"], proj, env, log)
    result = {
        "photos": str(args.photos),
        "hold_out": f"every {HOLD_EVERY}th photo by name",
        "set": args.set,
        "seconds": times,
        "cpu": cpu_model(),
        "own_data": yaml.safe_load((proj / "params.yaml").read_text()).get("own_data"),
        "swap": yaml.safe_load((proj / "params.yaml").read_text()).get("swap"),
        "train": json.loads((proj / "metrics/train.json").read_text()),
        "prepare": {s: {k: v for k, v in r.items() if not k.endswith("_files")}
                    for s, r in json.loads((proj / "metrics/prepare.json").read_text())["persons"].items()},
        "eval": json.loads((proj / "metrics/eval.json").read_text()),
        "held_out": score(proj, work),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["held_out"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
