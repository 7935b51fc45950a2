"""``sampling.json``: the settings a sampling directory was produced with.

Complete shards are reused on resume only when every *determining* setting (the ones that change
the bytes: checkpoint hash, EMA, sampler, steps, options, guidance, seed, N, shard size, decoder,
precision, image shape) equals the current run's. Informational fields (paths, batch size,
process count, timestamps) are recorded but not compared; a different per-process batch size only
changes images by floating-point reassociation, and is reported as a warning.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vca_gen.utils.io import atomic_write_json, sha256_file

from .plan import SamplingError

MANIFEST = "sampling.json"
FORMAT = 1
INFO_KEYS = ("ckpt_path", "batch_size", "world_size", "created", "command")
WEIGHT_FILES = ("model.safetensors", "ema.safetensors", "config.yaml", "config.json")


def checkpoint_hash(path: str | Path) -> str:
    """sha256 over a checkpoint's weight and config files (or over the file itself)."""
    path = Path(path)
    files = [path] if path.is_file() else [path / n for n in WEIGHT_FILES if (path / n).is_file()]
    if not files:
        raise SamplingError(f"--ckpt {path}: no {', '.join(WEIGHT_FILES)} found to identify the checkpoint")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        sha256_file(f, h)
    return h.hexdigest()


def _canon(v: Any) -> Any:
    return json.loads(json.dumps(v, sort_keys=True, default=str))


def diff_settings(old: dict, new: dict) -> list[str]:
    """Human-readable differences of the determining settings (empty list: compatible)."""
    keys = sorted((set(old) | set(new)) - set(INFO_KEYS))
    return [
        f"{k}: {_canon(old.get(k))!r} (existing) vs {_canon(new.get(k))!r} (this run)"
        for k in keys
        if _canon(old.get(k)) != _canon(new.get(k))
    ]


def read_manifest(out_dir: Path) -> dict | None:
    p = Path(out_dir) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise SamplingError(f"{p} is not valid JSON ({e}); use --overwrite to start the run afresh") from e


def write_manifest(out_dir: Path, settings: dict) -> None:
    """Write ``sampling.json`` atomically."""
    p = Path(out_dir) / MANIFEST
    atomic_write_json(p, _canon(settings), indent=2, what="the sampling manifest", resumable=True)


def check_resume(out_dir: Path, settings: dict, overwrite: bool) -> list[str]:
    """Raise if ``out_dir`` holds a run with other settings (unless ``overwrite``); returns warnings."""
    out_dir = Path(out_dir)
    old = read_manifest(out_dir)
    has_files = any(out_dir.glob("shard_*.npz")) or (out_dir / "samples.npz").exists()
    if old is None:
        if has_files and not overwrite:
            raise SamplingError(
                f"--out {out_dir} holds sample files but no {MANIFEST}, so their settings are "
                f"unknown; use --overwrite to discard them or choose another --out"
            )
        return []
    if old.get("format") != FORMAT and not overwrite:
        raise SamplingError(
            f"{out_dir / MANIFEST} has format {old.get('format')!r}, this version writes {FORMAT}; "
            f"use --overwrite or another --out"
        )
    diffs = diff_settings(old, settings)
    if diffs and not has_files:  # nothing was produced under the old settings: just start afresh
        return []
    if diffs and not overwrite:
        raise SamplingError(
            f"--out {out_dir} holds a sampling run with different settings:\n  "
            + "\n  ".join(diffs)
            + "\nuse the same settings to resume it, --overwrite to discard it, or another --out"
        )
    warnings = []
    if not diffs and old.get("batch_size") != settings.get("batch_size"):
        warnings.append(
            f"resuming with --batch-size {settings.get('batch_size')} (was {old.get('batch_size')}): "
            f"new shards may differ from an uninterrupted run by float reassociation"
        )
    return warnings
