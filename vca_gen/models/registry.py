"""Named model sizes (``DiT-S/2`` ... ``DiT-XL/8``, ``SiT-…``, ``Ti``) and :func:`create_model`."""

from __future__ import annotations

import re
from typing import Any

from vca_gen.models.attention import ATTENTION_KINDS
from vca_gen.models.dit import DiT

# size -> (depth, hidden_size, num_heads); DiT's published configurations plus a tiny demo size.
SIZES: dict[str, tuple[int, int, int]] = {
    "Ti": (12, 192, 3),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
PATCH_SIZES: tuple[int, ...] = (2, 4, 8)
FAMILIES: tuple[str, ...] = ("DiT", "SiT")
_ARCH_OVERRIDES = ("depth", "hidden_size", "num_heads", "mlp_ratio")
_NAME_RE = re.compile(r"^(DiT|SiT)-(Ti|S|B|L|XL)/(\d+)$")


def list_models() -> list[str]:
    """All registered names, e.g. ``DiT-S/2``; SiT names have the same shapes."""
    return [f"{fam}-{size}/{p}" for fam in FAMILIES for size in SIZES for p in PATCH_SIZES]


def parse_model_name(name: str) -> tuple[str, str, int]:
    """``"DiT-XL/2"`` -> ``("DiT", "XL", 2)``; clear error for anything else."""
    m = _NAME_RE.match(name) if isinstance(name, str) else None
    if m is None or int(m.group(3)) not in PATCH_SIZES:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())}")
    return m.group(1), m.group(2), int(m.group(3))


def create_model(
    name: str,
    attention: str = "mhsa",
    input_size: int | tuple[int, int] = 32,
    in_channels: int = 4,
    num_classes: int = 1000,
    learn_sigma: bool = True,
    class_dropout_prob: float = 0.1,
    grad_checkpointing: bool = False,
    **options: Any,
) -> DiT:
    """Build a named DiT/SiT backbone with the chosen attention.

    ``input_size`` is the latent (or pixel) size, an int or (H, W), divisible by the patch size.
    ``options`` may override the architecture (``depth``, ``hidden_size``, ``num_heads``,
    ``mlp_ratio``); every other keyword is an option of the attention kind (e.g. VCA's
    ``num_contrast_tokens``), checked by the attention factory that builds each layer.
    """
    family, size, patch = parse_model_name(name)
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {attention!r}; valid kinds: {', '.join(ATTENTION_KINDS)}")
    depth, hidden, heads = SIZES[size]
    arch: dict[str, Any] = {"depth": depth, "hidden_size": hidden, "num_heads": heads, "mlp_ratio": 4.0}
    for key in _ARCH_OVERRIDES:
        if key in options:
            arch[key] = options.pop(key)
    return DiT(
        input_size=input_size,
        patch_size=patch,
        in_channels=in_channels,
        num_classes=num_classes,
        learn_sigma=learn_sigma,
        class_dropout_prob=class_dropout_prob,
        attention=attention,
        grad_checkpointing=grad_checkpointing,
        name=name,
        **arch,
        **options,
    )
