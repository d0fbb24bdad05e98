"""autoswap compare: runs of the project's MLflow store as a table and a PNG."""

import mlflow
import pytest
from PIL import Image

from autoswap import tracking
from autoswap.cli import main
from autoswap.compare import compare
from autoswap.errors import UserError


def make_run(name, exp_name, params, losses, evals=None, experiment="autoswap"):
    exp_id = tracking.setup(experiment)
    tags = {"dvc.exp_name": exp_name} if exp_name else None
    with mlflow.start_run(experiment_id=exp_id, run_name=name, tags=tags) as run:
        mlflow.log_params(params)
        for step, (a, b) in enumerate(losses, start=1):
            mlflow.log_metrics({"loss_a": a, "loss_b": b}, step=step * 10)
        if evals:
            mlflow.log_metrics(evals)
    return run.info.run_id


@pytest.fixture
def two_runs(mlflow_store):
    slow = make_run(
        "bright-owl", "exp-slow",
        {"train.learning_rate": "5e-05", "train.warp.schedule": "constant", "train.steps": "30", "model.width": "0.125"},
        [(0.30, 0.31), (0.25, 0.26), (0.21, 0.22)],
        {"eval.a.swap_mae": 0.111, "eval.b.swap_mae": 0.122, "eval.a.recon_mae": 0.05, "eval.b.recon_mae": 0.06,
         "eval.a.id_transfer": 0.75, "eval.b.id_transfer": 0.5,
         "eval.a.photo_id_transfer": 0.625, "eval.a.photo_sharpness_kept": 0.4375},
    )
    fast = make_run(
        "quiet-elk", None,
        {"train.learning_rate": "0.0005", "train.warp.schedule": "off_after", "train.warp.off_after": "20",
         "train.steps": "30", "model.width": "0.125", "train.loss.kind": "ssim"},
        [(0.28, 0.29), (0.15, 0.16), (0.09, 0.095)],  # no evaluation: a run still training
    )
    return slow, fast


def test_compare_lists_runs_with_params_and_metrics_and_writes_png(two_runs, tmp_path):
    slow, fast = two_runs
    out = tmp_path / "cmp" / "compare.png"
    r = compare("autoswap", out)
    rows = {row["run_id"]: row for row in r["rows"]}
    assert set(rows) == {slow, fast}
    assert [row["run_id"] for row in r["rows"]] == [slow, fast]  # oldest first
    assert rows[slow]["exp"] == "exp-slow" and rows[fast]["name"] == "quiet-elk"
    assert rows[slow]["params"]["lr"] == "5e-05" and rows[fast]["params"]["warp"] == "off_after"
    assert rows[fast]["params"]["off_after"] == "20" and "off_after" not in rows[slow]["params"]
    assert rows[slow]["metrics"]["loss_a"] == pytest.approx(0.21)  # the last value logged
    assert rows[slow]["metrics"]["swap_mae_b"] == pytest.approx(0.122)
    assert "swap_mae_a" not in rows[fast]["metrics"]
    lines = r["table"].splitlines()
    assert lines[0].split()[:4] == ["run", "id", "dvc", "exp"] and len(lines) == 4
    slow_line = next(line for line in lines if "exp-slow" in line)
    for cell in ("bright-owl", slow[:8], "5e-05", "constant", "0.2100", "0.1110", "0.1220", "0.7500", "0.5000"):
        assert cell in slow_line
    head = lines[0].split()
    assert head.index("swap_mae_b") < head.index("id_transfer_a") < head.index("id_transfer_b")
    assert rows[slow]["metrics"]["id_transfer_a"] == pytest.approx(0.75)
    assert "id_transfer_a" not in rows[fast]["metrics"]
    # the swapped photo's scores sit beside the crop's, named apart
    assert head.index("id_transfer_b") < head.index("photo_id_transfer_a") < head.index("photo_sharpness_a")
    assert rows[slow]["metrics"]["photo_id_transfer_a"] == pytest.approx(0.625) and "0.4375" in slow_line
    fast_line = next(line for line in lines if "quiet-elk" in line)
    for cell in ("0.0005", "off_after", "ssim", "0.0900"):
        assert cell in fast_line
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 600
    assert not list(out.parent.glob(".*tmp*"))


def test_cli_compare_prints_the_table(two_runs, tmp_path, capsys):
    out = tmp_path / "c.png"
    params = tmp_path / "params.yaml"
    params.write_text("tracking:\n  experiment: autoswap\n")
    assert main(["--params", str(params), "compare", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exp-slow" in text and "quiet-elk" in text and "off_after" in text
    assert f"2 run(s) of experiment 'autoswap'; wrote {out}" in text
    assert out.is_file()


def test_loss_history_of_a_resumed_run_keeps_the_latest_value(mlflow_store, tmp_path, monkeypatch):
    from autoswap import compare as C

    run_id = make_run("r", None, {}, [(0.3, 0.3), (0.2, 0.2)])
    with mlflow.start_run(run_id=run_id):  # resumed: step 20 logged again
        mlflow.log_metrics({"loss_a": 0.19, "loss_b": 0.18}, step=20)
    seen = {}
    monkeypatch.setattr(C, "plot", lambda rows, out, histories: seen.update(histories) or out)
    compare("autoswap", tmp_path / "x.png")
    assert seen[run_id]["loss_a"] == [(10, pytest.approx(0.3)), (20, pytest.approx(0.19))]


def test_empty_store_is_one_clear_line(mlflow_store, tmp_path, capsys):
    with pytest.raises(UserError, match="no runs in MLflow experiment 'autoswap'"):
        compare("autoswap", tmp_path / "c.png")
    tracking.setup("other")  # an experiment with no runs
    assert main(["--params", str(tmp_path / "none.yaml"), "compare", "--experiment", "other",
                 "--out", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoswap: no runs in MLflow experiment 'other'") and "\n" not in err
    assert not (tmp_path / "c.png").exists()
