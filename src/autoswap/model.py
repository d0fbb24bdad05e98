"""The 2017 deepfakes network, as in the seed: one shared encoder, one decoder per person, and
the trained model's folder (models/final: its weights and its card, model.json).

At the default width (1.0) and input size (64) the sub-models are exactly the seed's:
encoder 69,662,976 parameters, each decoder 6,199,747.

Why the card lives here: every stage after train rebuilds the network from it and cuts its input
with its geometry, so the network, its files and what they mean are read in one place.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
from keras import layers
from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoswap.config import ModelSettings, Settings


def _width(filters: int, width: float, multiple: int = 8) -> int:
    # round to a multiple of 8 so pixel shuffle (needs /4) and vector units stay happy
    return max(multiple, int(round(filters * width / multiple)) * multiple)


class PixelShuffle(layers.Layer):
    """depth_to_space(2): (H, W, 4C) -> (2H, 2W, C). A named layer (not a Lambda) so the
    models serialise without pickled Python code."""

    def call(self, x):
        # tf.nn.depth_to_space's NHWC layout written in keras.ops (which has no depth_to_space),
        # so the model also builds on Keras' JAX backend (bench/gpu_step.py)
        _, h, w, c = x.shape
        c = c // 4
        x = keras.ops.reshape(x, (-1, h, w, 2, 2, c))  # channel index (i * 2 + j) * c + k
        x = keras.ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, H, i, W, j, C)
        return keras.ops.reshape(x, (-1, h * 2, w * 2, c))

    def compute_output_shape(self, s):
        return (s[0], None if s[1] is None else s[1] * 2, None if s[2] is None else s[2] * 2, s[3] // 4)


# Which convolutions build(conv_as_matmul=True) runs as matmuls: outputs of at most 4 px a side
# whose patches (kernel x kernel x input channels) hold at least 4096 values. Measured on a 2-core
# CPU (bench/results/conv_matmul.json): the matmul takes 0.56-0.63x the direct convolution's time
# at the seed's widths (patches of 12,800 and 9,216), 0.83-0.86x at half width (6,400 and 4,608),
# 1.0-1.1x at a quarter and 1.2-1.3x at the demo's eighth, where oneDNN's convolution wins.
MATMUL_MAX_SIDE = 4
MATMUL_MIN_PATCH = 4096


def _as_matmul(enabled: bool, out_side: int, kernel: int, in_channels: int) -> bool:
    return enabled and out_side <= MATMUL_MAX_SIDE and kernel * kernel * in_channels >= MATMUL_MIN_PATCH


class Conv2D(layers.Conv2D):
    """keras.layers.Conv2D, or with as_matmul=True the same convolution computed as one matmul
    over the input's patches (im2col). Same weights, same variables, same outputs (to float
    rounding): a checkpoint or weight file serves either.

    Why: on CPU, oneDNN's direct convolution runs the seed's two 4x4-output convolutions
    (encoder down3, 8x8 -> 4x4 with 512 -> 1024 channels, and up_conv, 4x4 with 1024 -> 2048)
    at about half the FLOP rate it reaches on the larger images; as a matmul (forward and both
    gradients) each takes about 0.6x the time (bench/conv_matmul.py). Not for GPUs: there cuDNN
    is fast, and the patches' gradient (a segment sum) is not. TensorFlow only, because
    keras.ops.image.extract_patches is itself a convolution with an identity kernel."""

    def __init__(self, *args, as_matmul: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.as_matmul = as_matmul

    def call(self, x):
        if not self.as_matmul:
            return super().call(x)
        import tensorflow as tf

        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        # (B, Ho, Wo, kh*kw*C): each patch flattened in the kernel's (kh, kw, C) order, and
        # padded as the convolution pads ("SAME": the extra row or column at the bottom/right)
        p = tf.image.extract_patches(x, [1, kh, kw, 1], [1, sh, sw, 1], [1, 1, 1, 1], self.padding.upper())
        _, ho, wo, n = p.shape
        y = tf.matmul(tf.reshape(p, (-1, n)), tf.reshape(self.kernel, (n, self.filters)))  # (B*Ho*Wo, F)
        if self.use_bias:
            y = y + self.bias
        y = tf.reshape(y, (-1, ho, wo, self.filters))  # (B, Ho, Wo, F)
        return self.activation(y) if self.activation is not None else y

    def get_config(self):
        return super().get_config() | {"as_matmul": self.as_matmul}


def _downscale(x, filters: int, name: str, matmul: bool):
    mm = _as_matmul(matmul, -(-x.shape[1] // 2), 5, x.shape[-1])
    return Conv2D(filters, 5, strides=2, padding="same", activation="leaky_relu", name=name, as_matmul=mm)(x)


def _upscale(x, filters: int, name: str, matmul: bool = False):
    mm = _as_matmul(matmul, x.shape[1], 3, x.shape[-1])
    x = Conv2D(filters, 3, padding="same", activation="leaky_relu", name=f"{name}_conv", as_matmul=mm)(x)
    return PixelShuffle(name=f"{name}_shuffle")(x)


def latent_shape(cfg: ModelSettings) -> tuple[int, int, int]:
    """Shape of the encoder's output, (8, 8, 512) for the seed."""
    side = cfg.input_size // 2 ** len(cfg.encoder_filters) * 2
    return side, side, _width(cfg.encoder_filters[-1], cfg.width) * 2 // 4


