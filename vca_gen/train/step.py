"""One optimizer step of the trainer, and the pure rules it follows.

One optimizer step consumes one *global* batch of ``train.global_batch_size`` examples, split in
equal contiguous shares over the processes and, inside a process, in micro-batches of
``train.micro_batch_size`` (gradient accumulation; DDP syncs once per step). The per-sample loss is
averaged over the global batch, so any split computes the same gradient up to float rounding.

``step`` counts *applied* updates. A batch whose loss or gradient is not finite (or, under fp16
loss scaling, whose scaled gradient overflowed) is consumed but not applied. Non-finite losses count
towards ``train.max_nonfinite`` consecutive ones (then :class:`NonFiniteLossError`); fp16 overflows
only lower the loss scale (up to :data:`MAX_OVERFLOW_STREAK` in a row).

Randomness: two :class:`~vca_gen.utils.rng.RowStream` streams per global batch, seeded by
``(train.seed, batch, stage)`` (:func:`step_streams`), so any process count or micro-batch split
sees the same numbers. Host syncs: one ``tolist()`` of ``[loss finite, grad finite, stop
requested]`` per step (the stop flag rides in the loss all-reduce).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch

from vca_gen.data.sampler import mix_seed
from vca_gen.errors import UserError
from vca_gen.utils import rng

if TYPE_CHECKING:
    from vca_gen.train.trainer import Trainer

SEED_STREAM_STEP = 7  # seed stream tag of the training randomness
STAGE_PREPARE, STAGE_LOSS = 0, 1  # the two RowStreams of a batch
MAX_OVERFLOW_STREAK = 64  # consecutive fp16 overflows (loss scale 2^-64 of its start) → stop


class TrainingError(UserError, RuntimeError):
    """Training cannot start or continue (message says why and what to change)."""


class NonFiniteLossError(TrainingError):
    """Too many consecutive non-finite losses."""


def lr_at(step: int, base_lr: float, warmup_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant."""
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


def ema_decay_at(n: int, decay: float, warmup: bool) -> float:
    """EMA decay for the update after ``n`` previous optimizer steps (warm-up: (1+n)/(10+n) cap)."""
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay


def step_streams(seed: int, batch: int, first: int, count: int, total: int) -> tuple[int, int]:
    """Seeds of the prepare- and loss-stage :class:`~vca_gen.utils.rng.RowStream` of global batch
    ``batch`` (``first``/``count``/``total`` only checked here; the streams take the rows)."""
    if not 0 <= first <= first + count <= total:
        raise ValueError(f"rows [{first}, {first + count}) do not fit a global batch of {total}")
    return (mix_seed(seed, SEED_STREAM_STEP, batch, STAGE_PREPARE), mix_seed(seed, SEED_STREAM_STEP, batch, STAGE_LOSS))


