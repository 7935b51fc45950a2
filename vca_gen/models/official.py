"""Loading official DiT / SiT checkpoints (``DiT-XL-2-256x256.pt``, ``SiT-XL-2-256x256.pt``).

The released files are plain state dicts; training checkpoints of both codebases are dicts with
``"model"`` and ``"ema"`` entries (the EMA weights are the ones to sample with). Key names match
:class:`vca_gen.models.dit.DiT` exactly, so an ``attention="mhsa"`` model loads them with
``strict=True``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Union

import torch
import torch.nn as nn

_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def official_state_dict(obj: Any, use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """The model state dict inside ``obj``: a plain state dict or ``{"model": ..., "ema": ...}``."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict or a dict with 'model'/'ema' entries, got {type(obj).__name__}")
    if "ema" in obj and use_ema:
        obj = obj["ema"]
    elif "model" in obj:
        obj = obj["model"]
    elif "ema" in obj:
        obj = obj["ema"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("checkpoint entry is not a state dict of tensors")
    out = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _hint(key: str) -> str:
    if key.startswith("final_layer.linear"):
        return (" (output channels differ: check learn_sigma — official DiT checkpoints use learn_sigma=True, "
                "i.e. 2*in_channels outputs — and in_channels / patch size)")
    if key == "pos_embed":
        return " (token count differs: check input_size and patch size, e.g. input_size=32 for 256 px)"
    if key.startswith("y_embedder"):
        return " (check num_classes and class_dropout_prob > 0, which adds the null-class row)"
    if key.startswith("x_embedder"):
        return " (check in_channels and patch size)"
    return " (check the model size: depth / hidden_size)"


def load_official_checkpoint(
    model: nn.Module, source: Union[str, os.PathLike, Mapping], strict: bool = True, use_ema: bool = True
) -> nn.Module:
    """Load an official DiT/SiT checkpoint (path or loaded dict) into ``model`` in place.

    Shape mismatches raise a ``ValueError`` naming the key and both shapes. With ``strict=False``
    missing keys are allowed (e.g. initialising a VCA model from an MHSA checkpoint: the
    shared keys load, VCA's extra attention parameters keep their init); unexpected keys never are.
    """
    obj = torch.load(source, map_location="cpu", weights_only=True) if isinstance(source, (str, os.PathLike)) else source
    state = official_state_dict(obj, use_ema=use_ema)
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(f"checkpoint key {key!r} has shape {tuple(value.shape)} but the model expects "
                             f"{tuple(own[key].shape)}{_hint(key)}")
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unexpected:
        raise ValueError(f"checkpoint has {len(unexpected)} key(s) the model does not: {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''} (wrong model size or attention kind?)")
    if missing and strict:
        raise ValueError(f"checkpoint lacks {len(missing)} key(s) of the model: {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''} (pass strict=False to keep their initial values)")
    model.load_state_dict(state, strict=strict)
    return model
