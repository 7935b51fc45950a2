"""Reading official DiT / SiT checkpoint files safely (never by unpickling code).

Files users bring (all read with ``torch.load(weights_only=True)``):

* released weights (``DiT-XL-2-256x256.pt``, SiT's ``SiT-XL-2-256x256.pt``): a plain state dict;
* a training checkpoint of either codebase: ``{"model": sd, "ema": sd, "opt": optimizer sd,
  "args": argparse.Namespace}`` (the EMA weights are the ones to sample with);
* any of these saved through a DDP / ``torch.compile`` wrapper (keys prefixed ``module.`` /
  ``_orig_mod.``), or a ``.safetensors`` file of the same keys.

:func:`read_checkpoint_file` → ``(state_dict, CheckpointInfo)``; :func:`official_state_dict` for an
already loaded object. Every user-fixable problem raises :class:`OfficialCheckpointError`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vca_gen.errors import UserError

_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
_ENTRIES = ("ema", "model")
PathLike = str | os.PathLike


class OfficialCheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be read, is not a state dict, or does not fit the model."""


@dataclass(frozen=True)
class CheckpointInfo(Mapping):
    """What :func:`read_checkpoint_file` found (also a read-only mapping of :meth:`to_dict`, so
    ``{**info}`` and ``json.dumps(dict(info))`` work).

    ``entry``: ``"state_dict"`` (plain state dict / safetensors), ``"ema"`` or ``"model"`` (the
    entry of a training checkpoint that was used); ``available``: the weight entries the file has;
    ``args``: the training ``argparse.Namespace`` as a plain dict (``None`` if absent);
    ``prefix``: wrapper prefixes stripped from the keys (e.g. ``("module.",)``);
    ``other_keys``: the remaining top-level entries (e.g. ``("args", "opt")``).
    """

    path: str
    entry: str
    available: tuple[str, ...] = ()
    args: dict[str, Any] | None = None
    prefix: tuple[str, ...] = ()
    other_keys: tuple[str, ...] = ()
    num_tensors: int = 0
    num_params: int = 0

    @property
    def note(self) -> str:
        """A warning-worthy remark, or ``""`` (e.g. sampling weights that are not the EMA)."""
        if self.entry == "model" and "ema" not in self.available:
            return f"{self.path} has no 'ema' entry; using its raw 'model' weights (FIDs are usually reported with EMA)"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "entry": self.entry,
            "available": list(self.available),
            "args": self.args,
            "prefix": list(self.prefix),
            "other_keys": list(self.other_keys),
            "num_tensors": self.num_tensors,
            "num_params": self.num_params,
        }

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


