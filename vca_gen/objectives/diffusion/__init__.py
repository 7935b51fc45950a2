"""DiT's Gaussian diffusion: schedule, respacing, hybrid loss, DDPM / DDIM / DPM-Solver++."""

from vca_gen.objectives.diffusion.gaussian import GaussianDiffusion, resolve_variance
from vca_gen.objectives.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from vca_gen.objectives.diffusion.objective import DiffusionObjective, diffusion_samplers
from vca_gen.objectives.diffusion.respace import respace_betas, space_timesteps
from vca_gen.objectives.diffusion.schedule import BETA_SCHEDULES, beta_schedule

__all__ = [
    "GaussianDiffusion",
    "resolve_variance",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "DiffusionObjective",
    "diffusion_samplers",
    "space_timesteps",
    "respace_betas",
    "beta_schedule",
    "BETA_SCHEDULES",
]
