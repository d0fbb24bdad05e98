"""Training and input-pipeline throughput of autoswap on this machine, side by side with the seed.

    PYTHONPATH=src .venv/bin/python bench/train_throughput.py \
        [--seed-ref ~/.venv-seedref/bin/python] [--mixed-precision] [--jit] \
        [--rounds 3] [--steps 4] [--warmup 2]
    PYTHONPATH=src .venv/bin/python bench/train_throughput.py --profile [--mixed-precision]

Measures, at the seed's full configuration (64 px, `ModelSettings()` widths, 16 faces per person,
32 images per step):

* train: images/s of our training loop as `autoswap.train` runs it -- the tf.data pipeline
  (`make_batch` for A and B, parallel map, prefetch 2) feeding the compiled step (shared encoder
  on the concatenated A+B batch, both decoders, MAE, Adam 5e-5 / beta_1 0.5, constant schedule,
  op determinism on as `train.deterministic` defaults). Per-step wall times after warm-up; the
  figure is 32 / median step time. Variants: float32 (always), mixed_bfloat16 (--mixed-precision),
  XLA (--jit), both. The variants live in one process and their timed steps alternate, so a
  change in the machine's load hits all of them alike.
* data: images/s of the input pipeline alone (the same tf.data pipeline, nothing consuming it).
* with --seed-ref PYTHON: the seed's program (`seed_reference.py`, run under PYTHON, TF 2.15 +
  tensorflow-addons) on the same JPEG files: `seed train` (batch 16 per person, --seed-steps
  steps) and `MODE=data` (batch 64, --seed-data-batches batches). Our measurements and the
  seed's alternate round by round; ratios are of medians over rounds.

Faces: 64 per person (--images) rendered at 256 px by `autoswap.synthetic.render` and saved as
JPEG in a temporary folder; the seed reads and resizes them to 128, we decode them once
(`load_faces`, 128 px) as training does.

Each measurement also records `foreign_cpu`: the share of the machine's CPU time used by other
processes during it (from /proc/stat). On a shared machine figures with a high share are slowed
by the neighbours and should be compared only with figures taken at the same time.

--profile instead traces a few of our steps with the TensorFlow profiler (inter-op parallelism 1,
so the ops run one after another and their times add up to the step) and prints the time by
kind (convolution forward / backprop-filter / backprop-input, dense, Adam update, other) and by
layer, plus separate timings of forward, forward+backward, and the optimizer update alone.

Results: bench/results/train_throughput.json (or train_profile.json), and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TARGETS = {"train": 2.0, "data": 5.0}


# ----------------------------------------------------------------------------- machine
from autoswap.tracking import cpu_model  # noqa: E402 - the same name the runs' provenance records


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


class ForeignCPU:
    """Share of the machine's CPU capacity used by processes other than this one (and the
    children it waited for) between start() and stop(), from /proc/stat."""

    @staticmethod
    def _busy() -> float | None:
        try:
            v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError):
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def start(self):
        self.b0, self.o0, self.t0 = self._busy(), self._own(), time.perf_counter()
        return self

    def stop(self) -> float | None:
        b1, o1, t1 = self._busy(), self._own(), time.perf_counter()
        if self.b0 is None or b1 is None:
            return None
        others = max(0.0, (b1 - self.b0) - (o1 - self.o0))
        return round(min(1.0, others / ((t1 - self.t0) * (os.cpu_count() or 1))), 3)


# ----------------------------------------------------------------------------- data
def write_faces(root: Path, per_person: int, size: int = 256, seed: int = 0) -> tuple[Path, Path]:
    """`per_person` synthetic faces of A and B as JPEG files in root/a, root/b."""
    from PIL import Image

    from autoswap.config import SyntheticSettings
    from autoswap.synthetic import image_conditions, render

    cfg = SyntheticSettings()
    dirs = []
    for person in ("a", "b"):
        d = root / person
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_person):
            img = render(person, image_conditions(cfg, seed, person, "train", i), size)
            Image.fromarray(img).save(d / f"{i:05d}.jpg", quality=92)
        dirs.append(d)
    return dirs[0], dirs[1]


# ----------------------------------------------------------------------------- our side
def settings_for(args, jit: bool, bf16: bool, mm: bool = False):
    from autoswap.config import Settings

    s = Settings()  # defaults: the seed's model (64 px, full widths), batch 16, Adam 5e-5 b1 0.5
    return s.model_copy(
        update={
            "train": s.train.model_copy(
                update={
                    "batch_size": args.batch,
                    "jit_compile": jit,
                    "mixed_precision": bf16,
                    "conv_as_matmul": mm,
                }
            )
        }
    )


def make_dataset(settings, faces_a, faces_b, start: int = 0, stop: int = 10**9):
    """autoswap.train's single-device input pipeline (train.data_on_device false, the default)."""
    from autoswap.pipeline import BatchSpec
    from autoswap.pipeline import make_dataset as train_dataset

    return train_dataset(BatchSpec.from_settings(settings), faces_a, faces_b, start, stop)


