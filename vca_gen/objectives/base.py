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

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch

from vca_gen.utils.guidance import guided_model_fn
from vca_gen.utils.rng import GeneratorSpec

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

OBJECTIVE_KINDS = ("diffusion", "flow")


class UnknownOptionError(ValueError):
    """A sampler option the sampler does not take (the message names the accepted ones)."""


def check_option_names(sampler: str, options: Iterable[str], accepted: Iterable[str]) -> None:
    """Refuse option names ``sampler`` does not take, with :class:`UnknownOptionError`."""
    bad, accepted = set(options) - set(accepted), set(accepted)
    if bad:
        raise UnknownOptionError(f"unknown options {sorted(bad)} for sampler {sampler!r}; accepted: {sorted(accepted)}")


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


def infer_null_label(model_fn: Any) -> int | None:
    """``num_classes`` of a model (or of the module behind a bound ``forward``), else ``None``."""
    for obj in (model_fn, getattr(model_fn, "__self__", None)):
        n = getattr(obj, "num_classes", None)
        if isinstance(n, int):
            return n
    return None


class _Probe(Exception):
    """Raised by the stand-in model of :meth:`Objective.check_sample_args`."""


def parse_steps(steps: int | str | None) -> int | str | None:
    """Config/CLI steps: ``None``, an int (``"250"`` → 250) or a respacing string (``"ddim50"``)."""
    if steps is None:
        return None
    s = str(steps).strip()
    return int(s) if s.isdigit() else s


class Objective:
    """Base class: channel checks, guidance wiring and NFE counting shared by both objectives."""

    kind: str = ""
    samplers: tuple = ()
    default_sampler: str = ""
    default_steps: int | str = 0

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
    def check_sampler(self, sampler: str | None) -> str:
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
        guide_channels: int | None,
        null_label: int | None,
    ) -> CountingModelFn:
        if noise.dim() < 2:
            raise ValueError(f"noise must be (B, C, ...), got shape {tuple(noise.shape)}")
        if labels.shape[:1] != noise.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match the batch of noise {tuple(noise.shape)}")
        if not math.isfinite(float(cfg_scale)) or float(cfg_scale) < 0:
            raise ValueError(
                f"cfg_scale={cfg_scale!r} is not valid; accepted: a finite number >= 0 "
                f"(1 = no guidance, 0 = unconditional, > 1 = classifier-free guidance)"
            )
        if float(cfg_scale) != 1.0 and null_label is None:
            null_label = infer_null_label(model_fn)
            if null_label is None:
                raise ValueError("cfg_scale != 1 needs null_label (the model's num_classes); pass null_label=")
        fn = guided_model_fn(model_fn, float(cfg_scale), null_label, noise.shape[1], guide_channels)
        return CountingModelFn(fn)

    def check_sample_args(
        self,
        sampler: str | None = None,
        steps: int | str | None = None,
        cfg_scale: float = 1.0,
        guide_channels: int | None = None,
        options: Mapping[str, Any] | None = None,
        channels: int = 4,
        null_label: int | None = 0,
    ) -> str:
        """Validate sampling settings without evaluating a model; returns the resolved sampler name.

        Runs :meth:`sample` with a model function that stops at its first call, so every check
        the sampler makes before its first step (names, steps, options, guidance) raises
        ``ValueError`` here exactly as it would in a real run.
        """

        def stop(*_):
            raise _Probe

        name = self.check_sampler(sampler)
        gens = [torch.Generator().manual_seed(0)]
        try:
            self.sample(
                stop,
                torch.zeros(1, int(channels), 2, 2),
                torch.zeros(1, dtype=torch.long),
                sampler=sampler,
                steps=steps,
                cfg_scale=cfg_scale,
                guide_channels=guide_channels,
                generator=gens,
                null_label=null_label,
                **dict(options or {}),
            )
        except _Probe:
            return name
        except TypeError as e:  # e.g. an option of the wrong type
            raise ValueError(str(e)) from None
        raise RuntimeError("the sampler finished without calling the model")  # pragma: no cover

    def training_losses(
        self, model_fn: ModelFn, x: torch.Tensor, y: torch.Tensor, generator: GeneratorSpec = None
    ) -> dict:  # pragma: no cover
        raise NotImplementedError

    def sample(
        self,
        model_fn,
        noise,
        labels,
        sampler=None,
        steps=None,
        cfg_scale=1.0,
        guide_channels=None,
        generator=None,
        null_label=None,
        progress=False,
        **sampler_options,
    ) -> SampleOutput:  # pragma: no cover
        raise NotImplementedError


__all__ = ["Objective", "SampleOutput", "CountingModelFn", "ModelFn", "infer_null_label", "parse_steps"]
