"""SiT's SDE family: dx = [v(x,t) + w(t)·s(x,t)] dt + √(2 w(t)) dW, all sharing the marginals of
the probability-flow ODE dx = v dt. Diffusion forms w(t) (``norm`` = diffusion_norm):

=========================  ==================================
constant                   norm
sbdm                       norm · ((α'/α)σ² − σσ')   (score-based DM's own diffusion)
sigma                      norm · σ_t
linear                     norm · (1 − t)
decreasing                 ¼ (norm · cos(πt) + 1)²
increasing-decreasing      norm · sin²(πt)   (SiT's intended formula; its dict key has a typo)
=========================  ==================================
"""

from __future__ import annotations

import math

import torch

from vca_gen.objectives.flow.path import Path
from vca_gen.objectives.registry import one_of

DIFFUSION_FORMS = ("constant", "sbdm", "sigma", "linear", "decreasing", "increasing-decreasing")
LAST_STEPS = ("mean", "tweedie", "euler", "none")


_FORM = one_of(DIFFUSION_FORMS)
_LAST = one_of(LAST_STEPS, none_as="none")


def check_diffusion_form(form, key: str = "diffusion_form") -> str:
    """``form`` if it is one of :data:`DIFFUSION_FORMS`, else ``ValueError`` naming ``key``."""
    return _FORM(key, form, {})


def check_last_step(kind, key: str = "last_step") -> str:
    """``kind`` if it is one of :data:`LAST_STEPS` (``None`` = "none"), else ``ValueError`` naming ``key``."""
    return _LAST(key, kind, {})


def diffusion_coefficient(path: Path, t: torch.Tensor, form: str, norm: float = 1.0) -> torch.Tensor:
    """w(t) for ``t`` of any shape (broadcast the result yourself)."""
    form = check_diffusion_form(form)
    if form == "constant":
        return torch.full_like(t, float(norm))
    if form == "sbdm":
        return norm * path.drift_var(t)
    if form == "sigma":
        return norm * path.sigma(t)[0]
    if form == "linear":
        return norm * (1 - t)
    if form == "decreasing":
        return 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2
    return norm * torch.sin(math.pi * t) ** 2
