"""Pieces shared by the differential attentions (VCA and DIFF): λ reparameterisation, RMSNorm.

Following DIFF Transformer (microsoft/unilm ``Diff-Transformer``):
``λ = exp(λ_q1 · λ_k1) − exp(λ_q2 · λ_k2) + λ_init`` with four learnable vectors of the head
dimension (init N(0, 0.1²)) and ``λ_init(ℓ) = 0.8 − 0.6 · exp(−0.3 · ℓ)`` for the 0-based
block index ℓ. The differential output is normalised per head by an RMSNorm (computed in fp32)
and scaled by ``1 − λ_init``.

Precision: the difference ``pos − λ·neg`` is the step where the two streams cancel and RMSNorm
then rescales what is left, so :func:`differential` forms it in at least fp32 with λ kept in
fp32 (bf16/fp16 operands are upcast; fp32/fp64 operands go through the same expression as
before, bit for bit). The callers feed the result to :class:`RMSNorm` in fp32 and cast back to
their compute dtype afterwards.
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


class _UpcastDifference(torch.autograd.Function):
    """``pos − λ·neg`` in fp32 for half-precision ``pos`` / ``neg``; saves only the half-precision
    ``neg`` (a view of the attention output, kept anyway) instead of an fp32 copy of it."""

    @staticmethod
    def forward(ctx, pos: torch.Tensor, neg: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        dt = torch.promote_types(_at_least_fp32(pos.dtype), lam.dtype)
        ctx.save_for_backward(neg, lam)
        ctx.pos_dtype = pos.dtype
        out = neg.to(dt, copy=True).mul_(lam.to(dt))  # fresh fp32 copies: in place is safe
        return pos.to(dt, copy=True).sub_(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        neg, lam = ctx.saved_tensors
        g_pos = grad.to(ctx.pos_dtype) if ctx.needs_input_grad[0] else None
        g_neg = (grad * -lam.to(grad.dtype)).to(neg.dtype) if ctx.needs_input_grad[1] else None
        g_lam = -(grad * neg).sum().to(lam.dtype) if ctx.needs_input_grad[2] else None
        return g_pos, g_neg, g_lam


def differential(pos: torch.Tensor, neg: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``pos − λ·neg`` in at least fp32 (λ a 0-dim tensor from :class:`DifferentialLambda`).

    Half-precision operands (bf16 under autocast) are upcast and subtracted in fp32 with the fp32
    λ, instead of rounding λ, λ·neg and the difference to bf16 before the RMSNorm amplifies the
    cancellation. fp32 / fp64 operands: exactly ``pos − λ·neg`` in their dtype.
    """
    dt = _at_least_fp32(pos.dtype)
    if pos.dtype == dt and neg.dtype == dt:
        return pos - lam.to(dt) * neg
    return _UpcastDifference.apply(pos, neg, lam)


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