def build_encoder(cfg: ModelSettings, conv_as_matmul: bool = False) -> keras.Model:
    s, w = cfg.input_size, cfg.width
    inp = keras.Input((s, s, 3), name="face")  # (B, 64, 64, 3)
    x = inp
    for i, f in enumerate(cfg.encoder_filters):
        x = _downscale(x, _width(f, w), f"down{i}", conv_as_matmul)  # (B, 4, 4, 1024) after the last
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(_width(cfg.latent_dim, w), name="latent")(x)  # (B, 1024)
    side = s // 2 ** len(cfg.encoder_filters)
    ch = _width(cfg.encoder_filters[-1], w)
    x = layers.Dense(side * side * ch, name="expand")(x)
    x = layers.Reshape((side, side, ch), name="reshape")(x)  # (B, 4, 4, 1024)
    x = _upscale(x, 2 * ch, "up", conv_as_matmul)  # (B, 8, 8, 512)
    return keras.Model(inp, x, name="encoder")


def build_decoder(cfg: ModelSettings, name: str) -> keras.Model:
    inp = keras.Input(latent_shape(cfg), name="latent")  # (B, 8, 8, 512)
    x = inp
    for i, f in enumerate(cfg.decoder_filters):
        x = _upscale(x, _width(f, cfg.width), f"up{i}")  # (B, 64, 64, 64) after the last
    # float32 output even under a mixed-precision policy: the sigmoid and the loss need the range
    x = layers.Conv2D(3, 5, padding="same", activation="sigmoid", dtype="float32", name="rgb")(x)
    return keras.Model(inp, x, name=name)  # (B, 64, 64, 3)


def build(cfg: ModelSettings, conv_as_matmul: bool = False) -> tuple[keras.Model, keras.Model, keras.Model]:
    """(encoder, decoder_a, decoder_b). conv_as_matmul: the convolutions with small outputs and
    large patches (_as_matmul) run as matmuls (see Conv2D): faster on CPU, same weights."""
    return build_encoder(cfg, conv_as_matmul), build_decoder(cfg, "decoder_a"), build_decoder(cfg, "decoder_b")


# ----------------------------------------------------------------------------- final weights
# models/final/ holds encoder.weights.h5, decoder_a.weights.h5, decoder_b.weights.h5 (Keras 3
# weight files) and model.json, the model's card: the model settings and the crop geometry used in
# training, so that evaluate, preview and swap rebuild the network and its input exactly, without
# retyping. Nothing run-specific goes in (the MLflow run is in models/run.json, tracking.model_run):
# the same training gives the same bytes, and the same DVC hash.
WEIGHT_FILES = ("encoder", "decoder_a", "decoder_b")

# keys that older model.json files hold and the card no longer does; dropped when read
LEGACY_KEYS = ("mlflow_run_id", "mlflow_tracking_uri")