class Ours:
    """One variant of our training loop: nets, Adam, compiled step, its own dataset iterator."""

    def __init__(self, name: str, settings, faces_a, faces_b):
        import tensorflow as tf

        from autoswap.train import build_trainer, make_forward_backward

        self.name, self.settings = name, settings
        t = settings.train
        # the very trainer `autoswap train` builds: seeding, precision policy, networks, Adam
        trainer = build_trainer(settings)
        self.nets, self.optimizer = trainer.nets, trainer.optimizer
        self.optimizer_class = type(self.optimizer).__name__
        train_vars = [v for n in self.nets for v in n.trainable_variables]
        self.n_params = sum(int(np.prod(v.shape)) for v in train_vars)
        fb = make_forward_backward(self.nets, self.optimizer, t.loss)
        self.step_fn = tf.function(fb, jit_compile=t.jit_compile)  # as autoswap.train compiles it
        self.it = iter(make_dataset(settings, faces_a, faces_b))
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.foreign: list[float | None] = []
        self.compile_s = None
        self.loss = None

    def step(self) -> tuple[float, float]:
        """-> (wall s, process CPU s) of one step, including its batch from the pipeline."""
        c0, t0 = time.process_time(), time.perf_counter()
        _, batch = next(self.it)
        la, lb = self.step_fn(*batch)
        self.loss = (float(np.ravel(la)[0]), float(np.ravel(lb)[0]))  # waits for the step
        return time.perf_counter() - t0, time.process_time() - c0

    def warmup(self, n: int):
        for i in range(n):
            dt, _ = self.step()
            if i == 0:
                self.compile_s = round(dt, 2)

    def timed(self) -> None:
        fc = ForeignCPU().start()
        wall, cpu = self.step()
        self.times.append(wall)
        self.cpu.append(cpu)
        self.foreign.append(fc.stop())


def time_our_data(settings, faces_a, faces_b, n_elements: int, warmup: int = 3) -> dict:
    """Images/s of the training input pipeline alone: a fresh iterator, warm-up, then
    n_elements elements of 2 x batch images."""
    ds = make_dataset(settings, faces_a, faces_b)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    fc = ForeignCPU().start()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n_elements):
        el = next(it)
    el[1][0].numpy()  # waits for the last batch
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = 2 * settings.train.batch_size * n_elements
    return {"img_s": round(n / dt, 1), "cpu_ms_per_img": round(1000 * cpu / n, 3), "foreign_cpu": fc.stop()}


# ----------------------------------------------------------------------------- roofline
def train_gflop_per_image(model_settings) -> float:
    """GFLOP (2 x multiply-adds) one image costs in a training step: the encoder and its person's
    decoder, forward plus both gradients (input and weights) of every convolution and dense
    layer, except the input gradient of the first layer, which nothing needs. The elementwise
    work (activations, loss, Adam) is left out: it is a few percent."""
    import keras

    from autoswap import model as M

    enc, dec, _ = M.build(model_settings)
    total = 0.0
    for net in (enc, dec):
        for layer in net.layers:
            if isinstance(layer, keras.layers.Conv2D):
                _, h, w, f = layer.output.shape
                fwd = 2.0 * h * w * f * int(np.prod(layer.kernel.shape[:3]))
            elif isinstance(layer, keras.layers.Dense):
                fwd = 2.0 * int(np.prod(layer.kernel.shape))
            else:
                continue
            total += fwd * (2 if (net is enc and layer.name == "down0") else 3)
    return total / 1e9


