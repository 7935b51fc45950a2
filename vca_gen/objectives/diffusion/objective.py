"""DiT's diffusion objective behind the :class:`vca_gen.objectives.base.Objective` interface."""

from __future__ import annotations

from typing import cast

import torch

from vca_gen.objectives.base import Objective, SampleOutput, check_option_names
from vca_gen.objectives.diffusion.config import DIFFUSION_SAMPLERS, DiffusionConfig
from vca_gen.objectives.diffusion.gaussian import GaussianDiffusion, resolve_variance
from vca_gen.objectives.diffusion.respace import space_timesteps
from vca_gen.objectives.diffusion.samplers import ddim_sample, ddpm_sample, dpm_solver_pp_sample
from vca_gen.objectives.diffusion.schedule import beta_schedule
from vca_gen.utils import rng

# steps used when sample(sampler=X) differs from the configured sampler and steps=None
SAMPLER_DEFAULT_STEPS = {"ddpm": "250", "ddim": "ddim50", "dpm-solver++": "20"}


class DiffusionObjective(Objective):
    """ε-prediction Gaussian diffusion (DiT / improved-DDPM).

    Model time: integer-valued float timesteps 0..T-1 (original indices, also when respaced).
    Output channels: C (fixed variance ``cfg.fixed_variance``) or 2C (learned range, hybrid loss).
    Loss per sample: ``mse`` = mean (ε̂ − ε)², plus for 2C outputs ``vb`` = VLB term in bits/dim with
    the predicted ε detached (``× T/1000`` only if ``cfg.rescale_vb``; DiT uses plain MSE loss
    type, identical at T = 1000).
    """

    kind = "diffusion"
    samplers = DIFFUSION_SAMPLERS

    def __init__(self, cfg: DiffusionConfig | None = None):
        cfg = cfg or DiffusionConfig()
        self.cfg = cfg
        resolve_variance(1, 1, cfg.fixed_variance)  # validates fixed_variance
        betas = beta_schedule(cfg.beta_schedule, int(cfg.num_timesteps), float(cfg.beta_start), float(cfg.beta_end))
        self.diffusion = GaussianDiffusion(betas)
        self.num_timesteps = self.diffusion.num_timesteps
        self.default_sampler = self.check_sampler(cfg.sampler)
        self.default_steps = str(cfg.sample_steps)
        self._check_steps(self.default_sampler, self.default_steps)

    # -- channels ----------------------------------------------------------------------------
    def check_channels(self, in_channels: int, out_channels: int) -> None:
        resolve_variance(in_channels, out_channels, self.cfg.fixed_variance)

    # -- training ----------------------------------------------------------------------------
    def training_losses(
        self, model_fn, x: torch.Tensor, y: torch.Tensor, generator=None, t: torch.Tensor | None = None
    ) -> dict:
        """Hybrid loss for a batch ``x`` (B, C, H, W); ``t`` (B,) long drawn uniformly if not given.

        Returns ``loss`` (B,), ``mse`` (B,), ``vb`` (B,) (zeros for fixed variance), ``t`` (B,).
        """
        b = x.shape[0]
        if t is None:
            u = rng.rand((b,), generator, device=x.device)
            t = (u * self.num_timesteps).long().clamp_(max=self.num_timesteps - 1)
        noise = rng.randn_like(x, generator)
        x_t = self.diffusion.q_sample(x, t, noise)
        out = model_fn(x_t, self.diffusion.model_time(t), y)
        c = x.shape[1]
        if out.shape[0] != b or out.shape[2:] != x.shape[2:]:
            raise ValueError(f"model output {tuple(out.shape)} does not match input {tuple(x.shape)}")
        variance = resolve_variance(c, out.shape[1], self.cfg.fixed_variance)
        mse = ((out[:, :c] - noise) ** 2).mean(dim=tuple(range(1, x.dim())))
        if variance == "learned_range":
            frozen = torch.cat([out[:, :c].detach(), out[:, c:]], dim=1)  # only the variance learns from vb
            vb = self.diffusion.vb_terms_bpd(frozen, x, x_t, t, variance)
            if self.cfg.rescale_vb:
                vb = vb * (self.num_timesteps / 1000.0)
        else:
            vb = torch.zeros_like(mse)
        return {"loss": mse + vb, "mse": mse, "vb": vb, "t": t}

    # -- sampling ----------------------------------------------------------------------------
    def _check_steps(self, sampler: str, steps: int | str) -> list | int:
        if sampler == "dpm-solver++":
            try:
                n = int(steps)
            except (TypeError, ValueError):
                raise ValueError(f"dpm-solver++ steps must be an integer, got {steps!r}") from None
            if not 1 <= n <= self.num_timesteps:
                raise ValueError(f"steps must be in 1..{self.num_timesteps}, got {steps!r}")
            return n
        if isinstance(steps, int) and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return space_timesteps(self.num_timesteps, steps)

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
        """Draw x_0 from x_T = ``noise``.

        ``sampler``: "ddpm" | "ddim" | "dpm-solver++" (None = configured). ``steps``: respacing
        ("250", "10,10,10", "ddim50" or int) for ddpm/ddim; an int for dpm-solver++. ``None`` =
        configured ``sample_steps`` for the configured sampler, else 250 / "ddim50" / 20.
        Options: ``eta`` (ddim), ``order`` (dpm-solver++), ``clip_denoised`` (ddpm/ddim).
        """
        name = self.check_sampler(sampler)
        allowed = {"ddpm": {"clip_denoised"}, "ddim": {"clip_denoised", "eta"}, "dpm-solver++": {"order"}}[name]
        check_option_names(name, sampler_options, allowed)
        if steps is None:
            steps = self.default_steps if name == self.default_sampler else SAMPLER_DEFAULT_STEPS[name]
        spec = self._check_steps(name, steps)
        fn = self._wrap(model_fn, noise, labels, cfg_scale, guide_channels, null_label)
        clip = bool(sampler_options.get("clip_denoised", self.cfg.clip_denoised))
        with torch.no_grad():
            if name == "dpm-solver++":
                order = int(sampler_options.get("order", self.cfg.dpm_solver_order))
                x = dpm_solver_pp_sample(self.diffusion, fn, noise, labels, cast(int, spec), order, progress)
            else:
                chain = self.diffusion.respaced(cast(list, spec))
                fixed = self.cfg.fixed_variance
                if name == "ddpm":
                    x = ddpm_sample(chain, fn, noise, labels, fixed, generator, clip, progress)
                else:
                    eta = float(sampler_options.get("eta", self.cfg.ddim_eta))
                    x = ddim_sample(chain, fn, noise, labels, fixed, eta, generator, clip, progress)
        return SampleOutput(x, fn.nfe)
