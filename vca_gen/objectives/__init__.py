"""Training objectives behind one interface: DiT's Gaussian diffusion and SiT's interpolant flow.

``build_objective(cfg)`` turns an :class:`ObjectiveConfig` (dataclass, OmegaConf ``DictConfig`` or
plain dict) into an :class:`~vca_gen.objectives.base.Objective`; see ``base.py`` for the interface,
``diffusion/`` and ``flow/`` for the two implementations, each with its config beside its code, and
``registry.py`` for the sampler registry (one entry per sampler; the built-in entries are registered
by ``diffusion/samplers.py`` and ``flow/samplers.py`` when this package is imported).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vca_gen.objectives import registry
from vca_gen.objectives.base import OBJECTIVE_KINDS, CountingModelFn, Objective, SampleOutput
from vca_gen.objectives.diffusion.config import DiffusionConfig
from vca_gen.objectives.diffusion.objective import DiffusionObjective
from vca_gen.objectives.flow.config import FlowConfig
from vca_gen.objectives.flow.objective import FlowObjective


@dataclass
class ObjectiveConfig:
    """``kind``: "diffusion" (DiT) or "flow" (SiT); the matching sub-config is used."""

    kind: str = "diffusion"
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)


def _to_config(cfg: Any) -> ObjectiveConfig:
    """Accept an ObjectiveConfig, a DictConfig or a plain (nested) mapping."""
    if isinstance(cfg, ObjectiveConfig):
        return cfg
    if cfg is None:
        return ObjectiveConfig()
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
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


def build_objective(cfg: ObjectiveConfig | Mapping | Any | None = None) -> Objective:
    """Objective from an :class:`ObjectiveConfig`, ``DictConfig`` or dict (``None`` = defaults)."""
    cfg = _to_config(cfg)
    kind = str(cfg.kind).lower()
    if kind == "diffusion":
        return DiffusionObjective(cfg.diffusion)  # checks its config
    if kind == "flow":
        return FlowObjective(cfg.flow)
    raise ValueError(f"unknown objective kind {cfg.kind!r}; accepted: {', '.join(OBJECTIVE_KINDS)}")


__all__ = [
    "DiffusionConfig",
    "FlowConfig",
    "ObjectiveConfig",
    "Objective",
    "SampleOutput",
    "CountingModelFn",
    "DiffusionObjective",
    "FlowObjective",
    "build_objective",
    "OBJECTIVE_KINDS",
    "registry",
]