class ModelCard(BaseModel):
    """models/final/model.json: what the model is and how its input is cut. The one way
    evaluate, preview and swap read a model's geometry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelSettings  # the network (model.input_size is the size it sees)
    face_size: int = Field(ge=16, le=1024, multiple_of=16)  # data.face_size: the aligned faces
    crop: float = Field(gt=0, le=1)  # train.crop: the centre part of the face the model sees
    steps: int | None = Field(None, ge=0)  # the steps trained
    seed: int | None = None
    autoswap_version: str | None = None

    @model_validator(mode="after")
    def _crop_fits(self) -> ModelCard:
        if self.crop * self.face_size < self.model.input_size / 2:
            raise ValueError("crop x face_size is too small for model.input_size")
        return self

    @property
    def input_size(self) -> int:
        return self.model.input_size

    @classmethod
    def from_dict(cls, raw: dict) -> ModelCard:
        """A card from model.json's contents (or the dict train hands to save_final); the
        LEGACY_KEYS are ignored, any other unknown key is refused."""
        return cls(**{k: v for k, v in raw.items() if k not in LEGACY_KEYS})

    def settings(self) -> Settings:
        """params.yaml's defaults with this model's network and geometry: what
        pipeline.BatchSpec and center_crop need to cut faces exactly as in training."""
        return Settings(data={"face_size": self.face_size}, model=self.model, train={"crop": self.crop})


def save_final(out_dir: Path, nets, card: ModelCard | dict) -> None:
    """Write the three weight files, then model.json (`card`, or the dict train passes, made
    into one)."""
    from autoswap.files import atomic_write_json

    card = card if isinstance(card, ModelCard) else ModelCard.from_dict(card)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.json").unlink(missing_ok=True)
    for name, net in zip(WEIGHT_FILES, nets, strict=True):
        tmp = out_dir / f".{name}.weights.h5.tmp.weights.h5"
        net.save_weights(tmp)
        tmp.replace(out_dir / f"{name}.weights.h5")
    # written last: a folder without model.json is not a model, so a cut-off save is never used
    atomic_write_json(out_dir / "model.json", card.model_dump(mode="json", exclude_none=True))


def read_card(model_dir: Path) -> ModelCard:
    """models/final/model.json as a ModelCard. Raises UserError for a missing or foreign one."""
    from autoswap.errors import UserError

    meta_file = Path(model_dir) / "model.json"
    if not meta_file.is_file():
        raise UserError(f"{meta_file}: no trained model here; run `dvc repro train` (or pass --model DIR)")
    try:
        return ModelCard.from_dict(json.loads(meta_file.read_text()))
    except Exception:
        raise UserError(f"{meta_file}: written by another autoswap version or config; retrain") from None


def load_final(model_dir: Path) -> tuple[keras.Model, keras.Model, keras.Model, ModelCard]:
    """-> (encoder, decoder_a, decoder_b, card). Raises UserError for a missing or foreign folder."""
    from autoswap.errors import UserError

    model_dir = Path(model_dir)
    card = read_card(model_dir)
    nets = build(card.model)
    for name, net in zip(WEIGHT_FILES, nets, strict=True):
        f = model_dir / f"{name}.weights.h5"
        if not f.is_file():
            raise UserError(f"{f}: missing weight file; retrain or copy the whole folder")
        try:
            net.load_weights(f)
        except Exception as e:
            raise UserError(f"{f}: does not match {model_dir / 'model.json'} ({type(e).__name__}); retrain") from None
    return (*nets, card)


def check_geometry(card: ModelCard, settings: Settings, model_dir: Path) -> None:
    """evaluate and preview feed the model faces cut with params.yaml's geometry: it must be the
    geometry the model was trained with (swap reads it from the card instead)."""
    from autoswap.errors import UserError

    ours = (settings.data.face_size, settings.model.input_size, settings.train.crop)
    theirs = (card.face_size, card.input_size, card.crop)
    if ours != theirs:
        raise UserError(
            f"{model_dir}: trained for other face/input sizes or crop (face_size, input_size, crop = "
            f"{theirs}) than params.yaml ({ours}); run `dvc repro` or pass --model"
        )
