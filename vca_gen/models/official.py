"""Official DiT / SiT checkpoints: reading them safely, explaining why one does not fit, loading.

Files users bring (all read with ``torch.load(weights_only=True)``, never by unpickling code):

* released weights (``DiT-XL-2-256x256.pt``, SiT's ``SiT-XL-2-256x256.pt``): a plain state dict;
* a training checkpoint of either codebase: ``{"model": sd, "ema": sd, "opt": optimizer sd,
  "args": argparse.Namespace}`` (the EMA weights are the ones to sample with);
* any of these saved through a DDP / ``torch.compile`` wrapper (keys prefixed ``module.`` /
  ``_orig_mod.``), or a ``.safetensors`` file of the same keys.

Key names match :class:`vca_gen.models.dit.DiT` exactly, so an ``attention="mhsa"`` model loads
them with ``strict=True``.

* :func:`read_checkpoint_file` → ``(state_dict, CheckpointInfo)``.
* :func:`diagnose_mismatch` / :func:`explain_mismatch` → the message that names the key and the
  likely cause (hidden size, depth, patch size, image size, learn_sigma, num_classes, attention)
  when a file does not fit the model; :func:`infer_architecture`, :func:`infer_learn_sigma`,
  :func:`infer_num_classes` read those properties off a state dict.
* :func:`load_official_checkpoint`: exact load (``strict=False`` allows missing keys).
* :func:`load_matching` (``train.py model.init_from=FILE``): copy every tensor that fits,
  report the rest (:class:`MatchReport`).

Every user-fixable problem raises :class:`OfficialCheckpointError`.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vca_gen.errors import UserError

_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
_ENTRIES = ("ema", "model")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_ATTN_RE = re.compile(r"^blocks\.\d+\.attn\.")
PathLike = str | os.PathLike
Shape = tuple[int, ...]


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
def _strip_prefixes(state: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
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


def _check_tensors(state: Mapping[str, Any], where: str) -> None:
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
    _check_tensors(state, where)
    state, prefix = _strip_prefixes(state)
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


# ----------------------------------------------------------------------------- inference
def _shape(state: Mapping[str, torch.Tensor], key: str) -> Shape | None:
    v = state.get(key)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def infer_num_classes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """``num_classes`` of a DiT/SiT state dict: rows of ``y_embedder.embedding_table`` minus the null class.

    Official checkpoints (and every model trained with label dropout > 0) have ``num_classes + 1``
    rows, the last being the null class of classifier-free guidance.
    """
    state, _ = _strip_prefixes(state_dict)
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
    state, _ = _strip_prefixes(state_dict)
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


def _size_name(depth: int | None, hidden: int | None) -> str | None:
    from vca_gen.models.registry import SIZES

    for name, (d, h, _) in SIZES.items():
        if h == hidden and (depth is None or d == depth):
            return name
    return None


def _hidden_name(hidden: int | None) -> str | None:
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
    state, _ = _strip_prefixes(state_dict)
    x = _shape(state, "x_embedder.proj.weight")
    hidden = x[0] if x and len(x) == 4 else None
    patch, cin = _patch_and_in(state)
    depths = [int(m.group(1)) for k in state for m in [_BLOCK_RE.match(k)] if m]
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
        {_pattern(k) for k in state if _ATTN_RE.match(k)}
        - {f"blocks.*.attn.{n}.{w}" for n in ("qkv", "proj") for w in ("weight", "bias")}
    )
    size = _size_name(depth, hidden)
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


# ----------------------------------------------------------------------------- diagnosis
def _pattern(key: str) -> str:
    """``blocks.3.attn.e_pos`` → ``blocks.*.attn.e_pos`` (layer indices folded)."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "*", key)


def _groups(keys: Sequence[str], limit: int = 6) -> str:
    counts: dict[str, int] = {}
    for k in keys:
        p = _pattern(k)
        counts[p] = counts.get(p, 0) + 1
    items = [f"{p} ({n})" if n > 1 else p for p, n in counts.items()]
    return ", ".join(items[:limit]) + (f", … ({len(items) - limit} more groups)" if len(items) > limit else "")


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


