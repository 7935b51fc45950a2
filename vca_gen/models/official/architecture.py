"""What a DiT / SiT state dict says about its model: hidden size, depth, patch size, channels,
learn_sigma, classes, token grid, attention parameters (read off the tensor shapes)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vca_gen.models.official.files import OfficialCheckpointError, strip_prefixes

BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
ATTN_RE = re.compile(r"^blocks\.\d+\.attn\.")
Shape = tuple[int, ...]


def _shape(state: Mapping[str, torch.Tensor], key: str) -> Shape | None:
    v = state.get(key)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def infer_num_classes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """``num_classes`` of a DiT/SiT state dict: rows of ``y_embedder.embedding_table`` minus the null class.

    Official checkpoints (and every model trained with label dropout > 0) have ``num_classes + 1``
    rows, the last being the null class of classifier-free guidance.
    """
    state, _ = strip_prefixes(state_dict)
    s = _shape(state, "y_embedder.embedding_table.weight")
    if s is None or len(s) != 2:
        raise OfficialCheckpointError(
            "state dict has no 'y_embedder.embedding_table.weight' (not a class-conditional DiT/SiT)"
        )
    return s[0] - 1


def _patch_and_in(state: Mapping[str, torch.Tensor]) -> tuple[int | None, int | None]:
    s = _shape(state, "x_embedder.proj.weight")
    if s is None or len(s) != 4:
        return None, None
    return s[2], s[1]


def infer_learn_sigma(
    state_dict: Mapping[str, torch.Tensor], patch: int | None = None, in_channels: int | None = None
) -> bool | None:
    """Whether the file predicts a variance too: ``final_layer.linear.weight`` rows = p·p·out_channels.

    out_channels = 2·in_channels means ``learn_sigma=True`` (DiT's default; e.g. 8 for 4 latent
    channels), = in_channels means ``False``. The rows follow from the file's own patch size and
    input channels, so those are read from ``x_embedder.proj.weight`` when the file has it;
    ``patch`` / ``in_channels`` are used only when it does not. ``None`` when it cannot tell (no
    final layer, or rows that fit neither): :func:`diagnose_mismatch` then says what is wrong.
    """
    state, _ = strip_prefixes(state_dict)
    fp, fin = _patch_and_in(state)
    patch = fp if fp is not None else patch
    in_channels = fin if fin is not None else in_channels
    s = _shape(state, "final_layer.linear.weight")
    if s is None or patch is None or in_channels is None:
        return None
    rows = s[0]
    if rows == int(patch) ** 2 * 2 * int(in_channels):
        return True
    if rows == int(patch) ** 2 * int(in_channels):
        return False
    return None


def size_name(depth: int | None, hidden: int | None) -> str | None:
    from vca_gen.models.registry import SIZES

    for name, (d, h, _) in SIZES.items():
        if h == hidden and (depth is None or d == depth):
            return name
    return None


def hidden_size_name(hidden: int | None) -> str | None:
    from vca_gen.models.registry import SIZES

    names = [n for n, (_, h, _) in SIZES.items() if h == hidden]
    return names[0] if names else None


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What a DiT/SiT state dict says about its model (``None`` where it cannot tell).

    Keys: ``hidden_size``, ``depth``, ``patch_size``, ``in_channels``, ``out_channels``,
    ``learn_sigma``, ``num_classes``, ``num_tokens``, ``input_size`` (latent side, square grids),
    ``mlp_hidden``, ``size`` (registry size such as ``"XL"``), ``attention_keys`` (attention
    parameter names besides qkv/proj, as ``blocks.*.attn.…`` patterns) and ``name`` (e.g. ``"DiT-XL/2"``).
    """
    state, _ = strip_prefixes(state_dict)
    x = _shape(state, "x_embedder.proj.weight")
    hidden = x[0] if x and len(x) == 4 else None
    patch, cin = _patch_and_in(state)
    depths = [int(m.group(1)) for k in state for m in [BLOCK_RE.match(k)] if m]
    depth = max(depths) + 1 if depths else None
    pos = _shape(state, "pos_embed")
    tokens = pos[1] if pos and len(pos) == 3 else None
    side = math.isqrt(tokens) if tokens else None
    input_size = side * patch if side and side * side == tokens and patch else None
    fl = _shape(state, "final_layer.linear.weight")
    out = fl[0] // (patch * patch) if fl and patch and fl[0] % (patch * patch) == 0 else None
    learn_sigma = (out == 2 * cin) if out and cin else None
    table = _shape(state, "y_embedder.embedding_table.weight")
    fc1 = _shape(state, "blocks.0.mlp.fc1.weight")
    attn = sorted(
        {key_pattern(k) for k in state if ATTN_RE.match(k)}
        - {f"blocks.*.attn.{n}.{w}" for n in ("qkv", "proj") for w in ("weight", "bias")}
    )
    size = size_name(depth, hidden)
    return {
        "hidden_size": hidden,
        "depth": depth,
        "patch_size": patch,
        "in_channels": cin,
        "out_channels": out,
        "learn_sigma": learn_sigma,
        "num_classes": table[0] - 1 if table else None,
        "num_tokens": tokens,
        "input_size": input_size,
        "mlp_hidden": fc1[0] if fc1 else None,
        "size": size,
        "attention_keys": attn,
        "name": f"DiT-{size}/{patch}" if size and patch else None,
    }


# ----------------------------------------------------------------------------- key patterns
def key_pattern(key: str) -> str:
    """``blocks.3.attn.e_pos`` → ``blocks.*.attn.e_pos`` (layer indices folded)."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "*", key)


def key_groups(keys: Sequence[str], limit: int = 6) -> str:
    counts: dict[str, int] = {}
    for k in keys:
        p = key_pattern(k)
        counts[p] = counts.get(p, 0) + 1
    items = [f"{p} ({n})" if n > 1 else p for p, n in counts.items()]
    return ", ".join(items[:limit]) + (f", … ({len(items) - limit} more groups)" if len(items) > limit else "")


__all__ = ["Shape", "infer_architecture", "infer_learn_sigma", "infer_num_classes"]
