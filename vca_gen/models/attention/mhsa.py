"""Multi-head self-attention (DiT / timm) on a fused SDPA kernel, and the head-size check.

Option ``dwconv`` (default off): add the value depthwise convolution shared by every kind
(:mod:`vca_gen.models.attention.dwconv`) before ``proj``: the MHSA+DWC control for VCA's local path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from vca_gen.models.attention.dwconv import add_value_conv, value_conv


def check_heads(dim: int, num_heads: int) -> int:
    """Head dimension ``dim // num_heads`` (error if ``num_heads`` does not divide ``dim``)."""
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"hidden size {dim} must be divisible by num_heads={num_heads}")
    return dim // num_heads


class MHSA(nn.Module):
    """Multi-head self-attention with a fused SDPA kernel; DiT-compatible ``qkv`` / ``proj``."""

    OPTIONS: dict[str, Any] = {"dwconv": False}
    # Options this kind gained after experiments were recorded without them: a resolved experiment
    # records them only when they differ from the default, so those experiments keep their meaning/hash.
    LATE_OPTIONS: frozenset[str] = frozenset({"dwconv"})

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int], layer_idx: int = 0, dwconv: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = check_heads(dim, num_heads)
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.dwc = value_conv(dim, dwconv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x)  # (B, N, 3C)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        if self.dwc is not None:
            o = add_value_conv(o, qkv[..., 2 * C :], self.dwc, self.grid_size)  # values (B, N, C)
        return self.proj(o)

    def extra_repr(self) -> str:
        dw = ", dwconv=True" if self.dwc is not None else ""
        return f"heads={self.num_heads}, head_dim={self.head_dim}, grid={self.grid_size}{dw}"