def _causes(state: Mapping[str, torch.Tensor], spec: _Spec) -> tuple[list[str], dict[str, Any]]:
    """One sentence per cause that makes ``state`` not fit ``spec`` (empty when it fits exactly)."""
    f = infer_architecture(state)
    causes: list[str] = []
    explained: set = set()
    fs = {k: tuple(v.shape) for k, v in state.items()}
    ms = spec.shapes

    def both(key: str) -> str:
        return f"'{key}' is {fs.get(key)} in the file but {ms.get(key)} in the model"

    # hidden size: every per-layer shape follows from it
    if f["hidden_size"] is not None and f["hidden_size"] != spec.hidden:
        fname, mname = _hidden_name(f["hidden_size"]), spec.size or _hidden_name(spec.hidden)
        what = f"an {fname} model" if fname in ("XL", "L") else (f"a {fname} model" if fname else "a model")
        causes.append(
            f"hidden size: {both('x_embedder.proj.weight')}: the file is {what} (hidden size {f['hidden_size']}), "
            f"not {mname or 'this size'} (hidden size {spec.hidden})"
        )
        explained.update(k for k in fs if k in ms and fs[k] != ms[k])
    # depth
    if f["depth"] is not None and f["depth"] != spec.depth:
        last = f"blocks.{max(f['depth'], spec.depth) - 1}"
        where = (
            "is in the file but not in the model" if f["depth"] > spec.depth else "is in the model but not in the file"
        )
        causes.append(
            f"depth: '{last}.*' {where}: the file has {f['depth']} blocks, the model {spec.depth}"
            + (
                f" ({_size_name(f['depth'], f['hidden_size'])} has {f['depth']})"
                if _size_name(f["depth"], f["hidden_size"])
                else ""
            )
        )
    # patch size (kernel of the patch-embedding conv)
    x_key = "x_embedder.proj.weight"
    if f["patch_size"] is not None and f["patch_size"] != spec.patch:
        causes.append(
            f"patch size: {both(x_key)}: its kernel is {f['patch_size']}x{f['patch_size']}, so the file is a "
            f"/{f['patch_size']} model, not /{spec.patch}"
        )
        explained.update({x_key, "pos_embed", "final_layer.linear.weight", "final_layer.linear.bias"})
    # input channels
    if f["in_channels"] is not None and f["in_channels"] != spec.in_channels:
        causes.append(
            f"input channels: {both(x_key)}: the file takes {f['in_channels']} input channels, the model "
            f"{spec.in_channels} (4 = SD-VAE latents, 3 = RGB pixels)"
        )
        explained.update({x_key, "final_layer.linear.weight", "final_layer.linear.bias"})
    # image size (token count of the fixed position embedding)
    H, W = spec.input_hw
    tokens_differ = f["num_tokens"] is not None and f["num_tokens"] != (H // spec.patch) * (W // spec.patch)
    size_differs = f["input_size"] is not None and (f["input_size"], f["input_size"]) != (H, W)
    if tokens_differ or size_differs:
        explained.add("pos_embed")
        if size_differs:
            side = math.isqrt(f["num_tokens"])
            cin = f["in_channels"] or spec.in_channels
            model_side = f"{H}" if H == W else f"{H}x{W}"
            causes.append(
                f"image size: 'pos_embed' has {f['num_tokens']} tokens in the file "
                f"({side}x{side} patches of {f['patch_size']}: input_size "
                f"{f['input_size']}, a {_px(f['input_size'], cin)} model) but {ms.get('pos_embed', (0, 0))[1]} in the "
                f"model (input_size {model_side}, {_px(H, spec.in_channels) if H == W else f'{H}x{W} latents'})"
            )
        elif f["input_size"] is None:
            causes.append(
                f"image size: 'pos_embed' has {f['num_tokens']} tokens in the file (not a square grid), "
                f"{ms.get('pos_embed', (0, 0))[1]} in the model"
            )
    # learn_sigma (output channels of the final linear)
    fl = "final_layer.linear.weight"
    if (
        f["out_channels"] is not None
        and f["in_channels"] == spec.in_channels
        and f["out_channels"] != spec.out_channels
    ):
        p = f["patch_size"]
        file_ls = f["out_channels"] == 2 * f["in_channels"]
        model_ls = spec.out_channels == 2 * spec.in_channels
        if file_ls != model_ls:
            causes.append(
                f"learn_sigma: '{fl}' has {fs[fl][0]} rows in the file = {p}*{p}*{f['out_channels']} output channels "
                f"({f['out_channels']} channels for {f['in_channels']} inputs means learn_sigma={file_ls}"
                f"{', as in the official DiT/SiT checkpoints' if file_ls else ''}) but {ms.get(fl, (0,))[0]} rows in "
                f"the model ({spec.out_channels} channels: learn_sigma={model_ls}); set learn_sigma={file_ls}"
            )
        else:
            causes.append(
                f"output channels: '{fl}' gives {f['out_channels']} output channels in the file, "
                f"{spec.out_channels} in the model"
            )
        explained.update({fl, "final_layer.linear.bias"})
    # num_classes (label table has num_classes + 1 rows: the null class)
    yk = "y_embedder.embedding_table.weight"
    if yk in fs and yk in ms and fs[yk][0] != ms[yk][0]:
        causes.append(
            f"num_classes: '{yk}' has {fs[yk][0]} rows in the file (num_classes={fs[yk][0] - 1} plus the null class) "
            f"but {ms[yk][0]} in the model (num_classes={spec.num_classes}"
            f"{'' if ms[yk][0] == spec.num_classes + 1 else ', no null class: class_dropout_prob=0'}); "
            f"set num_classes={fs[yk][0] - 1}"
        )
        explained.add(yk)
    # attention kind (VCA / DIFF add parameters under blocks.*.attn.)
    same_depth = [
        k
        for k in set(fs) ^ set(ms)
        if not (m := _BLOCK_RE.match(k)) or int(m.group(1)) < min(f["depth"] or 0, spec.depth)
    ]
    file_only = sorted(k for k in same_depth if k in fs and _ATTN_RE.match(k))
    model_only = sorted(k for k in same_depth if k in ms and _ATTN_RE.match(k))
    if file_only:
        causes.append(
            f"attention: the file has attention parameters the model lacks ({_groups(file_only, 3)}): "
            f"it was trained with another attention kind than {spec.attention!r}"
        )
    if model_only and file_only:
        causes.append(
            f"attention: the model's {spec.attention!r} attention has parameters the file lacks "
            f"({_groups(model_only, 3)})"
        )
    elif model_only:
        causes.append(
            f"attention: the model's {spec.attention!r} attention has parameters the file lacks "
            f"({_groups(model_only, 3)}): the file is a plain MHSA checkpoint; build the model with attention=mhsa "
            f"to load it exactly, or initialise a {spec.attention} model from it with model.init_from=FILE "
            "(load_matching)"
        )
    # anything left unexplained
    rest = [k for k in fs if k in ms and fs[k] != ms[k] and k not in explained]
    if rest:
        causes.append(
            "shape: "
            + "; ".join(both(k) for k in rest[:3])
            + (" ..." if len(rest) > 3 else "")
            + (" (mlp_ratio?)" if any(".mlp." in k for k in rest) else "")
        )
    other = [k for k in same_depth if not _ATTN_RE.match(k)]
    if other:
        in_file = sorted(k for k in other if k in fs)
        in_model = sorted(k for k in other if k in ms)
        if in_file:
            causes.append(f"keys: the file has keys the model does not: {_groups(in_file, 4)}")
        if in_model:
            causes.append(f"keys: the model has keys the file does not: {_groups(in_model, 4)}")
    return causes, f


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
    state, _ = _strip_prefixes(state_dict)
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


# ----------------------------------------------------------------------------- loading
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
            parts.append(f"not in the file, left at init: {_groups(self.missing_in_file)}")
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
            parts.append(f"file tensors the model has no place for, ignored: {_groups(self.unexpected_in_file)}")
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
        _check_tensors(state_dict, "state dict")
        state, _ = _strip_prefixes(state_dict)
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


__all__ = [
    "CheckpointInfo",
    "MatchReport",
    "OfficialCheckpointError",
    "diagnose_mismatch",
    "explain_mismatch",
    "infer_architecture",
    "infer_learn_sigma",
    "infer_num_classes",
    "load_matching",
    "load_official_checkpoint",
    "official_state_dict",
    "read_checkpoint_file",
]
