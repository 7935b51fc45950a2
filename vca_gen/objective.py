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

from vca_gen.guidance import guided_model_fn
from vca_gen.utils.rng import GeneratorSpec

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

OBJECTIVE_KINDS = ("diffusion", "flow")


# --------------------------------------------------------------------------------------------
# Configs (plain dataclasses, usable as OmegaConf structured configs)
# --------------------------------------------------------------------------------------------
@dataclass
class DiffusionConfig:
    """DiT's Gaussian diffusion (improved-DDPM ``create_gaussian_diffusion`` as DiT calls it).

    ``beta_schedule``: "linear" (β from ``beta_start`` to ``beta_end``) or "cosine" (Nichol &
    Dhariwal's squared-cosine ᾱ, β capped at 0.999). ``fixed_variance`` is used when the model
    outputs ``in_channels`` (no learned σ): "large" (β_t, improved-DDPM/DiT's default) or "small"
    (posterior β̃_t). ``rescale_vb`` multiplies the VLB term by T/1000 (improved-DDPM's
    RESCALED_MSE; DiT uses plain MSE, the same at T = 1000). ``sampler``: "ddpm" | "ddim" | "dpm-solver++". ``sample_steps`` uses
    improved-DDPM's ``space_timesteps`` syntax ("250", "10,10,10", "ddim50") or an int.
    """

    num_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    fixed_variance: str = "large"
    sampler: str = "ddpm"
    sample_steps: str = "250"
    ddim_eta: float = 0.0
    dpm_solver_order: int = 2
    clip_denoised: bool = False
    rescale_vb: bool = False


@dataclass
class FlowConfig:
    """SiT's interpolant transport (``create_transport`` + ``Sampler``).

    ``path``: "linear" | "gvp" | "vp" (VP with ``vp_beta_min``/``vp_beta_max``).
    ``prediction``: "velocity" | "score" | "noise". ``loss_weight``: "none" | "velocity" |
    "likelihood" (only affects score/noise predictions, as in SiT). ``train_eps`` / ``sample_eps``:
    ``None`` = SiT's per-path default (VP 1e-5 / 1e-3; Linear/GVP with score or noise 1e-3 / 1e-3;
    Linear/GVP with velocity 0 / 0). ``sampler``: "sde" | "ode" | "euler" | "heun".
    ``ode_method``: a torchdiffeq adaptive method for sampler "ode" (default "dopri5").
    SDE: ``diffusion_form`` in "constant", "sbdm", "sigma", "linear", "decreasing",
    "increasing-decreasing"; ``last_step`` in "mean", "tweedie", "euler", "none".
    """

    path: str = "linear"
    prediction: str = "velocity"
    loss_weight: str = "none"
    train_eps: Optional[float] = None
    sample_eps: Optional[float] = None
    vp_beta_min: float = 0.1
    vp_beta_max: float = 20.0
    sampler: str = "sde"
    sample_steps: int = 250
    diffusion_form: str = "sigma"
    diffusion_norm: float = 1.0
    last_step: str = "mean"
    last_step_size: float = 0.04
    atol: float = 1e-6
    rtol: float = 1e-3
    ode_method: str = "dopri5"


@dataclass
class ObjectiveConfig:
    """``kind``: "diffusion" (DiT) or "flow" (SiT); the matching sub-config is used."""

    kind: str = "diffusion"
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)


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


def _to_config(cfg: Any) -> ObjectiveConfig:
    """Accept an ObjectiveConfig, a DictConfig or a plain (nested) mapping."""
    if isinstance(cfg, ObjectiveConfig):
        return cfg
    if cfg is None:
        return ObjectiveConfig()
    try:  # DictConfig → plain dict
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(cfg, Mapping):
        raise TypeError(f"objective config must be ObjectiveConfig, DictConfig or dict, got {type(cfg).__name__}")

    def build(cls, data):
        if isinstance(data, cls):
            return data
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__} must be a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; accepted: {sorted(names)}")
        return cls(**dict(data))

    data = dict(cfg)
    unknown = set(data) - {"kind", "diffusion", "flow"}
    if unknown:
        raise ValueError(f"unknown ObjectiveConfig keys {sorted(unknown)}; accepted: ['diffusion', 'flow', 'kind']")
    return ObjectiveConfig(
        kind=data.get("kind", "diffusion"),
        diffusion=build(DiffusionConfig, data.get("diffusion")),
        flow=build(FlowConfig, data.get("flow")),
    )


def build_objective(cfg: Union[ObjectiveConfig, Mapping, Any, None] = None) -> Objective:
    """Objective from an :class:`ObjectiveConfig`, ``DictConfig`` or dict (``None`` = defaults)."""
    cfg = _to_config(cfg)
    kind = str(cfg.kind).lower()
    if kind == "diffusion":
        from vca_gen.diffusion.objective import DiffusionObjective

        return DiffusionObjective(cfg.diffusion)
    if kind == "flow":
        from vca_gen.flow.objective import FlowObjective

        return FlowObjective(cfg.flow)
    raise ValueError(f"unknown objective kind {cfg.kind!r}; accepted: {', '.join(OBJECTIVE_KINDS)}")


__all__ = [
    "DiffusionConfig",
    "FlowConfig",
    "ObjectiveConfig",
    "Objective",
    "SampleOutput",
    "CountingModelFn",
    "build_objective",
    "OBJECTIVE_KINDS",
]
