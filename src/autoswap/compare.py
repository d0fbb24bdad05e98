"""`autoswap compare`: the trainings in the project's MLflow store side by side.

A table (one row per run: its name, id, DVC experiment, the parameters a sweep varies, the last
losses and the evaluation metrics) and one PNG: the loss curves of every run, and the swap
metric of every run as bars. Reads only: the store is not created or changed by looking at it.
"""

from __future__ import annotations

from pathlib import Path

from autoswap.errors import UserError
from autoswap.files import atomic_path

# (MLflow param, column)
PARAMS = (
    ("train.learning_rate", "lr"),
    ("train.warp.schedule", "warp"),
    ("train.warp.off_after", "off_after"),
    ("train.steps", "steps"),
    ("model.width", "width"),
    ("train.loss.kind", "loss"),
)
# (MLflow metric, column): the last value logged
METRICS = (
    ("loss_a", "loss_a"),
    ("loss_b", "loss_b"),
    ("eval.a.swap_mae", "swap_mae_a"),
    ("eval.b.swap_mae", "swap_mae_b"),
    # share of swaps that read as the other person (dlib descriptor; no ground truth needed)
    ("eval.a.id_transfer", "id_transfer_a"),
    ("eval.b.id_transfer", "id_transfer_b"),
    ("eval.a.recon_mae", "recon_mae_a"),
    ("eval.b.recon_mae", "recon_mae_b"),
    ("eval.a.cycle_mae", "cycle_mae_a"),
    ("eval.b.cycle_mae", "cycle_mae_b"),
    # the swapped photo, as an outside tool sees it (autoswap.photoscore): what the user gets
    ("eval.a.photo_id_transfer", "photo_id_transfer_a"),
    ("eval.b.photo_id_transfer", "photo_id_transfer_b"),
    ("eval.a.photo_found_ratio", "photo_found_ratio_a"),
    ("eval.b.photo_found_ratio", "photo_found_ratio_b"),
    ("eval.a.photo_sharpness_kept", "photo_sharpness_a"),
    ("eval.b.photo_sharpness_kept", "photo_sharpness_b"),
)
# the bar chart: the first of these that some run has (swap_mae needs ground truth: synthetic data)
BAR_METRICS = ("swap_mae", "cycle_mae", "recon_mae")


def collect(experiment: str, tags: tuple[str, ...] = ()) -> list[dict]:
    """One dict per run of `experiment`, oldest first: run_id, name, exp (DVC), status, start,
    params {column: str}, metrics {column: float}. UserError when there is nothing to compare."""
    import logging

    import mlflow

    from autoswap import tracking

    for name in ("alembic", "mlflow.store.db.utils"):  # "Creating initial MLflow database tables..."
        logging.getLogger(name).setLevel(logging.WARNING)
    tracking.ensure_store()  # a new store's tables, under the lock trainings take
    uri = tracking.tracking_uri()
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    runs = [] if exp is None else mlflow.search_runs(
        experiment_ids=[exp.experiment_id], output_format="list", order_by=["attributes.start_time ASC"]
    )
    if not runs:
        raise UserError(
            f"no runs in MLflow experiment '{experiment}' (store {uri}); train first (`dvc repro` or "
            "`dvc exp run`), or name another with --experiment"
        )
    rows = []
    for r in runs:
        rows.append({
            "run_id": r.info.run_id,
            "name": r.info.run_name or r.info.run_id[:8],
            "exp": r.data.tags.get("dvc.exp_name", ""),
            "status": r.info.status,
            "start": r.info.start_time,
            "params": {col: r.data.params[key] for key, col in PARAMS if key in r.data.params},
            "metrics": {col: r.data.metrics[key] for key, col in METRICS if key in r.data.metrics},
            "tags": {k: r.data.tags.get(k, "-") for k in tags},  # chosen ones: --tags autoswap.gpu,...
        })
    return rows


def label(row: dict) -> str:
    """A run's short name: its DVC experiment where it has one, else its MLflow run name."""
    return row["exp"] or row["name"]


