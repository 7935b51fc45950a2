"""Multi-head self-attention (DiT / timm) on a fused SDPA kernel, and the head-size check."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_heads(dim: int, num_heads: int) -> int:
    """Head dimension ``dim // num_heads`` (error if ``num_heads`` does not divide ``dim``)."""
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"hidden size {dim} must be divisible by num_heads={num_heads}")
    return dim // num_heads


class MHSA(nn.Module):
    """Multi-head self-attention with a fused SDPA kernel; DiT-compatible ``qkv`` / ``proj``."""

    OPTIONS: dict[str, Any] = {}

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int], layer_idx: int = 0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = check_heads(dim, num_heads)
        self.grid_size = tuple(grid_size)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, h, N, d)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, grid={self.grid_size}"
