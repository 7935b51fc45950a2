"""Config of SiT's interpolant-transport objective (the ``objective.flow`` section)."""

from __future__ import annotations

from dataclasses import dataclass

from vca_gen.objectives.flow import samplers as _samplers  # noqa: F401  (registers the flow samplers)
from vca_gen.objectives.flow.path import PATHS, PREDICTIONS
from vca_gen.objectives.flow.transport import LOSS_WEIGHTS
from vca_gen.objectives.registry import check_config
from vca_gen.utils.checks import choice, in_range, positive


@dataclass
class FlowConfig:
    """SiT's interpolant transport (``create_transport`` + ``Sampler``).

    ``path``: "linear" | "gvp" | "vp" (VP with ``vp_beta_min``/``vp_beta_max``).
    ``prediction``: "velocity" | "score" | "noise". ``loss_weight``: "none" | "velocity" |
    "likelihood" (only affects score/noise predictions, as in SiT). ``train_eps`` / ``sample_eps``:
    ``None`` = SiT's per-path default (VP 1e-5 / 1e-3; Linear/GVP with score or noise 1e-3 / 1e-3;
    Linear/GVP with velocity 0 / 0). ``sampler``: a registered flow sampler (built in: "sde" |
    "ode" | "euler" | "heun"); ``sample_steps`` its steps.
    The sampler-option fields are the defaults of the options of the same name, checked by the
    registry entries' own checks (:mod:`vca_gen.objectives.registry`): ``ode_method`` a torchdiffeq
    adaptive method, ``atol``/``rtol`` for sampler "ode"; SDE: ``diffusion_form`` in "constant", "sbdm",
    "sigma", "linear", "decreasing", "increasing-decreasing"; ``last_step`` in "mean", "tweedie",
    "euler", "none"; ``diffusion_norm``, ``last_step_size``.
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
        check_config("flow", self, prefix)  # sampler, sample_steps and the sampler-option fields
