"""Periodic work of the training loop: EMA preview grids (``train.grid``) and in-loop FID
(``train.fid``), both through :mod:`vca_gen.train.evaluation`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vca_gen.experiment import checkpoint as ckpt
from vca_gen.train.evaluation import InLoopFID, save_grid

if TYPE_CHECKING:
    from vca_gen.train.trainer import Trainer


@torch.no_grad()
def sample_grid(tr: Trainer) -> Path | None:
    """EMA samples of ``train.grid`` → ``<output_dir>/samples/step_XXXXXXXX.png`` (main process)."""
    if not tr.acc.is_main_process:
        return None
    out = tr.out_dir / "samples" / f"{ckpt.step_dir_name(tr.step)}.png"
    with tr.acc.autocast():
        save_grid(tr.exp, tr.ema.model, tr.objective, tr.decoder, out, tr.device)
    return out


@torch.no_grad()
def in_loop_fid(tr: Trainer) -> float | None:
    """``train.fid``: every process samples and embeds its share; the main process scores, logs and
    appends a line to ``<output_dir>/fid.jsonl``."""
    from accelerate.utils import gather_object

    if tr.fid is None:
        tr.fid = InLoopFID(tr.exp, tr.device)
    feats = tr.fid.features(tr.ema.model, tr.objective, tr.decoder, tr.acc.process_index, tr.acc.num_processes)
    gathered = gather_object([feats])
    values: dict[str, float | None] = {}  # train.fid.metrics' fields (default: fid)
    f = tr.exp.train.fid
    if tr.acc.is_main_process:
        size = tr.exp.model.input_size
        assert size is not None  # derived from the data at load time
        side = size * tr.decoder_spec.downsample
        values = tr.fid.score(gathered, (side, side))
        tr.acc.log({f"eval/{k}": v for k, v in values.items() if v is not None}, step=tr.step)
        shown = ", ".join(f"{k} {'n/a' if v is None else format(v, '.4f')}" for k, v in values.items())
        tr.acc.print(f"step {tr.step}: in-loop FID ({f.num_samples} samples) {shown}")
        record = tr.out_dir / "fid.jsonl"  # one line per evaluation, full precision
        before = record.read_text() if record.is_file() else ""
        line = {"step": tr.step, **values, "num_samples": f.num_samples, "seed": f.seed, "reference": f.ref}
        ckpt.atomic_write_text(record, before + json.dumps(line) + "\n")
    return values.get("fid")
