"""Config of DiT's Gaussian diffusion objective (the ``objective.diffusion`` section)."""

from __future__ import annotations

from dataclasses import dataclass

from vca_gen.objectives.diffusion import samplers as _samplers  # noqa: F401  (registers the diffusion samplers)
from vca_gen.objectives.diffusion.schedule import BETA_SCHEDULES
from vca_gen.objectives.registry import check_config
from vca_gen.utils.checks import choice, in_range, positive

FIXED_VARIANCES = ("large", "small")


@dataclass
class DiffusionConfig:
    """DiT's Gaussian diffusion (improved-DDPM ``create_gaussian_diffusion`` as DiT calls it).

    ``beta_schedule``: "linear" (β from ``beta_start`` to ``beta_end``) or "cosine" (Nichol &
    Dhariwal's squared-cosine ᾱ, β capped at 0.999). ``fixed_variance`` is used when the model
    outputs ``in_channels`` (no learned σ): "large" (β_t, improved-DDPM/DiT's default) or "small"
    (posterior β̃_t). ``rescale_vb`` multiplies the VLB term by T/1000 (improved-DDPM's
    RESCALED_MSE; DiT uses plain MSE, the same at T = 1000). ``sampler``: a registered diffusion
    sampler (built in: "ddpm" | "ddim" | "dpm-solver++"). ``sample_steps`` uses improved-DDPM's
    ``space_timesteps`` syntax ("250", "10,10,10", "ddim50") or an int (dpm-solver++: an int).
    ``ddim_eta``, ``dpm_solver_order``, ``clip_denoised``: the defaults of the sampler options
    ``eta``, ``order``, ``clip_denoised``, checked by the registry entries' own checks.
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

    def check(self, prefix: str = "objective.diffusion") -> None:
        """Raise ``ValueError`` naming ``prefix.<field>``, its value and what is accepted."""
        positive(f"{prefix}.num_timesteps", self.num_timesteps)
        choice(f"{prefix}.beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        in_range(f"{prefix}.beta_start", self.beta_start, 0.0, 1.0, "()")
        in_range(f"{prefix}.beta_end", self.beta_end, self.beta_start, 1.0, "(]")
        choice(f"{prefix}.fixed_variance", self.fixed_variance, FIXED_VARIANCES)
        check_config("diffusion", self, prefix)  # sampler, sample_steps and the sampler-option fields
