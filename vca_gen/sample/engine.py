"""The sharded, resumable, process-count-independent generation loop.

The engine knows nothing about models: it asks a ``make_images(indices, labels, generators)``
callable for the uint8 images of a batch of global sample indices (``generators[j]`` seeded
``seed + indices[j]``) and takes care of labels, seeds, shards, the manifest, resumption, the
final ``samples.npz``, PNGs and the grid. Processes are those of ``accelerate`` (``PartialState``);
one process works too. Pending shards are computed by every process between two barriers (so no
process sees a shard another one has just written) and dealt round-robin.
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..utils.io import make_dir
from ..utils.rng import per_sample_generators
from . import files
from .grid import GridCollector, save_grid
from .manifest import FORMAT, check_resume, write_manifest
from .plan import ShardPlan, batches, check_num_samples, labels_for, seeds_for

MakeImages = Callable[[range, torch.Tensor, list], "tuple[np.ndarray, int]"]
FINAL = "samples.npz"
GRID = "grid.png"


@dataclass
class RunSpec:
    """Everything the engine needs besides ``make_images``.

    ``settings`` are the determining settings recorded in ``sampling.json`` (the engine adds N,
    seed, shard size, classes and image shape itself); ``info`` are recorded but not compared.
    """

    out_dir: Path
    num_samples: int
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, 3) of the uint8 output
    seed: int = 0
    batch_size: int = 32
    shard_size: int = 256
    settings: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    overwrite: bool = False
    save_png: bool = False
    grid_classes: int = 10
    grid_per_class: int = 10
    class_names: Optional[Sequence[str]] = None
    progress: bool = True


@dataclass
class RunResult:
    path: Optional[Path]  # samples.npz (main process only)
    generated: int  # samples this process generated (0 when everything was resumed)
    resumed_shards: int
    nfe_per_image: Optional[float]  # model evaluations per image, when anything was generated


def _state():
    from accelerate import PartialState

    return PartialState()


def _log(state, msg: str) -> None:
    if state.is_main_process:
        print(msg, file=sys.stderr, flush=True)


def manifest_settings(spec: RunSpec) -> dict:
    return {"format": FORMAT, **spec.settings, "num_samples": spec.num_samples, "num_classes": spec.num_classes,
            "seed": spec.seed, "shard_size": spec.shard_size, "image_shape": list(spec.image_shape),
            "labels": "i % num_classes", "noise_seed": "seed + i",
            "batch_size": spec.batch_size, **spec.info}


def _prepare(spec: RunSpec, plan: ShardPlan, state) -> list[int]:
    """Validate / write the manifest, return all pending shard indices (same on every process)."""
    out = Path(spec.out_dir)
    settings = manifest_settings(spec)
    warnings = check_resume(out, settings, spec.overwrite)  # every process raises the same error
    state.wait_for_everyone()
    if state.is_main_process:
        files.clean_temp_files(out)
        if spec.overwrite:
            for p in list(out.glob("shard_*.npz")) + [out / FINAL, out / GRID]:
                p.unlink(missing_ok=True)
            shutil.rmtree(out / "png", ignore_errors=True)
        write_manifest(out, settings)
        for w in warnings:
            _log(state, f"warning: {w}")
    state.wait_for_everyone()
    pending = [k for k in range(plan.num_shards) if not files.shard_path(out, k).is_file()]
    state.wait_for_everyone()  # nobody writes a shard before every process has listed them
    return pending


def _assemble(spec: RunSpec, plan: ShardPlan) -> Path:
    out = Path(spec.out_dir)
    grid = GridCollector(min(spec.grid_classes, spec.num_classes), spec.grid_per_class)

    def chunks():
        for k, (images, labels) in enumerate(files.iter_shards(out, plan, spec.image_shape)):
            grid.add(images, labels)
            if spec.save_png:
                files.save_pngs(out / "png", images, plan.indices(k).start)
            yield images, labels

    final = out / FINAL
    files.stream_npz(final, spec.num_samples, spec.image_shape, chunks())
    if grid.enabled:
        save_grid(out / GRID, grid.rows, spec.class_names)
    return final


def _final_is_current(spec: RunSpec, plan: ShardPlan) -> bool:
    """A finished run re-run as is: ``samples.npz`` (and the grid) newer than every shard, no PNGs asked."""
    out = Path(spec.out_dir)
    final = out / FINAL
    if spec.save_png or not final.is_file() or (spec.grid_classes and spec.grid_per_class and not (out / GRID).is_file()):
        return False
    newest = max(files.shard_path(out, k).stat().st_mtime for k in range(plan.num_shards))
    return final.stat().st_mtime >= newest


def run_sampling(make_images: MakeImages, spec: RunSpec, state=None, device=None) -> RunResult:
    """Generate (or finish) the run described by ``spec``; returns where ``samples.npz`` is."""
    state = state or _state()
    device = torch.device(device) if device is not None else state.device
    check_num_samples(spec.num_samples, spec.num_classes)
    plan = ShardPlan(spec.num_samples, spec.shard_size)
    batches(range(1), spec.batch_size)  # validates the batch size
    make_dir(spec.out_dir, "the sampling output (--out)")

    pending = _prepare(spec, plan, state)
    mine = ShardPlan.assign(pending, state.process_index, state.num_processes)
    resumed = plan.num_shards - len(pending)
    if resumed:
        _log(state, f"resuming: {resumed} of {plan.num_shards} shards already complete in {spec.out_dir}")
    total = sum(len(plan.indices(k)) for k in mine)
    bar = tqdm(total=total, unit="img", disable=not (spec.progress and state.is_main_process),
               desc=f"sampling (process 0 of {state.num_processes})", dynamic_ncols=True)
    nfe_sum, generated = 0, 0
    for k in mine:
        idx = plan.indices(k)
        imgs, labs = [], []
        for b in batches(idx, spec.batch_size):
            labels = labels_for(b, spec.num_classes).to(device)
            gens = per_sample_generators(seeds_for(b, spec.seed), device)
            images, nfe = make_images(b, labels, gens)
            if images.shape != (len(b), *spec.image_shape) or images.dtype != np.uint8:
                raise RuntimeError(f"make_images returned {images.shape} {images.dtype}, "
                                   f"expected {(len(b), *spec.image_shape)} uint8")
            imgs.append(images)
            labs.append(labels.cpu().numpy())
            nfe_sum += nfe * len(b)
            generated += len(b)
            bar.update(len(b))
        files.write_shard(Path(spec.out_dir), k, np.concatenate(imgs), np.concatenate(labs), idx)
    bar.close()
    state.wait_for_everyone()
    path = None
    if state.is_main_process:
        path = Path(spec.out_dir) / FINAL
        if not _final_is_current(spec, plan):
            path = _assemble(spec, plan)
    state.wait_for_everyone()
    return RunResult(path, generated, resumed, nfe_sum / generated if generated else None)