def format_table(rows: list[dict]) -> str:
    """Fixed-width text, one line per run; '-' where a run lacks a value. Metric columns that no
    run has (cycle_mae before any evaluation, swap_mae without ground truth) are left out."""
    metrics = [c for _, c in METRICS if any(c in r["metrics"] for r in rows)]
    tags = list(rows[0].get("tags", {})) if rows else []
    head = ["run", "id", "dvc exp", "status"] + [c for _, c in PARAMS] + metrics + tags
    lines = []
    for r in rows:
        cells = [r["name"], r["run_id"][:8], r["exp"] or "-", r["status"]]
        cells += [r["params"].get(c, "-") for _, c in PARAMS]
        cells += [f"{r['metrics'][c]:.4f}" if c in r["metrics"] else "-" for c in metrics]
        cells += [r["tags"][k] for k in tags]
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*cells) for cells in lines]
    return "\n".join(line.rstrip() for line in out)


def plot(rows: list[dict], out: Path, histories: dict[str, dict[str, list[tuple[int, float]]]]) -> Path:
    """Loss curves (loss_a solid, loss_b dashed, one colour per run) and a bar chart of the swap
    metric of each run (A and B side by side) -> PNG at `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=100, gridspec_kw={"width_ratios": [3, 2]})
    colours = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    any_curve = False
    for i, r in enumerate(rows):
        c = colours(i % colours.N)
        for key, style in (("loss_a", "-"), ("loss_b", "--")):
            pts = histories.get(r["run_id"], {}).get(key, [])
            if pts:
                any_curve = True
                steps, values = zip(*pts, strict=True)
                ax.plot(steps, values, style, color=c, lw=1.3, label=f"{label(r)} {key[-1].upper()}")
    ax.set_title("training loss (solid A, dashed B)")
    ax.set_xlabel("step")
    if any_curve:
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=2 if len(rows) > 6 else 1)
    else:
        ax.text(0.5, 0.5, "no loss history", ha="center", va="center", transform=ax.transAxes)

    metric = next((m for m in BAR_METRICS if any(f"{m}_a" in r["metrics"] or f"{m}_b" in r["metrics"]
                                                   for r in rows)), None)
    x = np.arange(len(rows))
    if metric:
        for j, (side, shade) in enumerate((("a", "0.35"), ("b", "0.7"))):  # greys: colours are runs
            vals = [r["metrics"].get(f"{metric}_{side}", np.nan) for r in rows]
            bx.bar(x + (j - 0.5) * 0.38, vals, 0.38, label=side.upper(), color=shade)
        for i, r in enumerate(rows):
            if f"{metric}_a" not in r["metrics"] and f"{metric}_b" not in r["metrics"]:
                bx.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
        bx.set_title(f"eval {metric} (lower is better)")
        bx.legend(fontsize=8)
    else:
        bx.text(0.5, 0.5, "no evaluation metrics yet (dvc repro evaluate)", ha="center", va="center",
                transform=bx.transAxes)
        bx.set_title("evaluation")
    bx.set_xlim(-0.6, len(rows) - 0.4)
    bx.set_xticks(x, [label(r) for r in rows], rotation=45, ha="right", fontsize=8)
    for i, tick in enumerate(bx.get_xticklabels()):
        tick.set_color(colours(i % colours.N))  # the run's colour in the loss curves
    fig.tight_layout()
    out = Path(out)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")  # a PNG whatever the name ends with
    finally:
        plt.close(fig)
    return out


def compare(experiment: str = "autoswap", out: Path = Path("compare.png"), tags: tuple[str, ...] = ()) -> dict:
    """Read every run of `experiment`, write the comparison PNG; returns {rows, table, out}.
    `tags`: run tags to show as columns too (provenance such as autoswap.gpu, autoswap.git.dirty)."""
    import mlflow

    rows = collect(experiment, tags)
    client = mlflow.MlflowClient()
    histories: dict = {}
    for r in rows:
        for k in ("loss_a", "loss_b"):
            # a resumed run logs the steps after its last checkpoint again: the latest value wins
            hist = sorted(client.get_metric_history(r["run_id"], k), key=lambda m: (m.step, m.timestamp))
            histories.setdefault(r["run_id"], {})[k] = sorted({m.step: m.value for m in hist}.items())
    path = plot(rows, out, histories)
    return {"rows": rows, "table": format_table(rows), "out": path}
