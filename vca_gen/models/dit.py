"""The DiT / SiT backbone (Peebles & Xie 2023; Ma et al. 2024) with a pluggable attention.

Faithful to facebookresearch/DiT ``models.py``: adaLN-Zero blocks, patch-embedding conv,
256-frequency timestep embedder, label embedder with a null class, fixed 2-D sin-cos position
embedding (non-trainable parameter ``pos_embed``), final adaLN layer, ``learn_sigma`` and the
same initialisation and parameter names. Generalised to non-square inputs and any channel count.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from vca_gen.models.attention import build_attention
from vca_gen.models.embeddings import LabelEmbedder, PatchEmbed, TimestepEmbedder, get_2d_sincos_pos_embed
from vca_gen.utils.guidance import cfg_forward


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of tokens (B, N, C) by per-sample shift/scale (B, C)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Mlp(nn.Module):
    """Linear -> tanh-GELU -> Linear (timm's ``Mlp`` names ``fc1`` / ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Transformer block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, attn: nn.Module):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = attn
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then Linear to p*p*out_channels per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def _hw(input_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    if isinstance(input_size, (tuple, list)) and len(input_size) == 2 and all(isinstance(s, int) for s in input_size):
        return int(input_size[0]), int(input_size[1])
    raise ValueError(f"input_size must be an int or an (H, W) pair of ints, got {input_size!r}")


class DiT(nn.Module):
    """Diffusion / flow transformer: (x (B, C_in, H, W), t (B,), y (B,)) -> (B, C_out, H, W).

    ``attention`` names the token mixer (see :func:`vca_gen.models.attention.build_attention`),
    ``attention_options`` are passed to it; block ℓ gets ``layer_idx=ℓ``.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int] = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        attention: str = "mhsa",
        grad_checkpointing: bool = False,
        name: str | None = None,
        **attention_options: Any,
    ):
        super().__init__()
        H, W = _hw(input_size)
        if patch_size < 1 or H < 1 or W < 1 or H % patch_size or W % patch_size:
            raise ValueError(
                f"input size {H}x{W} must be positive and divisible by the patch size {patch_size} "
                f"(e.g. {patch_size * 16} for a 16x16 token grid)"
            )
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.input_hw = (H, W)
        self.input_size = H if H == W else (H, W)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.learn_sigma = bool(learn_sigma)
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.attention = attention
        self.attention_options = dict(attention_options)
        self.grad_checkpointing = bool(grad_checkpointing)
        self.name = name or f"DiT(depth={depth}, hidden={hidden_size}, heads={num_heads}, patch={patch_size})"
        self.grid_size = (H // patch_size, W // patch_size)

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.grid_size[0] * self.grid_size[1]
        # Fixed sin-cos embedding, stored like DiT's (a parameter without gradient, in the state dict).
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [
                DiTBlock(
                    hidden_size,
                    num_heads,
                    mlp_ratio,
                    build_attention(attention, hidden_size, num_heads, self.grid_size, i, **attention_options),
                )
                for i in range(depth)
            ]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's scheme: Xavier linears, N(0, 0.02) embeddings, zeroed adaLN and output layers."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        with torch.no_grad():
            self.pos_embed.copy_(get_2d_sincos_pos_embed(self.hidden_size, self.grid_size).unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))  # like a Linear; the conv bias keeps its default init
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        # (nn.Sequential / nn.ModuleList indexing is typed as Module: the casts name what they hold)
        nn.init.normal_(cast(nn.Linear, self.t_embedder.mlp[0]).weight, std=0.02)
        nn.init.normal_(cast(nn.Linear, self.t_embedder.mlp[2]).weight, std=0.02)
        for block in self.blocks:
            ada = cast(nn.Linear, cast(DiTBlock, block).adaLN_modulation[-1])
            nn.init.constant_(ada.weight, 0)
            nn.init.constant_(ada.bias, 0)
        final_ada = cast(nn.Linear, self.final_layer.adaLN_modulation[-1])
        nn.init.constant_(final_ada.weight, 0)
        nn.init.constant_(final_ada.bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C_out) -> (B, C_out, H, W)."""
        p, c = self.patch_size, self.out_channels
        gh, gw = self.grid_size
        x = x.reshape(x.shape[0], gh, gw, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, gh * p, gw * p)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.input_hw:
            raise ValueError(
                f"{self.name} expects x of shape (B, {self.in_channels}, {self.input_hw[0]}, "
                f"{self.input_hw[1]}) (in_channels={self.in_channels}, input_size={self.input_size}), "
                f"got {tuple(x.shape)}"
            )
        B = x.shape[0]
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},) (one time per sample) or be a scalar, got {tuple(t.shape)}")
        if y.shape != (B,) or y.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"y must be an integer tensor of shape ({B},) with class indices in "
                f"0..{self.num_classes} (null = {self.num_classes}), got {y.dtype} {tuple(y.shape)}"
            )
        return t, y.long()

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W), t (B,) float, y (B,) long -> (B, C_out, H, W)."""
        t, y = self._check_inputs(x, t, y)
        x = self.x_embedder(x) + self.pos_embed.to(x.dtype)  # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y, self.training)  # (B, D)
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, c, use_reentrant=False) if use_ckpt else block(x, c)
        x = self.final_layer(x, c)  # (B, N, p*p*C_out)
        return self.unpatchify(x)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float, guide_channels: int | None = None
    ) -> torch.Tensor:
        """Classifier-free guided output (see :func:`vca_gen.utils.guidance.cfg_forward`).

        ``guide_channels=None`` guides every prediction channel; ``3`` reproduces DiT.
        """
        if cfg_scale != 1.0 and not self.y_embedder.has_null_class:
            raise ValueError(
                "classifier-free guidance needs the null class: this model was built with "
                "class_dropout_prob=0 (no null row); use cfg_scale=1.0"
            )
        return cfg_forward(
            self,
            x,
            t,
            y,
            cfg_scale,
            null_label=self.num_classes,
            pred_channels=self.in_channels,
            guide_channels=guide_channels,
        )