def matmul_gflop_s(dtype: str, repeats: int = 10) -> float:
    """This machine's rate on one large matmul, the same shape as the encoder's up_conv run as a
    matmul ((512 x 9216) @ (9216 x 2048)): what a convolution written as a matmul can reach."""
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal((512, 9216), (0, 1)), dtype)
    b = tf.cast(tf.random.stateless_normal((9216, 2048), (0, 2)), dtype)
    f = tf.function(tf.matmul)
    f(a, b).numpy()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).numpy()
        ts.append(time.perf_counter() - t0)
    return 2 * 512 * 9216 * 2048 / statistics.median(ts) / 1e9


# ----------------------------------------------------------------------------- the seed
# Runs seed_reference.py unchanged, with time.time wrapped so that the two calls its timed loop
# makes also read the process CPU time (all threads): CPU seconds of exactly the timed part.
SEED_WRAPPER = """import json, os, runpy, sys, time
script = os.path.abspath(sys.argv[1])
marks, _time = [], time.time
def _marked_time():
    now = _time()
    if sys._getframe(1).f_code.co_filename == script:
        marks.append((now, time.process_time()))
    return now
time.time = _marked_time
sys.argv = [script] + sys.argv[2:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    if len(marks) >= 2:
        print("SEED_TIMING " + json.dumps({"wall_s": marks[-1][0] - marks[0][0], "cpu_s": marks[-1][1] - marks[0][1]}), flush=True)
"""


