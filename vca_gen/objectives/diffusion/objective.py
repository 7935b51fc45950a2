"""DiT's diffusion objective behind the :class:`vca_gen.objectives.base.Objective` interface.

Its samplers are the diffusion entries of :mod:`vca_gen.objectives.registry` (``diffusion/samplers.py``);
:meth:`~vca_gen.objectives.base.Objective.sample` dispatches to them.
"""

from __future__ import annotations

import torch

from vca_gen.objectives.base import Objective
from vca_gen.objectives.diffusion.config import DiffusionConfig
from vca_gen.objectives.diffusion.gaussian import GaussianDiffusion, resolve_variance
from vca_gen.objectives.diffusion.schedule import beta_schedule
from vca_gen.objectives.registry import sampler_names
from vca_gen.utils import rng


def diffusion_samplers() -> tuple[str, ...]:
    """Names of the registered diffusion samplers (built in: ddpm, ddim, dpm-solver++)."""
    return sampler_names("diffusion")


class DiffusionObjective(Objective):
    """ε-prediction Gaussian diffusion (DiT / improved-DDPM).

    Model time: integer-valued float timesteps 0..T-1 (original indices, also when respaced).
    Output channels: C (fixed variance ``cfg.fixed_variance``) or 2C (learned range, hybrid loss).
    Loss per sample: ``mse`` = mean (ε̂ − ε)², plus for 2C outputs ``vb`` = VLB term in bits/dim with
    the predicted ε detached (``× T/1000`` only if ``cfg.rescale_vb``; DiT uses plain MSE loss
    type, identical at T = 1000).
    Guidance interval: in the model's timestep t (the original index, also for respaced chains and
    DPM-Solver++), ``0 <= LO <= HI <= T - 1`` (t = 0 data end, T - 1 noise end).
    """

    kind = "diffusion"
    guidance_time_help = "diffusion timestep t as the model receives it: 0 = data end, T - 1 = noise end"

    def __init__(self, cfg: DiffusionConfig | None = None):
        cfg = cfg or DiffusionConfig()
        cfg.check()
        self.cfg = cfg
        betas = beta_schedule(cfg.beta_schedule, int(cfg.num_timesteps), float(cfg.beta_start), float(cfg.beta_end))
        self.diffusion = GaussianDiffusion(betas)
        self.num_timesteps = self.diffusion.num_timesteps
        self.guidance_time = (0.0, float(self.num_timesteps - 1))
        self.default_sampler = cfg.sampler
        self.default_steps = str(cfg.sample_steps)

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