def drop_labels(y: torch.Tensor, prob: float, null_label: int, generator: rng.GeneratorSpec) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``prob`` (one uniform per row)."""
    if prob <= 0:
        return y
    u = rng.rand((y.shape[0],), generator, device=y.device)
    return torch.where(u < prob, torch.full_like(y, null_label), y)


def prepare_batch(tr: Trainer, x: torch.Tensor, y: torch.Tensor, stream: rng.RowStream):
    """Inputs on the device (encoded by the VAE when the data are images) and labels with dropout."""
    x = x.to(tr.device, non_blocking=True)
    y = y.to(tr.device, non_blocking=True).long()
    if tr.vae is not None:
        from vca_gen.data.vae import encode_latents

        x = encode_latents(tr.vae, x, tr.normalizer, generator=stream)
    m = tr.exp.model
    return x, drop_labels(y, m.class_dropout_prob, m.num_classes, stream)


def train_step(tr: Trainer, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """One global batch on this process's share (see :meth:`Trainer.train_step`)."""
    t = tr.exp.train
    G = t.global_batch_size
    first = tr.acc.process_index * tr.local_batch
    seed_prepare, seed_loss = step_streams(t.seed, tr.counters["batches"], first, x.shape[0], G)
    x, y = prepare_batch(tr, x, y, rng.RowStream(seed_prepare, first, first + x.shape[0], G))
    lr = lr_at(tr.counters["optimizer_steps"], t.lr, t.warmup_steps)
    for group in tr.torch_optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=tr.device)
    chunks = range(0, x.shape[0], tr.micro_batch)
    for k, i0 in enumerate(chunks):
        i1 = i0 + tr.micro_batch
        last = k == len(chunks) - 1
        sync = contextlib.nullcontext() if last else tr.acc.no_sync(tr.ddp_model)
        stream = rng.RowStream(seed_loss, first + i0, first + i1, G)
        with sync:
            with tr.acc.autocast():
                losses = tr.objective.training_losses(tr.forward, x[i0:i1], y[i0:i1], generator=stream)
                loss = losses["loss"].float().sum() / tr.local_batch
            if tr.scaler is not None:
                tr.scaler.scale(loss).backward()
            else:
                tr.acc.backward(loss)
        total += loss.detach()
    # the per-step all-reduce also carries the stop flag: agreeing on a stop costs nothing
    stop_local = torch.full((), 1.0 if tr.stop.signum is not None else 0.0, device=tr.device)
    packed = tr.acc.reduce(torch.stack([total, stop_local]), reduction="sum")
    loss_mean = packed[0] / tr.acc.num_processes
    if tr.scaler is not None:
        tr.scaler.unscale_(tr.torch_optimizer)  # once per step; update() below resets it
    grads = [p.grad for p in tr.params if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads, 2.0) if grads else torch.zeros((), device=tr.device)
    if t.grad_clip > 0:
        torch.nn.utils.clip_grads_with_norm_(tr.params, t.grad_clip, grad_norm)
    loss_ok, grad_ok, stop = torch.stack(
        [torch.isfinite(loss_mean), torch.isfinite(grad_norm), packed[1] > 0]
    ).tolist()  # the step's one host sync
    applied = loss_ok and grad_ok
    c = tr.counters
    if applied:
        tr.torch_optimizer.step()
        tr.ema.update(tr.model, ema_decay_at(c["optimizer_steps"], t.ema_decay, t.ema_warmup))
        c["optimizer_steps"] += 1
        c["nonfinite_consecutive"] = c["overflow_consecutive"] = 0
        tr.step += 1
    elif loss_ok and tr.scaler is not None:  # scaled gradient overflowed: the scaler backs off
        c["overflow_total"] += 1
        c["overflow_consecutive"] += 1
    else:
        c["nonfinite_total"] += 1
        c["nonfinite_consecutive"] += 1
    if tr.scaler is not None:
        tr.scaler.update()
    tr.torch_optimizer.zero_grad(set_to_none=True)
    c["batches"] += 1
    if c["nonfinite_consecutive"] >= t.max_nonfinite or c["overflow_consecutive"] >= MAX_OVERFLOW_STREAK:
        what = (
            f"{c['nonfinite_consecutive']} consecutive steps had a non-finite loss or gradient"
            if c["nonfinite_consecutive"] >= t.max_nonfinite
            else f"{c['overflow_consecutive']} consecutive fp16 steps overflowed"
        )
        raise NonFiniteLossError(
            f"stopping at step {tr.step} (batch {c['batches']}): {what} (last loss {float(loss_mean)}, grad "
            f"norm {float(grad_norm)}); the last checkpoint in {tr.ckpt_root} is intact. Lower train.lr, set "
            f"train.grad_clip, add train.warmup_steps or use train.mixed_precision=no/bf16 "
            f"(train.max_nonfinite={t.max_nonfinite})"
        )
    return {
        "loss": loss_mean.detach(),
        "grad_norm": grad_norm.detach(),
        "lr": lr,
        "skipped": 0.0 if applied else 1.0,
        "applied": applied,
        "stop": bool(stop),
    }
