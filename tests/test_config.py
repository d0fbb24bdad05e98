import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from autoswap import config
from autoswap.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_project_params_and_seed_preset_validate():
    demo = config.load(ROOT / "params.yaml")
    seed = config.load(ROOT / "params" / "seed.yaml")
    assert demo.data.source == "synthetic"
    # the preset is the seed's recipe
    assert seed.model.width == 1.0 and seed.model.input_size == 64
    assert seed.train.steps == 65_000 and seed.train.learning_rate == 5e-5 and seed.train.beta_1 == 0.5
    assert seed.train.warp.stddev * seed.data.face_size == pytest.approx(2.5)
    assert seed.train.augment.color.lightness == 0.0 and not seed.train.augment.color.input_only  # the seed's: none
    assert demo.train.augment.color.input_only and demo.train.augment.color.lightness > 0  # the demo's: the input's


def test_yaml11_exponent_spellings_are_the_same_float(tmp_path):
    a = config.load(write(tmp_path, "train:\n  learning_rate: 1e-4\n"))
    b = config.load(write(tmp_path, "train:\n  learning_rate: 1.0e-4\n"))
    assert isinstance(yaml.safe_load("x: 1e-4")["x"], str)  # the trap itself
    assert a.train.learning_rate == b.train.learning_rate == 1e-4


@pytest.mark.parametrize(
    "text, key",
    [
        ("train:\n  learning_rte: 0.1\n", "train.learning_rte"),  # typo, nested
        ("train:\n  warp:\n    stdev: 0.1\n", "train.warp.stdev"),  # typo, two levels down
        ("extra_section: 1\n", "extra_section"),
        ("train:\n  learning_rate: -1.0\n", "train.learning_rate"),
        ("train:\n  steps: 0\n", "train.steps"),
        ("train:\n  batch_size: abc\n", "train.batch_size"),
        ("model:\n  input_size: 60\n", "model.input_size"),
        ("data:\n  face_size: 100\n", "data.face_size"),
        ("train:\n  warp:\n    schedule: sometimes\n", "train.warp.schedule"),
        ("train:\n  conv_as_matmul: cpu\n", "train.conv_as_matmul"),
        ("train:\n  intra_op_threads: -1\n", "train.intra_op_threads"),
        ("train:\n  mixed_precision: sometimes\n", "train.mixed_precision"),
        ("extract:\n  rotate: [90, 45]\n", "extract.rotate"),
        ("extract:\n  rotate: 45\n", "extract.rotate"),
        ("extract:\n  rotate: [90.0]\n", "extract.rotate"),
        ("extract:\n  rotate: sideways\n", "extract.rotate"),
    ],
)
def test_bad_values_name_the_key_and_file(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert key in msg and str(p) in msg and "\n" not in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML at line [0-9]"):
        config.load(write(tmp_path, "train:\n  steps: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping"):
        config.load(write(tmp_path, "- 1\n- 2\n"))


def test_settings_are_frozen_and_ignore_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEED", "99")
    s = config.load(write(tmp_path, "seed: 1\n"))
    assert s.seed == 1
    with pytest.raises(ValidationError):
        s.seed = 2  # type: ignore[misc]


def test_extract_rotate_angles(tmp_path):
    def rotate(value: str) -> tuple[int, ...]:
        return config.load(write(tmp_path, f"extract:\n  rotate: {value}\n")).extract.rotate

    assert config.Settings().extract.rotate == (90, 180, 270)
    assert rotate("[]") == rotate("false") == ()
    assert rotate("true") == (90, 180, 270)
    # taken modulo 360; 0 (the upright search) and repeats dropped; the order kept
    assert rotate("[270, -90, 0, 360, 90, 540]") == (270, 90, 180)
    with pytest.raises(ConfigError) as e:
        rotate("[45]")
    assert str(e.value).count("\n") == 0 and "extract.rotate" in str(e.value) and "multiples of 90" in str(e.value)


def test_off_after_needs_a_step(tmp_path):
    with pytest.raises(ConfigError, match="off_after"):
        config.load(write(tmp_path, "train:\n  warp:\n    schedule: off_after\n"))


@pytest.mark.parametrize("key, value", [("freeze_encoder_steps", 500), ("init_decoder_a", "a")])
def test_init_parts_need_init_from(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"train.{key} needs train.init_from") as e:
        config.load(write(tmp_path, f"train:\n  {key}: {value}\n"))
    assert "\n" not in str(e.value)
    config.load(write(tmp_path, f"train:\n  init_from: models/final\n  {key}: {value}\n"))


def test_flatten_gives_dotted_keys():
    flat = config.flatten(config.Settings())
    assert flat["train.warp.stddev"] == pytest.approx(2.5 / 128)
    assert flat["model.encoder_filters"] == [128, 256, 512, 1024]


def test_cli_reports_config_error_in_one_line_exit_2(tmp_path):
    p = write(tmp_path, "train:\n  learning_rte: 0.1\n")
    r = subprocess.run(
        [sys.executable, "-m", "autoswap.cli", "--params", str(p), "train"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("autoswap:")]
    assert len(lines) == 1 and "train.learning_rte" in lines[0]


def test_own_data_recipe_applies_to_folders_only():
    """params.yaml's own_data is what "two folders, data.source: folders, dvc repro" trains: set
    over the sections with data.source folders, ignored by the synthetic demo."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert raw["own_data"], "params.yaml carries the own-data recipe"
    demo = config.parse(raw)
    raw["data"]["source"] = "folders"
    own = config.parse(raw)
    for dotted, value in raw["own_data"].items():
        node = own
        for k in dotted.split("."):
            node = getattr(node, k)
        assert node == value, dotted
    assert own.model.width != demo.model.width and own.train.steps != demo.train.steps
    assert demo.model.width == raw["model"]["width"] and demo.train.steps == raw["train"]["steps"]
    assert own.data.source == "folders" and own.seed == demo.seed


@pytest.mark.parametrize(("own", "message"), [
    ({"train.stepz": 10}, "with own_data applied: unknown key 'train.stepz'"),
    ({"model.width": -1}, "with own_data applied: key 'model.width'"),
    ({"seed.x": 1}, "key 'own_data.seed.x': seed is not a section"),
])
def test_a_bad_own_data_key_is_one_line_naming_it_even_on_the_demo(tmp_path, own, message):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["own_data"] = own  # data.source stays synthetic: a typo shows before anyone trains on photos
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        config.load(write(tmp_path, yaml.safe_dump(raw)))
    assert "\n" not in str(e.value)
