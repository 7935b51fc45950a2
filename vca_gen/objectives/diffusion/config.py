"""Config of DiT's Gaussian diffusion objective (the ``objective.diffusion`` section)."""

from __future__ import annotations

from dataclasses import dataclass

from vca_gen.objectives.diffusion.respace import space_timesteps
from vca_gen.objectives.diffusion.schedule import BETA_SCHEDULES
from vca_gen.utils.checks import choice, in_range, positive

DIFFUSION_SAMPLERS = ("ddpm", "ddim", "dpm-solver++")
FIXED_VARIANCES = ("large", "small")


@dataclass
class DiffusionConfig:
    """DiT's Gaussian diffusion (improved-DDPM ``create_gaussian_diffusion`` as DiT calls it).

    ``beta_schedule``: "linear" (β from ``beta_start`` to ``beta_end``) or "cosine" (Nichol &
    Dhariwal's squared-cosine ᾱ, β capped at 0.999). ``fixed_variance`` is used when the model
    outputs ``in_channels`` (no learned σ): "large" (β_t, improved-DDPM/DiT's default) or "small"
    (posterior β̃_t). ``rescale_vb`` multiplies the VLB term by T/1000 (improved-DDPM's
    RESCALED_MSE; DiT uses plain MSE, the same at T = 1000). ``sampler``: "ddpm" | "ddim" |
    "dpm-solver++". ``sample_steps`` uses
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

    def check(self, prefix: str = "objective.diffusion") -> None:
        """Raise ``ValueError`` naming ``prefix.<field>``, its value and what is accepted."""
        positive(f"{prefix}.num_timesteps", self.num_timesteps)
        choice(f"{prefix}.beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        in_range(f"{prefix}.beta_start", self.beta_start, 0.0, 1.0, "()")
        in_range(f"{prefix}.beta_end", self.beta_end, self.beta_start, 1.0, "(]")
        choice(f"{prefix}.fixed_variance", self.fixed_variance, FIXED_VARIANCES)
        choice(f"{prefix}.sampler", self.sampler, DIFFUSION_SAMPLERS)
        positive(f"{prefix}.ddim_eta", self.ddim_eta, allow_zero=True)
        choice(f"{prefix}.dpm_solver_order", self.dpm_solver_order, (1, 2, 3))
        steps = str(self.sample_steps)
        try:
            if self.sampler == "dpm-solver++":
                if not steps.isdigit() or not 1 <= int(steps) <= self.num_timesteps:
                    raise ValueError(f"an integer in 1..{self.num_timesteps} for dpm-solver++")
            else:
                space_timesteps(int(self.num_timesteps), int(steps) if steps.isdigit() else steps)
        except ValueError as e:
            raise ValueError(
                f"{prefix}.sample_steps={self.sample_steps!r} is not valid; accepted: a step count, "
                f"a respacing such as '10,10,10' or 'ddim50' ({e})"
            ) from None
