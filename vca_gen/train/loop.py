"""The training loop: log windows, checkpoint cadence, grids and in-loop FID, stopping on a signal.

Outside logging steps a step reads the device once (:func:`vca_gen.train.step.train_step`); the
logged loss and grad norm are accumulated on the device and read at log steps only. A stop signal
(:mod:`vca_gen.train.signals`) makes every process finish the step, checkpoint and return with
``stopped_by`` set; ``train.py`` then exits :data:`~vca_gen.train.signals.EXIT_PREEMPTED`.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import torch

from vca_gen.experiment import checkpoint as ckpt
from vca_gen.experiment.schema import to_container, to_yaml
from vca_gen.train.helpers import flat_hparams
from vca_gen.train.signals import EXIT_PREEMPTED

if TYPE_CHECKING:
    from vca_gen.train.trainer import Trainer


def write_run_files(tr: Trainer) -> None:
    if tr.acc.is_main_process:
        tr.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(tr.out_dir / "config.yaml", to_yaml(tr.cfg))
    tr.acc.wait_for_everyone()


def log_window(tr: Trainer, window: dict[str, Any], stats: dict[str, Any], since: tuple[float, int]) -> dict:
    """Log the mean loss / grad norm of the steps since ``since`` (time, step) and the rates."""
    t = tr.exp.train
    dt = max(time.perf_counter() - since[0], 1e-9)
    n = max(window["n"], 1)
    loss_sum, gn_sum = torch.stack([window["loss"], window["grad_norm"]]).tolist()
    last = {
        "loss": loss_sum / n,
        "grad_norm": gn_sum / n,
        "lr": stats["lr"],
        "steps_per_sec": (tr.step - since[1]) / dt,
        "images_per_sec": (tr.step - since[1]) * t.global_batch_size / dt,
        "nonfinite_total": float(tr.counters["nonfinite_total"]),
    }
    if tr.scaler is not None:
        last["overflow_total"] = float(tr.counters["overflow_total"])
    tr.acc.log({f"train/{k}": v for k, v in last.items()}, step=tr.step)
    return last


def run_loop(tr: Trainer) -> dict[str, Any]:
    """Train until ``train.max_steps`` applied updates or a stop signal (see :meth:`Trainer.run`)."""
    from tqdm.auto import tqdm

    t = tr.exp.train
    write_run_files(tr)
    if tr.exp.logging.tracker != "none":
        tr.acc.init_trackers(tr.exp.logging.project, config=flat_hparams(to_container(tr.cfg)))
    if tr.resumed_from is not None:
        tr.acc.print(f"resumed from {tr.resumed_from} at step {tr.step}")
    bar = tqdm(
        total=t.max_steps,
        initial=tr.step,
        disable=not tr.acc.is_local_main_process,
        desc=tr.exp.name,
        dynamic_ncols=True,
    )
    zero = torch.zeros((), device=tr.device)
    window: dict[str, Any] = {"loss": zero, "grad_norm": zero, "n": 0}  # on the device until logged
    last: dict[str, float] = {}
    since = (time.perf_counter(), tr.step)
    data = iter(tr.loader)
    saved_batches = tr.counters["batches"] if tr.resumed_from is not None else -1
    sleep = tr.faults.step_sleep_s
    stopped_by = None
    announced = False
    try:
        while tr.step < t.max_steps:
            if tr.stop.signum is not None and not announced:
                announced = True
                print(
                    f"[rank {tr.acc.process_index}] got {tr.stop.name}: finishing this step, then writing a "
                    f"checkpoint and stopping (exit {EXIT_PREEMPTED})",
                    file=sys.stderr,
                    flush=True,
                )
            x, y = next(data)
            if tr.faults.stall_s > 0 and tr.step + 1 == tr.faults.stall_step:
                time.sleep(tr.faults.stall_s)
            stats = tr.train_step(x, y)
            if stats["applied"]:
                bar.update(1)
                window["loss"] = window["loss"] + stats["loss"]
                window["grad_norm"] = window["grad_norm"] + stats["grad_norm"]
                window["n"] += 1
                if tr.step % t.log_every == 0 or tr.step == t.max_steps:
                    last = log_window(tr, window, stats, since)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", gn=f"{last['grad_norm']:.3f}")
                    window = {"loss": zero, "grad_norm": zero, "n": 0}
                    since = (time.perf_counter(), tr.step)
                if t.ckpt_every and tr.step % t.ckpt_every == 0:
                    tr.save()
                    saved_batches = tr.counters["batches"]
                if t.grid.every and tr.step % t.grid.every == 0:
                    tr.sample_grid()
                if t.fid.every and tr.step % t.fid.every == 0:
                    tr.in_loop_fid()
            if sleep > 0:
                time.sleep(sleep)
            if stats["stop"] and tr.step < t.max_steps:
                stopped_by = tr.stop.name or "a signal to another process"
                break
        if saved_batches != tr.counters["batches"]:
            tr.save()
    finally:
        bar.close()
        tr.acc.end_training()
    if stopped_by is not None:
        tr.acc.print(
            f"stopped by {stopped_by} at step {tr.step}; checkpoint "
            f"{tr.ckpt_root / ckpt.step_dir_name(tr.step)} written; re-run the same command to "
            f"continue (exit {EXIT_PREEMPTED})"
        )
    return {
        "step": tr.step,
        "counters": dict(tr.counters),
        "last": last,
        "output_dir": str(tr.out_dir),
        "is_main_process": tr.acc.is_main_process,
        "stopped_by": stopped_by,
    }
