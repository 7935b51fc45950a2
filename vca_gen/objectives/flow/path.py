"""Interpolant paths x_t = α_t·x₁ + σ_t·x₀ (x₁ data, x₀ ~ N(0, I); t = 0 noise, t = 1 data).

Every path exposes α, σ and their time derivatives; conversions between the three model
parameterisations are exact closed forms of the same two facts ``x = α x̂₁ + σ x̂₀`` and
``v = α' x̂₁ + σ' x̂₀``, with score ``s = −x̂₀ / σ`` and noise ``ε = x̂₀``:

* velocity → noise: ``x̂₀ = (α' x − α v) / (α' σ − α σ')``
* noise → velocity: ``v = α'/α · (x − σ x̂₀) + σ' x̂₀``

The determinant ``α' σ − α σ'`` is 1 (Linear), π/2 (GVP), α·(dlogα/dt)/σ (VP): finite on [0, 1),
so velocity ↔ noise/score is defined at t = 0 (pure noise) but not at t = 1 where σ = 0.
"""

from __future__ import annotations

import math

import torch

PATHS = ("linear", "gvp", "vp")
PREDICTIONS = ("velocity", "score", "noise")


def expand_t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, ..., 1) to broadcast against ``x`` (B, ...)."""
    return t.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


class Path:
    """Base path; subclasses define ``alpha(t) -> (α, α')`` and ``sigma(t) -> (σ, σ')``."""

    name = ""

    def alpha(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    # -- SiT's SDE coefficients ----------------------------------------------------------------
    def d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """α'/α (infinite at t = 0 for Linear/GVP)."""
        a, da = self.alpha(t)
        return da / a

    def drift_var(self, t: torch.Tensor) -> torch.Tensor:
        """w_SBDM(t) = (α'/α)·σ² − σ·σ': the probability-flow ODE is v = (α'/α)·x + w_SBDM·s.
        (For VP this equals β(t)/2.)"""
        s, ds = self.sigma(t)
        return self.d_log_alpha(t) * s**2 - s * ds

    # -- interpolation -----------------------------------------------------------------------
    def plan(self, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, u_t) with x_t = α x₁ + σ x₀ and the conditional velocity u_t = α' x₁ + σ' x₀."""
        tt = expand_t(t, x1)
        (a, da), (s, ds) = self.alpha(tt), self.sigma(tt)
        return a * x1 + s * x0, da * x1 + ds * x0

    # -- conversions -------------------------------------------------------------------------
    def noise_from(self, pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """Noise estimate x̂₀ from a ``prediction`` ("velocity" | "score" | "noise") at (x, t)."""
        tt = expand_t(t, x)
        if prediction == "noise":
            return pred
        if prediction == "score":
            return -self.sigma(tt)[0] * pred
        if prediction == "velocity":
            (a, da), (s, ds) = self.alpha(tt), self.sigma(tt)
            return (da * x - a * pred) / (da * s - a * ds)
        raise ValueError(f"unknown prediction {prediction!r}; accepted: {', '.join(PREDICTIONS)}")

    def score_from(self, pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """Score ∇log p_t(x) = −x̂₀/σ_t."""
        if prediction == "score":
            return pred
        return -self.noise_from(pred, x, t, prediction) / self.sigma(expand_t(t, x))[0]

    def velocity_from(self, pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """Velocity of the probability-flow ODE: v = α'/α (x − σ x̂₀) + σ' x̂₀."""
        if prediction == "velocity":
            return pred
        tt = expand_t(t, x)
        (a, da), (s, ds) = self.alpha(tt), self.sigma(tt)
        eps = self.noise_from(pred, x, t, prediction)
        return da / a * (x - s * eps) + ds * eps

    def data_from(self, pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """Data estimate x̂₁ = (x − σ x̂₀)/α (Tweedie's formula for score predictions)."""
        tt = expand_t(t, x)
        return (x - self.sigma(tt)[0] * self.noise_from(pred, x, t, prediction)) / self.alpha(tt)[0]

    def convert(self, pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor, source: str, target: str) -> torch.Tensor:
        """Any of velocity / score / noise → any other."""
        fn = {"velocity": self.velocity_from, "score": self.score_from, "noise": self.noise_from}
        if target not in fn:
            raise ValueError(f"unknown prediction {target!r}; accepted: {', '.join(PREDICTIONS)}")
        return fn[target](pred, x, t, source)


class LinearPath(Path):
    """α = t, σ = 1 − t (rectified flow / SiT's ICPlan)."""

    name = "linear"

    def alpha(self, t):
        return t, torch.ones_like(t)

    def sigma(self, t):
        return 1 - t, -torch.ones_like(t)


class GVPPath(Path):
    """Generalised variance preserving: α = sin(πt/2), σ = cos(πt/2)."""

    name = "gvp"

    def alpha(self, t):
        return torch.sin(t * math.pi / 2), math.pi / 2 * torch.cos(t * math.pi / 2)

    def sigma(self, t):
        return torch.cos(t * math.pi / 2), -math.pi / 2 * torch.sin(t * math.pi / 2)


class VPPath(Path):
    """SiT's VP path from a linear β(s) = β_min + s(β_max − β_min) in reversed time s = 1 − t:
    log α_t = −¼(1−t)²(β_max − β_min) − ½(1−t)β_min, σ_t = √(1 − α_t²)."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"VP path needs 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def log_alpha(self, t):
        return -0.25 * (1 - t) ** 2 * (self.beta_max - self.beta_min) - 0.5 * (1 - t) * self.beta_min

    def d_log_alpha(self, t):
        return 0.5 * (1 - t) * (self.beta_max - self.beta_min) + 0.5 * self.beta_min

    def alpha(self, t):
        a = torch.exp(self.log_alpha(t))
        return a, a * self.d_log_alpha(t)

    def sigma(self, t):
        a2 = torch.exp(2 * self.log_alpha(t))
        s = torch.sqrt(1 - a2)
        return s, -a2 * self.d_log_alpha(t) / s


def make_path(name: str, vp_beta_min: float = 0.1, vp_beta_max: float = 20.0) -> Path:
    name = str(name).lower()
    if name == "linear":
        return LinearPath()
    if name == "gvp":
        return GVPPath()
    if name == "vp":
        return VPPath(vp_beta_min, vp_beta_max)
    raise ValueError(f"unknown path {name!r}; accepted: {', '.join(PATHS)}")
