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

    r = train(_settings(args), finish=args.finish)
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
    from autoswap.errors import UserError
    from autoswap.extract import extract_to_dir
    from autoswap.files import check_output_dir, output_owner

    s = _settings(args)
    check_output_dir(args.out, "--out", (s.data.dir_a, s.data.dir_b))
    if args.out.is_dir() and any(args.out.iterdir()):
        # --force replaces an earlier extraction here (only the faces its manifest lists), never other files
        if output_owner(args.out) != "extract":
            raise UserError(f"--out: {args.out} is not empty and not written by autoswap; "
                            "move its files or choose another folder")
        if not args.force:
            raise UserError(f"{args.out}: not empty; choose an empty folder or pass --force")
    r = extract_to_dir(list(args.inputs), args.out, s.extract, s.data.face_size, s.data.max_image_pixels)
    dropped = sum(len(v) for v in r["dropped"].values())
    print(f"autoswap: {r['kept']} face(s) from {r['files']} file(s) into {args.out}; {dropped} dropped")
    for reason, items in r["dropped"].items():
        for item in items:
            print(f"  dropped ({reason}): {item}")
    for angle, items in r.get("rotated", {}).items():
        for item in items:
            print(f"  found turned by {angle} degrees: {item}")


# ----------------------------------------------------------------------------- swap's flags
def _add_swap_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting that config.SwapSettings marks with one (SwapSettings.flags), its
    help the setting's description, its type the setting's: a new flag is a new field there."""
    from typing import Literal, get_args, get_origin

    from autoswap.config import SwapSettings

    for flag, key in SwapSettings.flags().items():
        field = SwapSettings.model_fields[key]
        kind = field.annotation
        kw: dict = {"help": f"{field.description} (swap.{key})"}
        if kind is bool:
            kw |= {"action": argparse.BooleanOptionalAction, "default": None}
        elif get_origin(kind) is Literal:
            kw["choices"] = get_args(kind)
        else:
            kw["metavar"] = flag.upper()
            if kind in (int, float, Path):
                kw["type"] = kind  # anything else (swap.faces: "largest", "0,2") goes to pydantic as typed
        parser.add_argument(f"--{flag}", dest=f"swap_{key}", **kw)


def _swap_settings(args):
    """params.yaml's settings with the swap flags given on the command line in place of its
    values (a flag left out keeps params.yaml's); a bad value is a one-line error naming the flag."""
    from pydantic import ValidationError

    from autoswap.config import SwapSettings
    from autoswap.errors import UserError

    s = _settings(args)
    flags = SwapSettings.flags()
    given = {key: getattr(args, f"swap_{key}") for key in flags.values()}
    over = {key: v for key, v in given.items() if v is not None}
    if not over:
        return s
    try:
        swap = SwapSettings(**{**s.swap.model_dump(), **over})
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else ""
        flag = next((f for f, k in flags.items() if k == key), key)
        raise UserError(f"--{flag}: {err['msg']} (got {err.get('input')!r})") from None
    return s.model_copy(update={"swap": swap})


def cmd_swap(args):
    from autoswap.errors import UserError
    from autoswap.swap import swap_files

    s = _swap_settings(args)
    if args.demo:  # the DVC stage's command before it had its own
        if args.input or args.output:
            raise UserError("--demo takes no INPUT or OUTPUT (it swaps swap.demo's photo and clip)")
        return _run_demo(s, args.quiet)
    if args.input is None or args.output is None:
        raise UserError("swap needs INPUT and OUTPUT; see `autoswap swap --help`")
    results = swap_files(s, args.input, args.output, force=args.force, progress=not args.quiet)
    for r in results:
        if r["status"] == "swapped":
            what = (f"{r['faces']} face(s)" if r["kind"] == "image"
                    else f"{r['swapped_frames']} of {r['frames']} frames")
            print(f"autoswap: {r['input']} -> {r['output']}: swapped {what}; marked (metadata, watermark, C2PA)")
        elif r["status"] == "copied":
            print(f"autoswap: {r['input']} -> {r['output']}: no face, copied unchanged")
    return 0 if any(r["status"] in ("swapped", "copied") for r in results) else 1


def _run_demo(settings, quiet: bool) -> int:
    from autoswap.demo import demo

    r = demo(settings, progress=not quiet)
    print(f"autoswap: demo swapped into {settings.swap.demo.out_dir} (watermark ID {r['watermark_id']})")
    return 0


def cmd_demo(args):
    return _run_demo(_settings(args), args.quiet)


def cmd_verify(args):
    import json

    from autoswap.config import load
    from autoswap.mark import key_dir, verify

    configured = load(args.params).swap.key_dir if args.params.is_file() else None
    r = verify(args.file, key_dir(configured))
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        m, w, c = r["metadata"], r["watermark"], r["c2pa"]
        print(f"autoswap: {r['file']} ({r['kind']})")
        if m["found"]:
            print(f"  metadata:  AI-generated statement in {', '.join(m['where'])}: {m['generator'] or '?'}"
                  + (f", watermark ID {m['watermark_id']}" if m["watermark_id"] else ""))
        else:
            print("  metadata:  no AI-generated statement")
        frames = f", in {w['frames']['carrying_id']} of {w['frames']['sampled']} sampled frames alone" if "frames" in w else ""
        if w["found"]:
            run = f"; MLflow run {w['mlflow_run_id']}" if w.get("mlflow_run_id") else ""
            print(f"  watermark: ID {w['id']} (agreement {w['confidence']:.2f}{frames}{run})")
        else:
            print(f"  watermark: none found (agreement {w['confidence']:.2f}{frames})")
        if c["found"]:
            trust = "signer untrusted (a locally made certificate)" if c["untrusted"] else "signer trusted"
            src = (c["digital_source_type"] or "").rsplit("/", 1)[-1] or "no digitalSourceType"
            print(f"  c2pa:      manifest {c['state']}, {trust}; {c['signer']}; actions {', '.join(c['actions'])}"
                  f" ({src})" + (f"; problems: {', '.join(c['errors'])}" if c["errors"] else ""))
        else:
            print("  c2pa:      no manifest")
    return 0 if (r["metadata"]["found"] or r["watermark"]["found"] or r["c2pa"]["found"]) else 1


def cmd_compare(args):
    from autoswap.compare import compare
    from autoswap.config import load

    experiment = args.experiment or (load(args.params).tracking.experiment if args.params.is_file() else "autoswap")
    tags = tuple(t.strip() for t in (args.tags or "").split(",") if t.strip())
    r = compare(experiment, args.out, tags)
    print(r["table"])
    print(f"autoswap: {len(r['rows'])} run(s) of experiment '{experiment}'; wrote {r['out']}")


def _loopback_hosts(host: str, port: int) -> list[str]:
    """The Host headers a browser sends to a UI bound to loopback `host`: localhost and the
    address itself, with the port (and without it on port 80, where browsers leave it out)."""
    names = ["localhost", "127.0.0.1"]
    if host not in names:
        names.append(f"[{host}]" if ":" in host else host)
    return [f"{n}:{port}" for n in names] + (names if port == 80 else [])


def cmd_ui(args):
    import ipaddress

    from autoswap import tracking
    from autoswap.errors import UserError

    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:  # only ever from an explicit --host: the default is 127.0.0.1
        print(f"autoswap: warning: serving the MLflow UI on {args.host}: anyone who can reach it sees "
              "and can change every run (to open it by a host name, set MLFLOW_SERVER_ALLOWED_HOSTS)",
              file=sys.stderr)
    uri = tracking.tracking_uri()
    if not uri.startswith("sqlite:///"):
        raise UserError(f"MLFLOW_TRACKING_URI is {uri}: open that tracking server's own UI instead")
    tracking.ensure_store()  # a new store's tables, under the lock trainings take, not in MLflow's start-up
    # one worker is plenty for one person, and starts in a quarter of the time; MLflow's job runner
    # (GenAI evaluations, which autoswap never uses) would add seven ~250 MB processes
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--default-artifact-root", tracking.artifact_root(), "--host", args.host, "--port", str(args.port),
           "--workers", "1"]
    if loopback and not os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
        # DNS rebinding: a web page whose host name resolves to 127.0.0.1 would reach the UI from
        # the browser; MLflow's default Host list also takes any private IP and any port. Only the
        # names this server is opened by pass (the env variable, when set, is the user's choice)
        cmd += ["--allowed-hosts", ",".join(_loopback_hosts(args.host, args.port))]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    print(f"autoswap: MLflow UI on http://{args.host}:{args.port} (store {uri}); Ctrl+C stops it")
    print("autoswap: choose 'Model training' at its top left for the runs and their loss charts", flush=True)
    sys.stderr.flush()
    # become the server (exec), so that Ctrl+C and SIGTERM reach it and stop it with its worker
    os.execve(sys.executable, cmd, env)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoswap", description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="settings file (default params.yaml)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="DVC stage: write the aligned face sets").set_defaults(fn=cmd_prepare)
    tr = sub.add_parser("train", help="DVC stage: train (resumes from the last checkpoint)")
    tr.add_argument("--finish", action="store_true",
                    help="train no more: write models/final and metrics/train.json from the last checkpoint")
    tr.set_defaults(fn=cmd_train)
    for name, fn, h in (("evaluate", cmd_evaluate, "DVC stage: metrics on the validation faces"),
                        ("preview", cmd_preview, "DVC stage: swap grid and loss plot")):
        sp = sub.add_parser(name, help=h)
        sp.add_argument("--model", type=Path, default=Path("models/final"), help="trained model folder")
        sp.set_defaults(fn=fn)
    ex = sub.add_parser("extract", help="detect and align faces in photos and videos")
    ex.add_argument("inputs", nargs="+", type=Path, help="image or video files, or folders")
    ex.add_argument("--out", type=Path, required=True, help="folder for the aligned crops")
    ex.add_argument("--force", action="store_true",
                    help="replace an earlier extraction in --out (only the faces its manifest lists)")
    ex.set_defaults(fn=cmd_extract)
    sw = sub.add_parser("swap", help="swap faces in a photo, a folder or a video (output marked as AI-generated)",
                        description="Swap faces with a trained model. Flags override params.yaml's swap section. "
                        "Everything written carries an AI-generated statement, an invisible watermark and a "
                        "C2PA manifest; these cannot be switched off.")
    sw.add_argument("input", nargs="?", type=Path, help="photo, video, or folder of them")
    sw.add_argument("output", nargs="?", type=Path, help="output file (same format) or folder; never INPUT")
    _add_swap_flags(sw)
    sw.add_argument("--force", action="store_true", help="replace an existing OUTPUT (never INPUT)")
    sw.add_argument("--demo", action="store_true", help="the same as `autoswap demo` (with these flags)")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(fn=cmd_swap)
    dm = sub.add_parser("demo", help="DVC stage: swap the demo photo and clip, verify and log them (swap.demo)")
    dm.add_argument("--quiet", action="store_true", help="no progress bar")
    dm.set_defaults(fn=cmd_demo)
    vf = sub.add_parser("verify", help="report the AI-generated marks (metadata, watermark, C2PA) of a file")
    vf.add_argument("file", type=Path, help="photo or video")
    vf.add_argument("--json", action="store_true", help="the full report as JSON")
    vf.set_defaults(fn=cmd_verify)
    ui = sub.add_parser("ui", help="open the MLflow UI on this project's store (127.0.0.1)")
    ui.add_argument("--host", default="127.0.0.1", help="bind address; anything but loopback is exposed")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(fn=cmd_ui)
    cp = sub.add_parser("compare", help="table and plot of the MLflow runs (learning rates, warp schedules, ...)")
    cp.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment in params.yaml)")
    cp.add_argument("--out", type=Path, default=Path("compare.png"), help="comparison PNG to write")
    cp.add_argument("--tags", help="run tags to show too, comma-separated (e.g. autoswap.gpu,autoswap.git.dirty)")
    cp.set_defaults(fn=cmd_compare)
    return p


