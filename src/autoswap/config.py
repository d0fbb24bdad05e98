"""The one settings tree: params.yaml -> `Settings` (validated once) -> stage functions.

Every model is frozen and `extra="forbid"` (on nested models too, or a typo such as
`train.learning_rte` would pass silently). Nothing else in autoswap reads params.yaml.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from autoswap.errors import ConfigError

PARAMS_FILE = "params.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _multiple_of_16(v: int) -> int:
    if v % 16:
        raise ValueError(f"must be a multiple of 16, got {v}")
    return v


Size16 = Annotated[int, Field(ge=16, le=1024)]


# ----------------------------------------------------------------------------- data / prepare
class SyntheticSettings(_Section):
    """The embedded demo data set: two rendered identities under one pose/expression/light law."""

    train_per_person: int = Field(300, ge=1)
    val_per_person: int = Field(32, ge=1)
    max_yaw: float = Field(0.6, ge=0, le=1.2, description="radians")
    max_pitch: float = Field(0.35, ge=0, le=1.0, description="radians")
    max_roll: float = Field(0.25, ge=0, le=1.0, description="radians")
    scale_jitter: float = Field(0.08, ge=0, le=0.5)
    shift_jitter: float = Field(0.05, ge=0, le=0.3, description="fraction of the image size")
    # Exposure and colour temperature of the whole picture; 0 = fixed, as in one controlled shoot
    # (the light's direction and strength still vary). With ranges (0.95 +- 0.2, warmth +- 1) the
    # decoders read skin tone as light, and the swap kept the source's skin colour: the demo never
    # swapped, and the swap got worse with training (docs/EXPERIMENTS.md).
    # which of the built-in identities (synthetic.IDENTITIES) are persons a and b: the demo pair,
    # or c and d, another pair to pretrain a model on (train.init_from)
    identities: tuple[Literal["a", "b", "c", "d"], Literal["a", "b", "c", "d"]] = ("a", "b")
    brightness_jitter: float = Field(0.0, ge=0, le=0.5, description="exposure 0.95 +- this")
    max_warmth: float = Field(0.0, ge=0, le=1, description="colour temperature, -1 cold .. 1 warm")


class DataSettings(_Section):
    source: Literal["synthetic", "folders"] = "synthetic"
    # where the aligned faces that training reads are written
    faces_dir: Path = Path("data/faces")
    # the user's media for source=folders; never modified
    dir_a: Path = Path("data/raw/a")
    dir_b: Path = Path("data/raw/b")
    # true: dir_a/dir_b already hold aligned face crops; false: extract faces from photos/videos
    aligned: bool = False
    face_size: Size16 = 128
    val_fraction: float = Field(0.1, gt=0, lt=1)
    min_faces: int = Field(8, ge=2, description="fewest usable faces per person")
    # larger inputs are downscaled on load so one huge photo cannot exhaust memory
    max_image_pixels: int = Field(40_000_000, ge=1_000_000)
    synthetic: SyntheticSettings = SyntheticSettings()

    _size = field_validator("face_size")(lambda v: _multiple_of_16(v))


class ExtractSettings(_Section):
    """Face detection, alignment and filtering of raw photos and videos (source=folders)."""

    min_confidence: float = Field(0.9, ge=0, le=1)
    min_face_size: int = Field(40, ge=8, description="pixels, shortest side of the detected box")
    keep: Literal["largest", "central", "all"] = "largest"
    every_nth_frame: int = Field(5, ge=1)
    target_fps: float | None = Field(None, gt=0, description="overrides every_nth_frame when set")
    detect_size: int = Field(640, ge=64, description="longest side at which frames are searched")
    min_blur: float = Field(0.0, ge=0, description="variance of the Laplacian below which a crop is dropped")
    dedup_hamming: int = Field(0, ge=0, le=64, description="perceptual-hash distance; 0 keeps all")
    # videos, keep=largest/central: search around the previous searched frame's face, and the
    # whole frame only where the face is lost or every full_search_every searched frames
    track: bool = True
    full_search_every: int = Field(10, ge=1, description="searched frames between whole-frame searches")
    # photos where no face is kept upright are searched again turned counter-clockwise by each
    # angle (faceswap's rotate option); the turn with the most confident face wins. [] = off
    rotate: tuple[int, ...] = Field((90, 180, 270), description="degrees, multiples of 90")

    @field_validator("rotate", mode="before")
    @classmethod
    def _angles(cls, v: Any) -> Any:
        # true / false for all / none; angles are taken modulo 360, 0 (the upright search) and
        # repeats dropped; one message for every bad value
        if isinstance(v, bool):
            return (90, 180, 270) if v else ()
        if isinstance(v, int):
            v = [v]
        ok = isinstance(v, list | tuple) and all(isinstance(a, int) and not isinstance(a, bool) and a % 90 == 0
                                                 for a in v)
        if not ok:
            raise ValueError("use angles that are multiples of 90, such as [90, 180, 270], or [] for off")
        return tuple(dict.fromkeys(a % 360 for a in v if a % 360))


# ----------------------------------------------------------------------------- model
class ModelSettings(_Section):
    input_size: Size16 = 64
    # scales every layer width; 1.0 is the seed's 2017 deepfakes network
    width: float = Field(1.0, gt=0, le=4)
    encoder_filters: tuple[int, ...] = (128, 256, 512, 1024)
    latent_dim: int = Field(1024, ge=1)
    decoder_filters: tuple[int, ...] = (1024, 512, 256)

    _size = field_validator("input_size")(lambda v: _multiple_of_16(v))

    @model_validator(mode="after")
    def _shapes(self) -> ModelSettings:
        # encoder halves the size len(encoder_filters) times then doubles once; decoders double
        # len(decoder_filters) times: the output must come back to input_size.
        down = 2 ** len(self.encoder_filters)
        if self.input_size % down:
            raise ValueError(f"input_size {self.input_size} must be divisible by {down}")
        if len(self.decoder_filters) + 1 != len(self.encoder_filters):
            raise ValueError("decoder_filters needs one entry fewer than encoder_filters")
        return self


# ----------------------------------------------------------------------------- train
class ColorAugmentSettings(_Section):
    """Per-image colour change in LAB, the same on the input and its target (faceswap's), so the
    model copes with other lighting. Each amount is the largest change, drawn uniformly in +-it
    per image; 0 (the default, the seed) is off."""

    lightness: float = Field(0.0, ge=0, le=1, description="L shift toward black/white; faceswap 0.30")
    ab: float = Field(0.0, ge=0, le=1, description="a and b (colour) shifts; faceswap 0.08")
    contrast: float = Field(0.0, ge=0, lt=1, description="L scaled about the image's mean by 1 +- it")
    input_only: bool = Field(False, description="change the network's input only, not its target: the decoder "
                             "must draw its own person's colours whatever the input's (DeepFaceLab's random_hsv_power)")


class AugmentSettings(_Section):
    """The seed's Keras preprocessing layers, as per-image random affine parameters."""

    flip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    zoom: float = Field(0.05, ge=0, le=0.5, description="RandomWidth/RandomHeight factor")
    rotation: float = Field(0.03, ge=0, le=0.5, description="fraction of a full turn")
    translation: float = Field(0.03, ge=0, le=0.5, description="fraction of the size")
    color: ColorAugmentSettings = ColorAugmentSettings()


class WarpSettings(_Section):
    grid: int = Field(5, ge=2, le=16)
    # control points span centre +- span * size: the seed's +-40 px of a 128 px face
    span: float = Field(40 / 128, gt=0, lt=0.5)
    # the seed's N(0, 2.5 px) at 128 px, expressed for any face size
    stddev: float = Field(2.5 / 128, ge=0, lt=0.2, description="fraction of the face size")
    schedule: Literal["constant", "linear", "off_after"] = "constant"
    off_after: int | None = Field(None, ge=0, description="step from which warp is off")
    interpolation_order: int = Field(2, ge=1, le=3)

    @model_validator(mode="after")
    def _off(self) -> WarpSettings:
        if self.schedule == "off_after" and self.off_after is None:
            raise ValueError("schedule off_after needs warp.off_after (a step)")
        return self


class LRScheduleSettings(_Section):
    kind: Literal["constant", "cosine", "step"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of the rate")
    step_every: int = Field(1000, ge=1)
    step_gamma: float = Field(0.5, gt=0, le=1)


class LossWeightSettings(_Section):
    """train.loss.kind mix: each term's weight in the total; 0 leaves the term out."""

    mae: float = Field(1.0, ge=0, le=100)
    dssim: float = Field(1.0, ge=0, le=100, description="(1 - SSIM) / 2")
    ms_dssim: float = Field(0.0, ge=0, le=100, description="1 - MS-SSIM")
    gradient: float = Field(0.0, ge=0, le=100, description="gradient-difference loss")
    ffl: float = Field(0.0, ge=0, le=100, description="focal frequency loss")


class LossSettings(_Section):
    """The reconstruction loss (autoswap.losses). `loss: mae` (a bare kind) is read as {kind: mae}."""

    kind: Literal["mae", "ssim", "ms_ssim", "mix"] = "mae"
    weights: LossWeightSettings = LossWeightSettings()
    ssim_window: int = Field(11, ge=3, le=31, description="Gaussian window, px (ssim and ms_ssim)")
    ssim_sigma: float = Field(1.5, gt=0, le=10)
    # every scale needs >= ssim_window px: 3 scales of 64 px (64, 32, 16) with an 11 px window
    ms_ssim_scales: int = Field(3, ge=1, le=5)
    # the weight of pixels outside the face mask: 1 ignores the mask, 0 ignores all outside it
    mask_outside_weight: float = Field(1.0, ge=0, le=1)
    eye_multiplier: float = Field(1.0, ge=1, le=20, description="faceswap uses 3")
    mouth_multiplier: float = Field(1.0, ge=1, le=20, description="faceswap uses 2")

    @model_validator(mode="before")
    @classmethod
    def _bare_kind(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _some_weight(self) -> LossSettings:
        if self.kind == "mix" and not any(self.weights.model_dump().values()):
            raise ValueError("kind mix needs at least one weight above 0 in train.loss.weights")
        return self


class TrainSettings(_Section):
    steps: int = Field(65_000, ge=1)
    batch_size: int = Field(16, ge=1, description="faces per person per step, global")
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    beta_1: float = Field(0.5, ge=0, lt=1)
    beta_2: float = Field(0.999, ge=0, lt=1)
    lr_schedule: LRScheduleSettings = LRScheduleSettings()
    loss: LossSettings = LossSettings()
    # the seed's centre 80 of 128 -> 64
    crop: float = Field(80 / 128, gt=0, le=1)
    augment: AugmentSettings = AugmentSettings()
    warp: WarpSettings = WarpSettings()
    log_every: int = Field(50, ge=1)
    save_every: int = Field(2500, ge=1)
    keep_last: int = Field(3, ge=1)
    backup_every: int = Field(10_000, ge=1)
    preview_every: int = Field(2500, ge=1)
    models_dir: Path = Path("models")
    deterministic: bool = True
    # default: one device; mirrored: all local GPUs; multi_worker: the cluster in TF_CONFIG.
    # batch_size is global: replicas split it, and see together exactly the one-device batch.
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    # build batches inside the compiled step, from the face set cached on the device (GPU path);
    # always on under a multi-replica strategy. Off: a tf.data pipeline on the host CPU.
    data_on_device: bool = False
    # bfloat16 compute, float32 weights. auto: on where bfloat16 runs in hardware (a GPU of compute
    # capability 8.0 or later; a CPU with AVX512-BF16 or AMX), off where it would be emulated
    mixed_precision: bool | Literal["auto"] = False
    jit_compile: bool = False
    # the seed's two 4x4-output convolutions (1024 and 2048 filters) computed as matmuls
    # (model.Conv2D): same weights; the speed-up is measured in bench/results/conv_matmul.json
    # (per layer and width) and bench/results/train_throughput.json. auto: on without a GPU
    conv_as_matmul: bool | Literal["auto"] = "auto"
    # threads of one TensorFlow op. auto: on a CPU one core fewer than this process may use (at
    # least 1), so the input pipeline has a core to itself beside the training step: 2% more img/s
    # and a steadier rate on 2 cores (bench/results/demo_speed.json); with a GPU, TF's default (0)
    intra_op_threads: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    # Gradient-norm clipping (DeepFaceLab's clipgrad): the global norm of each step's gradient is
    # capped here before Adam. A collapse starts with a gradient spike that Adam turns into a huge
    # step (docs/EXPERIMENTS.md, "Why training collapsed"); null = off, as in the seed.
    clip_grad_norm: float | None = Field(None, gt=0)
    # A diverged run: a loss that is NaN/Inf, or a logged loss above divergence_factor x its lowest.
    # rollback: restore the last good checkpoint and go on at rollback_lr_factor x the learning
    # rate, at most max_rollbacks times, then stop; stop: stop at once; warn: warn and go on.
    # Either way models/final never holds weights from after an unrecovered divergence.
    on_divergence: Literal["rollback", "stop", "warn"] = "rollback"
    # train.steps raised after a run: with a constant or step learning rate and a constant or
    # off_after warp, training goes on from the last checkpoint in the same MLflow run. A cosine
    # rate or a linear warp depends on the total: restart = start afresh; stretch_schedule = go on,
    # with the rest of the schedule stretched from the last checkpoint's step to the new end
    on_more_steps: Literal["restart", "stretch_schedule"] = "restart"
    # Start from a trained model (a models/final folder, or the MLflow run id of a training in this
    # project's store): its encoder, and the decoders named here (new decoder_a / decoder_b from
    # its decoder a or b; null = freshly initialised). Reusing an encoder cuts a new pair's training.
    init_from: str | None = None
    init_decoder_a: Literal["a", "b"] | None = None
    init_decoder_b: Literal["a", "b"] | None = None
    # with init_from: the encoder is held as loaded for this many steps while the decoders learn to
    # read its code (faceswap's "freeze weights"), then all train
    freeze_encoder_steps: int = Field(0, ge=0)
    divergence_factor: float = Field(2.5, gt=1, le=100)
    rollback_lr_factor: float = Field(0.5, gt=0, lt=1)
    max_rollbacks: int = Field(3, ge=0, le=100)

    @model_validator(mode="after")
    def _init_parts(self) -> TrainSettings:
        # without a model to start from there is nothing to hold or copy: said, not ignored
        if not self.init_from:
            for key in ("init_decoder_a", "init_decoder_b", "freeze_encoder_steps"):
                if getattr(self, key):
                    raise ValueError(f"train.{key} needs train.init_from (a model folder or an MLflow run id)")
        return self

    @field_validator("learning_rate", "beta_1", "beta_2", mode="before")
    @classmethod
    def _yaml11_float(cls, v: Any) -> Any:
        # PyYAML follows YAML 1.1 and reads `1e-4` (no dot) as a string: accept it anyway.
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                return v
        return v

    @field_validator("learning_rate")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v


class EvaluateSettings(_Section):
    batch_size: int = Field(32, ge=1)
    identity_faces: int = Field(
        64, ge=0, le=10_000,
        description="training faces per person whose mean dlib descriptor is that person's identity "
        "centroid (id_transfer, landmark_shift; about 0.075 s a face on a CPU core); 0 = identity scores off",
    )
    photo_faces: int = Field(
        0, ge=0, le=100_000,
        description="validation faces per person swapped in their source photo and scored there "
        "(autoswap.photoscore, photo_* scores); 0 = all of them",
    )


class PreviewSettings(_Section):
    faces: int = Field(4, ge=1, le=16, description="faces per person in the grid")
    out_dir: Path = Path("previews")


class TrackingSettings(_Section):
    experiment: str = Field("autoswap", min_length=1)


# ----------------------------------------------------------------------------- swap
class SwapDemoSettings(_Section):
    """The `demo` DVC stage (autoswap.demo): a photo that ships with matplotlib and a short clip made from it."""

    input_dir: Path = Path("data/demo")  # the demo photo and clip are written here
    out_dir: Path = Path("swaps")  # their swapped, marked versions
    frames: int = Field(24, ge=2, le=600, description="frames in the demo clip")


def _flag(name: str, help: str) -> dict:
    """Field arguments: `autoswap swap --<name>` sets this setting, `help` its help (and the
    setting's description). See SwapSettings.flags."""
    return {"description": help, "json_schema_extra": {"flag": name}}


class SwapSettings(_Section):
    """`autoswap swap`: put the other face back into photos and videos (see autoswap.swap).
    Detection uses extract.min_confidence / min_face_size / detect_size and, in videos,
    extract.track / full_search_every. The marks (metadata, watermark, C2PA) have no switch.

    A setting with a `flag` is also a command-line flag of `autoswap swap`, its description the
    flag's help (cli.py builds both from here): a new flag is one field."""

    model: Path = Field(Path("models/final"), **_flag("model", "trained model folder, default models/final"))
    to: Literal["a", "b"] = Field("b", **_flag("to", "decoder drawing the new face"))
    # in each photo or frame, by box area
    faces: Literal["largest", "all"] | tuple[int, ...] = Field(
        "largest", **_flag("faces", "largest, all, or indices such as 0 or 0,2 (0 = largest)"))
    mask_erode: float = Field(0.03, ge=0, le=0.3, **_flag("erode", "mask erosion, fraction of the face"))
    mask_feather: float = Field(0.08, ge=0, le=0.5, **_flag("feather", "mask feather, fraction of the face"))
    color: Literal["none", "mean_std", "histogram"] = Field("mean_std", **_flag("color", "LAB colour transfer"))
    poisson: bool = Field(False, **_flag("poisson", "OpenCV seamlessClone before the feathered blend"))
    # faceswap's convert "sharpen" (scaling) step: an unsharp mask on the new face once it is warped
    # to the frame's size, where a 64 px output enlarged into a bigger face is soft
    sharpen: float = Field(0.0, ge=0, le=3, **_flag("sharpen", "unsharp-mask amount on the new face, 0 = off"))
    sharpen_radius: float = Field(0.01, gt=0, le=0.1, **_flag("sharpen-radius", "unsharp-mask radius, fraction of the face"))
    smooth: float = Field(0.5, ge=0, lt=1, **_flag("smooth", "video landmark smoothing 0..0.99, 0 = off"))
    crf: int = Field(18, ge=0, le=51, **_flag("crf", "H.264 quality 0 (lossless) .. 51"))
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "veryfast"
    label: bool = Field(False, **_flag("label", "a visible AI-generated label too"))
    label_text: str = Field("AI-generated", min_length=1, max_length=80)
    key_dir: Path | None = None  # local C2PA signer + watermark ID registry; null = ~/.config/autoswap
    signer_cert: Path | None = None  # your own C2PA certificate chain (PEM) ...
    signer_key: Path | None = None  # ... and its private key (PEM); both or neither
    demo: SwapDemoSettings = SwapDemoSettings()

    @classmethod
    def flags(cls) -> dict[str, str]:
        """{flag name: setting} for every setting `autoswap swap` takes as a flag."""
        return {f.json_schema_extra["flag"]: key for key, f in cls.model_fields.items()
                if isinstance(f.json_schema_extra, dict) and "flag" in f.json_schema_extra}

    @field_validator("faces", mode="before")
    @classmethod
    def _faces(cls, v: Any) -> Any:
        # one message for every bad value (pydantic's union errors name each alternative)
        if v in ("largest", "all"):
            return v
        if isinstance(v, str):  # "0,2" from the command line
            v = [p.strip() for p in v.split(",") if p.strip()]
        if isinstance(v, int | str):
            v = [v]
        try:
            out = tuple(int(i) for i in v if not isinstance(i, bool | float))
            ok = len(out) == len(v) > 0 and min(out) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError("use largest, all, or face indices such as 0 or [0, 2] (0 = the largest face)")
        return out

    @model_validator(mode="after")
    def _signer_pair(self) -> SwapSettings:
        if (self.signer_cert is None) != (self.signer_key is None):
            raise ValueError("set both signer_cert and signer_key, or neither")
        return self


# ----------------------------------------------------------------------------- root
class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, ge=0, lt=2**31)
    data: DataSettings = DataSettings()
    extract: ExtractSettings = ExtractSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    preview: PreviewSettings = PreviewSettings()
    tracking: TrackingSettings = TrackingSettings()
    swap: SwapSettings = SwapSettings()

    @model_validator(mode="after")
    def _crop_fits(self) -> Settings:
        crop_px = self.train.crop * self.data.face_size
        if crop_px < self.model.input_size / 2:
            raise ValueError(
                f"train.crop {self.train.crop} of data.face_size {self.data.face_size} is "
                f"{crop_px:.0f} px, too small for model.input_size {self.model.input_size}"
            )
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):
        # params.yaml is the only source: no environment variables, no .env files, so that a
        # stray AUTOSWAP_* variable can never change a run behind DVC's back.
        return (init_settings,)


def flatten(settings: Settings) -> dict[str, Any]:
    """`train.warp.stddev`-style keys for MLflow params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", settings.model_dump(mode="json"))
    return out


def _format_error(err: dict[str, Any], path: Path) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown key '{key}': check the spelling (see README, params reference)"
    return f"{path}: key '{key}': {err['msg']} (got {err.get('input')!r})"


def _with_own_data(raw: dict, path: Path) -> dict:
    """raw with params.yaml's `own_data` recipe applied: a mapping of dotted keys
    (`train.steps: 30000`) set over the sections above it. The demo's values stay in the sections
    themselves, so a reader sees the demo's recipe; `own_data` holds what differs for real photos
    (docs/EXPERIMENTS.md, "A real swap"). A key that names nothing is a one-line error."""
    import copy

    own = raw.get("own_data") or {}
    if not isinstance(own, dict):
        raise ConfigError(f"{path}: key 'own_data': expected a mapping of dotted keys to values")
    out = copy.deepcopy({k: v for k, v in raw.items() if k != "own_data"})
    for dotted, value in own.items():
        parts = str(dotted).split(".")
        node = out
        for k in parts[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{path}: key 'own_data.{dotted}': {k} is not a section")
        node[parts[-1]] = value
    return out


def _validate(raw: dict, path: Path, where: str = "") -> Settings:
    try:
        return Settings(**raw)
    except ValidationError as e:
        errors = e.errors()
        msg = _format_error(errors[0], path)
        if where:
            msg = msg.replace(f"{path}: ", f"{path}: {where}: ", 1)
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more)"
        raise ConfigError(msg) from None


def parse(raw: Any, path: Path | str = PARAMS_FILE) -> Settings:
    """params.yaml's mapping -> Settings. With data.source: folders (your photos), the `own_data`
    recipe is applied over the sections (`_with_own_data`); it is validated with any source, so a
    typo in it shows up on the demo too."""
    path = Path(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    own = _validate(_with_own_data(raw, path), path, "with own_data applied")
    plain = _validate({k: v for k, v in raw.items() if k != "own_data"}, path)
    return own if plain.data.source == "folders" and raw.get("own_data") else plain



def load(path: Path | str = PARAMS_FILE) -> Settings:
    """Read and validate params.yaml; raise ConfigError with a one-line message on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}; fix the file") from None
    return parse(raw, path)
