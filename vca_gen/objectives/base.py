"""One interface over DiT's Gaussian diffusion and SiT's interpolant transport.

``build_objective(cfg)`` turns an :class:`ObjectiveConfig` (dataclass, OmegaConf ``DictConfig`` or
plain dict) into an :class:`Objective` with

* ``check_model(model)`` / ``check_channels(in_channels, out_channels)``,
* ``training_losses(model_fn, x, y, generator=None) -> {"loss": (B,), ...}``,
* ``sample(model_fn, noise, labels, sampler=None, steps=None, cfg_scale=1.0, ...) -> SampleOutput``,
* ``samplers`` (accepted names), ``default_sampler``, ``default_steps``.

The samplers themselves are entries of :mod:`vca_gen.objectives.registry` (one per sampler):
:meth:`Objective.sample` looks the entry up, checks its steps and options with the entry's own
checks, wraps the model for guidance and runs it.

Time convention: diffusion models receive integer-valued float timesteps ``0..T-1`` (the
*original* indices even for respaced samplers); flow models receive continuous ``t`` in [0, 1]
with **t = 0 noise and t = 1 data** (SiT's convention).

Guidance interval (``cfg_interval=(LO, HI)``): guidance only for the evaluations whose time
(above, the objective's own time: diffusion timestep in [0, T-1], flow t in [0, 1]) satisfies
``LO <= t <= HI``; the others are plain conditional evaluations. ``None``: guidance everywhere.

``nfe`` counts calls of the *unguided* ``model_fn`` wrapper as seen by the sampler, i.e. one per
solver evaluation: with classifier-free guidance each call runs a doubled batch (cond + uncond),
so the number of network forward passes over B samples is ``nfe`` at scale 1 and ``nfe`` on a
2B batch otherwise. ``guided`` counts the calls that ran the doubled batch (``nfe`` without an
interval, at scale != 1; 0 at scale 1): forward passes over B samples = ``nfe + guided``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from vca_gen.objectives.registry import SampleCall, Sampler, get_sampler, sampler_names
from vca_gen.utils.guidance import GuidedModelFn
from vca_gen.utils.rng import GeneratorSpec

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

OBJECTIVE_KINDS = ("diffusion", "flow")
CFG_SCALE_ACCEPTED = "a finite number >= 0 (1 = no guidance, 0 = unconditional, > 1 = classifier-free guidance)"


# --------------------------------------------------------------------------------------------
# Interface
# --------------------------------------------------------------------------------------------
class SampleOutput(NamedTuple):
    """Final samples ``x`` (same shape as the noise), ``nfe`` (number of model evaluations) and
    ``guided`` (how many of them ran the doubled cond + uncond batch)."""

    x: torch.Tensor
    nfe: int
    guided: int = 0


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
    """Base class: channel checks, sampler dispatch through the registry, guidance wiring and NFE
    counting shared by both objectives. Subclasses set ``kind``, ``cfg`` (their config dataclass,
    which gives the options' defaults), ``default_sampler`` / ``default_steps`` and ``guidance_time``."""

    kind: str = ""
    cfg: Any = None
    default_sampler: str = ""
    default_steps: int | str = 0
    guidance_time: tuple[float, float] = (0.0, 1.0)  # the time range a guidance interval lies in
    guidance_time_help: str = ""  # what that time is, in words

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

    # -- the registry's entries ----------------------------------------------------------------
    @property
    def samplers(self) -> tuple[str, ...]:
        """Names of this objective's registered samplers."""
        return sampler_names(self.kind)

    def sampler_entry(self, sampler: str | None) -> Sampler:
        """The registry entry of ``sampler`` (``None``: the configured one)."""
        name = self.default_sampler if sampler is None else str(sampler).lower()
        if name not in self.samplers:
            raise ValueError(f"unknown {self.kind} sampler {sampler!r}; accepted: {', '.join(self.samplers)}")
        return get_sampler(self.kind, name)

    def check_sampler(self, sampler: str | None) -> str:
        return self.sampler_entry(sampler).name

    def resolve_steps(self, entry: Sampler, steps: int | str | None) -> Any:
        """``steps`` checked by the entry (``None``: the configured ``sample_steps`` for the configured
        sampler, else the entry's default)."""
        if steps is None:
            steps = self.default_steps if entry.name == self.default_sampler else entry.default_steps
        return entry.parse_steps(steps, self.cfg)

    def resolve_options(self, entry: Sampler, options: Mapping[str, Any], where: str = "") -> dict[str, Any]:
        """Every option of ``entry``: the given value, else the config field's, else the entry's
        default, each checked by the entry's own check. ``where`` prefixes the keys in errors
        (``train.grid.options`` → ``train.grid.options.eta=...``)."""
        bad = sorted(set(options) - set(entry.option_names))
        if bad:
            lead = f"{where}: " if where else ""
            raise ValueError(f"{lead}unknown options {bad} for sampler {entry.name!r}; accepted: {entry.option_names}")
        resolved: dict[str, Any] = {}
        for opt in entry.options:
            if opt.name in options:
                value = options[opt.name]
            elif opt.field is not None:
                value = getattr(self.cfg, opt.field)
            else:
                value = opt.default
            resolved[opt.name] = opt.check(f"{where}.{opt.name}" if where else opt.name, value, resolved)
        return resolved

    # -- guidance -----------------------------------------------------------------------------
    def check_guidance(self, cfg_scale: float, cfg_interval: Any = None, where: str = "") -> tuple[float, float] | None:
        """Check ``cfg_scale`` and the guidance interval; returns the interval as two floats (or None).

        Accepted interval: two finite numbers ``LO <= HI`` inside :attr:`guidance_time` (the
        objective's own time), only with ``cfg_scale != 1``. ``where`` prefixes the keys in errors."""

        def key(name: str) -> str:
            return f"{where}.{name}" if where else name

        try:
            ok = math.isfinite(float(cfg_scale)) and float(cfg_scale) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{key('cfg_scale')}={cfg_scale!r} is not valid; accepted: {CFG_SCALE_ACCEPTED}")
        if cfg_interval is None:
            return None
        t_lo, t_hi = self.guidance_time
        accepted = (
            f"two numbers LO <= HI in [{t_lo:g}, {t_hi:g}] ({self.guidance_time_help}; guided where "
            f"LO <= t <= HI), with a cfg_scale other than 1"
        )
        pair = list(cfg_interval) if isinstance(cfg_interval, (list, tuple)) else None
        if (
            pair is None
            or len(pair) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in pair)
            or not all(math.isfinite(float(v)) for v in pair)
            or not t_lo <= float(pair[0]) <= float(pair[1]) <= t_hi
        ):
            raise ValueError(f"{key('cfg_interval')}={cfg_interval!r} is not valid; accepted: {accepted}")
        if float(cfg_scale) == 1.0:
            raise ValueError(
                f"{key('cfg_interval')}={cfg_interval!r} is given with {key('cfg_scale')}=1.0 (no guidance); "
                f"accepted: an interval only with a cfg_scale other than 1"
            )
        return float(pair[0]), float(pair[1])

    def _wrap(
        self,
        model_fn: ModelFn,
        noise: torch.Tensor,
        labels: torch.Tensor,
        cfg_scale: float,
        guide_channels: int | None,
        null_label: int | None,
        cfg_interval: Any = None,
    ) -> GuidedModelFn:
        if noise.dim() < 2:
            raise ValueError(f"noise must be (B, C, ...), got shape {tuple(noise.shape)}")
        if labels.shape[:1] != noise.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match the batch of noise {tuple(noise.shape)}")
        interval = self.check_guidance(cfg_scale, cfg_interval)
        if float(cfg_scale) != 1.0 and null_label is None:
            null_label = infer_null_label(model_fn)
            if null_label is None:
                raise ValueError("cfg_scale != 1 needs null_label (the model's num_classes); pass null_label=")
        return GuidedModelFn(model_fn, float(cfg_scale), null_label, noise.shape[1], guide_channels, interval)

    def check_sample_args(
        self,
        sampler: str | None = None,
        steps: int | str | None = None,
        cfg_scale: float = 1.0,
        guide_channels: int | None = None,
        options: Mapping[str, Any] | None = None,
        channels: int = 4,
        null_label: int | None = 0,
        cfg_interval: Any = None,
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
                cfg_interval=cfg_interval,
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
        model_fn: ModelFn,
        noise: torch.Tensor,
        labels: torch.Tensor,
        sampler: str | None = None,
        steps: int | str | None = None,
        cfg_scale: float = 1.0,
        guide_channels: int | None = None,
        generator: GeneratorSpec = None,
        null_label: int | None = None,
        progress: bool = False,
        cfg_interval: Any = None,
        **sampler_options: Any,
    ) -> SampleOutput:
        """Draw samples from ``noise`` (B, C, ...) with the registered sampler ``sampler`` (None = the
        configured one) and class ``labels`` (B,).

        ``steps``: the sampler's steps (None = configured / the entry's default); ``cfg_scale``,
        ``guide_channels``, ``null_label``: classifier-free guidance (see :mod:`vca_gen.utils.guidance`);
        ``cfg_interval=(LO, HI)``: guide only where LO <= t <= HI (the objective's own time);
        ``sampler_options``: the entry's options (defaults from the objective config).
        """
        entry = self.sampler_entry(sampler)
        options = self.resolve_options(entry, sampler_options)
        parsed = self.resolve_steps(entry, steps)
        fn = self._wrap(model_fn, noise, labels, cfg_scale, guide_channels, null_label, cfg_interval)
        with torch.no_grad():
            x = entry.run(SampleCall(self, fn, noise, labels, parsed, options, generator, progress))
        return SampleOutput(x, fn.nfe, fn.guided)


__all__ = [
    "Objective",
    "SampleOutput",
    "CountingModelFn",
    "ModelFn",
    "infer_null_label",
    "parse_steps",
    "CFG_SCALE_ACCEPTED",
]
