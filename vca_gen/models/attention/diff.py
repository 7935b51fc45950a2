"""DIFF Transformer attention (Ye et al., 2024) at the parameter budget of MHSA: the N² baseline.

With the model's h heads of size d = C/h, DIFF uses h/2 differential heads. Differential head i
has two query/key halves Q1, Q2, K1, K2 of size d (query/key channel chunks 2i and 2i+1, as in
microsoft/unilm ``multihead_diffattn.py``) and one value of size 2d (value channels
[2i·d, 2i·d + 2d)):

    O_i = (1 − λ_init) · RMSNorm_2d( (softmax(Q1 K1ᵀ/√d) − λ softmax(Q2 K2ᵀ/√d)) V_i )

with the DIFF λ reparameterisation (one scalar per block) and λ_init from the block index.
For an odd head count (``Ti``: 3 heads) the pairing is done inside each head instead: h
differential heads whose query/key halves have size d/2 and whose value has size d (same
parameter budget; λ vectors of size d/2). ``num_heads`` must then have an even head dim.
Both softmaxes run as fused SDPA calls over 2·(h/2) heads (one call per half of the value).
The projections are DiT's ``qkv`` / ``proj``; extra parameters are only 4d (λ) + 2d (gain).
Option ``dwconv`` (default off): add the value depthwise convolution shared by every kind
(:mod:`vca_gen.models.attention.dwconv`, on the full C-channel value map) before ``proj``.
Under bf16 autocast the two attention outputs are upcast and subtracted with the fp32 λ, and the
RMSNorm runs in fp32, before the result is cast back to the compute dtype.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vca_gen.models.attention.differential import DifferentialLambda, RMSNorm, differential, lambda_init_fn
from vca_gen.models.attention.dwconv import add_value_conv, value_conv
from vca_gen.models.attention.mhsa import check_heads


class DiffAttention(nn.Module):
    """Differential attention: ``num_heads // 2`` heads of value size ``2·dim/num_heads`` (even
    ``num_heads``) or ``num_heads`` heads of value size ``dim/num_heads`` (odd ``num_heads``)."""

    OPTIONS: dict = {"dwconv": False}
    LATE_OPTIONS: frozenset[str] = frozenset({"dwconv"})  # see MHSA.LATE_OPTIONS

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int], layer_idx: int = 0, dwconv: bool = False):
        super().__init__()
        d = check_heads(dim, num_heads)
        if num_heads % 2 == 0:
            self.num_heads, self.head_dim = num_heads // 2, d  # differential heads, size of a q/k half
        elif d % 2 == 0:
            self.num_heads, self.head_dim = num_heads, d // 2
        else:
            raise ValueError(
                f"diff attention needs an even num_heads or an even head dim; got {num_heads} heads "
                f"of size {d} (hidden size {dim})"
            )
        d = self.head_dim  # values have 2d
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.lambda_init = lambda_init_fn(layer_idx)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.lambda_ = DifferentialLambda(d, self.lambda_init)
        self.subln = RMSNorm(2 * d)
        self.dwc = value_conv(dim, dwconv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        hd, d = self.num_heads, self.head_dim
        q, k, v_tok = self.qkv(x).split(C, dim=-1)  # each (B, N, C)
        q = q.reshape(B, N, 2 * hd, d).transpose(1, 2)  # (B, 2hd, N, d): chunks 2i, 2i+1 -> head i
        k = k.reshape(B, N, 2 * hd, d).transpose(1, 2)
        # Value of head i (2d) in two d-halves, each shared by the head's two softmaxes, so that
        # SDPA keeps equal q/k/v head sizes and its fused O(N)-memory kernel (as DIFF's flash code).
        v = v_tok.reshape(B, N, hd, 1, 2, d).expand(B, N, hd, 2, 2, d).reshape(B, N, 2 * hd, 2, d)
        o = torch.cat([F.scaled_dot_product_attention(q, k, v[..., j, :].transpose(1, 2)) for j in range(2)], dim=-1)
        o = o.unflatten(1, (hd, 2))  # (B, hd, 2, N, 2d)
        # softmax1·V − λ·softmax2·V from the upcast attention outputs, λ and RMSNorm in fp32
        o = self.subln(differential(o[:, :, 0], o[:, :, 1], self.lambda_()), scale=1.0 - self.lambda_init).to(o.dtype)
        o = o.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj(add_value_conv(o, v_tok, self.dwc, self.grid_size))

    def extra_repr(self) -> str:
        return (
            f"diff_heads={self.num_heads}, qk_dim={self.head_dim}, v_dim={2 * self.head_dim}, "
            f"grid={self.grid_size}, lambda_init={self.lambda_init:.4f}"
            + (", dwconv=True" if self.dwc is not None else "")
        )
