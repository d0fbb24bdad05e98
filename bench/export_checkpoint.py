"""A training checkpoint as a model folder, to swap and score with the weights of step N (how
docs/EXPERIMENTS.md, "The sharpening phase", compares the steps of one run).

    python bench/export_checkpoint.py --project DIR --steps 12000 14000 --out DIR

For each step N in models/checkpoints of the project (a ckpt-N that train.keep_last kept), builds
the networks as its params.yaml says, restores ckpt-N into them and writes OUT/mN as
models/final is written (three weight files and model.json, with steps N). `autoswap swap --model
OUT/mN` then swaps with them; train.init_from: OUT/mN starts a trial from them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, required=True, help="a project that has trained (models/checkpoints)")
    p.add_argument("--steps", type=int, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    out = args.out.resolve()
    os.chdir(args.project)
    sys.path.insert(0, str(Path("src").resolve()))
    from autoswap import model as M
    from autoswap.config import load
    from autoswap.train import build_trainer, final_card

    settings = load("params.yaml")
    trainer = build_trainer(settings)
    for n in args.steps:
        ckpt = Path("models/checkpoints") / f"ckpt-{n}"
        if not Path(f"{ckpt}.index").is_file():
            raise SystemExit(f"{ckpt}: no such checkpoint (train.keep_last keeps the newest only)")
        trainer.checkpoint().restore(str(ckpt)).expect_partial()
        M.save_final(out / f"m{n}", trainer.nets, final_card(settings, n))
        print(f"{ckpt} -> {out / f'm{n}'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
