"""SiT's transport objective behind the :class:`vca_gen.objectives.base.Objective` interface.

Its samplers are the flow entries of :mod:`vca_gen.objectives.registry` (``flow/samplers.py``);
:meth:`~vca_gen.objectives.base.Objective.sample` dispatches to them.
"""

from __future__ import annotations

import torch

from vca_gen.objectives.base import Objective
from vca_gen.objectives.flow.config import FlowConfig
from vca_gen.objectives.flow.path import make_path
from vca_gen.objectives.flow.transport import Transport
from vca_gen.objectives.registry import sampler_names


def flow_samplers() -> tuple[str, ...]:
    """Names of the registered flow samplers (built in: sde, ode, euler, heun)."""
    return sampler_names("flow")


class FlowObjective(Objective):
    """Interpolant transport (SiT). Model time: continuous t in [0, 1], t = 0 noise, t = 1 data.

    Output channels: C, or 2C with the second half ignored (SiT's learn_sigma models).
    ``steps``: SDE = SiT's num_sampling_steps (grid points; steps − 1 Euler–Maruyama steps plus
    the last step); euler/heun = number of steps; ode (adaptive) ignores it.
    Guidance interval: in t itself, ``0 <= LO <= HI <= 1`` (t = 0 noise, t = 1 data).
    """

    kind = "flow"
    guidance_time = (0.0, 1.0)
    guidance_time_help = "flow time t: 0 = noise, 1 = data"

    def __init__(self, cfg: FlowConfig | None = None):
        cfg = cfg or FlowConfig()
        cfg.check()
        self.cfg = cfg
        self.path = make_path(cfg.path, cfg.vp_beta_min, cfg.vp_beta_max)
        self.transport = Transport(
            self.path, str(cfg.prediction).lower(), str(cfg.loss_weight).lower(), cfg.train_eps, cfg.sample_eps
        )
        self.default_sampler = cfg.sampler
        self.default_steps = int(cfg.sample_steps)

    def check_channels(self, in_channels: int, out_channels: int) -> None:
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(
                f"flow objective: model outputs {out_channels} channels for {in_channels} input channels; "
                f"accepted: {in_channels} or {2 * in_channels} (second half ignored)"
            )

    def training_losses(
        self, model_fn, x: torch.Tensor, y: torch.Tensor, generator=None, t: torch.Tensor | None = None
    ) -> dict:
        """``loss`` (B,) and ``t`` (B,) for data ``x`` (B, C, H, W)."""
        return self.transport.training_losses(model_fn, x, y, generator, t)
