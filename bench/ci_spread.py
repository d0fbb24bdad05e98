"""The spread of the demo's metrics that CI must tolerate, and what deliberate regressions do to
them: the measurement behind .ci/check_metrics.py's tolerances (docs/METRICS_SPREAD.md).

Each variant is the demo's prepare -> train -> evaluate (params.yaml as committed, the same
synthetic faces) in its own folder under --work, as its own `autoswap` processes, with one thing
changed:

- isa-*: oneDNN's kernels capped with ONEDNN_MAX_CPU_ISA, standing in for CPUs without AMX or
  AVX-512 (another CPU's float rounding, which grows over 5,000 Adam steps);
- fp32 / bf16: train.mixed_precision forced;
- seed-N: the training seed (same faces, same validation set): how far one trajectory is from
  another when nothing is wrong, the widest honest spread;
- regression-*: a deliberate bug that CI must catch (the check must fail on its metrics):
  regression-warp: the warped input drawn with another image's zoom/rotation/shift than its
  target (the pair no longer lines up); regression-decoders: decoder_a and decoder_b swapped in
  the trained model; regression-lr0: the learning rate zeroed.

    python bench/ci_spread.py --work /work/exp/spread                 # every variant
    python bench/ci_spread.py --work /work/exp/spread --variants isa-avx2 seed-1
    python bench/ci_spread.py --work /work/exp/spread --evaluate-only   # re-score trained models
    python bench/ci_spread.py --tolerances     # .ci/tolerances.json from bench/results/ci_spread/

Writes bench/results/ci_spread/<variant>.json (eval and train metrics, the ISA, the wall time).
xeon-amx-cdb1512.json is another machine's run kept by hand: the metrics committed at cdb1512 by a
2-core Xeon with AMX (same recipe and training code; crop scores only, "partial").
A variant already trained in --work is only evaluated again. About 4 to 6 minutes a variant on
2 cores (AMD EPYC, AVX512-BF16, no AMX).
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".ci"))
from check_metrics import flat  # noqa: E402  (the check's own flattening: the same keys)

from autoswap.tracking import cpu_model  # noqa: E402

OUT = ROOT / "bench" / "results" / "ci_spread"

# variant -> (environment, params overrides (dotted key -> value), code patch or None)
VARIANTS: dict[str, tuple[dict, dict, str | None]] = {
    "isa-native": ({}, {}, None),
    "isa-avx512_core": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, {}, None),
    "isa-avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {}, None),
    "fp32": ({}, {"train.mixed_precision": False}, None),
    "fp32-avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"train.mixed_precision": False}, None),
    "seed-1": ({}, {"seed": 1}, None),
    "seed-2": ({}, {"seed": 2}, None),
    "seed-3": ({}, {"seed": 3}, None),
    "regression-warp": ({}, {}, "warp"),
    "regression-lr0": ({}, {}, "lr0"),
    "regression-decoders": ({}, {}, "decoders"),
}
# the project files a run needs (the rest of the tree is left out)
TREE = ("params.yaml", "dvc.yaml", "src", "data/raw")


def _set(d: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for k in path:
        d = d[k]
    d[last] = value


def _stage(patch: str | None, stage: str) -> int:
    """One `autoswap <stage>` in this process, with the variant's code patch applied first."""
    from autoswap import cli, pipeline

    if patch == "warp" and stage == "train":
        orig, calls = pipeline._inverse_affine, [0]

        def misaligned(spec, q, params):  # make_batch calls it for the warped input, then the target
            calls[0] += 1
            if calls[0] % 2 == 1:
                import tensorflow as tf

                params = tf.roll(params, 1, axis=0)
            return orig(spec, q, params)

        pipeline._inverse_affine = misaligned
    if patch == "lr0" and stage == "train":
        from autoswap import config

        load = config.load

        def zero_lr(path):
            s = load(path)
            return s.model_copy(update={"train": s.train.model_copy(update={"learning_rate": 0.0})})

        config.load = zero_lr
    if patch == "decoders" and stage == "evaluate":
        final = Path("models/final")
        a, b = final / "decoder_a.weights.h5", final / "decoder_b.weights.h5"
        tmp = final / "swap.tmp"
        a.rename(tmp), b.rename(a), tmp.rename(b)
        try:
            return cli.main([stage])
        finally:
            b.rename(tmp), a.rename(b), tmp.rename(a)
    return cli.main([stage])


