"""Noise schedules β_1..β_T (float64, as improved-DDPM keeps them)."""

from __future__ import annotations

import math

import numpy as np

BETA_SCHEDULES = ("linear", "cosine")


def beta_schedule(name: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """β of shape (num_timesteps,), float64.

    * ``"linear"``: ``linspace(beta_start, beta_end, T)`` (DiT/improved-DDPM at T = 1000; the values
      are used as given, not rescaled by 1000/T).
    * ``"cosine"``: improved-DDPM's squared-cosine ᾱ(t) = cos²((t + 0.008)/1.008 · π/2),
      β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), 0.999).
    """
    if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be an int >= 1, got {num_timesteps!r}")
    name = str(name).lower()
    if name == "linear":
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"linear schedule needs 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    if name == "cosine":

        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        t = np.arange(num_timesteps, dtype=np.float64)
        ratios = np.array([alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps) for i in t])
        return np.minimum(1.0 - ratios, 0.999)
    raise ValueError(f"unknown beta_schedule {name!r}; accepted: {', '.join(BETA_SCHEDULES)}")
