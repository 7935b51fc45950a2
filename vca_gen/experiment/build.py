"""The one factory: an experiment → model, objective and decoder.

Training, preview grids, in-loop FID, ``sample.py``, exports and the demo all build through
:func:`build`, so a value of the experiment means the same thing everywhere.

- :func:`build_model`       the backbone (``device="meta"`` builds it without memory)
- :func:`build_objective_for`  the objective of ``experiment.objective``
- :func:`decoder_spec`      what decoding samples needs (VAE id/subfolder, latent normalisation, class
  names); persisted beside the weights in every checkpoint and export
- :func:`build`             all three, the decoder's VAE loaded only when asked
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from vca_gen.data.config import image_channels, uses_latents
from vca_gen.data.decoder import Decoder, DecoderSpec
from vca_gen.data.vae import LatentNormalizer
from vca_gen.errors import ConfigError
from vca_gen.experiment.typed import plain
from vca_gen.models import create_model
from vca_gen.objectives import Objective, build_objective

ARCH_KEYS = ("depth", "hidden_size", "num_heads", "mlp_ratio")


def model_kwargs(model_cfg: Any) -> dict[str, Any]:
    """Keyword arguments of ``create_model`` for a validated ``model`` section (its
    ``attention_options`` are already exactly the options of ``model.attention``: the experiment
    validator resolved them, and the attention factory checks them where it builds each layer)."""
    m = model_cfg
    kw: dict[str, Any] = dict(
        attention=m.attention,
        input_size=m.input_size,
        in_channels=m.in_channels,
        num_classes=m.num_classes,
        learn_sigma=m.learn_sigma,
        class_dropout_prob=m.class_dropout_prob,
        grad_checkpointing=m.grad_checkpointing,
    )
    for key in ARCH_KEYS:
        if getattr(m, key) is not None:
            kw[key] = getattr(m, key)
    opts = m.attention_options
    kw.update(plain(opts) if isinstance(opts, DictConfig) else dict(opts or {}))
    return kw


def build_model(exp: DictConfig, device: Any = None) -> torch.nn.Module:
    """``create_model`` for a validated experiment (``device="meta"`` builds without memory)."""
    if exp.model.input_size is None or exp.model.in_channels is None:
        raise ConfigError("build_model needs a validated experiment (model.input_size / in_channels derived)")
    if device is None:
        return create_model(exp.model.name, **model_kwargs(exp.model))
    with torch.device(device):
        return create_model(exp.model.name, **model_kwargs(exp.model))


def build_objective_for(exp: DictConfig) -> Objective:
    """The experiment's objective (diffusion or flow) with its sampling protocol."""
    return build_objective(exp.objective)


def class_names(exp: DictConfig) -> list | None:
    """Names of the classes when the data source knows them (Animal-MNIST), else ``None``."""
    if exp.data.kind == "animal_mnist":
        from vca_gen.data.animal_mnist import CLASSES

        return list(CLASSES)
    return None


def decoder_spec(exp: DictConfig, normalizer: LatentNormalizer | None = None, names: list | None = None) -> DecoderSpec:
    """What decoding this experiment's samples needs. ``normalizer``: the training data's latent
    normaliser (required for ``data.latent_norm=per_channel``, whose statistics come from the store)."""
    d = exp.data
    names = names if names is not None else class_names(exp)
    if not uses_latents(d):
        return DecoderSpec(
            vae=None, subfolder=None, normalizer=None, image_channels=image_channels(d), downsample=1, class_names=names
        )
    if normalizer is None:
        if d.latent_norm != "scale":
            raise ConfigError(
                f"data.latent_norm={d.latent_norm!r}: the per-channel statistics come from the latent store at "
                f"data.path={d.path!r}; build the decoder from the training data (or a checkpoint that recorded them)"
            )
        normalizer = LatentNormalizer("scale", d.scale_factor)
    return DecoderSpec(
        vae=d.vae,
        subfolder=d.vae_subfolder,
        normalizer=normalizer.to_dict(),
        image_channels=3,
        downsample=d.vae_downsample,
        class_names=names,
    )


@dataclass
class Built:
    """What an experiment turns into: ``model`` (eval or train mode as built), ``objective``,
    ``decoder`` (latents → images in [-1, 1]; identity clamp in pixel space)."""

    model: torch.nn.Module
    objective: Objective
    decoder: Decoder


def build(exp: DictConfig, spec: DecoderSpec | None = None, device: Any = "cpu", vae: str | None = None) -> Built:
    """Model (on ``device``), objective and decoder of ``exp``; ``vae`` overrides the spec's VAE id."""
    model = build_model(exp).to(device)
    objective = build_objective_for(exp)
    objective.check_model(model)
    spec = spec if spec is not None else decoder_spec(exp)
    return Built(model, objective, Decoder(spec, device=device, vae=vae))


__all__ = ["model_kwargs", "build_model", "build_objective_for", "class_names", "decoder_spec", "Built", "build"]
