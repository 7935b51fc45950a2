"""Config of SiT's interpolant-transport objective (the ``objective.flow`` section)."""

from __future__ import annotations

from dataclasses import dataclass

from vca_gen.objectives.flow.path import PATHS, PREDICTIONS
from vca_gen.objectives.flow.samplers import ADAPTIVE_METHODS
from vca_gen.objectives.flow.sde import DIFFUSION_FORMS, LAST_STEPS
from vca_gen.objectives.flow.transport import LOSS_WEIGHTS
from vca_gen.utils.checks import choice, in_range, positive

FLOW_SAMPLERS = ("sde", "ode", "euler", "heun")


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
    train_eps: float | None = None
    sample_eps: float | None = None
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

    def check(self, prefix: str = "objective.flow") -> None:
        """Raise ``ValueError`` naming ``prefix.<field>``, its value and what is accepted."""
        choice(f"{prefix}.path", self.path, PATHS)
        choice(f"{prefix}.prediction", self.prediction, PREDICTIONS)
        choice(f"{prefix}.loss_weight", self.loss_weight, LOSS_WEIGHTS)
        for key in ("train_eps", "sample_eps"):
            value = getattr(self, key)
            if value is not None:
                in_range(f"{prefix}.{key}", value, 0.0, 0.5, "[)")
        positive(f"{prefix}.vp_beta_min", self.vp_beta_min)
        if not self.vp_beta_max > self.vp_beta_min:
            raise ValueError(
                f"{prefix}.vp_beta_max={self.vp_beta_max!r} is not valid; accepted: a number > "
                f"vp_beta_min={self.vp_beta_min}"
            )
        choice(f"{prefix}.sampler", self.sampler, FLOW_SAMPLERS)
        low = 2 if self.sampler == "sde" else 0 if self.sampler == "ode" else 1
        if not isinstance(self.sample_steps, int) or self.sample_steps < low:
            raise ValueError(
                f"{prefix}.sample_steps={self.sample_steps!r} is not valid; accepted: an integer >= {low} "
                f"for the {self.sampler} sampler"
            )
        choice(f"{prefix}.diffusion_form", self.diffusion_form, DIFFUSION_FORMS)
        positive(f"{prefix}.diffusion_norm", self.diffusion_norm)
        choice(f"{prefix}.last_step", self.last_step, LAST_STEPS)
        if self.last_step != "none":
            in_range(f"{prefix}.last_step_size", self.last_step_size, 0.0, 1.0, "()")
        positive(f"{prefix}.atol", self.atol)
        positive(f"{prefix}.rtol", self.rtol)
        choice(f"{prefix}.ode_method", self.ode_method, ADAPTIVE_METHODS)
