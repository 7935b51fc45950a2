"""Pieces shared by the differential attentions (VCA and DIFF): λ reparameterisation, RMSNorm.

Following DIFF Transformer (microsoft/unilm ``Diff-Transformer``):
``λ = exp(λ_q1 · λ_k1) − exp(λ_q2 · λ_k2) + λ_init`` with four learnable vectors of the head
dimension (init N(0, 0.1²)) and ``λ_init(ℓ) = 0.8 − 0.6 · exp(−0.3 · ℓ)`` for the 0-based
block index ℓ. The differential output is normalised per head by an RMSNorm (computed in fp32)
and scaled by ``1 − λ_init``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision dtypes, the dtype itself for fp32 / fp64."""
    return torch.promote_types(dtype, torch.float32)


def lambda_init_fn(layer_idx: int) -> float:
    """λ_init for the 0-based block index ``layer_idx``."""
    if layer_idx < 0:
        raise ValueError(f"layer_idx must be >= 0, got {layer_idx}")
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


class DifferentialLambda(nn.Module):
    """One learnable scalar λ (shared by all heads) from four vectors of size ``dim``."""

    def __init__(self, dim: int, lambda_init: float):
        super().__init__()
        self.lambda_init = lambda_init
        self.lambda_q1 = nn.Parameter(torch.randn(dim) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(dim) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(dim) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(dim) * 0.1)

    def reset_parameters(self) -> None:
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, mean=0.0, std=0.1)

    def forward(self) -> torch.Tensor:
        """λ as a 0-dim tensor in at least fp32."""
        dt = _at_least_fp32(self.lambda_q1.dtype)
        l1 = torch.exp(torch.sum(self.lambda_q1.to(dt) * self.lambda_k1.to(dt)))
        l2 = torch.exp(torch.sum(self.lambda_q2.to(dt) * self.lambda_k2.to(dt)))
        return l1 - l2 + self.lambda_init


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension with a learnable gain, computed in fp32 (fp64 stays fp64)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """RMSNorm(x) * gain * ``scale`` (the scale is folded into the gain: one pass over x)."""
        dt = _at_least_fp32(x.dtype)
        out = F.rms_norm(x.to(dt), (x.shape[-1],), self.weight.to(dt) * scale, self.eps)
        return out.to(x.dtype)
