"""Token-mixing layers of the backbone and the one factory that builds them.

Every kind maps ``x`` (B, N, C) -> (B, N, C) for tokens laid out row-major on a fixed
``grid_size = (H, W)`` grid (N = H·W), and owns a ``qkv`` Linear(C, 3C) and a ``proj``
Linear(C, C) with the same names and shapes as DiT's attention, so the official weights of
those two layers load into any kind.

- ``mhsa``: multi-head self-attention (DiT / timm), fused ``F.scaled_dot_product_attention``.
- ``vca``: Visual-Contrast Attention, see :mod:`vca_gen.models.attention.vca`.
- ``diff``: DIFF Transformer attention, see :mod:`vca_gen.models.attention.diff`.

Every kind takes the option ``dwconv`` (the value depthwise convolution of
:mod:`vca_gen.models.attention.dwconv`): on by default for ``vca``, off for ``mhsa`` and ``diff``.
A kind's ``OPTIONS`` dict is its schema (name -> default); ``LATE_OPTIONS`` names the options it gained
after experiments were recorded without them, which :func:`resolve_options` records only when set to
something other than their default (so every experiment recorded before keeps its meaning and hash).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from vca_gen.models.attention.diff import DiffAttention
from vca_gen.models.attention.mhsa import MHSA
from vca_gen.models.attention.mhsa import check_heads as check_heads  # re-export
from vca_gen.models.attention.vca import VCAttention


def _kinds() -> dict[str, Any]:  # attention classes (each with an OPTIONS dict)
    return {"mhsa": MHSA, "vca": VCAttention, "diff": DiffAttention}


ATTENTION_KINDS: tuple[str, ...] = ("mhsa", "vca", "diff")


def attention_options(kind: str) -> dict[str, Any]:
    """Accepted keyword options of attention ``kind`` with their defaults."""
    return dict(_attention_class(kind).OPTIONS)


def _attention_class(kind: str) -> Any:
    kinds = _kinds()
    if kind not in kinds:
        raise ValueError(f"unknown attention kind {kind!r}; valid kinds: {', '.join(ATTENTION_KINDS)}")
    return kinds[kind]


def resolve_options(kind: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options of ``kind`` as an experiment records them: its defaults updated by ``given`` (which
    must hold only options of ``kind``: the experiment validator passes only those, and
    :func:`build_attention` checks them), without the late options that are at their default."""
    cls = _attention_class(kind)
    out = dict(cls.OPTIONS)
    out.update(given)
    late: frozenset[str] = getattr(cls, "LATE_OPTIONS", frozenset())
    return {k: v for k, v in out.items() if not (k in late and v == cls.OPTIONS[k] and type(v) is type(cls.OPTIONS[k]))}


def check_attention_options(kind: str, options: dict[str, Any]) -> None:
    """Error if ``options`` holds a keyword that attention ``kind`` does not accept."""
    cls = _attention_class(kind)
    unknown = sorted(set(options) - set(cls.OPTIONS))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in cls.OPTIONS.items()) or "none"
        raise ValueError(f"unknown option(s) {unknown} for attention {kind!r}; valid options (defaults): {valid}")


def build_attention(
    kind: str, dim: int, num_heads: int, grid_size: tuple[int, int], layer_idx: int = 0, **options: Any
) -> nn.Module:
    """Build one token-mixing layer of ``kind`` (one of :data:`ATTENTION_KINDS`).

    ``grid_size`` is the (H, W) token grid, ``layer_idx`` the 0-based block index (sets λ_init of
    the differential kinds); ``options`` are kind-specific (see each class's ``OPTIONS``).
    """
    check_attention_options(kind, options)
    gh, gw = grid_size
    if gh < 1 or gw < 1:
        raise ValueError(f"grid_size must be two positive ints, got {grid_size}")
    return _attention_class(kind)(dim, num_heads, (int(gh), int(gw)), layer_idx, **options)
