"""Visual-Contrast Attention (VCA, Pu et al., NeurIPS 2025): linear-cost differential attention.

Per block, x (B, N, C) on an H x W grid, h heads of size d = C/h, n = s² contrast tokens:

1. ``q, k, v = qkv(x)``.
2. Contrast tokens ``t`` (B, n, C): ``adaptive_avg_pool2d`` of q over the grid to s x s
   (``contrast_tokens="pooled"``); streams ``t± = t + e±`` with learnable e± (1, n, C), N(0, 1).
   With ``contrast_tokens="learned"`` the tokens come from learnable embeddings only:
   ``t± = e±`` (input-independent, no pooling).
3. Stage I (global contrast), ``T = [t⁺; t⁻]`` (B, h, 2n, d):
   ``V̂± = softmax(T Kᵀ/√d) V``; ``V̂ = (1 − λ_init)·RMSNorm(V̂⁺ − λ¹ V̂⁻)`` (B, h, n, d).
4. Stage II (patch-wise differential): ``S = softmax(Q Tᵀ/√d)`` (B, h, N, 2n), one softmax over
   the 2n tokens (``stage2_softmax="joint"``, computed as ``SDPA(Q, T, [V̂; −λ² V̂])``) or two
   separate n-way softmaxes over t⁺ and t⁻ (``"separate"``);
   ``O = (1 − λ_init)·RMSNorm((S⁺ − λ² S⁻) V̂)`` (B, h, N, d).
5. Merge heads; add ``dwconv`` (depthwise 3x3, bias) of v as a (B, C, H, W) map (``dwconv=True``,
   the layer every kind shares: :mod:`vca_gen.models.attention.dwconv`).
6. ``proj``.

Ablations (``stages``):

- ``"both"`` (default): steps 3 and 4 as written.
- ``"stage1"``: Stage I stays differential (λ¹, RMSNorm); Stage II is plain attention of the
  patch queries over the n positive-stream tokens: ``O = softmax(Q t⁺ᵀ/√d) V̂`` (no λ², no
  second RMSNorm, no scale). t⁻ is used only in Stage I.
- ``"stage2"``: Stage I is a plain pooled map from the positive stream only:
  ``V̂ = softmax(t⁺ Kᵀ/√d) V`` (no λ¹, no RMSNorm, no scale); Stage II is differential over the
  2n tokens exactly as in step 4.

λ per stage is one scalar shared by the heads (:class:`DifferentialLambda`); λ_init from the
0-based block index. Added parameters relative to MHSA with the defaults: e± 2nC, λ vectors
2 x 4 x d, RMSNorm gains 2d, depthwise conv 9C + C, i.e. ``2nC + 10d + 10C``.

Precision under bf16 autocast: λ stays fp32; ``V̂⁺ − λ¹V̂⁻`` and the separate-softmax
``S⁺V̂ − λ²S⁻V̂`` are formed in fp32 from the upcast attention outputs and RMS-normalised in fp32
(:func:`differential`); in the joint form the subtraction happens in the SDPA kernel's fp32
accumulator over ``[V̂; −λ²V̂]``, whose second half is the bf16 V̂ times the fp32 λ², rounded once.
The attention products themselves run in the compute dtype; fp32 / fp64 results are unchanged.
"""

from __future__ import annotations

import math
import warnings
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from vca_gen.models.attention.differential import (
    DifferentialLambda,
    RMSNorm,
    _at_least_fp32,
    differential,
    lambda_init_fn,
)
from vca_gen.models.attention.dwconv import add_value_conv, value_conv
from vca_gen.models.attention.mhsa import check_heads

_CHOICES = {
    "stage2_softmax": ("joint", "separate"),
    "contrast_tokens": ("pooled", "learned"),
    "stages": ("both", "stage1", "stage2"),
}


def _check_choice(name: str, value: str) -> None:
    if value not in _CHOICES[name]:
        raise ValueError(
            f"VCA option {name}={value!r} is not valid; choose one of {', '.join(map(repr, _CHOICES[name]))}"
        )


