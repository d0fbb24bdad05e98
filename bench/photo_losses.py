"""Where identity and sharpness are lost between the network's crop and the swapped photo.

For a trained project (its params.yaml, models/final and data/faces), the validation faces are
swapped in their source photos or frames with `autoswap swap`'s path (autoswap.photoscore),
changing one step at a time, and each variant is scored on the photos as evaluate scores them:

- committed: the swap as params.yaml sets it (the photo_* scores of metrics/eval.json);
- colour none: no colour transfer (the decoder's own colours);
- mask wide: no erosion and a narrow feather (more of the new face, a harder edge);
- colour none + mask wide;
- sharpen 0.5 / 1.0: faceswap's convert sharpen (an unsharp mask at the frame's scale);
- resample only: the network replaced by "output = input" (the model's own 64 px view of the
  original, pasted back): what the crop, resize and paste round trip alone costs, with a
  perfect network; with sharpen 0 / 0.5 / 0.75 / 1.0: the sharpen that gives that loss back
  and no more (a perfect network's paste at about 1.0 of the original);
- reconstruction: the face through its own decoder (X -> X): what the network's blur costs,
  with no identity change.

    python bench/photo_losses.py --project /work/exp/spread/isa-native --name demo
    python bench/photo_losses.py --project /work/exp/real1/project --name real_pair

Writes bench/results/photo_losses_<name>.json, and logs each variant as an MLflow run of the
project's store (experiment autoswap-convert-trials, tagged with the model's training run).
Seconds to a minute a variant on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "committed": {},
    "colour none": {"color": "none"},
    "colour histogram": {"color": "histogram"},
    "mask wide": {"mask_erode": 0.0, "mask_feather": 0.02},
    "colour none + mask wide": {"color": "none", "mask_erode": 0.0, "mask_feather": 0.02},
    "sharpen 0.5": {"sharpen": 0.5},
    "sharpen 1.0": {"sharpen": 1.0},
    "mask wide + sharpen 0.5": {"mask_erode": 0.0, "mask_feather": 0.02, "sharpen": 0.5},
    "mask wide + sharpen 1.0": {"mask_erode": 0.0, "mask_feather": 0.02, "sharpen": 1.0},
    "resample only": {"_network": "identity"},
    # the sharpen that gives back what the round trip loses, and no more: a perfect network's
    # paste sharpened to about 1.0 of the original (past 1.0 is halos, not detail)
    "resample only, sharpen 0": {"_network": "identity", "sharpen": 0.0},
    "resample only, sharpen 0.5": {"_network": "identity", "sharpen": 0.5},
    "resample only, sharpen 0.75": {"_network": "identity", "sharpen": 0.75},
    "resample only, sharpen 1.0": {"_network": "identity", "sharpen": 1.0},
    "reconstruction": {"_network": "own decoder"},
}


def _log_trial(name: str, over: dict, network: str | None, res: dict, model_dir: Path) -> None:
    """Each variant as an MLflow run of the project's store (experiment autoswap-convert-trials),
    tagged with the training run it converts with, so trials sit beside the model in the UI."""
    import mlflow

    from autoswap import tracking

    model_run = tracking.model_run(model_dir)
    if model_run is None:
        return
    run_id, _ = model_run
    exp = tracking.setup("autoswap-convert-trials")  # the project's store, its artifact root
    with mlflow.start_run(experiment_id=exp, run_name=name, tags={"autoswap.parent_run": run_id, "autoswap.network": network or "trained"}):
        mlflow.log_params({f"swap.{k}": v for k, v in over.items()})
        mlflow.log_metrics({f"{d}.{k}": v for d, m in res.items() for k, v in m.items()
                            if isinstance(v, int | float) and v == v})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--sheets", type=Path, help="also a sheet of originals and swaps per variant in this folder "
                   "(keep real people's photos out of git)")
    args = p.parse_args()
    os.chdir(args.project)
    from autoswap import photoscore, swap
    from autoswap.config import load
    from autoswap.evaluate import identity_centroids
    from autoswap.pipeline import BatchSpec, load_faces

    settings = load("params.yaml")
    spec = BatchSpec.from_settings(settings)
    train = {s: load_faces(settings.data.faces_dir / s / "train", settings.data.face_size)[0] for s in "ab"}
    centroids = identity_centroids(spec, train, settings.evaluate.identity_faces or 64)
    model_dir = Path("models/final")
    out = {"project": str(args.project), "settings_swap": settings.swap.model_dump(mode="json"), "variants": {}}
    for name in args.variants:
        over = dict(VARIANTS[name])
        network = over.pop("_network", None)
        s = settings.model_copy(update={"swap": settings.swap.model_copy(update=over)})
        call = swap.FaceSwapModel.__call__
        init = swap.FaceSwapModel.__init__
        if network == "identity":
            swap.FaceSwapModel.__call__ = lambda self, x: x.astype("float32")
        if network == "own decoder":
            def own(self, model_dir, to, _init=init):  # to the face's own person, not the other
                _init(self, model_dir, "a" if to == "b" else "b")
            swap.FaceSwapModel.__init__ = own
        try:
            res, groups = {}, []
            for x, y in (("a", "b"), ("b", "a")):
                pairs = photoscore.swap_val_photos(s, model_dir, x)
                res[f"{x}_to_{y}"] = {k: round(v, 4) if isinstance(v, float) else v
                                      for k, v in photoscore.score_pairs(pairs, centroids[y], centroids[x]).items()}
                groups.append((f"{name}: {x.upper()} to {y.upper()}", pairs[:12]))
            if args.sheets:
                args.sheets.mkdir(parents=True, exist_ok=True)
                photoscore.sheet(groups, args.sheets / f"{name.replace(' ', '_').replace('+', 'and')}.png")
        finally:
            swap.FaceSwapModel.__call__, swap.FaceSwapModel.__init__ = call, init
        out["variants"][name] = res
        print(name, json.dumps(res), flush=True)
        _log_trial(name, over, network, res, model_dir)
    dst = ROOT / "bench" / "results" / f"photo_losses_{args.name}.json"
    dst.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
