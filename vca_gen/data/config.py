"""Typed data configuration (usable as an OmegaConf structured config) and model-shape helpers.

``DataConfig`` is the ``data:`` section of an experiment config. ``kind`` selects the source:

* ``"latents"``      – a latent store written by ``python -m vca_gen.data.extract`` (``path`` = store
  directory). Items are already-normalised latent samples ``(C, H/f, W/f)``.
* ``"images"``       – an ImageNet-style class-folder tree (``path`` = root). Items are images in
  [-1, 1] ``(3, S, S)``; when ``vae`` is set the trainer encodes them on the fly
  (``vca_gen.data.vae.encode_latents``), otherwise the model runs in pixel space.
* ``"animal_mnist"`` – the offline demo set (``path`` = asset folder, default ``<assets>/animal_mnist``);
  items are ``(1, 32, 32)`` in [-1, 1], always in pixel space (``vae`` must be None).

``model_in_channels(cfg)`` / ``model_input_size(cfg)`` give the model's ``in_channels`` and
``input_size`` for a data config (latents: ``latent_channels`` and ``image_size // vae_downsample``;
pixels: the image channels and ``image_size``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vca_gen.utils.settings import setting

DATA_KINDS = ("latents", "images", "animal_mnist")
LATENT_NORMS = ("scale", "per_channel")
VERIFY_MODES = ("eager", "lazy", "size")
ANIMAL_SPLITS = ("all", "a", "b")
DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"
DEFAULT_SCALE_FACTOR = 0.18215


@dataclass
class DataConfig:
    """Where the training data comes from and how it is turned into model inputs."""

    kind: str = "latents"  # "latents" | "images" | "animal_mnist"
    path: str | None = setting(None, run_defining=False)  # store / image root / Animal-MNIST (None: assets)
    image_size: int = 256  # pixel resolution (latents: the resolution they were extracted at)
    random_flip: bool = True  # horizontal flip (latents: pick the stored flip copy)
    seed: int = 0  # data order + per-item randomness seed
    num_workers: int = setting(4, run_defining=False)  # DataLoader worker processes per training process
    vae: str | None = DEFAULT_VAE  # hub id or local folder; None = pixel space (images/animal_mnist)
    vae_subfolder: str | None = None  # e.g. "vae" inside a full pipeline folder
    latent_channels: int = 4  # VAE latent channels (sd-vae: 4)
    vae_downsample: int = 8  # VAE spatial down-sampling factor (sd-vae: 8)
    latent_norm: str = "scale"  # "scale": z * scale_factor | "per_channel": (z - mean_c) / std_c
    scale_factor: float = DEFAULT_SCALE_FACTOR
    split: str = "all"  # animal_mnist: "all" | "a" | "b" (deterministic halves)
    strict: bool = setting(False, run_defining=False)  # images: raise on an unreadable file instead of substituting
    verify: str = setting(
        "size", run_defining=False
    )  # latents: "size" (file sizes) | "lazy" | "eager" (sha256), see latents.py


def validate_data_config(cfg: DataConfig) -> None:
    """Raise ``ValueError`` naming the offending field and the accepted values."""

    def _choice(name: str, value, allowed) -> None:
        if value not in allowed:
            raise ValueError(f"data.{name}={value!r} is not valid; accepted: {list(allowed)}")

    _choice("kind", cfg.kind, DATA_KINDS)
    _choice("latent_norm", cfg.latent_norm, LATENT_NORMS)
    _choice("split", cfg.split, ANIMAL_SPLITS)
    _choice("verify", cfg.verify, VERIFY_MODES)
    if cfg.kind in ("latents", "images") and not cfg.path:
        raise ValueError(f"data.path is required for data.kind={cfg.kind!r}")
    for name in ("image_size", "latent_channels", "vae_downsample"):
        if int(getattr(cfg, name)) <= 0:
            raise ValueError(f"data.{name} must be a positive integer, got {getattr(cfg, name)!r}")
    if cfg.num_workers < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {cfg.num_workers}")
    if not cfg.scale_factor > 0:
        raise ValueError(f"data.scale_factor must be > 0, got {cfg.scale_factor}")
    if cfg.kind == "latents" and cfg.image_size % cfg.vae_downsample:
        raise ValueError(
            f"data.image_size={cfg.image_size} is not divisible by data.vae_downsample={cfg.vae_downsample}"
        )
    if cfg.vae_subfolder and cfg.vae is None:
        raise ValueError(
            f"data.vae_subfolder={cfg.vae_subfolder!r} without data.vae: the subfolder is looked up inside "
            f"data.vae; accepted: data.vae=<hub id or folder> with it, or data.vae_subfolder=null"
        )
    if cfg.kind == "animal_mnist" and cfg.vae is not None:
        raise ValueError(
            f"data.vae={cfg.vae!r} with data.kind='animal_mnist': Animal-MNIST is grayscale (1 channel) and an "
            f"image VAE encodes 3-channel images; accepted: data.vae=null (the model runs in pixel space)"
        )
    if cfg.kind == "animal_mnist" and cfg.image_size < 28:
        raise ValueError(f"data.image_size={cfg.image_size}: Animal-MNIST images are 28x28, need image_size >= 28")


def uses_latents(cfg: DataConfig) -> bool:
    """True when the model sees VAE latents (a latent store, or images encoded on the fly)."""
    return cfg.kind == "latents" or cfg.vae is not None


def image_channels(cfg: DataConfig) -> int:
    """Channels of the pixel data (Animal-MNIST is grayscale)."""
    return 1 if cfg.kind == "animal_mnist" else 3


def model_in_channels(cfg: DataConfig) -> int:
    """The model's ``in_channels`` for this data config."""
    return int(cfg.latent_channels) if uses_latents(cfg) else image_channels(cfg)


def model_input_size(cfg: DataConfig) -> int:
    """The model's ``input_size`` (spatial side of its input) for this data config."""
    if uses_latents(cfg):
        if cfg.image_size % cfg.vae_downsample:
            raise ValueError(
                f"data.image_size={cfg.image_size} is not divisible by data.vae_downsample={cfg.vae_downsample}"
            )
        return int(cfg.image_size) // int(cfg.vae_downsample)
    return int(cfg.image_size)
