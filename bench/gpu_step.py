"""The training step of autoswap's full network on Keras' JAX backend, as one jitted XLA program.

    KERAS_BACKEND=jax PYTHONPATH=src python bench/gpu_step.py \
        [--batches 16 64 128 256] [--policies float32 mixed_bfloat16] \
        [--steps 50] [--warmup 3] [--budget 200] [--width 1.0]

Needs jax, keras 3, pydantic, pydantic-settings and pyyaml; no TensorFlow (autoswap.model and
autoswap.config import none). On a GPU machine without them, carry wheels and put them first:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src
    KERAS_BACKEND=jax python3 bench/gpu_step.py

Measures, at the seed's full configuration (64 px, `ModelSettings()` widths: encoder 69,662,976
parameters, each decoder 6,199,747 -- asserted), the step `autoswap.train` runs: the shared
encoder on the concatenated warped A and B batches (2b images), decoder_a on the first b latents,
decoder_b on the rest, MAE per person (in float32) summed, one Adam update (5e-5, beta_1 0.5) of
all three models' weights. Written with Keras 3's stateless API (`model.stateless_call`,
`optimizer.stateless_apply`) as in the keras.io guide "Writing a training loop from scratch in
JAX"; the whole step -- forward, backward, update -- is one `jax.jit` program, compiled ahead
(`lower().compile()`, timed as compile_s) with the state buffers donated.

Variants: float32 and mixed_bfloat16 (the policy set before the models are built, as
train.mixed_precision does; model.py keeps the final sigmoid conv in float32), each at b faces
per person for b in --batches. Per variant: --warmup untimed steps (the first one's wall time is
first_step_s), then --steps timed steps, each waited for with block_until_ready on its losses.
Reported: median images/s (2b / median step time), images/s at the slow (p90 step time) and fast
(p10 step time) ends, and the time 65,000 steps (the seed's run) would take at that step time.

Left out: the input pipeline. The four batches (warped A, target A, warped B, target B) are made
once per variant from random uint8 pixels scaled to float32 [0, 1] and stay on the device, so
augmentation, warping, decoding and host-to-device copies cost nothing here; so are checkpoints,
previews and logging. The figures are the upper bound the model itself allows on this device.

--budget (seconds since start) keeps the run short: a variant that would not finish in what is
left is skipped (recorded as such), and a running one stops timing when the budget is spent.
Order: b=64 first (both policies), then the other batch sizes.

Results: $OUT/gpu_step.json when OUT is set, else bench/results/gpu_step.json; a table on stdout.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported, here or by autoswap.model

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from autoswap.config import ModelSettings  # noqa: E402
from autoswap.model import build  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEED_STEPS = 65_000
SEED_PARAMS = {"encoder": 69_662_976, "decoder_a": 6_199_747, "decoder_b": 6_199_747}
LR, BETA_1 = 5e-5, 0.5  # TrainSettings defaults (beta_2 0.999 is Adam's own)

# donation is a no-op on the CPU backend, which says so once per compile
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


def elapsed() -> float:
    return time.perf_counter() - START


def gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------- the step
class Setup:
    """One policy's three models, Adam, and the jitted step over their state."""

    def __init__(self, policy: str, cfg: ModelSettings, check_counts: bool):
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(0)
        self.policy = policy
        self.nets = build(cfg)
        keras.mixed_precision.set_global_policy("float32")  # what the next Setup starts from
        self.params = {n.name: int(n.count_params()) for n in self.nets}
        if check_counts:
            assert self.params == SEED_PARAMS, f"not the seed's network: {self.params}"
        rgb = self.nets[1].get_layer("rgb")
        self.dtypes = {
            "encoder_compute": self.nets[0].get_layer("down0").compute_dtype,
            "variables": self.nets[0].get_layer("down0").variable_dtype,
            "rgb_layer_policy": rgb.dtype_policy.name,
            "decoder_output": str(self.nets[1].outputs[0].dtype),
        }
        self.optimizer = keras.optimizers.Adam(learning_rate=LR, beta_1=BETA_1)
        self.optimizer.build([v for n in self.nets for v in n.trainable_variables])
        self.sizes = [len(n.trainable_variables) for n in self.nets]
        self.step = jax.jit(self._step, donate_argnums=0)

    def initial_state(self):
        return (
            [[v.value for v in n.trainable_variables] for n in self.nets],
            [[v.value for v in n.non_trainable_variables] for n in self.nets],
            [v.value for v in self.optimizer.variables],
        )

    def _loss(self, trainable, non_trainable, wa, ta, wb, tb):
        encoder, decoder_a, decoder_b = self.nets
        b = wa.shape[0]
        (te, td_a, td_b), (ne, nd_a, nd_b) = trainable, non_trainable
        z, ne = encoder.stateless_call(te, ne, jnp.concatenate([wa, wb], 0), training=True)  # (2b, 8, 8, 512)
        ya, nd_a = decoder_a.stateless_call(td_a, nd_a, z[:b], training=True)  # (b, 64, 64, 3)
        yb, nd_b = decoder_b.stateless_call(td_b, nd_b, z[b:], training=True)
        # losses.mae: the mean absolute error in float32, per person
        loss_a = jnp.mean(jnp.abs(ta.astype(jnp.float32) - ya.astype(jnp.float32)))
        loss_b = jnp.mean(jnp.abs(tb.astype(jnp.float32) - yb.astype(jnp.float32)))
        return loss_a + loss_b, (loss_a, loss_b, [ne, nd_a, nd_b])

    def _step(self, state, wa, ta, wb, tb):
        trainable, non_trainable, opt_vars = state
        (_, (loss_a, loss_b, non_trainable)), grads = jax.value_and_grad(self._loss, has_aux=True)(
            trainable, non_trainable, wa, ta, wb, tb
        )
        flat = [v for vs in trainable for v in vs]
        flat_grads = [g for gs in grads for g in gs]
        flat, opt_vars = self.optimizer.stateless_apply(opt_vars, flat_grads, flat)
        i, j = self.sizes[0], self.sizes[0] + self.sizes[1]
        trainable = [flat[:i], flat[i:j], flat[j:]]
        return (loss_a, loss_b), (trainable, non_trainable, opt_vars)


