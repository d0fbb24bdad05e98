"""How many steps a pair needs when it starts from a trained model (train.init_from), against
from scratch: the measurement behind docs/EXPERIMENTS.md, "Starting from a trained model".

It pretrains the demo network on the second built-in pair (data.synthetic.identities [c, d]),
then trains the demo pair (params.yaml's) from scratch and from that model in each chosen way,
saving a checkpoint every --every steps and scoring each with evaluate's own evaluate_faces on the
demo's validation faces and their ground truth. Every run is a real `autoswap train` (its own
process, its own MLflow store in --work), so what is measured is what users get.

    python bench/init_from.py --work /tmp/init-from --variants scratch encoder+decoder_c-both
    python bench/init_from.py --work /tmp/init-from                       # all variants
    # the recipe before train.augment.color went on (bench/results/init_from_color_off.json):
    python bench/init_from.py --work /tmp/init-off --out bench/results/init_from_color_off.json \
        --set train.augment.color.lightness=0 train.augment.color.ab=0 train.augment.color.input_only=false

Writes bench/results/init_from.json (merged into the file when it exists, one variant at a time):
per variant, per checkpoint, swap_mae and recon_mae both ways; the first step at which both swap
scores reach the from-scratch run's final ones; the mean of its last 3 checkpoints, the step at
which the scratch run, averaged the same way, is as good, and the first step at which this run's
3-checkpoint mean is as good as the scratch run's last 3. A finished run in --work is scored again,
not retrained. Also scores each pretrained model on its own pair (c/d). The pretrain, the
scratch run and the four 2,000-step starts of docs/EXPERIMENTS.md's table (--variants scratch
encoder encoder+decoders encoder+decoders-crossed encoder+decoder_c-both) take about 28 minutes on the 2-core
Xeon in bfloat16 (the trials at the end of VARIANTS, with a 20,000-step pretrain, about 50 more
on the EPYC in float32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# name -> dotted overrides of params.yaml for the pair's run (pre/final: the c/d model; pre20k/final:
# the same, 20,000 steps; the others: DERIVED from pre/final)
VARIANTS: dict[str, dict] = {
    "scratch": {},
    "encoder": {"train.init_from": "pre/final"},
    "encoder+decoders": {"train.init_from": "pre/final", "train.init_decoder_a": "a", "train.init_decoder_b": "b"},
    "encoder+decoders-crossed": {"train.init_from": "pre/final", "train.init_decoder_a": "b",
                                 "train.init_decoder_b": "a"},
    "encoder+decoder_c-both": {"train.init_from": "pre/final", "train.init_decoder_a": "a",
                               "train.init_decoder_b": "a"},
    "encoder+decoder_c-both-4000": {"train.init_from": "pre/final", "train.init_decoder_a": "a",
                                    "train.init_decoder_b": "a", "train.steps": 4000},
    "encoder-cosine-1667": {"train.init_from": "pre/final", "train.steps": 1667,
                            "train.lr_schedule.kind": "cosine"},
    "encoder-frozen-500": {"train.init_from": "pre/final", "train.freeze_encoder_steps": 500},
    "encoder+decoders-frozen-500": {"train.init_from": "pre/final", "train.init_decoder_a": "a",
                                    "train.init_decoder_b": "b", "train.freeze_encoder_steps": 500},
    "encoder+decoders-frozen-1000": {"train.init_from": "pre/final", "train.init_decoder_a": "a",
                                     "train.init_decoder_b": "b", "train.freeze_encoder_steps": 1000},
    # trials against the "warm start" gap (DERIVED), and from a model pretrained 4x longer
    "sp0.8-c-both": {"train.init_from": "sp0.8/final", "train.init_decoder_a": "a", "train.init_decoder_b": "a"},
    "sp0.5-c-both": {"train.init_from": "sp0.5/final", "train.init_decoder_a": "a", "train.init_decoder_b": "a"},
    "head-c-both": {"train.init_from": "head/final", "train.init_decoder_a": "a", "train.init_decoder_b": "a"},
    "head2-c-both": {"train.init_from": "head2/final", "train.init_decoder_a": "a", "train.init_decoder_b": "a"},
    "pre20k-c-both": {"train.init_from": "pre20k/final", "train.init_decoder_a": "a", "train.init_decoder_b": "a"},
    "pre20k-crossed": {"train.init_from": "pre20k/final", "train.init_decoder_a": "b", "train.init_decoder_b": "a"},
    "pre20k-encoder": {"train.init_from": "pre20k/final"},
    "c-both-lr1.5e-3-warmup": {
        "train.init_from": "pre/final",
        "train.init_decoder_a": "a",
        "train.init_decoder_b": "a",
        "train.learning_rate": 1.5e-3,
        "train.lr_schedule.warmup_steps": 200,
    },
}

# trial starts derived from pre/final (see derive)
DERIVED: dict[str, tuple[str, object]] = {
    "sp0.8": ("shrink", 0.8), "sp0.5": ("shrink", 0.5), "head": ("fresh", ["rgb"]), "head2": ("fresh", ["rgb", "up2_conv"]),
}


def _set(d: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for k in path:
        d = d[k]
    d[last] = value


BASE: dict = {}  # --set: dotted overrides of params.yaml for every run, the pretrain too


def write_params(work: Path, name: str, overrides: dict) -> Path:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    for k, v in {**BASE, **overrides}.items():
        _set(p, k, v)
    out = work / f"{name}.yaml"
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return out


def autoswap(work: Path, params: Path, *args: str) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"}
    subprocess.run([sys.executable, "-m", "autoswap.cli", "--params", str(params), *args], cwd=work, env=env,
                   check=True)


def score(params: Path, models_dir: Path, final: bool = False) -> list[dict]:
    """Every checkpoint of `models_dir` scored on the validation faces: [{step, a: {...}, b: {...}}]
    (final: its final model alone)."""
    import tensorflow as tf

    from autoswap import config
    from autoswap.evaluate import evaluate_faces
    from autoswap.pipeline import BatchSpec, load_faces
    from autoswap.train import build_trainer

    s = config.load(params)
    trainer = build_trainer(s)
    spec = BatchSpec.from_settings(s)
    root, size = s.data.faces_dir, s.data.face_size
    faces = {x: load_faces(root / x / "val", size)[0] for x in "ab"}
    gts = {x: load_faces(root / x / "val_gt", size)[0] for x in "ab"}
    rows = []
    if final:
        from autoswap.model import load_final

        *nets, card = load_final(models_dir / "final")
        m = evaluate_faces(nets, spec, faces, gts, s.evaluate.batch_size)
        return [{"step": card.steps, **{x: {k: m[x][k] for k in ("swap_mae", "recon_mae")} for x in "ab"}}]
    for path in tf.train.get_checkpoint_state(str(models_dir / "checkpoints")).all_model_checkpoint_paths:
        trainer.checkpoint().restore(path).expect_partial()
        m = evaluate_faces(trainer.nets, spec, faces, gts, s.evaluate.batch_size)
        rows.append({"step": int(trainer.step.numpy()),
                     **{x: {k: m[x][k] for k in ("swap_mae", "recon_mae")} for x in "ab"}})
    return rows


def pretrain(work: Path, folder: str, steps: int) -> None:
    """The pretrained model `folder`/final: the demo network and recipe on the other pair, c/d."""
    params = write_params(work, f"pretrain-{folder}", {
        "data.faces_dir": "faces_cd", "data.synthetic.identities": ["c", "d"], "train.models_dir": folder,
        "train.steps": steps})
    if (work / folder / "final" / "model.json").is_file():
        return
    if not (work / "faces_cd" / "a" / "manifest.jsonl").is_file():
        autoswap(work, params, "prepare")
    autoswap(work, params, "train")


def source(work: Path, folder: str, pretrain_steps: int) -> None:
    """Make the model folder a variant starts from: "pre" (--pretrain-steps), "pre20k" (20,000
    steps), or one derived from "pre" by DERIVED."""
    if folder in DERIVED:
        pretrain(work, "pre", pretrain_steps)
        if not (work / folder / "final" / "model.json").is_file():
            derive(work / "pre" / "final", work / folder / "final", *DERIVED[folder])
    else:
        pretrain(work, folder, 20000 if folder == "pre20k" else pretrain_steps)


def derive(src: Path, out: Path, how: str, arg) -> None:
    """A trial start made from the pretrained model, against the new networks' fresh weights
    (seeded): "shrink" = arg x the trained weights + (1 - arg) x fresh ones (Ash & Adams 2020,
    "shrink and perturb": warm-started networks generalise worse, and this is their fix); "fresh"
    = the decoders' layers named in arg fresh (transfer learning's new head)."""
    import keras

    from autoswap.model import build, load_final, save_final

    *nets, card = load_final(src)
    keras.utils.set_random_seed(12345)
    fresh = build(card.model)
    for net, new in zip(nets, fresh, strict=True):
        if how == "shrink":
            net.set_weights([arg * w + (1 - arg) * v for w, v in zip(net.get_weights(), new.get_weights(), strict=True)])
        elif net.name != "encoder":
            for layer in arg:
                net.get_layer(layer).set_weights(new.get_layer(layer).get_weights())
    save_final(out, nets, card)


def reached(rows: list[dict], target: dict) -> int | None:
    """The first step at which both swap scores are at or below `target`'s."""
    for r in rows:
        if all(r[x]["swap_mae"] <= target[x] for x in "ab"):
            return r["step"]
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (faces, models, MLflow store)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--pretrain-steps", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=2000, help="steps of each run from the pretrained model")
    ap.add_argument("--every", type=int, default=250, help="a scored checkpoint every this many steps")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "init_from.json")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="params.yaml overrides for every run (YAML values), e.g. train.augment.color.input_only=false")
    ap.add_argument("--score", nargs=2, metavar=("PARAMS", "MODELS"), help=argparse.SUPPRESS)
    ap.add_argument("--final", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.score:  # the child that scores one run's checkpoints (--final: its final model)
        print(json.dumps(score(Path(a.score[0]), Path(a.score[1]), a.final)))
        return 0

    BASE.update({k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.set)})
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    scratch_steps = base["train"]["steps"]
    results = json.loads(a.out.read_text()) if a.out.is_file() else {}
    results.setdefault("variants", {})
    results["set"] = BASE
    for folder in sorted({VARIANTS[n].get("train.init_from", "").split("/")[0] for n in a.variants} - {""}):
        source(work, folder, a.pretrain_steps)
        if folder not in DERIVED:  # the pretrained model on its own pair: its swap, and its faces rebuilt
            out = subprocess.run([sys.executable, __file__, "--work", str(work), "--score",
                                  str(work / f"pretrain-{folder}.yaml"), str(work / folder), "--final"],
                                 cwd=work, check=True, capture_output=True, text=True).stdout
            results.setdefault("pretrained_on_cd", {})[folder] = json.loads(out.strip().splitlines()[-1])[0]
    for name in a.variants:
        steps = VARIANTS[name].get("train.steps", scratch_steps if name.startswith("scratch") else a.steps)
        keep = steps // a.every + 1
        params = write_params(work, name, {"train.steps": steps, **VARIANTS[name], "data.faces_dir": "faces_ab",
                                           "train.models_dir": name, "train.save_every": a.every,
                                           "train.keep_last": keep, "train.preview_every": steps})
        if not (work / "faces_ab" / "a" / "manifest.jsonl").is_file():
            autoswap(work, params, "prepare")
        if not (work / name / "final" / "model.json").is_file():
            autoswap(work, params, "train")
        out = subprocess.run([sys.executable, __file__, "--work", str(work), "--score", str(params), str(work / name)],
                             cwd=work, check=True, capture_output=True, text=True).stdout
        results["variants"][name] = {"overrides": VARIANTS[name], "steps": steps,
                                     "rows": json.loads(out.strip().splitlines()[-1])}
        print(name, json.dumps(results["variants"][name]["rows"][-1]))
        summarise(results, a)
    summarise(results, a)
    for name, v in results["variants"].items():
        print(f"{name:30s} {v['steps']:5d} steps: reaches scratch's final swap at {v.get('reaches_target_at')}; "
              f"last 3 checkpoints {v.get('last3_mean')}, matched by scratch at {v.get('scratch_steps_to_match_last3')}; "
            f"reaches scratch's last 3 at {v.get('reaches_scratch_last3_at')}")
    return 0