def run_variant(name: str, work: Path, faces: Path | None, evaluate_only: bool) -> dict:
    env_extra, overrides, patch = VARIANTS[name]
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    for rel in TREE:
        src, dst = ROOT / rel, d / rel
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    params = yaml.safe_load((d / "params.yaml").read_text())
    for k, v in overrides.items():
        _set(params, k, v)
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, **env_extra, "PYTHONPATH": str(d / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    stages = ["evaluate"] if evaluate_only and (d / "models/final").is_dir() else ["prepare", "train", "evaluate"]
    if "prepare" in stages and faces is not None and faces.is_dir():
        # the faces do not depend on the CPU or the training seed: rendered once, copied
        shutil.rmtree(d / "data/faces", ignore_errors=True)
        shutil.copytree(faces, d / "data/faces")
        (d / "metrics").mkdir(exist_ok=True)
        shutil.copyfile(faces.parents[1] / "metrics/prepare.json", d / "metrics/prepare.json")
        stages.remove("prepare")
    if patch == "decoders" and "train" in stages:  # a bug in evaluation, not training: the native model
        shutil.rmtree(d / "models", ignore_errors=True)
        shutil.copytree(faces.parents[1] / "models/final", d / "models/final")
        shutil.copyfile(faces.parents[1] / "metrics/train.json", d / "metrics/train.json")
        stages.remove("train")
    times = {}
    for stage in stages:
        t0 = time.time()
        r = subprocess.run([sys.executable, __file__, "--stage", stage, "--patch", patch or ""], cwd=d, env=env)
        times[stage] = round(time.time() - t0, 1)
        if r.returncode:
            raise SystemExit(f"{name}: {stage} failed (rc {r.returncode}); see the output above")
    result = {
        "variant": name,
        "env": env_extra,
        "overrides": overrides,
        "patch": patch,
        "seconds": times,
        "cpu": cpu_model(),
        "eval": json.loads((d / "metrics/eval.json").read_text()),
        "train": json.loads((d / "metrics/train.json").read_text()),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"== {name}: {times}", flush=True)
    return result


# Tolerance = SAFETY x the widest spread measured (the largest difference between any two runs that
# differ only by CPU code path, precision or seed). Seven runs show only part of the true range
# of a key, so the widest seen is doubled. A share of faces whose tolerance would exceed
# SHARE_LIMIT (8 of 32 faces) says too little to compare: it is checked through the margins only.
SAFETY = 2.0
FLOOR = 1e-4
SHARE_LIMIT = 0.25
SHARES = ("id_transfer", "photo_found", "photo_input_found", "photo_found_ratio")


def tolerances(results: Path = OUT, extra: dict | None = None) -> dict:
    """Per metric key: the runs' spread and the tolerance from it (see SAFETY)."""
    runs = {}
    for f in sorted(results.glob("*.json")):
        r = json.loads(f.read_text())
        if r.get("patch"):
            continue  # a deliberate regression: what the check must catch, not tolerate
        runs[r["variant"]] = {**{f"metrics/eval.json:{k}": v for k, v in flat(r["eval"]).items()},
                              **{f"metrics/train.json:{k}": v for k, v in flat(r["train"]).items()}}
    runs.update(extra or {})
    keys = sorted(set().union(*runs.values()))
    out = {}
    for k in keys:
        vals = [float(v[k]) for v in runs.values() if isinstance(v.get(k), int | float)]
        spread = max(vals) - min(vals) if vals else 0.0
        tol = max(SAFETY * spread, FLOOR) if not k.endswith(":steps") else 0.0
        share = k.endswith(SHARES)
        out[k] = {"spread": round(spread, 6), "runs": len(vals), "min": round(min(vals), 6), "max": round(max(vals), 6),
                  "tol": round(tol, 6), "check": "margins" if share and tol > SHARE_LIMIT else "compare"}
    return {"safety_factor": SAFETY, "floor": FLOOR, "share_limit": SHARE_LIMIT, "runs": sorted(runs),
            "made_by": "python bench/ci_spread.py --tolerances", "keys": out}


def table(results: Path = OUT, committed: Path = ROOT / "metrics") -> str:
    """docs/METRICS_SPREAD.md's table: every key, its value in each run, spread and tolerance."""
    recs = {json.loads(f.read_text())["variant"]: json.loads(f.read_text()) for f in sorted(results.glob("*.json"))}
    order = [n for n in VARIANTS if n in recs] + sorted(set(recs) - set(VARIANTS))
    tol = json.loads((ROOT / ".ci" / "tolerances.json").read_text())["keys"]
    ev = json.loads((committed / "eval.json").read_text())
    head = "| key | committed | " + " | ".join(order) + " | spread | tolerance |"
    rows = [head, "|" + "---|" * (len(order) + 4)]
    for p in ("a", "b"):
        for k in ev[p]:
            key = f"metrics/eval.json:{p}.{k}"
            t = tol.get(key, {})
            vals = [recs[n]["eval"].get(p, {}).get(k) for n in order]
            cells = [f"{v:.4g}" if isinstance(v, int | float) else "-" for v in vals]
            check = "margins only" if t.get("check") == "margins" else f"{t.get('tol', float('nan')):.3g}"
            rows.append(f"| {p}.{k} | {ev[p][k]:.4g} | " + " | ".join(cells) + f" | {t.get('spread', float('nan')):.3g} | {check} |")
    return "\n".join(rows) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/ci-spread"))
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--evaluate-only", action="store_true", help="re-score the trained models in --work")
    p.add_argument("--tolerances", action="store_true",
                   help="write .ci/tolerances.json from the runs in bench/results/ci_spread/")
    p.add_argument("--table", action="store_true", help="print docs/METRICS_SPREAD.md's table")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--patch", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        return _stage(args.patch or None, args.stage)
    if args.table:
        print(table(), end="")
        return 0
    if args.tolerances:
        t = tolerances()
        (ROOT / ".ci" / "tolerances.json").write_text(json.dumps(t, indent=2) + "\n")
        print(f"wrote .ci/tolerances.json: {len(t['keys'])} keys from {len(t['runs'])} runs")
        return 0
    faces = args.work / "isa-native" / "data" / "faces"
    for name in args.variants:
        run_variant(name, args.work, faces if name != "isa-native" else None, args.evaluate_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