def run_seed(python: str, script: Path, dir_a: Path, dir_b: Path, mode: str, batch: int, n: int) -> dict:
    env = dict(os.environ, MODE=mode, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    wrapper = dir_a.parent / "seed_wrapper.py"
    wrapper.write_text(SEED_WRAPPER)
    fc = ForeignCPU().start()
    p = subprocess.run(
        [python, str(wrapper), str(script), str(dir_a), str(dir_b), str(batch), str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    foreign = fc.stop()
    out = p.stdout + p.stderr
    if mode == "data":
        m = re.search(r"seed data: ([\d.]+) img/s", out)
    else:
        m = re.search(r"seed train: ([\d.]+) s/step, ([\d.]+) img/s", out)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"seed reference failed (rc {p.returncode}):\n{out[-3000:]}")
    img_s = float(m.group(1) if mode == "data" else m.group(2))
    res = {"img_s": img_s}
    t = re.search(r"SEED_TIMING (\{.*\})", out)
    if t:
        cpu = json.loads(t.group(1))["cpu_s"]
        if mode == "data":
            res["cpu_ms_per_img"] = round(1000 * cpu / (n * batch), 3)
        else:
            res["cpu_s_per_step"] = round(cpu / n, 3)
    return res | {"foreign_cpu": foreign}


def seed_tf_version(python: str) -> str | None:
    try:
        p = subprocess.run(
            [python, "-c", "import tensorflow as tf; print(tf.__version__)"],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )
        return p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------- profile
def _layer_and_kind(name: str, op: str) -> tuple[str, str]:
    m = re.search(r"(encoder|decoder_[ab])(?:_\d+)?/(\w+?)(?:_\d+)?/", name)
    layer = f"{m.group(1)}/{m.group(2)}" if m else ("adam" if "adam" in name.lower() else "other")
    if layer == "adam":
        return layer, "adam update"
    bwd = "gradient_tape" in name
    if "Conv2DBackpropFilter" in op:
        return layer, "conv backprop-filter (+bias grad)"
    if "Conv2DBackpropInput" in op:
        return layer, "conv backprop-input"
    if "Conv2D" in op:
        return layer, "conv forward (fused bias+leaky_relu)"
    if "MatMul" in op and layer in ("encoder/latent", "encoder/expand"):
        return layer, "dense backward" if bwd else "dense forward"
    if "MatMul" in op:  # a convolution run as a matmul (train.conv_as_matmul)
        return layer, "conv as matmul, backward" if bwd else "conv as matmul, forward"
    return layer, "other backward" if bwd else "other forward"


def profile(args, faces_a, faces_b) -> dict:
    variants = [("ours", False, True)] + ([("ours_bf16", True, True)] if args.mixed_precision else [])
    if args.direct_conv:
        variants += [(n + "_directconv", bf16, False) for n, bf16, _ in variants]
    return {name: _profile_variant(args, name, bf16, mm, faces_a, faces_b) for name, bf16, mm in variants}


def _profile_variant(args, name: str, bf16: bool, mm: bool, faces_a, faces_b) -> dict:
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from autoswap.losses import mae as mae_loss

    s = settings_for(args, False, bf16, mm)
    o = Ours(name, s, faces_a, faces_b)
    _, (wa, ta, wb, tb) = next(o.it)
    enc, da, db = o.nets
    b = s.train.batch_size
    mae = mae_loss  # the default train.loss (kind mae)
    train_vars = [v for n in o.nets for v in n.trainable_variables]

    @tf.function
    def forward(wa, ta, wb, tb):
        z = enc(tf.concat([wa, wb], 0), training=True)
        return mae(ta, da(z[:b], training=True)) + mae(tb, db(z[b:], training=True))

    @tf.function
    def grads(wa, ta, wb, tb):
        with tf.GradientTape() as tape:
            loss = forward(wa, ta, wb, tb)
        return tape.gradient(loss, train_vars)

    g = grads(wa, ta, wb, tb)

    @tf.function
    def apply(g):
        o.optimizer.apply_gradients(zip(g, train_vars, strict=True))

    def med(f, *a):
        """median (wall s, process CPU s) of f(*a) over --steps calls, after one untimed call"""
        f(*a)
        ts = []
        for _ in range(args.steps):
            c0, t0 = time.process_time(), time.perf_counter()
            r = f(*a)
            if r is not None:
                np.asarray(tf.nest.flatten(r)[0])  # waits for the result
            ts.append((time.perf_counter() - t0, time.process_time() - c0))
        return {
            "wall_s": round(statistics.median(w for w, _ in ts), 3),
            "cpu_s": round(statistics.median(c for _, c in ts), 3),
        }

    def step():
        return np.asarray(o.step_fn(wa, ta, wb, tb)[0])

    step(), step()
    parts = {
        "forward": med(forward, wa, ta, wb, tb),
        "forward_backward": med(grads, wa, ta, wb, tb),
        "optimizer_apply": med(apply, g),
        "step": med(step),
    }
    logdir = Path(tempfile.mkdtemp(prefix="autoswap-prof-"))
    n = args.steps
    fc = ForeignCPU().start()
    tf.profiler.experimental.start(str(logdir))
    for _ in range(n):
        step()
    tf.profiler.experimental.stop()
    foreign = fc.stop()
    xs = xplane_pb2.XSpace()
    xs.ParseFromString(next(logdir.rglob("*.xplane.pb")).read_bytes())
    by_kind: dict[str, float] = {}
    by_layer: dict[str, dict[str, float]] = {}
    wall = 0.0
    for plane in xs.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for ev in line.events:
                nm = plane.event_metadata[ev.metadata_id].name
                d = ev.duration_ps / 1e12 / n
                if line.name == "python" and nm.startswith("EagerLocalExecute: __inference"):
                    wall += d
                if not line.name.startswith("tf_Compute") or nm.startswith("ExecutorState") or ":" not in nm:
                    continue
                opname, op = nm.rsplit(":", 1)
                layer, kind = _layer_and_kind(opname, op)
                by_kind[kind] = by_kind.get(kind, 0.0) + d
                by_layer.setdefault(layer, {})
                by_layer[layer][kind] = by_layer[layer].get(kind, 0.0) + d
    total = sum(by_kind.values())
    return {
        "parts": parts,
        "traced_step_s": round(wall, 3),
        "op_time_s": round(total, 3),
        "foreign_cpu": foreign,
        "by_kind": {
            k: {"s": round(v, 3), "share": round(v / total, 3)}
            for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
        },
        "by_layer": {
            k: {kk: round(vv, 3) for kk, vv in v.items()} | {"total": round(sum(v.values()), 3)}
            for k, v in sorted(by_layer.items(), key=lambda kv: -sum(kv[1].values()))
            if sum(v.values()) >= 0.005
        },
    }


def print_profile(res: dict) -> None:
    for name, r in res.items():
        print(
            f"\n{name}: traced step {r['traced_step_s']} s (ops {r['op_time_s']} s, foreign cpu {r['foreign_cpu']})"
        )
        for part, v in r["parts"].items():
            print(f"  {part:28s} {v['wall_s']:7.3f} s wall {v['cpu_s']:7.3f} s CPU")
        print("  traced op time by kind:")
        for k, v in r["by_kind"].items():
            print(f"    {k:38s} {v['s']:7.3f} s {100 * v['share']:5.1f} %")
        print("  by layer (s/step):")
        for k, v in list(r["by_layer"].items())[:14]:
            rest = ", ".join(f"{kk.split(' (')[0]} {vv}" for kk, vv in v.items() if kk != "total")
            print(f"    {k:22s} {v['total']:6.3f}  ({rest})")


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--seed-ref",
        metavar="PYTHON",
        help="interpreter with TF 2.15 + tensorflow-addons; runs the seed's program side by side",
    )
    ap.add_argument(
        "--seed-script", type=Path, default=REPO / ".." / "shared" / "bench" / "seed_reference.py"
    )
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of ours and the seed")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per variant per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before the first round")
    ap.add_argument("--seed-steps", type=int, default=3, help="timed steps of each seed run")
    ap.add_argument("--data-images", type=int, default=1280, help="images per input-pipeline measurement")
    ap.add_argument("--seed-data-batch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="faces per person per step (the seed's 16)")
    ap.add_argument("--images", type=int, default=64, help="JPEG faces per person")
    ap.add_argument("--jit", action="store_true", help="also measure the XLA (jit_compile) step")
    ap.add_argument("--mixed-precision", action="store_true", help="also measure mixed_bfloat16")
    ap.add_argument("--no-fp32", action="store_true", help="skip the float32 variant")
    ap.add_argument(
        "--direct-conv",
        action="store_true",
        help="also measure each variant with train.conv_as_matmul false (oneDNN's direct convolutions)",
    )
    ap.add_argument("--no-data", action="store_true", help="skip the input-pipeline measurements")
    ap.add_argument("--no-train", action="store_true", help="skip the training measurements")
    ap.add_argument(
        "--no-determinism", action="store_true", help="leave op determinism off (train.deterministic: false)"
    )
    ap.add_argument("--inter-op", type=int, help="tf.config.threading inter-op threads (ours)")
    ap.add_argument("--intra-op", type=int, help="tf.config.threading intra-op threads (ours)")
    ap.add_argument("--profile", action="store_true", help="profile our step instead (see above)")
    ap.add_argument(
        "--out",
        type=Path,
        help="JSON output (default bench/results/train_throughput.json, "
        "or train_profile.json with --profile)",
    )
    args = ap.parse_args()

    import tensorflow as tf

    if args.profile and args.inter_op is None:
        args.inter_op = 1  # ops one after another: their times add up to the step
    if args.inter_op is not None:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    if args.intra_op is not None:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    import keras

    from autoswap.pipeline import load_faces

    info = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "cpu_flags": cpu_flags(),
            "platform": platform.platform(),
        },
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "env": {
            k: os.environ[k]
            for k in sorted(os.environ)
            if k.startswith(("TF_", "ONEDNN_", "DNNL_", "OMP_", "XLA_")) and k != "TF_CPP_MIN_LOG_LEVEL"
        },
        "threads": {"inter_op": args.inter_op, "intra_op": args.intra_op},
        "config": {
            "input_size": 64,
            "model": "ModelSettings() defaults (the seed's widths)",
            "batch_per_person": args.batch,
            "images_per_step": 2 * args.batch,
            "faces_per_person": args.images,
            "deterministic": not args.no_determinism,
        },
        "loadavg_start": loadavg(),
    }
    if not args.no_determinism:
        tf.config.experimental.enable_op_determinism()  # as autoswap.train with deterministic: true

    with tempfile.TemporaryDirectory(prefix="autoswap-bench-") as tmp:
        dir_a, dir_b = write_faces(Path(tmp), args.images)
        faces_a, _, _ = load_faces(dir_a, 128)
        faces_b, _, _ = load_faces(dir_b, 128)

        if args.profile:
            res = profile(args, faces_a, faces_b)
            info["loadavg_end"] = loadavg()
            out = args.out or RESULTS / "train_profile.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(info | {"profile": res}, indent=2) + "\n")
            print_profile(res)
            print(f"\nwritten {out}")
            return

        seed_script = args.seed_script.resolve()
        if args.seed_ref:
            if not seed_script.is_file():
                sys.exit(f"{seed_script}: not found (--seed-script)")
            info["seed"] = {
                "python": args.seed_ref,
                "script": str(seed_script),
                "tensorflow": seed_tf_version(args.seed_ref),
                "train_steps_per_run": args.seed_steps,
                "data_batch": args.seed_data_batch,
            }

        variants = []
        for jit, bf16, mm in ((j, b, m) for j in (False, True) for b in (False, True) for m in (True, False)):
            if (jit and not args.jit) or (bf16 and not args.mixed_precision) or (args.no_fp32 and not bf16):
                continue
            if not mm and not args.direct_conv:
                continue
            name = "ours" + ("_jit" if jit else "") + ("_bf16" if bf16 else "") + ("" if mm else "_directconv")
            variants.append((name, jit, bf16, mm))

        ours: list[Ours] = []
        if not args.no_train:
            for name, jit, bf16, mm in variants:
                print(f"building {name} ...", flush=True)
                o = Ours(name, settings_for(args, jit, bf16, mm), faces_a, faces_b)
                o.warmup(args.warmup)
                print(
                    f"  {o.n_params:,} parameters; first step {o.compile_s} s; {o.optimizer_class}",
                    flush=True,
                )
                ours.append(o)

        data_settings = settings_for(args, False, False)
        seed_train, seed_data, our_data = [], [], []
        for r in range(args.rounds):
            order = ["seed", "ours"] if r % 2 == 0 else ["ours", "seed"]
            for who in order:
                if who == "seed" and args.seed_ref and not args.no_train:
                    seed_train.append(
                        run_seed(
                            args.seed_ref, seed_script, dir_a, dir_b, "train", args.batch, args.seed_steps
                        )
                    )
                    print(f"round {r}: seed train {seed_train[-1]}", flush=True)
                if who == "ours" and ours:
                    for _ in range(args.steps):
                        for o in ours:  # alternate the variants step by step
                            o.timed()
                    print(
                        f"round {r}: "
                        + ", ".join(
                            f"{o.name} {statistics.median(o.times[-args.steps :]):.2f} s/step" for o in ours
                        ),
                        flush=True,
                    )
            if args.no_data:
                continue
            for who in order:
                if who == "seed" and args.seed_ref:
                    seed_data.append(
                        run_seed(
                            args.seed_ref,
                            seed_script,
                            dir_a,
                            dir_b,
                            "data",
                            args.seed_data_batch,
                            max(1, args.data_images // args.seed_data_batch),
                        )
                    )
                    print(f"round {r}: seed data {seed_data[-1]}", flush=True)
                if who == "ours":
                    our_data.append(
                        time_our_data(
                            data_settings, faces_a, faces_b, max(1, args.data_images // (2 * args.batch))
                        )
                    )
                    print(f"round {r}: ours data {our_data[-1]}", flush=True)

    def summary(rounds: list[dict]) -> dict:
        out = {"img_s": round(statistics.median(x["img_s"] for x in rounds), 2)}
        for k in ("cpu_s_per_step", "cpu_ms_per_img"):
            if all(k in x for x in rounds):
                out[k] = round(statistics.median(x[k] for x in rounds), 3)
        return out | {"rounds": rounds}

    train = {}
    if seed_train:
        train["seed"] = summary(seed_train)
    for o in ours:
        med = statistics.median(o.times)
        e = {
            "img_s": round(2 * args.batch / med, 2),
            "s_per_step": round(med, 3),
            "cpu_s_per_step": round(statistics.median(o.cpu), 3),
            "step_times_s": [round(x, 3) for x in o.times],
            "cpu_times_s": [round(x, 3) for x in o.cpu],
            "foreign_cpu": o.foreign,
            "first_step_s": o.compile_s,
            "optimizer": o.optimizer_class,
            "last_loss": o.loss,
        }
        if seed_train:
            e["ratio_vs_seed"] = round(e["img_s"] / train["seed"]["img_s"], 2)
            if "cpu_s_per_step" in train["seed"]:
                e["cpu_ratio_vs_seed"] = round(train["seed"]["cpu_s_per_step"] / e["cpu_s_per_step"], 2)
        train[o.name] = e
    data = {}
    if seed_data:
        data["seed"] = summary(seed_data) | {"batch": args.seed_data_batch}
    if our_data:
        data["ours"] = summary(our_data) | {"batch": f"{args.batch} per person x 2"}
        if seed_data:
            data["ours"]["ratio_vs_seed"] = round(data["ours"]["img_s"] / data["seed"]["img_s"], 2)
            if "cpu_ms_per_img" in data["seed"]:
                data["ours"]["cpu_ratio_vs_seed"] = round(
                    data["seed"]["cpu_ms_per_img"] / data["ours"]["cpu_ms_per_img"], 2
                )
    if ours:
        # how close the step is to the machine: FLOPs per second against one big matmul's
        gflop = train_gflop_per_image(data_settings.model)
        peak = {"float32": matmul_gflop_s("float32"), "bfloat16": matmul_gflop_s("bfloat16")}
        info["roofline"] = {
            "train_gflop_per_image": round(gflop, 2),
            "matmul_gflop_s": {k: round(v, 1) for k, v in peak.items()},
        }
        for o in ours:
            e = train[o.name]
            e["gflop_s"] = round(e["img_s"] * gflop, 1)
            e["of_matmul_rate"] = round(e["gflop_s"] / peak["bfloat16" if "bf16" in o.name else "float32"], 2)
    info["loadavg_end"] = loadavg()
    info |= {"train": train, "data": data, "targets_vs_seed": TARGETS}
    out = args.out or RESULTS / "train_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2) + "\n")

    print(
        f"\n{info['machine']['cpu']}, {info['machine']['cores']} cores, TF {tf.__version__}"
        + (f" (seed: TF {info['seed']['tensorflow']})" if args.seed_ref else "")
    )
    print(
        f"{'':28s} {'img/s':>8s} {'vs seed':>8s} {'target':>7s} {'CPU/img':>9s} {'vs seed':>8s} "
        f"{'foreign':>8s}"
    )
    for section, rows in (("train", train), ("data", data)):
        for name, e in rows.items():
            ratio, cratio = e.get("ratio_vs_seed"), e.get("cpu_ratio_vs_seed")
            cpu = (
                1000 * e["cpu_s_per_step"] / (2 * args.batch)
                if "cpu_s_per_step" in e
                else e.get("cpu_ms_per_img")
            )
            fg = e.get("foreign_cpu") or [x.get("foreign_cpu") for x in e.get("rounds", [])]
            fg = [x for x in fg if x is not None]
            print(
                f"{section + ' ' + name:28s} {e['img_s']:8.2f} {'' if ratio is None else f'{ratio:.2f}x':>8s} "
                f"{'' if ratio is None else f'{TARGETS[section]:.1f}x':>7s} "
                f"{'' if cpu is None else f'{cpu:.1f} ms':>9s} {'' if cratio is None else f'{cratio:.2f}x':>8s} "
                f"{f'{statistics.median(fg):.2f}' if fg else '':>8s}"
            )
    if "roofline" in info:
        r = info["roofline"]
        print(
            f"a training image costs {r['train_gflop_per_image']} GFLOP; one large matmul runs at "
            f"{r['matmul_gflop_s']['float32']} GFLOP/s (float32), {r['matmul_gflop_s']['bfloat16']} (bfloat16): "
            + ", ".join(f"{n} {train[n]['gflop_s']} GFLOP/s ({train[n]['of_matmul_rate']:.0%})" for n in train if n != "seed")
        )
    print(
        "img/s: wall clock, medians; CPU/img: process CPU time (all threads) per image, less sensitive to "
        "neighbours;\nforeign: median share of the machine's CPU used by other processes while measuring"
    )
    print(f"load average {info['loadavg_start']} -> {info['loadavg_end']}; written {out}")


if __name__ == "__main__":
    main()
