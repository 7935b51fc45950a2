"""SiT's transport objective behind the :class:`vca_gen.objectives.base.Objective` interface."""

from __future__ import annotations

import torch

from vca_gen.objectives.base import Objective, SampleOutput, check_option_names
from vca_gen.objectives.flow.config import FLOW_SAMPLERS, FlowConfig
from vca_gen.objectives.flow.path import make_path
from vca_gen.objectives.flow.samplers import ADAPTIVE_METHODS, _Model, euler_sample, heun_sample, ode_sample, sde_sample
from vca_gen.objectives.flow.sde import check_diffusion_form, check_last_step
from vca_gen.objectives.flow.transport import Transport
from vca_gen.utils.checks import choice, positive

# steps used when sample(sampler=X) differs from the configured sampler and steps=None
SAMPLER_DEFAULT_STEPS = {"sde": 250, "ode": 0, "euler": 100, "heun": 50}
_OPTIONS = {
    "sde": {"diffusion_form", "diffusion_norm", "last_step", "last_step_size"},
    "ode": {"atol", "rtol", "ode_method"},
    "euler": set(),
    "heun": set(),
}


def _number(key: str, value) -> float:
    """A sampler option as a float, or a ``ValueError`` naming it."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} is not valid; accepted: a number") from None


class FlowObjective(Objective):
    """Interpolant transport (SiT). Model time: continuous t in [0, 1], t = 0 noise, t = 1 data.

    Output channels: C, or 2C with the second half ignored (SiT's learn_sigma models).
    ``steps``: SDE = SiT's num_sampling_steps (grid points; steps − 1 Euler–Maruyama steps plus
    the last step); euler/heun = number of steps; ode (adaptive) ignores it.
    """

    kind = "flow"
    samplers = FLOW_SAMPLERS

    def __init__(self, cfg: FlowConfig | None = None):
        cfg = cfg or FlowConfig()
        self.cfg = cfg
        self.path = make_path(cfg.path, cfg.vp_beta_min, cfg.vp_beta_max)
        self.transport = Transport(
            self.path, str(cfg.prediction).lower(), str(cfg.loss_weight).lower(), cfg.train_eps, cfg.sample_eps
        )
        self.default_sampler = self.check_sampler(cfg.sampler)
        self.default_steps = int(cfg.sample_steps)
        self._check_steps(self.default_sampler, self.default_steps)
        check_diffusion_form(cfg.diffusion_form)
        check_last_step(cfg.last_step)
        if cfg.ode_method not in ADAPTIVE_METHODS:
            raise ValueError(f"unknown ode_method {cfg.ode_method!r}; accepted: {', '.join(ADAPTIVE_METHODS)}")

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

    @staticmethod
    def _check_steps(name: str, steps) -> int:
        try:
            n = int(steps)
        except (TypeError, ValueError):
            raise ValueError(f"flow steps must be an integer, got {steps!r}") from None
        if name == "ode":
            return n
        low = 2 if name == "sde" else 1
        if n < low:
            raise ValueError(f"steps must be >= {low} for the {name} sampler, got {steps!r}")
        return n

    def sample(
        self,
        model_fn,
        noise: torch.Tensor,
        labels: torch.Tensor,
        sampler: str | None = None,
        steps: int | str | None = None,
        cfg_scale: float = 1.0,
        guide_channels: int | None = None,
        generator=None,
        null_label: int | None = None,
        progress: bool = False,
        **sampler_options,
    ) -> SampleOutput:
        """Integrate from t0 (x = ``noise``) to t1 (data).

        ``sampler``: "sde" | "ode" | "euler" | "heun" (None = configured). Options (default from
        the config): sde — ``diffusion_form``, ``diffusion_norm``, ``last_step``, ``last_step_size``;
        ode — ``ode_method``, ``atol``, ``rtol``.
        """
        name = self.check_sampler(sampler)
        check_option_names(name, sampler_options, _OPTIONS[name])
        opt = {k: sampler_options.get(k, getattr(self.cfg, k)) for k in _OPTIONS[name]}
        if steps is None:
            steps = self.default_steps if name == self.default_sampler else SAMPLER_DEFAULT_STEPS[name]
        steps = self._check_steps(name, steps)
        fn = self._wrap(model_fn, noise, labels, cfg_scale, guide_channels, null_label)
        m = _Model(self.transport, fn, labels, noise.shape[1])
        tr = self.transport
        with torch.no_grad():
            if name == "sde":
                form = check_diffusion_form(opt["diffusion_form"])
                positive("diffusion_norm", _number("diffusion_norm", opt["diffusion_norm"]))
                last = check_last_step(opt["last_step"])
                size = 0.0 if last == "none" else float(opt["last_step_size"])
                if last != "none" and not 0 < size < 1:
                    raise ValueError(f"last_step_size must be in (0, 1), got {size}")
                t0, t1 = tr.interval(eval=True, sde=True, diffusion_form=form, last_step_size=size)
                x = sde_sample(
                    m, noise, t0, t1, steps, form, float(opt["diffusion_norm"]), last, size, generator, progress
                )
            else:
                t0, t1 = tr.interval(eval=True)
                if name == "ode":
                    for key in ("atol", "rtol"):
                        positive(key, _number(key, opt[key]))
                    choice("ode_method", opt["ode_method"], ADAPTIVE_METHODS)
                    x = ode_sample(m, noise, t0, t1, opt["ode_method"], float(opt["atol"]), float(opt["rtol"]))
                elif name == "euler":
                    x = euler_sample(m, noise, t0, t1, steps, progress)
                else:
                    x = heun_sample(m, noise, t0, t1, steps, progress)
        return SampleOutput(x, fn.nfe)