class VCAttention(nn.Module):
    """Visual-Contrast Attention on a fixed (H, W) token grid. See the module docstring."""

    OPTIONS = {
        "num_contrast_tokens": 64,
        "stage2_softmax": "joint",
        "dwconv": True,
        "contrast_tokens": "pooled",
        "stages": "both",
    }

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: tuple[int, int],
        layer_idx: int = 0,
        num_contrast_tokens: int = 64,
        stage2_softmax: str = "joint",
        dwconv: bool = True,
        contrast_tokens: str = "pooled",
        stages: str = "both",
    ):
        super().__init__()
        for name, value in (
            ("stage2_softmax", stage2_softmax),
            ("contrast_tokens", contrast_tokens),
            ("stages", stages),
        ):
            _check_choice(name, value)
        if stages == "stage1" and stage2_softmax != "joint":
            raise ValueError(
                "VCA option stage2_softmax applies only to a differential Stage II "
                "(stages='both' or 'stage2'); with stages='stage1' leave it at 'joint'"
            )
        n = int(num_contrast_tokens)
        s = math.isqrt(max(n, 0))
        if n != num_contrast_tokens or n < 1 or s * s != n:
            raise ValueError(
                f"num_contrast_tokens must be a perfect square (s*s pooled grid), got {num_contrast_tokens!r}; "
                f"e.g. 16, 36, 49, 64, 100"
            )
        gh, gw = grid_size
        if contrast_tokens == "pooled" and (s > gh or s > gw):
            warnings.warn(
                f"VCA: {s}x{s}={n} contrast tokens exceed the {gh}x{gw} token grid in one dimension; "
                "adaptive pooling will replicate tokens",
                stacklevel=3,
            )
        self.num_heads = num_heads
        self.head_dim = d = check_heads(dim, num_heads)
        self.grid_size = (gh, gw)
        self.num_contrast_tokens = n
        self.pool_size = s
        self.stage2_softmax = stage2_softmax
        self.contrast_tokens = contrast_tokens
        self.stages = stages
        self.lambda_init = lambda_init_fn(layer_idx)

        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.pos_plus = nn.Parameter(torch.randn(1, n, dim))  # e⁺
        self.pos_minus = nn.Parameter(torch.randn(1, n, dim))  # e⁻
        diff1, diff2 = stages in ("both", "stage1"), stages in ("both", "stage2")
        self.lambda1 = DifferentialLambda(d, self.lambda_init) if diff1 else None
        self.norm1 = RMSNorm(d) if diff1 else None
        self.lambda2 = DifferentialLambda(d, self.lambda_init) if diff2 else None
        self.norm2 = RMSNorm(d) if diff2 else None
        self.dwc = value_conv(dim, dwconv)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, M, C) -> (B, h, M, d)."""
        B, M, _ = t.shape
        return t.reshape(B, M, self.num_heads, self.head_dim).transpose(1, 2)

    def _contrast_tokens(self, q_tokens: torch.Tensor) -> torch.Tensor:
        """``T = [t⁺; t⁻]`` (B, h, 2n, d) from the query tokens (B, N, C)."""
        B, N, C = q_tokens.shape
        e = torch.cat([self.pos_plus, self.pos_minus], dim=1).to(q_tokens.dtype)  # (1, 2n, C)
        if self.contrast_tokens == "learned":
            return self._heads(e.expand(B, -1, -1))
        gh, gw = self.grid_size
        qmap = q_tokens.reshape(B, gh, gw, C).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last view
        t = F.adaptive_avg_pool2d(qmap, self.pool_size)  # (B, C, s, s)
        t = t.permute(0, 2, 3, 1).reshape(B, self.num_contrast_tokens, C)  # (B, n, C)
        return self._heads(t.repeat(1, 2, 1) + e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        gh, gw = self.grid_size
        if N != gh * gw:
            raise ValueError(f"VCA expects {gh}x{gw}={gh * gw} tokens, got {N}")
        n = self.num_contrast_tokens
        qkv = self.qkv(x)  # (B, N, 3C)
        q_tok, k_tok, v_tok = qkv.split(C, dim=-1)  # each (B, N, C)
        q, k, v = self._heads(q_tok), self._heads(k_tok), self._heads(v_tok)  # (B, h, N, d)
        T = self._contrast_tokens(q_tok)  # (B, h, 2n, d)
        t_plus, t_minus = T[:, :, :n], T[:, :, n:]  # (B, h, n, d) each

        # Differences and RMSNorms run in at least fp32 with λ in fp32 (``differential``); the
        # attention products stay in the compute dtype ``cdt`` (bf16 under autocast).
        cdt = q.dtype
        # Stage I: contrast map V̂ (B, h, n, d), at least fp32
        if self.lambda1 is not None:
            vt = F.scaled_dot_product_attention(T, k, v)  # (B, h, 2n, d)
            v_hat = cast(RMSNorm, self.norm1)(
                differential(vt[:, :, :n], vt[:, :, n:], self.lambda1()), scale=1.0 - self.lambda_init
            )
        else:
            v_hat = F.scaled_dot_product_attention(t_plus, k, v)

        # Stage II: patch queries over the contrast tokens (B, h, N, d)
        if self.lambda2 is None:
            o = F.scaled_dot_product_attention(q, t_plus, v_hat.to(cdt))
        else:
            lam2 = self.lambda2()  # at least fp32
            if self.stage2_softmax == "joint":
                # S⁺V̂ − λ²S⁻V̂ as one SDPA over [V̂; −λ²V̂]: the subtraction happens in the kernel's
                # fp32 accumulator. −λ²V̂ is the compute-dtype V̂ times the fp32 λ², rounded once, so
                # the rounding of V̂ enters both halves alike and cancels with them.
                v_c = v_hat.to(cdt)
                v_neg = (-lam2 * v_c.to(_at_least_fp32(cdt))).to(cdt)
                o = F.scaled_dot_product_attention(q, T, torch.cat([v_c, v_neg], dim=2))
            else:
                v_c = v_hat.to(cdt)
                o = differential(
                    F.scaled_dot_product_attention(q, t_plus, v_c),
                    F.scaled_dot_product_attention(q, t_minus, v_c),
                    lam2,
                )
            o = cast(RMSNorm, self.norm2)(o, scale=1.0 - self.lambda_init).to(cdt)

        o = o.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj(add_value_conv(o, v_tok, self.dwc, self.grid_size))

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, head_dim={self.head_dim}, grid={self.grid_size}, "
            f"n={self.num_contrast_tokens}, stages={self.stages}, stage2_softmax={self.stage2_softmax}, "
            f"contrast_tokens={self.contrast_tokens}, dwconv={self.dwc is not None}, "
            f"lambda_init={self.lambda_init:.4f}"
        )
