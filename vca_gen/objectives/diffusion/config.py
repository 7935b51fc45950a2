"""Config of DiT's Gaussian diffusion objective (the ``objective.diffusion`` section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

@dataclass
class DiffusionConfig:
    """DiT's Gaussian diffusion (improved-DDPM ``create_gaussian_diffusion`` as DiT calls it).

    ``beta_schedule``: "linear" (β from ``beta_start`` to ``beta_end``) or "cosine" (Nichol &
    Dhariwal's squared-cosine ᾱ, β capped at 0.999). ``fixed_variance`` is used when the model
    outputs ``in_channels`` (no learned σ): "large" (β_t, improved-DDPM/DiT's default) or "small"
    (posterior β̃_t). ``rescale_vb`` multiplies the VLB term by T/1000 (improved-DDPM's
    RESCALED_MSE; DiT uses plain MSE, the same at T = 1000). ``sampler``: "ddpm" | "ddim" | "dpm-solver++". ``sample_steps`` uses
    improved-DDPM's ``space_timesteps`` syntax ("250", "10,10,10", "ddim50") or an int.
    """

    num_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    fixed_variance: str = "large"
    sampler: str = "ddpm"
    sample_steps: str = "250"
    ddim_eta: float = 0.0
    dpm_solver_order: int = 2
    clip_denoised: bool = False
    rescale_vb: bool = False