def make_batches(b: int, size: int, seed: int):
    """Warped A, target A, warped B, target B: random uint8 pixels as float32 [0, 1], on the device."""
    rng = np.random.default_rng(seed)
    dev = jax.devices()[0]
    return [
        jax.device_put(
            rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8).astype(np.float32) / 255.0, dev
        )
        for _ in range(4)
    ]


def run_variant(setup: Setup, state, b: int, size: int, args, deadline: float):
    batches = make_batches(b, size, seed=b)
    t0 = time.perf_counter()
    compiled = setup.step.lower(state, *batches).compile()
    compile_s = time.perf_counter() - t0
    first_step_s = None
    losses = None
    for i in range(args.warmup):
        t0 = time.perf_counter()
        losses, state = compiled(state, *batches)
        jax.block_until_ready(losses)
        if i == 0:
            first_step_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        if elapsed() > deadline:
            break
        t0 = time.perf_counter()
        losses, state = compiled(state, *batches)
        jax.block_until_ready(losses)
        times.append(time.perf_counter() - t0)
    row = {
        "policy": setup.policy,
        "batch_per_person": b,
        "images_per_step": 2 * b,
        "compile_s": round(compile_s, 2),
        "first_step_s": None if first_step_s is None else round(first_step_s, 4),
        "timed_steps": len(times),
        "loss_a": float(losses[0]) if losses is not None else None,
        "loss_b": float(losses[1]) if losses is not None else None,
    }
    if times:
        t = np.array(times)
        med, p10, p90 = (float(x) for x in np.percentile(t, [50, 10, 90]))
        row.update(
            step_ms_median=round(med * 1e3, 3),
            step_ms_p10=round(p10 * 1e3, 3),
            step_ms_p90=round(p90 * 1e3, 3),
            images_per_s_median=round(2 * b / med, 1),
            images_per_s_slow_p90_step=round(2 * b / p90, 1),
            images_per_s_fast_p10_step=round(2 * b / p10, 1),
            est_seed_65k_steps_h=round(SEED_STEPS * med / 3600, 3),
            step_times_s=[round(x, 6) for x in times],
        )
    return row, state


