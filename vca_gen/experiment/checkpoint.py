"""Training checkpoints, EMA exports and loading for sampling.

Layout of a training checkpoint (one directory per saved step)::

    <output_dir>/checkpoints/step_00001000/
        model.safetensors   live weights (the unwrapped model's state_dict)
        ema.safetensors     fp32 EMA weights (same keys and shapes)
        optimizer.pt        AdamW state_dict (tensors and numbers only; loaded weights_only=True)
        rng.pt              torch CPU/CUDA, numpy and python RNG states of every process, as tensors
        state.json          step, data position, counters
        config.yaml         the resolved experiment config
        decoder.json        what decoding needs (VAE, latent normalisation statistics, class names)
        checksums.json      sha256 and size of every file above (written before COMPLETE)
        COMPLETE            marker written last

Everything is written into ``step_XXXXXXXX.tmp`` first, flushed to disk, marked ``COMPLETE`` and
then renamed, so a kill at any moment leaves the previous checkpoints intact; directories without
the marker (or still named ``*.tmp``) are never loaded. Nothing here unpickles arbitrary objects.

A complete checkpoint can still be damaged afterwards (a disk error, a truncating copy, a quota hit
by a later rsync): :func:`verify_checkpoint` checks the files against ``checksums.json`` and
names the damaged one. Resuming (``resolve_resume(..., verify=True)``) then falls back to the
newest intact checkpoint with a :class:`CheckpointWarning`; :func:`load_for_sampling` (sample.py,
exports) refuses with a :class:`CheckpointError` naming the file. Checkpoints written before
``checksums.json`` existed are accepted unverified.

An *export* is a directory with ``model.safetensors`` (EMA weights by default),
``config.json`` (the experiment), ``decoder.json`` and ``checksums.json``: it stands alone, and
every load verifies it (a damaged file is a :class:`CheckpointDamagedError` naming it). ``load_for_sampling``
accepts an export, a training checkpoint directory or a run directory (its latest complete
checkpoint).

Export command: ``train.py --export CKPT OUT [--live]``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

from vca_gen.data.decoder import DecoderSpec
from vca_gen.errors import ConfigError, UserError
from vca_gen.experiment.build import build_model, decoder_spec
from vca_gen.experiment.schema import config_from_dict, config_from_yaml_text, to_container
from vca_gen.utils.faults import Faults
from vca_gen.utils.io import atomic_write_text as _atomic_write_text
from vca_gen.utils.io import fsync_dir as _fsync_dir
from vca_gen.utils.io import fsync_file as _fsync_file
from vca_gen.utils.io import sha256_file, tensors_nbytes, write_faults, write_tensors_file

COMPLETE = "COMPLETE"
CHECKSUMS = "checksums.json"
CKPT_RE = re.compile(r"^step_(\d{8,})$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or export is missing, incomplete or does not fit the model."""


class CheckpointDamagedError(CheckpointError):
    """A complete checkpoint whose file ``damaged`` does not match its recorded checksum/size."""

    def __init__(self, message: str, damaged: Path):
        super().__init__(message)
        self.damaged = damaged


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older intact one."""


def atomic_write_text(path: Path | str, text: str, what: str = "a training record") -> None:
    """A run-directory file (log, config) written atomically; a full disk exits 75 (training resumes)."""
    _atomic_write_text(path, text, what=what, resumable=True)


def _cpu_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def step_dir_name(step: int) -> str:
    return f"step_{int(step):08d}"


# ----------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain numbers (loadable with weights_only=True)."""
    # the stubs' first overload says dict; the default (legacy=True) returns the legacy tuple
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64).copy()),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python_version": int(py_state[0]),
        "python_state": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": py_state[2],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch_cpu"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    random.setstate(
        (state["python_version"], tuple(int(x) for x in state["python_state"].tolist()), state["python_gauss"])
    )
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda_states = state["torch_cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ----------------------------------------------------------------------------- listing / pruning
def list_checkpoints(ckpt_root: Path | str) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``ckpt_root`` as ``(step, path)``, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_root: Path | str) -> Path | None:
    ckpts = list_checkpoints(ckpt_root)
    return ckpts[-1][1] if ckpts else None


