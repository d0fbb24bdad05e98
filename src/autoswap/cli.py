"""`autoswap <command>`: one thin entry per DVC stage, plus the tools around them.

Every command reads params.yaml once into the validated `Settings` and hands it down. Problems
the user can fix print one line (`autoswap: <file or key>: <what to do>`) and exit non-zero
without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _settings(args):
    from autoswap.config import load

    return load(args.params)


def cmd_prepare(args):
    from autoswap.prepare import prepare

    prepare(_settings(args))


def cmd_train(args):
    from autoswap.train import train

    r = train(_settings(args))
    print(f"autoswap: trained {r['steps']} steps, loss A {r['loss_a']:.4f}, loss B {r['loss_b']:.4f}")


def cmd_evaluate(args):
    from autoswap.evaluate import evaluate

    r = evaluate(_settings(args), model_dir=args.model)
    for side, m in r.items():
        print(f"autoswap: {side.upper()}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))


def cmd_preview(args):
    from autoswap.preview import preview

    r = preview(_settings(args), model_dir=args.model)
    print(f"autoswap: wrote {r['grid']}")


def cmd_extract(args):
    from autoswap.extract import extract_to_dir

    s = _settings(args)
    if args.out.exists() and any(args.out.iterdir()) and not args.force:
        from autoswap.errors import UserError

        raise UserError(f"{args.out}: not empty; choose an empty folder or pass --force")
    r = extract_to_dir(list(args.inputs), args.out, s.extract, s.data.face_size, s.data.max_image_pixels)
    dropped = sum(len(v) for v in r["dropped"].values())
    print(f"autoswap: {r['kept']} face(s) from {r['files']} file(s) into {args.out}; {dropped} dropped")
    for reason, items in r["dropped"].items():
        for item in items:
            print(f"  dropped ({reason}): {item}")


def cmd_ui(args):
    import subprocess

    from autoswap import tracking

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"autoswap: warning: serving the MLflow UI on {args.host}: anyone who can reach it sees "
              "and can change every run", file=sys.stderr)
    uri = tracking.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--default-artifact-root", tracking.artifact_root(), "--host", args.host, "--port", str(args.port)]
    print(f"autoswap: MLflow UI on http://{args.host}:{args.port} (store {uri}); Ctrl+C stops it")
    return subprocess.call(cmd)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoswap", description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="settings file (default params.yaml)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="DVC stage: write the aligned face sets").set_defaults(fn=cmd_prepare)
    sub.add_parser("train", help="DVC stage: train (resumes from the last checkpoint)").set_defaults(fn=cmd_train)
    for name, fn, h in (("evaluate", cmd_evaluate, "DVC stage: metrics on the validation faces"),
                        ("preview", cmd_preview, "DVC stage: swap grid and loss plot")):
        sp = sub.add_parser(name, help=h)
        sp.add_argument("--model", type=Path, default=Path("models/final"), help="trained model folder")
        sp.set_defaults(fn=fn)
    ex = sub.add_parser("extract", help="detect and align faces in photos and videos")
    ex.add_argument("inputs", nargs="+", type=Path, help="image or video files, or folders")
    ex.add_argument("--out", type=Path, required=True, help="folder for the aligned crops")
    ex.add_argument("--force", action="store_true", help="write into a non-empty --out")
    ex.set_defaults(fn=cmd_extract)
    ui = sub.add_parser("ui", help="open the MLflow UI on this project's store (127.0.0.1)")
    ui.add_argument("--host", default="127.0.0.1", help="bind address; anything but loopback is exposed")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(fn=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) hides the lines that matter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from autoswap.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        rc = args.fn(args)
    except UserError as e:
        print(f"autoswap: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("autoswap: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:
        # disk full, permissions: name the file, no traceback
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"autoswap: {where}{e.strerror or e}; free space or fix permissions, then re-run", file=sys.stderr)
        return 1
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