def window(rows: list[dict], end: int, k: int) -> dict:
    """The mean swap_mae of the k checkpoints up to row `end` (inclusive), per direction."""
    part = rows[max(0, end - k + 1): end + 1]
    return {x: sum(r[x]["swap_mae"] for r in part) / len(part) for x in "ab"}


def reached_mean(rows: list[dict], target: dict, k: int = 3) -> int | None:
    """The first step at which this run's mean over k checkpoints is at or below `target` (the
    scratch run's mean over its last k) in both directions: the averaged form of `reached`."""
    for i in range(k - 1, len(rows)):
        if all(window(rows, i, k)[x] <= target[x] for x in "ab"):
            return rows[i]["step"]
    return None


def scratch_equivalent(scratch: list[dict], rows: list[dict], k: int = 3) -> int | None:
    """The first step at which the scratch run, averaged over k checkpoints, is as good in both
    directions as this run averaged over its last k. Why averages: one checkpoint's swap_mae
    moves by up to 0.01 from the next (the scratch run's B->A: 0.0479 at 4,750, 0.0384 at 5,000),
    so one point decides little."""
    ours = window(rows, len(rows) - 1, k)
    for i in range(k - 1, len(scratch)):
        w = window(scratch, i, k)
        if all(w[x] <= ours[x] for x in "ab"):
            return scratch[i]["step"]
    return None


def summarise(results: dict, a) -> None:
    """Add the target and each variant's step reaching it, and write the results (after every
    variant, so that an interrupted bench keeps what it measured)."""
    if "scratch" in results["variants"]:
        scratch = results["variants"]["scratch"]["rows"]
        final = scratch[-1]
        target = {x: final[x]["swap_mae"] for x in "ab"}
        results["target"] = {"step": final["step"], **target}
        for v in results["variants"].values():
            v["reaches_target_at"] = reached(v["rows"], target)
            v["last3_mean"] = {x: round(m, 4) for x, m in window(v["rows"], len(v["rows"]) - 1, 3).items()}
            v["scratch_steps_to_match_last3"] = scratch_equivalent(scratch, v["rows"])
            v["reaches_scratch_last3_at"] = reached_mean(v["rows"], window(scratch, len(scratch) - 1, 3))
    results["pretrain_steps"] = a.pretrain_steps
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
