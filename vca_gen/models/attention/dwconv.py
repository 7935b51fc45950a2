"""The value depthwise convolution: one local-mixing path shared by every attention kind.

Option ``dwconv`` of every kind (VCA inherits it from Agent Attention, Han et al. 2024, and has it on
by default; MHSA and DIFF have it off by default, so official DiT/SiT state dicts load unchanged):

    out = proj( attention(x) + DWConv3x3(v) )

``v`` (B, N, C) is the value projection laid out as a (B, C, H, W) map on the token grid, and the
convolution is depthwise (groups = C), 3x3, padding 1, with bias: 9C + C parameters per block, named
``blocks.{i}.attn.dwc.weight`` / ``.bias``. It is added to the merged heads, before the output
projection. Initialisation: PyTorch's Conv2d default (DiT's ``initialize_weights`` touches Linears only).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def value_conv(dim: int, enabled: bool) -> nn.Conv2d | None:
    """The depthwise 3x3 convolution of the value map (``None`` when ``enabled`` is False)."""
    if not isinstance(enabled, bool):
        raise ValueError(f"attention option dwconv must be true or false, got {enabled!r}")
    return nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=True) if enabled else None


def add_value_conv(
    o: torch.Tensor, v_tok: torch.Tensor, dwc: nn.Conv2d | None, grid_size: tuple[int, int]
) -> torch.Tensor:
    """``o + DWConv3x3(v)`` for the merged-head output ``o`` (B, N, C) and values ``v_tok`` (B, N, C)."""
    if dwc is None:
        return o
    B, N, C = v_tok.shape
    gh, gw = grid_size
    vmap = v_tok.reshape(B, gh, gw, C).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last view
    return o + dwc(vmap).permute(0, 2, 3, 1).reshape(B, N, C)  # (B, N, C)