# ----------------------------------------------------------------------------- main
def table(rows: list[dict]) -> str:
    head = (
        f"{'policy':<15} {'b':>4} {'img/step':>8} {'compile s':>9} {'1st step s':>10} {'steps':>5} "
        f"{'median ms':>9} {'img/s':>9} {'img/s slow':>10} {'img/s fast':>10} {'65k steps h':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['policy']:<15} {r['batch_per_person']:>4}  skipped: {r['skipped']}")
            continue
        if not r.get("timed_steps"):
            lines.append(f"{r['policy']:<15} {r['batch_per_person']:>4}  compiled, no step timed (budget)")
            continue
        lines.append(
            f"{r['policy']:<15} {r['batch_per_person']:>4} {r['images_per_step']:>8} {r['compile_s']:>9.1f} "
            f"{r['first_step_s']:>10.3f} {r['timed_steps']:>5} {r['step_ms_median']:>9.2f} "
            f"{r['images_per_s_median']:>9.1f} {r['images_per_s_slow_p90_step']:>10.1f} "
            f"{r['images_per_s_fast_p10_step']:>10.1f} {r['est_seed_65k_steps_h']:>11.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128, 256], help="faces per person")
    ap.add_argument("--policies", nargs="+", default=["float32", "mixed_bfloat16"])
    ap.add_argument("--steps", type=int, default=50, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (after compiling)")
    ap.add_argument("--budget", type=float, default=200.0, help="seconds since start; later variants skipped")
    ap.add_argument(
        "--width", type=float, default=1.0, help="ModelSettings.width; 1.0 is the seed (asserted)"
    )
    ap.add_argument("--out", type=Path, help="JSON file (default $OUT/gpu_step.json or bench/results/)")
    args = ap.parse_args()
    args.warmup = max(args.warmup, 1)

    cfg = ModelSettings(width=args.width)
    full = cfg == ModelSettings()
    devices = jax.devices()
    info = {
        "measures": "jitted train step (forward + backward + Adam) on device-resident random batches",
        "excludes": "input pipeline (augment + warp + decode + host-to-device copies), checkpoints, logging",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "gpu": gpu_name(),
        "model": cfg.model_dump(mode="json"),
        "full_seed_network": full,
        "optimizer": {"name": "Adam", "learning_rate": LR, "beta_1": BETA_1},
        "steps": args.steps,
        "warmup": args.warmup,
        "budget_s": args.budget,
    }
    print(
        f"jax {info['jax']} (jaxlib {info['jaxlib']}), keras {info['keras']} backend {info['keras_backend']}"
    )
    print(f"jax.devices(): {devices}")
    print(f"device kind: {info['device_kind']}; nvidia-smi: {info['gpu']}")
    print("input pipeline (augment + warp) NOT included: batches are pre-made random tensors on the device")
    if not full:
        print(f"NOTE: width {args.width}, not the seed's network")

    setups: dict[str, Setup] = {}
    states: dict = {}
    rows: list[dict] = []
    order = sorted(args.batches, key=lambda b: (b != 64, b))  # b=64 first, then ascending
    compile_seen: list[float] = []
    step_seen: dict[str, tuple[int, float]] = {}  # policy -> (b, median step s)
    for b in order:
        for policy in args.policies:
            base = {"policy": policy, "batch_per_person": b}
            left = args.budget - elapsed()
            guess = max(compile_seen, default=0.0)  # compiles of the other variants so far
            if policy in step_seen:
                b0, s0 = step_seen[policy]
                guess += (args.warmup + args.steps) * s0 * b / b0
            if rows and guess > left:
                rows.append({**base, "skipped": f"budget ({left:.0f} s left, ~{guess:.0f} s needed)"})
                print(f"{policy} b={b}: skipped, budget", flush=True)
                continue
            if policy not in setups:
                t0 = time.perf_counter()
                setups[policy] = Setup(policy, cfg, check_counts=full)
                states[policy] = setups[policy].initial_state()
                info.setdefault("build_s", {})[policy] = round(time.perf_counter() - t0, 2)
                info.setdefault("dtypes", {})[policy] = setups[policy].dtypes
                info["params"] = setups[policy].params
                print(f"{policy}: built {setups[policy].params}, dtypes {setups[policy].dtypes}", flush=True)
            row, states[policy] = run_variant(
                setups[policy], states[policy], b, cfg.input_size, args, args.budget
            )
            compile_seen.append(row["compile_s"])
            if row.get("timed_steps"):
                step_seen[policy] = (b, row["step_ms_median"] / 1e3)
                print(
                    f"{policy} b={b}: compile {row['compile_s']:.1f} s, {row['images_per_s_median']:.0f} img/s "
                    f"(median of {row['timed_steps']}), loss_a {row['loss_a']:.4f} [{elapsed():.0f} s]",
                    flush=True,
                )
            rows.append(row)

    info["total_s"] = round(elapsed(), 1)
    out = (
        args.out
        or (Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench" / "results")
        / "gpu_step.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "results": rows}, indent=1) + "\n")
    print()
    print(table(rows))
    print(f"\n{info['device_kind']}, {info['total_s']} s in all; results: {out}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