# ----------------------------------------------------------------------------- reading
def strip_prefixes(state: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Remove DDP / compile wrapper prefixes (repeatedly, e.g. ``module._orig_mod.``)."""
    out: dict[str, Any] = {}
    seen: list[str] = []
    for key, value in state.items():
        k = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if k.startswith(prefix):
                    k = k[len(prefix) :]
                    stripped = True
                    if prefix not in seen:
                        seen.append(prefix)
        if k in out:
            raise OfficialCheckpointError(f"key {key!r} collides with {k!r} once the wrapper prefix is removed")
        out[k] = value
    return out, tuple(seen)


def check_tensors(state: Mapping[str, Any], where: str) -> None:
    bad = [(k, type(v).__name__) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        shown = ", ".join(f"{k!r} ({t})" for k, t in bad[:5])
        raise OfficialCheckpointError(
            f"{where} holds non-tensor values where tensors are expected: {shown}"
            f"{' ...' if len(bad) > 5 else ''} ({len(bad)} of {len(state)} entries); "
            "a state dict maps parameter names to tensors"
        )


def _select(obj: Any, prefer: str, where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict inside ``obj`` and what was found (entry, available, args, prefix, other keys)."""
    if prefer not in _ENTRIES:
        raise OfficialCheckpointError(f"prefer={prefer!r} is not valid; accepted: {', '.join(_ENTRIES)}")
    if not isinstance(obj, Mapping):
        raise OfficialCheckpointError(
            f"{where} is not a state dict: it holds a {type(obj).__name__}; expected a dict of tensors "
            "(e.g. DiT-XL-2-256x256.pt) or a training checkpoint {'model': ..., 'ema': ..., 'opt': ..., 'args': ...}"
        )
    available = tuple(k for k in _ENTRIES if k in obj)
    meta: dict[str, Any] = {"available": available, "args": None, "other_keys": ()}
    if available:
        entry = prefer if prefer in available else available[0]
        state = obj[entry]
        if not isinstance(state, Mapping):
            raise OfficialCheckpointError(
                f"{where}: entry {entry!r} is a {type(state).__name__}, not a state dict of tensors"
            )
        where = f"{where} (entry {entry!r})"
        args = obj.get("args")
        if isinstance(args, argparse.Namespace):
            args = dict(vars(args))
        meta["args"] = dict(args) if isinstance(args, Mapping) else None
        meta["other_keys"] = tuple(sorted(str(k) for k in obj if k not in _ENTRIES))
    else:
        entry, state = "state_dict", obj
        if state and not any(isinstance(v, torch.Tensor) for v in state.values()):
            keys = sorted(map(str, state))
            raise OfficialCheckpointError(
                f"{where} is not a state dict: no tensors among its top-level entries {keys[:8]}"
                f"{' ...' if len(keys) > 8 else ''}; expected parameter names -> tensors or 'model' / 'ema' entries"
            )
    if not state:
        raise OfficialCheckpointError(f"{where} is an empty state dict")
    check_tensors(state, where)
    state, prefix = strip_prefixes(state)
    meta.update(entry=entry, prefix=prefix)
    return state, meta


def _safe_globals() -> list:
    return [argparse.Namespace]


def _torch_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors, containers and ``argparse.Namespace``."""
    kwargs: dict[str, Any] = dict(map_location="cpu", weights_only=True)
    if hasattr(torch.serialization, "safe_globals"):
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, **kwargs)
    torch.serialization.add_safe_globals(_safe_globals())  # pragma: no cover - torch < 2.5
    return torch.load(path, **kwargs)  # pragma: no cover


def _load_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise OfficialCheckpointError(f"cannot read {path}: truncated or corrupt safetensors file ({e})") from None
    try:
        return _torch_load(path)
    except pickle.UnpicklingError as e:
        msg = str(e)
        found = re.search(r"GLOBAL (\S+) was not an allowed global", msg)
        if found and _resolves(found.group(1)):  # a truncated file can cut a name short: "GLOBAL colle."
            raise OfficialCheckpointError(
                f"{path} contains a pickled Python object ({found.group(1)}) that is not tensors, containers or "
                "argparse.Namespace; it is not loaded, since unpickling it could run arbitrary code. Re-save "
                "only the state dict (torch.save(model.state_dict(), ...)) from a trusted environment"
            ) from None
        raise OfficialCheckpointError(
            f"cannot read {path}: the file is truncated or corrupt, or not written by torch.save ({_first_line(msg)})"
        ) from None
    except MemoryError:
        raise
    except Exception as e:  # the zip reader, legacy unpickler and seeks fail in many ways on a damaged file
        raise OfficialCheckpointError(
            f"cannot read {path}: the file is truncated or corrupt, or not written by torch.save "
            f"({type(e).__name__}: {_first_line(str(e))})"
        ) from None


def _resolves(dotted: str) -> bool:
    """Whether ``module.qualname`` names an object of an already imported module (nothing is imported)."""
    parts = dotted.split(".")
    if len(parts) == 1:  # builtins are printed without their module
        return hasattr(sys.modules["builtins"], dotted)
    for i in range(len(parts) - 1, 0, -1):
        mod = sys.modules.get(".".join(parts[:i]))
        if mod is None:
            continue
        obj: Any = mod
        for name in parts[i:]:
            if not name or not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def _first_line(msg: str) -> str:
    """The informative line of a torch.load error (its weights-only preamble dropped)."""
    found = re.search(r"GLOBAL (\S+) was not an allowed global", msg)
    if found:
        return f"it refers to {found.group(1)!r}, which names no known type"
    found = re.search(r"WeightsUnpickler error:\s*(\S.*)", msg)
    if found:
        return found.group(1).strip()[:200]
    found = re.search(r"WeightsUnpickler error:\s*\n+\s*(\S.*)", msg)
    if found:
        return found.group(1).strip()[:200]
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for ln in lines:
        if "weights only" not in ln.lower() and not ln.startswith("("):
            return ln[:200]
    return "no details"


def read_checkpoint_file(path: PathLike, prefer: str = "ema") -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Read a DiT / SiT checkpoint file → ``(state_dict, info)`` (CPU tensors, wrapper prefixes removed).

    ``prefer``: which entry of a training checkpoint to use, ``"ema"`` (default, the weights to
    sample with) or ``"model"``; a file with only the other entry falls back to it (see
    ``info.entry`` / ``info.note``). Plain state dicts and ``.safetensors`` files have ``entry``
    ``"state_dict"``. Raises :class:`OfficialCheckpointError` naming the file for a missing,
    truncated or corrupt file, one holding arbitrary Python objects, or one that is not a state dict.
    """
    p = Path(path)
    if prefer not in _ENTRIES:
        raise OfficialCheckpointError(f"prefer={prefer!r} is not valid; accepted: {', '.join(_ENTRIES)}")
    if p.is_dir():
        raise OfficialCheckpointError(
            f"{p} is a directory; expected a checkpoint file such as DiT-XL-2-256x256.pt "
            "(vca-gen's own checkpoint and export directories are read by vca_gen.experiment.checkpoint)"
        )
    if not p.is_file():
        raise OfficialCheckpointError(f"checkpoint file {p} does not exist")
    if p.stat().st_size == 0:
        raise OfficialCheckpointError(f"cannot read {p}: the file is empty (an interrupted download or copy?)")
    obj = _load_file(p)
    state, meta = _select(obj, prefer, str(p))
    info = CheckpointInfo(
        path=str(p),
        entry=meta["entry"],
        available=meta["available"],
        args=meta["args"],
        prefix=meta["prefix"],
        other_keys=meta["other_keys"],
        num_tensors=len(state),
        num_params=sum(v.numel() for v in state.values()),
    )
    return state, info


def official_state_dict(obj: Any, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The model state dict inside an already loaded ``obj``: plain, or ``{"model": ..., "ema": ...}``."""
    state, _ = _select(obj, "ema" if use_ema else "model", "checkpoint")
    return state


__all__ = ["CheckpointInfo", "OfficialCheckpointError", "PathLike", "official_state_dict", "read_checkpoint_file"]
