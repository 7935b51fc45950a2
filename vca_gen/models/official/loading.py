"""Loading official weights into a model: exactly (:func:`load_official_checkpoint`), or every
tensor that fits (:func:`load_matching`, for ``train.py model.init_from=FILE``, with a
:class:`MatchReport`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from vca_gen.models.official.architecture import Shape, key_groups
from vca_gen.models.official.diagnosis import explain_mismatch
from vca_gen.models.official.files import (
    OfficialCheckpointError,
    PathLike,
    check_tensors,
    official_state_dict,
    read_checkpoint_file,
    strip_prefixes,
)


def load_official_checkpoint(
    model: nn.Module, source: PathLike | Mapping, strict: bool = True, use_ema: bool = True
) -> nn.Module:
    """Load an official DiT/SiT checkpoint (path or loaded dict) into ``model`` in place.

    A shape mismatch raises :class:`OfficialCheckpointError` naming the key, both shapes and the
    likely cause (see :func:`diagnose_mismatch`). With ``strict=False`` missing keys are allowed
    (e.g. initialising a VCA model from an MHSA checkpoint: the shared keys load, VCA's extra
    attention parameters keep their init); unexpected keys never are.
    """
    if isinstance(source, (str, os.PathLike)):
        state, _ = read_checkpoint_file(source, prefer="ema" if use_ema else "model")
    else:
        state = official_state_dict(source, use_ema=use_ema)
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            why = explain_mismatch(state, model)
            raise OfficialCheckpointError(
                f"checkpoint key {key!r} has shape {tuple(value.shape)} but the model expects "
                f"{tuple(own[key].shape)}" + (f" — {why}" if why else "")
            )
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unexpected:
        why = explain_mismatch(state, model)
        raise OfficialCheckpointError(
            f"checkpoint has {len(unexpected)} key(s) the model does not: {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
            + (f" — {why}" if why else " (wrong model size or attention kind?)")
        )
    if missing and strict:
        raise OfficialCheckpointError(
            f"checkpoint lacks {len(missing)} key(s) of the model: {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''} (pass strict=False to keep their initial values)"
        )
    model.load_state_dict(state, strict=strict)
    return model


@dataclass
class MatchReport:
    """What :func:`load_matching` copied. Shapes are tuples; ``shape_mismatch`` rows are (key, file, model)."""

    loaded: list[str] = field(default_factory=list)
    missing_in_file: list[str] = field(default_factory=list)
    unexpected_in_file: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, Shape, Shape]] = field(default_factory=list)

    @property
    def num_model_tensors(self) -> int:
        return len(self.loaded) + len(self.missing_in_file) + len(self.shape_mismatch)

    @property
    def at_init(self) -> list[str]:
        """Model keys that kept their initial values (missing in the file or of another shape)."""
        return self.missing_in_file + [k for k, _, _ in self.shape_mismatch]

    def summary(self) -> str:
        """One paragraph: how many tensors were kept and which groups stayed at init."""
        parts = [f"initialised {len(self.loaded)} of {self.num_model_tensors} model tensors from the file"]
        if self.missing_in_file:
            parts.append(f"not in the file, left at init: {key_groups(self.missing_in_file)}")
        if self.shape_mismatch:
            shown = ", ".join(f"{k} {tuple(fs)} in the file vs {tuple(ms)}" for k, fs, ms in self.shape_mismatch[:3])
            more = f", … ({len(self.shape_mismatch) - 3} more)" if len(self.shape_mismatch) > 3 else ""
            parts.append(
                f"shape differs, left at init: {shown}{more}"
                + (
                    " (pos_embed is the fixed sin-cos table, recomputed for the new size)"
                    if any(k == "pos_embed" for k, _, _ in self.shape_mismatch)
                    else ""
                )
            )
        if self.unexpected_in_file:
            parts.append(f"file tensors the model has no place for, ignored: {key_groups(self.unexpected_in_file)}")
        if not (self.missing_in_file or self.shape_mismatch or self.unexpected_in_file):
            parts.append("the file fits the model exactly")
        return "; ".join(parts) + "."

    def to_dict(self) -> dict[str, Any]:
        return {
            "loaded": list(self.loaded),
            "missing_in_file": list(self.missing_in_file),
            "unexpected_in_file": list(self.unexpected_in_file),
            "shape_mismatch": [[k, list(a), list(b)] for k, a, b in self.shape_mismatch],
        }


def load_matching(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor] | PathLike, prefer: str = "ema"
) -> MatchReport:
    """Copy every tensor of ``state_dict`` (or of a checkpoint file) whose key and shape the model has.

    For ``train.py model.init_from=FILE``: e.g. a VCA model initialised from MHSA weights keeps
    its own init for VCA's extra ``blocks.*.attn.*`` parameters. Nothing is raised for keys that
    do not fit; they are listed in the returned :class:`MatchReport` (see its ``summary()``).
    """
    if isinstance(state_dict, (str, os.PathLike)):
        state, _ = read_checkpoint_file(state_dict, prefer=prefer)
    else:
        if not isinstance(state_dict, Mapping):
            raise OfficialCheckpointError(
                f"load_matching needs a state dict or a file, got {type(state_dict).__name__}"
            )
        check_tensors(state_dict, "state dict")
        state, _ = strip_prefixes(state_dict)
    own = model.state_dict()
    report = MatchReport()
    subset: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        if key not in state:
            report.missing_in_file.append(key)
        elif tuple(state[key].shape) != tuple(target.shape):
            report.shape_mismatch.append((key, tuple(state[key].shape), tuple(target.shape)))
        else:
            subset[key] = state[key]
            report.loaded.append(key)
    report.unexpected_in_file = [k for k in state if k not in own]
    if subset:
        model.load_state_dict(subset, strict=False)
    return report


__all__ = ["MatchReport", "load_matching", "load_official_checkpoint"]
