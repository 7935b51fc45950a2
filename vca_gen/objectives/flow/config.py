"""Config of SiT's interpolant-transport objective (the ``objective.flow`` section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