def _remove_dir(path: Path) -> None:
    """Delete a checkpoint directory: drop its marker first so a partial delete is never loaded."""
    marker = path / COMPLETE
    if marker.exists():
        marker.unlink()
    shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(ckpt_root: Path | str, keep_last: int, milestone_every: int = 0) -> list[Path]:
    """Keep the ``keep_last`` newest complete checkpoints plus every milestone (step divisible by
    ``milestone_every`` when > 0); delete the rest and stale ``*.tmp`` directories. Returns the
    deleted paths. ``keep_last <= 0`` keeps everything."""
    root = Path(ckpt_root)
    deleted: list[Path] = []
    if not root.is_dir():
        return deleted
    for p in root.glob("step_*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
        deleted.append(p)
    if keep_last <= 0:
        return deleted
    ckpts = list_checkpoints(root)
    keep = {p for _, p in ckpts[-keep_last:]}
    for step, p in ckpts:
        milestone = milestone_every > 0 and step % milestone_every == 0
        if p not in keep and not milestone:
            _remove_dir(p)
            deleted.append(p)
    return deleted


# ----------------------------------------------------------------------------- save
def save_checkpoint(
    ckpt_root: Path | str,
    step: int,
    *,
    model_state: Mapping[str, torch.Tensor],
    ema_state: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any],
    rng_states: list[Mapping[str, Any]],
    state: Mapping[str, Any],
    config_yaml: str,
    decoder: DecoderSpec | None = None,
    faults: Faults | None = None,
) -> Path:
    """Write one checkpoint atomically and return its final directory (call on the main process).

    ``rng_states`` holds one :func:`capture_rng_state` dict per process (index = process rank).
    An existing complete checkpoint of the same step is replaced only after the new one is
    complete. A full disk, quota, read-only file system or missing permission raises a
    :class:`~vca_gen.utils.io.WriteFaultError` naming the checkpoint and the space it needs (exit 75
    for a full disk: re-running resumes from the previous checkpoint), after removing the
    half-written ``step_XXXXXXXX.tmp``; earlier checkpoints are untouched. ``faults``: injected by
    tests (``save_pause_s``: pause half-way through the write).
    """
    root = Path(ckpt_root)
    final = root / step_dir_name(step)
    tmp = root / (final.name + ".tmp")
    need = tensors_nbytes(model_state) + tensors_nbytes(ema_state) + tensors_nbytes(optimizer_state)
    need += tensors_nbytes(rng_states) + len(config_yaml) + 64 * 1024  # headers, small files
    with write_faults(
        final,
        f"checkpoint step {int(step)}",
        need=need,
        resumable=True,
        partial=tmp,
        cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True),
    ):
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_tensors_file(tmp / "model.safetensors", _cpu_state(model_state))
        write_tensors_file(tmp / "ema.safetensors", _cpu_state(ema_state))
        if faults is not None and faults.save_pause_s > 0:  # injected: a half-written checkpoint stays a while
            print(f"[checkpoint] fault injected: pausing {faults.save_pause_s}s mid-write of {tmp}", flush=True)
            time.sleep(faults.save_pause_s)
        with open(tmp / "optimizer.pt", "wb") as fo:  # a file object: torch then reports the OSError it met
            torch.save(optimizer_state, fo)
        with open(tmp / "rng.pt", "wb") as fo:
            torch.save({"world_size": len(rng_states), "states": list(rng_states)}, fo)
        (tmp / "state.json").write_text(json.dumps(dict(state), indent=2, sort_keys=True))
        (tmp / "config.yaml").write_text(config_yaml)
        if decoder is not None:
            decoder.save(tmp)
        for f in tmp.iterdir():
            _fsync_file(f)
        write_checksums(tmp)
        (tmp / COMPLETE).write_text(f"step {int(step)}\n")
        _fsync_file(tmp / COMPLETE)
        _fsync_dir(tmp)
        if final.exists():
            old = root / (final.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    return final


# ----------------------------------------------------------------------------- checksums
def write_checksums(directory: Path | str) -> dict[str, dict[str, Any]]:
    """Record sha256 and size of every file in ``directory`` (but the marker) in ``checksums.json``."""
    d = Path(directory)
    files = {
        f.name: {"sha256": sha256_file(f), "size": f.stat().st_size}
        for f in sorted(d.iterdir())
        if f.is_file() and f.name not in (COMPLETE, CHECKSUMS)
    }
    manifest = {"algorithm": "sha256", "files": files}
    (d / CHECKSUMS).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _fsync_file(d / CHECKSUMS)
    return files


def read_checksums(path: Path | str) -> dict[str, dict[str, Any]] | None:
    """``{file name: {"sha256", "size"}}`` of a checkpoint, or None if it has no checksums.json."""
    f = Path(path) / CHECKSUMS
    if not f.is_file():
        return None
    try:
        files = json.loads(f.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not a mapping")
    except (ValueError, KeyError, TypeError) as e:
        kind = "checkpoint" if (Path(path) / COMPLETE).is_file() else "export"
        raise CheckpointDamagedError(f"{kind} {Path(path)} is damaged: {f} cannot be read ({e})", f) from None
    return files


def verify_checkpoint(path: Path | str, files: list[str] | None = None) -> None:
    """Check ``files`` (default: all recorded) of a complete checkpoint against ``checksums.json``;
    a :class:`CheckpointDamagedError` names the first missing, truncated or altered file."""
    _verify_files(check_complete(path), files, "checkpoint")


def verify_export(path: Path | str, files: list[str] | None = None) -> None:
    """Check ``files`` (default: all recorded) of an export against its ``checksums.json`` (exports
    written before it existed are accepted unverified); a :class:`CheckpointDamagedError` names the
    first missing, truncated or altered file."""
    _verify_files(Path(path), files, "export")


def _verify_files(p: Path, files: list[str] | None, kind: str) -> None:
    recorded = read_checksums(p)
    if recorded is None:
        return  # written before checksums existed
    for name in files if files is not None else sorted(recorded):
        if name not in recorded:
            continue
        f, want = p / name, recorded[name]
        if not f.is_file():
            problem = "is missing"
        elif f.stat().st_size != int(want["size"]):
            problem = f"has {f.stat().st_size} bytes, {want['size']} were written"
        elif sha256_file(f) != want["sha256"]:
            problem = "does not match its recorded sha256"
        else:
            continue
        raise CheckpointDamagedError(f"{kind} {p} is damaged: {f} {problem} (see {CHECKSUMS})", f)


def readable_problem(
    path: Path | str, recorded: dict[str, dict[str, Any]] | None, hidden: tuple[str, ...] = ()
) -> str | None:
    """Why this process cannot read exactly the checkpoint ``path`` whose ``recorded`` checksums
    another process verified (cheap: existence, marker, sizes, same checksums.json), or None.
    ``hidden`` names files to treat as absent (test hook for a node that does not see them)."""
    p = Path(path)
    if not p.is_dir():
        return f"{p} does not exist here"
    if not (p / COMPLETE).is_file():
        return f"{p / COMPLETE} does not exist here"
    try:
        mine = read_checksums(p)
    except CheckpointError as e:
        return str(e)
    if (mine or None) != (recorded or None):
        return f"{p / CHECKSUMS} differs from the one the main process verified (a different save of that step?)"
    for name, want in sorted((recorded or {}).items()):
        f = p / name
        if name in hidden or not f.is_file():
            return f"{f} does not exist here"
        if f.stat().st_size != int(want["size"]):
            return f"{f} has {f.stat().st_size} bytes here, {want['size']} were written"
    return None


# ----------------------------------------------------------------------------- load
def check_complete(path: Path | str) -> Path:
    """``path`` as a complete training checkpoint directory, or a :class:`CheckpointError`."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} does not exist or is not a directory")
    if not (p / COMPLETE).is_file():
        raise CheckpointError(
            f"checkpoint {p} is incomplete (no {COMPLETE} marker: the save was interrupted); "
            f"use an earlier checkpoint or resume=auto"
        )
    return p


def load_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """A safetensors file as a CPU state dict."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"missing weights file {p}")
    try:
        return load_file(str(p), device="cpu")
    except Exception as e:  # safetensors raises its own error type for truncated/corrupt files
        raise CheckpointDamagedError(f"cannot read weights file {p}: truncated or corrupt ({e})", p) from None


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between two state dicts (keys and shapes)."""
    problems = []
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k].shape)
    ]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" … and {len(items) - 8} more" if len(items) > 8 else ""
            problems.append(f"{title} ({len(items)}): " + ", ".join(items[:8]) + more)
    return problems


def load_state_into(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` strictly, with an error naming every mismatching key/shape."""
    expected = module.state_dict()
    problems = state_dict_mismatch(expected, state)
    if problems:
        name = getattr(module, "name", None)
        raise CheckpointError(
            f"{source} does not fit this model ({type(module).__name__}"
            f"{' ' + name if isinstance(name, str) else ''}): "
            + "; ".join(problems)
            + ". Was it saved from a different model config (name, attention, learn_sigma, sizes)?"
        )
    module.load_state_dict(state, strict=True)


def load_training_state(path: Path | str) -> dict[str, Any]:
    """Everything in a training checkpoint except the weights: optimizer, rng, state, config."""
    p = check_complete(path)
    try:
        optimizer = torch.load(p / "optimizer.pt", map_location="cpu", weights_only=True)
        rng = torch.load(p / "rng.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {p} is missing {Path(e.filename).name}") from e
    except (RuntimeError, EOFError, ValueError) as e:  # truncated / corrupt torch file
        raise CheckpointError(f"checkpoint {p} has an unreadable optimizer.pt or rng.pt ({e})") from e
    state = json.loads((p / "state.json").read_text())
    return {"optimizer": optimizer, "rng": rng, "state": state, "config_yaml": (p / "config.yaml").read_text()}


def newest_intact_checkpoint(ckpt_root: Path | str) -> Path | None:
    """The newest complete checkpoint whose files match their checksums; each damaged newer one
    is skipped with a :class:`CheckpointWarning` naming the file. None if there is none at all;
    a :class:`CheckpointError` if every one is damaged."""
    ckpts = list_checkpoints(ckpt_root)
    damaged = []
    for _, p in reversed(ckpts):
        try:
            verify_checkpoint(p)
        except CheckpointDamagedError as e:
            damaged.append(str(e))
            warnings.warn(f"{e}; skipping it and resuming from an older checkpoint", CheckpointWarning, stacklevel=2)
            continue
        return p
    if damaged:
        raise CheckpointError(
            f"every checkpoint in {ckpt_root} is damaged: "
            + "; ".join(damaged)
            + ". Restore one from a copy, or start a new train.output_dir"
        )
    return None


def resolve_resume(resume: str, ckpt_root: Path | str, verify: bool = False) -> Path | None:
    """``resume`` = "auto" (latest complete checkpoint or None), "none", or a checkpoint path
    (a run directory: its latest). With ``verify``, checksums are checked: "auto" and a run
    directory fall back to the newest intact checkpoint (with a warning), an explicit damaged
    checkpoint is a :class:`CheckpointDamagedError`."""
    if resume in ("none", "", None):
        return None
    if resume == "auto":
        return newest_intact_checkpoint(ckpt_root) if verify else latest_checkpoint(ckpt_root)
    p = Path(resume)
    if p.is_dir() and not (p / COMPLETE).exists() and (p / "checkpoints").is_dir():
        latest = newest_intact_checkpoint(p / "checkpoints") if verify else latest_checkpoint(p / "checkpoints")
        if latest is None:
            raise CheckpointError(f"resume={resume}: run directory has no complete checkpoint")
        return latest
    p = check_complete(p)
    if verify:
        verify_checkpoint(p)
    return p


# ----------------------------------------------------------------------------- export / sampling
def _find_weights_dir(path: Path) -> Path:
    """An export dir, a checkpoint dir, or a run dir (→ latest checkpoint)."""
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    if (path / COMPLETE).is_file():
        return path
    for root in (path / "checkpoints", path):
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    if CKPT_RE.match(path.name) or path.name.endswith(".tmp"):
        check_complete(path)
    raise CheckpointError(
        f"{path} is neither an export (model.safetensors + config.json), a complete training "
        f"checkpoint (step_XXXXXXXX with {COMPLETE}) nor a run directory with checkpoints"
    )


def load_for_sampling(path: Path | str, use_ema: bool = True, device: Any = "cpu"):
    """``(model, experiment, decoder spec or None, source)`` from an export, a checkpoint dir or a run
    dir; model in eval mode. ``use_ema`` picks the EMA weights of a training checkpoint (an export
    holds only EMA weights, unless it was made with ``--live``). The decoder spec is ``None`` only
    for checkpoints written before ``decoder.json`` existed."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist")
    d = _find_weights_dir(p)
    if (d / "config.json").is_file() and not (d / COMPLETE).is_file():
        verify_export(d, ["config.json", "model.safetensors", "decoder.json"])  # names a damaged file
        cfg = config_from_dict(json.loads((d / "config.json").read_text()), source=str(d / "config.json"))
        weights = d / "model.safetensors"
        kind = "export"
    else:
        weights = d / ("ema.safetensors" if use_ema else "model.safetensors")
        verify_checkpoint(d, ["config.yaml", weights.name, "decoder.json"])  # names a damaged file
        cfg = config_from_yaml_text((d / "config.yaml").read_text(), source=str(d / "config.yaml"))
        kind = "checkpoint"
    model = build_model(cfg)
    load_state_into(model, load_tensors(weights), str(weights))
    source = {"kind": kind, "path": str(d), "weights": weights.name}
    return model.to(device).eval().requires_grad_(False), cfg, DecoderSpec.load(d), source


def export(ckpt: Path | str, out: Path | str, use_ema: bool = True) -> Path:
    """Write a stand-alone export: ``out/model.safetensors`` (EMA weights), ``out/config.json`` (the
    experiment, unchanged), ``out/decoder.json`` (VAE id and subfolder, latent normalisation
    statistics, class names) and ``out/checksums.json`` (sha256 and size of each, verified whenever
    the export is loaded), from a checkpoint or run directory. Written as ``out.tmp`` and renamed;
    a full disk or read-only target is a :class:`~vca_gen.utils.io.WriteFaultError` (exit 2) and
    leaves no ``out.tmp``.

    Refuses an existing non-empty ``out`` and an ``out`` inside the source. The weights are checked
    against the experiment's model before anything is written.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"export target {out} exists and is not empty; choose a new directory")
    src = Path(ckpt).resolve()
    if out.resolve() == src or src in out.resolve().parents:
        raise CheckpointError(f"export target {out} is inside the source {ckpt}; choose a directory outside it")
    model, cfg, spec, _ = load_for_sampling(ckpt, use_ema=use_ema)
    if spec is None:
        try:
            spec = decoder_spec(cfg)
        except ConfigError as e:
            raise CheckpointError(f"{ckpt} has no decoder.json (written by an older version) and {e}") from None
    tmp = out.with_name(out.name + ".tmp")
    state = _cpu_state(model.state_dict())
    with write_faults(
        out,
        "the export",
        need=tensors_nbytes(state) + 64 * 1024,
        partial=tmp,
        cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True),
    ):
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        write_tensors_file(
            tmp / "model.safetensors", state, metadata={"format": "pt", "weights": "ema" if use_ema else "live"}
        )
        (tmp / "config.json").write_text(json.dumps(to_container(cfg), indent=2))
        spec.save(tmp)
        for f in tmp.iterdir():
            _fsync_file(f)
        write_checksums(tmp)
        _fsync_dir(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    return out
