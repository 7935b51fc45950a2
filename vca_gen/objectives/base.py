"""One interface over DiT's Gaussian diffusion and SiT's interpolant transport.

``build_objective(cfg)`` turns an :class:`ObjectiveConfig` (dataclass, OmegaConf ``DictConfig`` or
plain dict) into an :class:`Objective` with

* ``check_model(model)`` / ``check_channels(in_channels, out_channels)``,
* ``training_losses(model_fn, x, y, generator=None) -> {"loss": (B,), ...}``,
* ``sample(model_fn, noise, labels, sampler=None, steps=None, cfg_scale=1.0, ...) -> SampleOutput``,
* ``samplers`` (accepted names), ``default_sampler``, ``default_steps``.

Time convention: diffusion models receive integer-valued float timesteps ``0..T-1`` (the
*original* indices even for respaced samplers); flow models receive continuous ``t`` in [0, 1]
with **t = 0 noise and t = 1 data** (SiT's convention).

``nfe`` counts calls of the *unguided* ``model_fn`` wrapper as seen by the sampler, i.e. one per
solver evaluation: with classifier-free guidance each call runs a doubled batch (cond + uncond),
so the number of network forward passes over B samples is ``nfe`` at scale 1 and ``nfe`` on a
2B batch otherwise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import torch

from vca_gen.utils.guidance import guided_model_fn
from vca_gen.utils.rng import GeneratorSpec

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

OBJECTIVE_KINDS = ("diffusion", "flow")


# --------------------------------------------------------------------------------------------
# Interface
# --------------------------------------------------------------------------------------------
class SampleOutput(NamedTuple):
    """Final samples ``x`` (same shape as the noise) and ``nfe`` (number of model evaluations)."""

    x: torch.Tensor
    nfe: int


class CountingModelFn:
    """Wraps a ``model_fn`` and counts its calls (``.nfe``)."""

    def __init__(self, model_fn: ModelFn):
        self.model_fn = model_fn
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.model_fn(x, t, y)


def infer_null_label(model_fn: Any) -> Optional[int]:
    """``num_classes`` of a model (or of the module behind a bound ``forward``), else ``None``."""
    for obj in (model_fn, getattr(model_fn, "__self__", None)):
        n = getattr(obj, "num_classes", None)
        if isinstance(n, int):
            return n
    return None


class Objective:
    """Base class: channel checks, guidance wiring and NFE counting shared by both objectives."""

    kind: str = ""
    samplers: tuple = ()
    default_sampler: str = ""
    default_steps: Union[int, str] = 0

    # -- channels ---------------------------------------------------------------------------
    def check_channels(self, in_channels: int, out_channels: int) -> None:  # pragma: no cover
        raise NotImplementedError  # overridden by both concrete objectives

    def check_model(self, model: Any) -> None:
        """Error if ``model.out_channels`` does not fit ``model.in_channels`` for this objective."""
        try:
            cin, cout = int(model.in_channels), int(model.out_channels)
        except AttributeError as e:
            raise TypeError(f"{type(model).__name__} has no in_channels/out_channels attributes") from e
        self.check_channels(cin, cout)

    # -- sampling helpers ---------------------------------------------------------------------
    def check_sampler(self, sampler: Optional[str]) -> str:
        name = self.default_sampler if sampler is None else str(sampler).lower()
        if name not in self.samplers:
            raise ValueError(f"unknown {self.kind} sampler {sampler!r}; accepted: {', '.join(self.samplers)}")
        return name

    def _wrap(
        self,
        model_fn: ModelFn,
        noise: torch.Tensor,
        labels: torch.Tensor,
        cfg_scale: float,
        guide_channels: Optional[int],
        null_label: Optional[int],
    ) -> CountingModelFn:
        if noise.dim() < 2:
            raise ValueError(f"noise must be (B, C, ...), got shape {tuple(noise.shape)}")
        if labels.shape[:1] != noise.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match the batch of noise {tuple(noise.shape)}")
        if float(cfg_scale) != 1.0 and null_label is None:
            null_label = infer_null_label(model_fn)
            if null_label is None:
                raise ValueError("cfg_scale != 1 needs null_label (the model's num_classes); pass null_label=")
        fn = guided_model_fn(model_fn, float(cfg_scale), null_label, noise.shape[1], guide_channels)
        return CountingModelFn(fn)

    def training_losses(self, model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, generator: GeneratorSpec = None) -> dict:  # pragma: no cover
        raise NotImplementedError

    def sample(self, model_fn, noise, labels, sampler=None, steps=None, cfg_scale=1.0, guide_channels=None,
               generator=None, null_label=None, progress=False, **sampler_options) -> SampleOutput:  # pragma: no cover
        raise NotImplementedError


__all__ = ["Objective", "SampleOutput", "CountingModelFn", "ModelFn", "infer_null_label"]