def _quiet_tensorflow_start() -> None:
    """Import TensorFlow and probe its devices with file descriptor 2 sent to /dev/null, then
    say in one line what it runs on. TF 2.21 writes its start-up chatter (oneDNN notice, CUDA
    probing, cuInit errors on CPU-only machines) through absl before its log level is read, so
    TF_CPP_MIN_LOG_LEVEL cannot hide it; AUTOSWAP_TF_LOGS=1 shows it again."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)
    where = f"{len(gpus)} GPU(s)" if gpus else "CPU"
    print(f"autoswap: TensorFlow {tf.__version__} on {where}", flush=True)


# the commands that always run TensorFlow; not prepare: the synthetic renderer and aligned folders
# need no TensorFlow, and importing it there would cost ~600 MB of memory for nothing
_TF_COMMANDS = {"train", "evaluate", "preview", "extract", "swap", "demo"}


# how each command writes somewhere else, for the one line of an I/O error (disk full, read-only)
_ELSEWHERE = {
    "prepare": "write elsewhere with data.faces_dir in params.yaml",
    "train": "write elsewhere with train.models_dir in params.yaml",
    "preview": "write elsewhere with preview.out_dir in params.yaml",
    "extract": "write elsewhere with --out",
    "swap": "write elsewhere: another OUTPUT",
    "demo": "write elsewhere with swap.demo.out_dir in params.yaml",
    "compare": "write elsewhere with --out",
}


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) hides the lines that matter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # a local tool: MLflow's usage telemetry is off unless the user turns it on
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from autoswap.errors import UserError

    args = build_parser().parse_args(argv)
    if args.command in _TF_COMMANDS and not os.environ.get("AUTOSWAP_TF_LOGS"):
        _quiet_tensorflow_start()
    try:
        rc = args.fn(args)
    except UserError as e:
        print(f"autoswap: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("autoswap: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:
        # disk full, permission denied, read-only: name the file and what to do, no traceback
        from autoswap.errors import os_error_line

        print(f"autoswap: {os_error_line(e, _ELSEWHERE.get(args.command, 'write elsewhere'))}", file=sys.stderr)
        return 1
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
