"""Why an official checkpoint does not fit a model: one sentence per cause (hidden size, depth, patch
size, input channels, image size, learn_sigma, num_classes, attention kind, other shapes and keys),
each naming the key, both shapes and what to set.

:func:`explain_mismatch` (a built model) and :func:`diagnose_mismatch` (a registry name, built on the
meta device) return the message, ``""`` when the file fits exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from vca_gen.models.official.architecture import (
    ATTN_RE,
    BLOCK_RE,
    Shape,
    hidden_size_name,
    infer_architecture,
    key_groups,
    size_name,
)
from vca_gen.models.official.files import strip_prefixes


# ----------------------------------------------------------------------------- the model side
def _px(latent: int, in_channels: int | None) -> str:
    """``32`` → ``"256 px"`` for 4-channel latents of an 8× VAE, else pixel size."""
    if in_channels == 4:
        return f"{latent * 8} px"
    return f"{latent} px"


@dataclass
class _Spec:
    """What the model expects (taken from a built model)."""

    name: str
    family: str
    size: str | None
    shapes: dict[str, Shape]
    hidden: int
    depth: int
    patch: int
    in_channels: int
    out_channels: int
    input_hw: tuple[int, int]
    num_classes: int
    attention: str

    @classmethod
    def of(cls, model: nn.Module) -> _Spec:
        name = str(getattr(model, "name", type(model).__name__))
        m = re.match(r"^(DiT|SiT)-(\w+)/\d+$", name)
        net: Any = model  # a DiT: the shape fields are plain attributes
        return cls(
            name=name,
            family=m.group(1) if m else "DiT",
            size=m.group(2) if m else None,
            shapes={k: tuple(v.shape) for k, v in model.state_dict().items()},
            hidden=int(net.hidden_size),
            depth=int(net.depth),
            patch=int(net.patch_size),
            in_channels=int(net.in_channels),
            out_channels=int(net.out_channels),
            input_hw=tuple(net.input_hw),
            num_classes=int(net.num_classes),
            attention=str(getattr(model, "attention", "mhsa")),
        )


# ----------------------------------------------------------------------------- one function per cause
@dataclass
class _Mismatch:
    """A file's state dict against a model's :class:`_Spec`: what every cause function reads, and the
    keys whose difference an earlier cause already explained (so the last one reports only the rest)."""

    spec: _Spec
    f: dict[str, Any]  # infer_architecture of the file
    fs: dict[str, Shape]  # file shapes
    explained: set[str] = field(default_factory=set)

    @property
    def ms(self) -> dict[str, Shape]:  # model shapes
        return self.spec.shapes

    def both(self, key: str) -> str:
        return f"'{key}' is {self.fs.get(key)} in the file but {self.ms.get(key)} in the model"

    @property
    def same_depth(self) -> list[str]:
        """Keys in one side only, outside the blocks that exist only because the depths differ."""
        f, fs, ms = self.f, self.fs, self.ms
        return [
            k
            for k in set(fs) ^ set(ms)
            if not (m := BLOCK_RE.match(k)) or int(m.group(1)) < min(f["depth"] or 0, self.spec.depth)
        ]


X_KEY = "x_embedder.proj.weight"
FINAL_KEY = "final_layer.linear.weight"
LABEL_KEY = "y_embedder.embedding_table.weight"


def _hidden_size(v: _Mismatch) -> list[str]:
    """Hidden size: every per-layer shape follows from it."""
    f, spec = v.f, v.spec
    if f["hidden_size"] is None or f["hidden_size"] == spec.hidden:
        return []
    fname, mname = hidden_size_name(f["hidden_size"]), spec.size or hidden_size_name(spec.hidden)
    what = f"an {fname} model" if fname in ("XL", "L") else (f"a {fname} model" if fname else "a model")
    v.explained.update(k for k in v.fs if k in v.ms and v.fs[k] != v.ms[k])
    return [
        f"hidden size: {v.both(X_KEY)}: the file is {what} (hidden size {f['hidden_size']}), "
        f"not {mname or 'this size'} (hidden size {spec.hidden})"
    ]


def _depth(v: _Mismatch) -> list[str]:
    f, spec = v.f, v.spec
    if f["depth"] is None or f["depth"] == spec.depth:
        return []
    last = f"blocks.{max(f['depth'], spec.depth) - 1}"
    where = "is in the file but not in the model" if f["depth"] > spec.depth else "is in the model but not in the file"
    size = size_name(f["depth"], f["hidden_size"])
    return [
        f"depth: '{last}.*' {where}: the file has {f['depth']} blocks, the model {spec.depth}"
        + (f" ({size} has {f['depth']})" if size else "")
    ]


def _patch_size(v: _Mismatch) -> list[str]:
    """Patch size: the kernel of the patch-embedding conv."""
    f, spec = v.f, v.spec
    if f["patch_size"] is None or f["patch_size"] == spec.patch:
        return []
    v.explained.update({X_KEY, "pos_embed", FINAL_KEY, "final_layer.linear.bias"})
    return [
        f"patch size: {v.both(X_KEY)}: its kernel is {f['patch_size']}x{f['patch_size']}, so the file is a "
        f"/{f['patch_size']} model, not /{spec.patch}"
    ]


def _input_channels(v: _Mismatch) -> list[str]:
    f, spec = v.f, v.spec
    if f["in_channels"] is None or f["in_channels"] == spec.in_channels:
        return []
    v.explained.update({X_KEY, FINAL_KEY, "final_layer.linear.bias"})
    return [
        f"input channels: {v.both(X_KEY)}: the file takes {f['in_channels']} input channels, the model "
        f"{spec.in_channels} (4 = SD-VAE latents, 3 = RGB pixels)"
    ]


def _image_size(v: _Mismatch) -> list[str]:
    """Image size: the token count of the fixed position embedding."""
    f, spec, ms = v.f, v.spec, v.ms
    H, W = spec.input_hw
    tokens_differ = f["num_tokens"] is not None and f["num_tokens"] != (H // spec.patch) * (W // spec.patch)
    size_differs = f["input_size"] is not None and (f["input_size"], f["input_size"]) != (H, W)
    if not (tokens_differ or size_differs):
        return []
    v.explained.add("pos_embed")
    if size_differs:
        side = math.isqrt(f["num_tokens"])
        cin = f["in_channels"] or spec.in_channels
        model_side = f"{H}" if H == W else f"{H}x{W}"
        return [
            f"image size: 'pos_embed' has {f['num_tokens']} tokens in the file "
            f"({side}x{side} patches of {f['patch_size']}: input_size "
            f"{f['input_size']}, a {_px(f['input_size'], cin)} model) but {ms.get('pos_embed', (0, 0))[1]} in the "
            f"model (input_size {model_side}, {_px(H, spec.in_channels) if H == W else f'{H}x{W} latents'})"
        ]
    if f["input_size"] is None:
        return [
            f"image size: 'pos_embed' has {f['num_tokens']} tokens in the file (not a square grid), "
            f"{ms.get('pos_embed', (0, 0))[1]} in the model"
        ]
    return []


def _learn_sigma(v: _Mismatch) -> list[str]:
    """learn_sigma: the output channels of the final linear (same input channels on both sides)."""
    f, spec, fs, ms = v.f, v.spec, v.fs, v.ms
    if f["out_channels"] is None or f["in_channels"] != spec.in_channels or f["out_channels"] == spec.out_channels:
        return []
    v.explained.update({FINAL_KEY, "final_layer.linear.bias"})
    p = f["patch_size"]
    file_ls = f["out_channels"] == 2 * f["in_channels"]
    model_ls = spec.out_channels == 2 * spec.in_channels
    if file_ls == model_ls:
        return [
            f"output channels: '{FINAL_KEY}' gives {f['out_channels']} output channels in the file, "
            f"{spec.out_channels} in the model"
        ]
    return [
        f"learn_sigma: '{FINAL_KEY}' has {fs[FINAL_KEY][0]} rows in the file = {p}*{p}*{f['out_channels']} output "
        f"channels ({f['out_channels']} channels for {f['in_channels']} inputs means learn_sigma={file_ls}"
        f"{', as in the official DiT/SiT checkpoints' if file_ls else ''}) but {ms.get(FINAL_KEY, (0,))[0]} rows in "
        f"the model ({spec.out_channels} channels: learn_sigma={model_ls}); set learn_sigma={file_ls}"
    ]


def _num_classes(v: _Mismatch) -> list[str]:
    """num_classes: the label table has num_classes + 1 rows (the null class)."""
    fs, ms, spec = v.fs, v.ms, v.spec
    if LABEL_KEY not in fs or LABEL_KEY not in ms or fs[LABEL_KEY][0] == ms[LABEL_KEY][0]:
        return []
    v.explained.add(LABEL_KEY)
    rows_f, rows_m = fs[LABEL_KEY][0], ms[LABEL_KEY][0]
    return [
        f"num_classes: '{LABEL_KEY}' has {rows_f} rows in the file (num_classes={rows_f - 1} plus the null class) "
        f"but {rows_m} in the model (num_classes={spec.num_classes}"
        f"{'' if rows_m == spec.num_classes + 1 else ', no null class: class_dropout_prob=0'}); "
        f"set num_classes={rows_f - 1}"
    ]


def _attention(v: _Mismatch) -> list[str]:
    """Attention kind: VCA / DIFF add parameters under ``blocks.*.attn.``."""
    same_depth, kind = v.same_depth, v.spec.attention
    file_only = sorted(k for k in same_depth if k in v.fs and ATTN_RE.match(k))
    model_only = sorted(k for k in same_depth if k in v.ms and ATTN_RE.match(k))
    out = []
    if file_only:
        out.append(
            f"attention: the file has attention parameters the model lacks ({key_groups(file_only, 3)}): "
            f"it was trained with another attention kind than {kind!r}"
        )
    if model_only and file_only:
        out.append(
            f"attention: the model's {kind!r} attention has parameters the file lacks ({key_groups(model_only, 3)})"
        )
    elif model_only:
        out.append(
            f"attention: the model's {kind!r} attention has parameters the file lacks "
            f"({key_groups(model_only, 3)}): the file is a plain MHSA checkpoint; build the model with attention=mhsa "
            f"to load it exactly, or initialise a {kind} model from it with model.init_from=FILE "
            "(load_matching)"
        )
    return out


def _unexplained_shapes(v: _Mismatch) -> list[str]:
    """Shapes that differ for none of the reasons above (runs after them)."""
    rest = [k for k in v.fs if k in v.ms and v.fs[k] != v.ms[k] and k not in v.explained]
    if not rest:
        return []
    return [
        "shape: "
        + "; ".join(v.both(k) for k in rest[:3])
        + (" ..." if len(rest) > 3 else "")
        + (" (mlp_ratio?)" if any(".mlp." in k for k in rest) else "")
    ]


def _other_keys(v: _Mismatch) -> list[str]:
    """Keys outside attention that only one side has."""
    other = [k for k in v.same_depth if not ATTN_RE.match(k)]
    in_file = sorted(k for k in other if k in v.fs)
    in_model = sorted(k for k in other if k in v.ms)
    out = []
    if in_file:
        out.append(f"keys: the file has keys the model does not: {key_groups(in_file, 4)}")
    if in_model:
        out.append(f"keys: the model has keys the file does not: {key_groups(in_model, 4)}")
    return out


# in this order: the shape check runs last, over what the others did not explain
CAUSES = (
    _hidden_size,
    _depth,
    _patch_size,
    _input_channels,
    _image_size,
    _learn_sigma,
    _num_classes,
    _attention,
    _unexplained_shapes,
    _other_keys,
)


def _causes(state: Mapping[str, torch.Tensor], spec: _Spec) -> tuple[list[str], dict[str, Any]]:
    """One sentence per cause that makes ``state`` not fit ``spec`` (empty when it fits exactly)."""
    v = _Mismatch(spec, infer_architecture(state), {k: tuple(t.shape) for k, t in state.items()})
    return [sentence for cause in CAUSES for sentence in cause(v)], v.f


# ----------------------------------------------------------------------------- messages
def _not_dit(state: Mapping[str, Any]) -> str | None:
    if "x_embedder.proj.weight" in state:
        return None
    keys = sorted(state)[:5]
    if any(k.startswith(("transformer_blocks.", "pos_embed.proj")) for k in state):
        return (
            f"the file is in diffusers' layout (keys such as {keys}), not DiT's original one; use the original "
            "release (DiT-XL-2-256x256.pt from the DiT repository)"
        )
    return f"the file is not a DiT/SiT state dict: it has no 'x_embedder.proj.weight' (first keys: {keys})"


def _message(state: Mapping[str, torch.Tensor], spec: _Spec, header: str) -> str:
    bad = _not_dit(state)
    if bad:
        return f"{header}: {bad}"
    causes, f = _causes(state, spec)
    if not causes:
        return ""
    guess = ""
    if f["size"] and f["patch_size"]:
        px = f" at {_px(f['input_size'], f['in_channels'])} (input_size {f['input_size']})" if f["input_size"] else ""
        guess = (
            f". The file looks like {spec.family}-{f['size']}/{f['patch_size']}{px}, num_classes="
            f"{f['num_classes']}, learn_sigma={f['learn_sigma']}"
        )
    return f"{header}: " + "; ".join(causes) + guess


def _header(spec: _Spec) -> str:
    H, W = spec.input_hw
    return (
        f"checkpoint does not fit model {spec.name} (input_size={H if H == W else (H, W)}, in_channels="
        f"{spec.in_channels}, num_classes={spec.num_classes}, "
        f"learn_sigma={spec.out_channels == 2 * spec.in_channels}, "
        f"attention={spec.attention})"
    )


def explain_mismatch(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> str:
    """Why ``state_dict`` does not load exactly into ``model`` (``""`` when it does)."""
    state, _ = strip_prefixes(state_dict)
    spec = _Spec.of(model)
    return _message(state, spec, _header(spec))


def diagnose_mismatch(
    state_dict: Mapping[str, torch.Tensor],
    model_name: str,
    input_size: int | tuple[int, int] = 32,
    in_channels: int = 4,
    num_classes: int = 1000,
    learn_sigma: bool = True,
    attention: str = "mhsa",
    **model_options: Any,
) -> str:
    """The error message for a file that does not fit ``--model`` (``""`` when it fits exactly).

    Names the key and the likely cause: hidden size (``x_embedder.proj.weight``), depth (highest
    ``blocks.{i}``), patch size (its kernel), image size (``pos_embed`` token count), learn_sigma
    (``final_layer.linear.weight`` rows = p·p·out_channels), num_classes
    (``y_embedder.embedding_table`` rows = num_classes + 1) and attention-kind parameters. The
    model is built on the meta device (no memory), so any registry size is cheap.
    """
    from vca_gen.models.registry import create_model

    with torch.device("meta"):
        model = create_model(
            model_name,
            attention=attention,
            input_size=input_size,
            in_channels=in_channels,
            num_classes=num_classes,
            learn_sigma=learn_sigma,
            **model_options,
        )
    return explain_mismatch(state_dict, model)


__all__ = ["diagnose_mismatch", "explain_mismatch"]
