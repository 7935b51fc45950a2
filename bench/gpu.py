#!/usr/bin/env python
"""GPU check: training, host-device syncs, sampling and one attention layer, in one timed run.

    python bench/gpu.py                      # on one CUDA GPU (H200 / A100), about 7 minutes
    python bench/gpu.py --smoke              # the same code paths on CPU with tiny models (< 1 min)

Sections (each unit guarded: an OOM, compile error etc. is recorded in the JSON and the run goes on):

1. ``train``: images/s and peak memory (``torch.cuda.max_memory_allocated``) of full training
   steps of DiT-S/2 and DiT-XL/2 at 256 px (32x32x4 latents, 1000 classes, learned sigma), with
   MHSA and VCA, bf16 autocast, eager and ``torch.compile``. One step = the diffusion objective's
   training loss (``build_objective({"kind": "diffusion"}).training_losses``, hybrid MSE + VB) on
   a fixed random batch, ``mean().backward()``, AdamW (fused on CUDA) step, ``zero_grad``; no data
   loading, EMA or gradient clipping. A few warm-up steps (the first one compiles), then a timed
   window with one CUDA event per step (GPU timeline; wall time with ``synchronize`` beside it).
   On OOM the batch is halved and the row retried (recorded).
2. ``syncs``: host-device synchronisations per training step, counted for every training row
   with ``torch.cuda.set_sync_debug_mode("warn")`` over extra steps after the timed window,
   catching the warnings (count per step, and the Python lines that caused them).
3. ``sampling``: DDPM-250 on DiT-XL/2, batch 64, bf16 autocast and fp32, MHSA and VCA, through
   ``objective.sample(model, noise, labels, sampler="ddpm", steps=250)`` with per-sample
   generators (as the sampling engine). Only a few of the 250 steps are run: the model function
   marks a CUDA event at every call, the steps between two marks (model + sampler arithmetic)
   are timed, then it stops the sampler; images/s is extrapolated to 250 steps (said in the JSON).
   One more step is run with the sync debug mode on to count its syncs.
4. ``attention``: one layer (C 1152, 16 heads; VCA n = 64) at 4096 and 16384 tokens (64x64,
   128x128 grids), VCA vs MHSA (``build_attention``), forward + backward time under bf16
   autocast and its peak memory above the baseline before the step.

Run order: eager training, sampling, attention, then the compiled training rows (the slow
part). A global budget (``--budget-s``, default 420 s) is checked before every unit: when it is
spent, or smaller than the unit's rough cost, the unit is skipped and the JSON says why. The JSON
is rewritten after every unit (so a killed run still leaves what was measured), with the device
name, torch / CUDA / cuDNN versions and the settings, and a Markdown table is printed at the end.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # the budget counts from here, before torch is imported

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

SYNC_MESSAGE = "called a synchronizing CUDA operation"
NOT_APPLICABLE_CPU = "not applicable (CPU)"
DDPM_STEPS = 250
SECTIONS = ("train", "syncs", "sampling", "attention")


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """A named model and the create_model keywords of this run (tiny overrides in smoke mode)."""

    name: str
    batch: int
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Settings:
    smoke: bool
    device: torch.device
    input_size: int
    num_classes: int
    train_models: list[ModelSpec]
    train_warmup: int
    train_steps: int
    sync_steps: int
    min_batch: int
    compile: bool
    compile_backend: str
    compile_mode: str | None
    sample_model: ModelSpec
    sample_warmup: int
    sample_steps: int
    attn_dim: int
    attn_heads: int
    attn_tokens: list[int]
    attn_batch: int
    attn_warmup: int
    attn_steps: int
    attentions: list[str]
    precision: str  # "bf16" autocast for training and the attention layer
    sample_precisions: list[str]
    costs: dict[str, float]  # rough seconds a unit needs before it is started

    def describe(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("device", "train_models", "sample_model")}
        d["device"] = str(self.device)
        d["train_models"] = [m.__dict__ for m in self.train_models]
        d["sample_model"] = self.sample_model.__dict__
        return d


def make_settings(args) -> Settings:
    smoke = bool(args.smoke)
    device = torch.device(args.device or ("cpu" if smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench/gpu.py: error: no CUDA device here; use --smoke for the CPU smoke run "
            "(or --device cpu for the full sizes on CPU, which takes hours)"
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # set_device needs an index
    if smoke:
        tiny = {"depth": 2, "hidden_size": 64, "num_heads": 4}
        s = Settings(
            smoke=True,
            device=device,
            input_size=16,
            num_classes=10,
            train_models=[
                ModelSpec("DiT-S/2", args.batch_s or 4, dict(tiny)),
                ModelSpec("DiT-XL/2", args.batch_xl or 2, dict(tiny)),
            ],
            train_warmup=args.warmup or 1,
            train_steps=args.steps or 2,
            sync_steps=1,
            min_batch=1,
            compile=not args.no_compile,
            compile_backend=args.compile_backend or "aot_eager",
            compile_mode=args.compile_mode,
            sample_model=ModelSpec("DiT-XL/2", args.sample_batch or 4, dict(tiny)),
            sample_warmup=1,
            sample_steps=args.sample_steps or 2,
            attn_dim=64,
            attn_heads=4,
            attn_tokens=args.tokens or [64, 256],
            attn_batch=args.attn_batch or 4,
            attn_warmup=1,
            attn_steps=2,
            attentions=args.attentions,
            precision="bf16",
            sample_precisions=["bf16", "fp32"],
            costs={"train_eager": 0.0, "train_compile": 0.0, "sampling": 0.0, "attention": 0.0},
        )
    else:
        s = Settings(
            smoke=False,
            device=device,
            input_size=32,
            num_classes=1000,
            train_models=[ModelSpec("DiT-S/2", args.batch_s or 256), ModelSpec("DiT-XL/2", args.batch_xl or 64)],
            train_warmup=args.warmup or 3,
            train_steps=args.steps or 10,
            sync_steps=2,
            min_batch=8,
            compile=not args.no_compile,
            compile_backend=args.compile_backend or "inductor",
            compile_mode=args.compile_mode,
            sample_model=ModelSpec("DiT-XL/2", args.sample_batch or 64),
            sample_warmup=2,
            sample_steps=args.sample_steps or 5,
            attn_dim=1152,
            attn_heads=16,
            attn_tokens=args.tokens or [4096, 16384],
            attn_batch=args.attn_batch or 4,
            attn_warmup=3,
            attn_steps=10,
            attentions=args.attentions,
            precision="bf16",
            sample_precisions=["bf16", "fp32"],
            # rough cost of one unit (model build + warm-up + timing; compile dominates its rows)
            costs={"train_eager": 15.0, "train_compile": 60.0, "sampling": 10.0, "attention": 3.0},
        )
    bad = [n for n in s.attn_tokens if math.isqrt(n) ** 2 != n]
    if bad:
        raise SystemExit(f"bench/gpu.py: error: --tokens must be perfect squares (square grids), got {bad}")
    return s


# ----------------------------------------------------------------------------------------------
# device-agnostic helpers: budget, timing, memory, precision, sync counting
# ----------------------------------------------------------------------------------------------
class Budget:
    """``seconds`` of wall clock counted from ``t0`` (default: when this script started)."""

    def __init__(self, seconds: float, t0: float | None = None):
        self.seconds = float(seconds)
        self.t0 = _T0 if t0 is None else float(t0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def refusal(self, need_s: float) -> str | None:
        """Why a unit that needs about ``need_s`` seconds must be skipped now, or None."""
        left = self.left()
        if left <= 0:
            return f"time budget exceeded ({self.elapsed():.0f} s elapsed of --budget-s {self.seconds:.0f})"
        if left < need_s:
            return (
                f"time budget: {left:.0f} s left of --budget-s {self.seconds:.0f}, this unit needs about {need_s:.0f} s"
            )
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Marks between steps: CUDA events on the current stream (GPU timeline), else perf_counter."""

    def __init__(self, device: torch.device):
        self.device = device
        self.marks: list = []

    def mark(self) -> None:
        if self.device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks (synchronises)."""
        synchronize(self.device)
        if self.device.type == "cuda":
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def _status_kb(name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory since :meth:`reset`: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the
    resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs when allowed)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.base_mb = 0.0
        self.hwm_reset = False

    @property
    def source(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated"
        return "VmHWM (process resident-set high-water mark" + (
            ", reset per unit)" if self.hwm_reset else ", since process start)"
        )

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.base_mb = (_status_kb("VmRSS") or 0) / 1024

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return (_status_kb("VmHWM") or 0) / 1024

    def over_base_mb(self) -> float:
        return max(self.peak_mb() - self.base_mb, 0.0)


def release_freed_memory_to_os() -> bool:
    """CPU runs: glibc serves allocations >= 64 KiB by mmap, so freed tensors leave the resident set
    and the VmHWM peak of a unit reflects what it allocated (as bench/attention.py's worker does)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 65536))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}")


def _site(filename: str, lineno: int) -> str:
    p = Path(filename)
    for root in (REPO, Path(torch.__file__).resolve().parent.parent):
        try:
            return f"{p.resolve().relative_to(root)}:{lineno}"
        except ValueError:
            continue
    return f"{filename}:{lineno}"


class SyncLog:
    """The sync warnings caught by :func:`capture_syncs` (count and the Python lines causing them)."""

    def __init__(self, records: list):
        self.records = records

    def count(self, since: int = 0) -> int:
        return len([w for w in self.records[since:] if SYNC_MESSAGE in str(w.message)])

    def sites(self, since: int = 0) -> dict[str, int]:
        c = Counter(_site(w.filename, w.lineno) for w in self.records[since:] if SYNC_MESSAGE in str(w.message))
        return dict(c.most_common())


@contextlib.contextmanager
def capture_syncs():
    """Record every warning raised inside (``always``), as a :class:`SyncLog`; the debug mode is
    switched separately by :func:`sync_debug_mode` (CUDA only)."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        yield SyncLog(records)


@contextlib.contextmanager
def sync_debug_mode(device: torch.device):
    """``torch.cuda.set_sync_debug_mode("warn")`` inside, back to the previous mode after."""
    if device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def is_oom(err: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(err, oom)) or "out of memory" in str(err).lower()


def error_record(err: BaseException) -> dict:
    tb = traceback.format_exception(type(err), err, err.__traceback__)
    return {
        "status": "error",
        "error": f"{type(err).__name__}: {str(err).strip()[:2000]}",
        "traceback_tail": "".join(tb)[-3000:],
        "oom": is_oom(err),
    }


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def reset_compiler() -> None:
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001 - best effort cleanup between compiled rows
        pass


def compile_stats() -> dict:
    """Graphs and graph breaks dynamo saw since the last reset (best effort)."""
    try:
        from torch._dynamo.utils import counters

        return {
            "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
        }
    except Exception:  # noqa: BLE001
        return {}


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------
class ModelCache:
    """CPU-built models keyed by (name, attention): every row gets a fresh copy on the device with
    the same initial weights, and the (slow, for XL) CPU initialisation happens once."""

    def __init__(self, s: Settings):
        self.s = s
        self.models: dict[tuple, torch.nn.Module] = {}

    def get(self, spec: ModelSpec, attention: str) -> torch.nn.Module:
        from vca_gen.models import create_model

        key = (spec.name, attention, tuple(sorted(spec.overrides.items())))
        if key not in self.models:
            torch.manual_seed(0)
            self.models[key] = create_model(
                spec.name,
                attention=attention,
                input_size=self.s.input_size,
                in_channels=4,
                num_classes=self.s.num_classes,
                learn_sigma=True,
                **spec.overrides,
            )
        return copy.deepcopy(self.models[key]).to(self.s.device)


def model_info(model: torch.nn.Module, spec: ModelSpec, s: Settings) -> dict:
    return {
        "model": spec.name,
        "attention": str(model.attention),
        "depth": len(model.blocks),
        "hidden_size": int(model.hidden_size),
        "input": f"4x{s.input_size}x{s.input_size}",
        "num_classes": s.num_classes,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "overrides": dict(spec.overrides),
    }


# ----------------------------------------------------------------------------------------------
# 1 + 2: training steps, syncs per step
# ----------------------------------------------------------------------------------------------
def train_once(
    s: Settings,
    cache: ModelCache,
    spec: ModelSpec,
    attention: str,
    mode: str,
    batch: int,
    count_syncs: bool | None = None,
) -> dict:
    """One training row at ``batch``. ``count_syncs`` (default: on CUDA) runs ``s.sync_steps`` more
    steps under the sync debug mode and counts its warnings per step."""
    from vca_gen.objectives import build_objective

    dev = s.device
    count_syncs = dev.type == "cuda" if count_syncs is None else count_syncs
    if mode == "compile":
        reset_compiler()
    model = cache.get(spec, attention).train()
    info = model_info(model, spec, s)
    objective = build_objective({"kind": "diffusion"})
    objective.check_model(model)
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=fused or None)
    fn = model
    if mode == "compile":
        fn = torch.compile(model, backend=s.compile_backend, mode=s.compile_mode)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 4, s.input_size, s.input_size, generator=g).to(dev)
    y = torch.randint(0, s.num_classes, (batch,), generator=g).to(dev)

    def step() -> torch.Tensor:
        with autocast(dev, s.precision):
            losses = objective.training_losses(fn, x, y)
            loss = losses["loss"].float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    mem = PeakMemory(dev)
    mem.reset()
    t0 = time.perf_counter()
    step()
    synchronize(dev)
    first_step_s = time.perf_counter() - t0
    for _ in range(s.train_warmup - 1):
        step()
    synchronize(dev)
    timer = StepTimer(dev)
    w0 = time.perf_counter()
    timer.mark()
    for _ in range(s.train_steps):
        loss = step()
        timer.mark()
    times = timer.intervals()
    wall = time.perf_counter() - w0
    peak_mb, over_mb = mem.peak_mb(), mem.over_base_mb()
    last_loss = float(loss)
    row = dict(
        info,
        mode=mode,
        batch=batch,
        precision=f"{s.precision} autocast",
        optimizer=f"AdamW({'fused' if fused else 'default'})",
        warmup_steps=s.train_warmup,
        timed_steps=s.train_steps,
        sec_per_step=sum(times) / len(times),
        sec_per_step_median=statistics.median(times),
        images_per_s=batch * len(times) / sum(times),
        wall_images_per_s=batch * s.train_steps / wall,
        first_step_s=first_step_s,
        peak_mem_mb=peak_mb,
        peak_mem_over_start_mb=over_mb,
        peak_mem_source=mem.source,
        final_loss=last_loss,
        loss_finite=math.isfinite(last_loss),
    )
    if mode == "compile":
        row.update(
            compile_backend=s.compile_backend,
            compile_mode=s.compile_mode or "default",
            compile_s_approx=max(first_step_s - row["sec_per_step"], 0.0),
            **compile_stats(),
        )
    # 2: syncs per training step (after the timed window, so the debug mode costs no timing)
    if count_syncs:
        try:
            with capture_syncs() as log:
                with sync_debug_mode(dev):
                    for _ in range(s.sync_steps):
                        step()
            synchronize(dev)
            row["syncs"] = {
                "status": "ok",
                "syncs_per_step": log.count() / s.sync_steps,
                "counted_steps": s.sync_steps,
                "sites": log.sites(),
            }
        except Exception as e:  # noqa: BLE001 - recorded, the timing above stands
            row["syncs"] = error_record(e)
    else:
        row["syncs"] = {"status": "not applicable", "syncs_per_step": NOT_APPLICABLE_CPU}
    return row


def train_row(s: Settings, cache: ModelCache, spec: ModelSpec, attention: str, mode: str) -> dict:
    """One training row; on OOM halve the batch (down to ``s.min_batch``) and retry."""
    batch, retries = spec.batch, []
    while True:
        failure = None
        try:
            row = train_once(s, cache, spec, attention, mode, batch)
        except Exception as e:  # noqa: BLE001
            failure = error_record(e)
        if mode == "compile":
            reset_compiler()
        free_memory(s.device)  # after the except block, so the traceback's tensors are gone
        if failure is None:
            row.update(status="ok", requested_batch=spec.batch, oom_retries=retries)
            return row
        if failure["oom"] and batch // 2 >= s.min_batch:
            retries.append({"batch": batch, "error": failure["error"][:300]})
            batch //= 2
            continue
        failure.update(
            model=spec.name,
            attention=attention,
            mode=mode,
            batch=batch,
            requested_batch=spec.batch,
            oom_retries=retries,
        )
        return failure


# ----------------------------------------------------------------------------------------------
# 3: sampling (DDPM-250, a few steps timed, extrapolated)
# ----------------------------------------------------------------------------------------------
class _StopSampling(Exception):
    pass


def sample_row(s: Settings, cache: ModelCache, attention: str, precision: str, count_syncs: bool | None = None) -> dict:
    """DDPM-250 row: warm-up steps, timed steps, then (``count_syncs``, default on CUDA) one step
    under the sync debug mode; the sampler is stopped from inside the model function."""
    from vca_gen.objectives import build_objective
    from vca_gen.utils import rng

    dev, spec = s.device, s.sample_model
    model = cache.get(spec, attention).eval()
    info = model_info(model, spec, s)
    objective = build_objective({"kind": "diffusion"})
    B = spec.batch
    gens = rng.per_sample_generators(range(B), dev)
    noise = rng.randn((B, 4, s.input_size, s.input_size), gens, device=dev)
    labels = torch.arange(B, device=dev) % s.num_classes
    count_syncs = dev.type == "cuda" if count_syncs is None else count_syncs
    timer = StepTimer(dev)
    first, last = s.sample_warmup, s.sample_warmup + s.sample_steps  # calls [first, last] are marked
    state = {"calls": 0, "log_start": None}
    if last + 1 > DDPM_STEPS:
        raise ValueError(f"warm-up + timed steps ({last + 1}) exceed the {DDPM_STEPS} DDPM steps")

    with capture_syncs() as log:
        debug = contextlib.ExitStack()

        def model_fn(xt, t, yy):
            i = state["calls"]
            state["calls"] += 1
            if first <= i <= last:
                timer.mark()  # the marks bracket whole sampler steps: model call + sampler arithmetic
            if i == last:
                if not count_syncs:
                    raise _StopSampling
                debug.enter_context(sync_debug_mode(dev))  # one more step, counted
                state["log_start"] = len(log.records)
            elif i == last + 1:
                debug.close()
                raise _StopSampling
            return model(xt, t, yy)

        try:
            with debug, autocast(dev, precision):
                objective.sample(
                    model_fn, noise, labels, sampler="ddpm", steps=DDPM_STEPS, generator=gens, null_label=s.num_classes
                )
            raise RuntimeError("the sampler finished before the timed steps were done")
        except _StopSampling:
            pass
        finally:
            debug.close()
    times = timer.intervals()
    per_step = sum(times) / len(times)
    row = dict(
        info,
        sampler="ddpm",
        steps=DDPM_STEPS,
        batch=B,
        precision="bf16 autocast" if precision == "bf16" else "fp32",
        tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32) if dev.type == "cuda" else None,
        generator="per-sample torch.Generator on the device (as the sampling engine)",
        warmup_steps=s.sample_warmup,
        timed_steps=len(times),
        sec_per_step=per_step,
        sec_per_step_median=statistics.median(times),
        extrapolated=True,
        sec_per_batch_extrapolated=per_step * DDPM_STEPS,
        images_per_s=B / (per_step * DDPM_STEPS),
        note=(
            f"only {len(times)} of the {DDPM_STEPS} DDPM steps were timed (after {s.sample_warmup} "
            f"warm-up steps); images/s = batch / ({DDPM_STEPS} x mean timed step), no VAE decode"
        ),
    )
    if count_syncs:
        row["syncs_per_step"] = log.count(state["log_start"])
        row["sync_sites"] = log.sites(state["log_start"])
    else:
        row["syncs_per_step"] = NOT_APPLICABLE_CPU
    return row


# ----------------------------------------------------------------------------------------------
# 4: one attention layer
# ----------------------------------------------------------------------------------------------
def attention_row(s: Settings, kind: str, tokens: int) -> dict:
    from vca_gen.models import build_attention

    dev = s.device
    side = math.isqrt(tokens)
    torch.manual_seed(0)
    layer = build_attention(kind, s.attn_dim, s.attn_heads, (side, side), 0).to(dev)
    x = torch.randn(s.attn_batch, tokens, s.attn_dim, device=dev, requires_grad=True)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with autocast(dev, s.precision):
            out = layer(x)
        out.float().sum().backward()

    for _ in range(s.attn_warmup):
        step()
    mem = PeakMemory(dev)
    mem.reset()
    step()
    peak_mb, over_mb = mem.peak_mb(), mem.over_base_mb()
    timer = StepTimer(dev)
    timer.mark()
    for _ in range(s.attn_steps):
        step()
        timer.mark()
    times = timer.intervals()
    opts = {"num_contrast_tokens": layer.num_contrast_tokens} if kind == "vca" else {}
    return {
        "kind": kind,
        "tokens": tokens,
        "grid": f"{side}x{side}",
        "dim": s.attn_dim,
        "heads": s.attn_heads,
        "batch": s.attn_batch,
        "precision": f"{s.precision} autocast",
        **opts,
        "timed_steps": len(times),
        "fwd_bwd_s": sum(times) / len(times),
        "fwd_bwd_s_median": statistics.median(times),
        "peak_mem_mb": peak_mb,
        "peak_mem_over_start_mb": over_mb,
        "peak_mem_source": mem.source,
    }


def attention_ratios(rows: list[dict]) -> dict:
    ok = {(r["kind"], r["tokens"]): r for r in rows if r.get("status") == "ok"}
    out = {}
    toks = sorted({n for _, n in ok})
    for n in toks:
        if ("mhsa", n) in ok and ("vca", n) in ok:
            out[f"mhsa_over_vca_time_{n}"] = ok[("mhsa", n)]["fwd_bwd_s"] / ok[("vca", n)]["fwd_bwd_s"]
            m_mhsa, m_vca = ok[("mhsa", n)]["peak_mem_over_start_mb"], ok[("vca", n)]["peak_mem_over_start_mb"]
            if m_mhsa > 0 and m_vca > 0:
                out[f"mhsa_over_vca_mem_{n}"] = m_mhsa / m_vca
    if len(toks) >= 2:
        a, b = toks[0], toks[-1]
        for kind in ("vca", "mhsa"):
            if (kind, a) in ok and (kind, b) in ok:
                out[f"{kind}_time_{b}_over_{a}"] = ok[(kind, b)]["fwd_bwd_s"] / ok[(kind, a)]["fwd_bwd_s"]
    return out


# ----------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------
def environment(s: Settings) -> dict:
    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,  # the CUDA version torch was built with
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if s.device.type == "cuda":
        idx = s.device.index if s.device.index is not None else torch.cuda.current_device()
        p = torch.cuda.get_device_properties(idx)
        env.update(
            device_name=p.name,
            device_memory_gb=round(p.total_memory / 2**30, 1),
            compute_capability=f"{p.major}.{p.minor}",
            multiprocessors=p.multi_processor_count,
            device_count=torch.cuda.device_count(),
            tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
            tf32_cudnn=bool(torch.backends.cudnn.allow_tf32),
        )
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
            )
            env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["device_name"] = f"CPU ({env['cpu']})"
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
        env["git_commit"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
@dataclass
class Unit:
    section: str
    label: str
    cost_s: float
    run: Callable[[], dict]
    meta: dict


def plan(s: Settings, cache: ModelCache, sections: list[str]) -> list[Unit]:
    units: list[Unit] = []

    def train_units(mode: str) -> None:
        for spec in s.train_models:
            for att in s.attentions:
                cost = s.costs["train_compile" if mode == "compile" else "train_eager"]
                if "XL" in spec.name and not s.smoke:
                    cost *= 1.5
                units.append(
                    Unit(
                        "train",
                        f"{spec.name} {att} {mode}",
                        cost,
                        (lambda spec=spec, att=att, mode=mode: train_row(s, cache, spec, att, mode)),
                        {"model": spec.name, "attention": att, "mode": mode, "batch": spec.batch},
                    )
                )

    if "train" in sections:
        train_units("eager")
    if "sampling" in sections:
        for att in s.attentions:
            for prec in s.sample_precisions:
                units.append(
                    Unit(
                        "sampling",
                        f"{s.sample_model.name} {att} {prec}",
                        s.costs["sampling"],
                        (lambda att=att, prec=prec: sample_row(s, cache, att, prec)),
                        {"model": s.sample_model.name, "attention": att, "precision": prec},
                    )
                )
    if "attention" in sections:
        for n in s.attn_tokens:
            for kind in s.attentions:
                units.append(
                    Unit(
                        "attention",
                        f"{kind} N={n}",
                        s.costs["attention"],
                        (lambda kind=kind, n=n: attention_row(s, kind, n)),
                        {"kind": kind, "tokens": n},
                    )
                )
    if "train" in sections:
        if s.compile:
            train_units("compile")
    return units


def summarise_syncs(s: Settings, train_rows: list[dict]) -> dict:
    if s.device.type != "cuda":
        rows = [
            {
                "model": r.get("model"),
                "attention": r.get("attention"),
                "mode": r.get("mode"),
                "syncs_per_step": NOT_APPLICABLE_CPU,
            }
            for r in train_rows
        ]
        return {
            "status": NOT_APPLICABLE_CPU,
            "syncs_per_step": NOT_APPLICABLE_CPU,
            "rows": rows,
            "method": "torch.cuda.set_sync_debug_mode('warn'), warnings caught per training step",
        }
    rows = []
    for r in train_rows:
        sy = r.get("syncs") if r.get("status") == "ok" else None
        entry = {"model": r.get("model"), "attention": r.get("attention"), "mode": r.get("mode")}
        if sy is None:
            entry.update(
                status="skipped" if r.get("status") == "skipped" else "error", reason="training row did not complete"
            )
        elif sy.get("status") == "ok":
            entry.update(status="ok", syncs_per_step=sy["syncs_per_step"], sites=sy["sites"])
        else:
            entry.update(status="error", error=sy.get("error"))
        rows.append(entry)
    ok = [e for e in rows if e["status"] == "ok"]
    status = "ok" if ok and len(ok) == len(rows) else ("partial" if ok else "error" if rows else "skipped")
    return {
        "status": status,
        "rows": rows,
        "method": (
            "torch.cuda.set_sync_debug_mode('warn') over extra training steps after each timed "
            "window; every 'called a synchronizing CUDA operation' warning counted, per step"
        ),
    }


def section_status(rows: list[dict]) -> str:
    if not rows:
        return "skipped"
    st = {r.get("status") for r in rows}
    if st == {"ok"}:
        return "ok"
    if "ok" in st:
        return "partial"
    return "skipped" if st == {"skipped"} else "error"


def build_result(
    s: Settings,
    env: dict,
    budget: Budget,
    done: dict[str, list[dict]],
    skipped: list[str],
    args_list: list[str],
    finished: bool,
) -> dict:
    train = done.get("train", [])
    result = {
        "tool": "bench/gpu.py",
        "smoke": s.smoke,
        "finished": finished,
        "argv": args_list,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": env,
        "device": env.get("device_name"),
        "torch": env["torch"],
        "cuda": env["cuda"],
        "budget_s": budget.seconds,
        "elapsed_s": round(budget.elapsed(), 2),
        "budget_exceeded": budget.left() <= 0 or any("budget" in x for x in skipped),
        "skipped": skipped,
        "settings": s.describe(),
        "sections": {
            "train": {
                "status": section_status(train),
                "rows": train,
                "step": (
                    "objective.training_losses (diffusion, hybrid MSE + VB) -> loss.mean() -> backward "
                    "-> AdamW step (fused on CUDA) -> zero_grad; fixed random batch, no data loading, "
                    "no EMA, no grad clipping"
                ),
                "timing": "CUDA events between steps (GPU timeline) after warm-up; wall time beside it",
            },
            "syncs": summarise_syncs(s, train),
            "sampling": {
                "status": section_status(done.get("sampling", [])),
                "rows": done.get("sampling", []),
                "extrapolated": True,
                "note": (
                    f"DDPM-{DDPM_STEPS}: a few steps timed and extrapolated to {DDPM_STEPS} steps (see each row's note)"
                ),
            },
            "attention": {
                "status": section_status(done.get("attention", [])),
                "rows": done.get("attention", []),
                "ratios": attention_ratios(done.get("attention", [])),
            },
        },
    }
    return result


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(path)


def _fmt(v, spec: str = ".1f") -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, spec)
    return "-" if v is None else str(v)


def markdown(result: dict) -> str:
    sec = result["sections"]
    lines = [
        f"GPU check on {result['device']} (torch {result['torch']}, CUDA {result['cuda']}), "
        f"{result['elapsed_s']:.0f} s of budget {result['budget_s']:.0f} s"
        + (" — smoke run (tiny models)" if result["smoke"] else ""),
        "",
    ]
    lines += [
        "| model | attention | mode | batch | images/s | s/step | peak mem (GB) | syncs/step | first step s | status |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sec["train"]["rows"]:
        sy = r.get("syncs", {}).get("syncs_per_step", "-") if r.get("status") == "ok" else "-"
        status = (
            r.get("status")
            if r.get("status") == "ok"
            else f"{r.get('status')}: {r.get('error') or r.get('reason', '')}"[:80]
        )
        lines.append(
            f"| {r.get('model')} | {r.get('attention')} | {r.get('mode')} | {r.get('batch', '-')} | "
            f"{_fmt(r.get('images_per_s'))} | {_fmt(r.get('sec_per_step'), '.4f')} | "
            f"{_fmt(r.get('peak_mem_mb') / 1024 if isinstance(r.get('peak_mem_mb'), float) else None, '.2f')} | "
            f"{_fmt(sy, '.1f')} | {_fmt(r.get('first_step_s'), '.1f')} | {status} |"
        )
    lines += [
        "",
        "| model | attention | precision | batch | s/step (timed) | images/s (DDPM-250, extrapolated) "
        "| syncs/step | status |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sec["sampling"]["rows"]:
        status = (
            r.get("status")
            if r.get("status") == "ok"
            else f"{r.get('status')}: {r.get('error') or r.get('reason', '')}"[:80]
        )
        lines.append(
            f"| {r.get('model')} | {r.get('attention')} | {r.get('precision')} | {r.get('batch', '-')} | "
            f"{_fmt(r.get('sec_per_step'), '.4f')} | {_fmt(r.get('images_per_s'), '.3f')} | "
            f"{_fmt(r.get('syncs_per_step'), '.0f')} | {status} |"
        )
    lines += [
        "",
        "| attention | N | batch | fwd+bwd ms | peak mem over start (MB) | status |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sec["attention"]["rows"]:
        status = (
            r.get("status")
            if r.get("status") == "ok"
            else f"{r.get('status')}: {r.get('error') or r.get('reason', '')}"[:80]
        )
        ms = r["fwd_bwd_s"] * 1000 if isinstance(r.get("fwd_bwd_s"), float) else None
        lines.append(
            f"| {r.get('kind')} | {r.get('tokens')} | {r.get('batch', '-')} | {_fmt(ms, '.2f')} | "
            f"{_fmt(r.get('peak_mem_over_start_mb'))} | {status} |"
        )
    ratios = sec["attention"].get("ratios") or {}
    if ratios:
        lines += ["", "attention ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items())]
    if result["skipped"]:
        lines += ["", "skipped: " + "; ".join(result["skipped"])]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny models on CPU, same code paths (well under a minute)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default bench/results/gpu.json, smoke: bench/results/gpu_smoke.json)",
    )
    p.add_argument("--budget-s", type=float, default=420.0, help="global time budget in seconds (default 420)")
    p.add_argument("--device", default=None, help="torch device (default cuda; smoke: cpu)")
    p.add_argument(
        "--sections",
        default="train,sampling,attention",
        help="comma list of train (includes syncs), sampling, attention",
    )
    p.add_argument("--attentions", default="mhsa,vca", help="attention kinds to compare (default mhsa,vca)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile training rows")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; smoke aot_eager)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    p.add_argument("--batch-s", type=int, default=None, help="DiT-S/2 training batch (default 256; smoke 4)")
    p.add_argument("--batch-xl", type=int, default=None, help="DiT-XL/2 training batch (default 64; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="training warm-up steps (default 3; smoke 1)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 10; smoke 2)")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default 64; smoke 4)")
    p.add_argument(
        "--sample-steps", type=int, default=None, help="timed DDPM steps of the 250, extrapolated (default 5; smoke 2)"
    )
    p.add_argument(
        "--tokens",
        type=int,
        nargs="+",
        default=None,
        help="attention-layer token counts, perfect squares (default 4096 16384; smoke 64 256)",
    )
    p.add_argument("--attn-batch", type=int, default=None, help="attention-layer batch (default 4; smoke 4)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (fp32 sampling rows; default off)")
    a = p.parse_args(argv)
    a.sections = [x.strip() for x in a.sections.split(",") if x.strip()]
    bad = sorted(set(a.sections) - {"train", "syncs", "sampling", "attention"})
    if bad:
        p.error(f"--sections: unknown {bad}; accepted: train, sampling, attention")
    if "syncs" in a.sections and "train" not in a.sections:
        a.sections.append("train")  # syncs are counted on the training rows
    a.attentions = [x.strip() for x in a.attentions.split(",") if x.strip()]
    for v, name in ((a.warmup, "--warmup"), (a.steps, "--steps"), (a.sample_steps, "--sample-steps")):
        if v is not None and v < 1:
            p.error(f"{name} must be >= 1")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    s = make_settings(args)
    from vca_gen.models import ATTENTION_KINDS

    bad = [k for k in s.attentions if k not in ATTENTION_KINDS]
    if bad:
        raise SystemExit(f"bench/gpu.py: error: --attentions: unknown {bad}; accepted: {', '.join(ATTENTION_KINDS)}")
    out = args.out or (REPO / "bench" / "results" / ("gpu_smoke.json" if s.smoke else "gpu.json"))
    if s.device.type == "cuda":
        torch.cuda.set_device(s.device)
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    env = environment(s)
    if s.device.type == "cpu":
        env["malloc_mmap_threshold_64k"] = release_freed_memory_to_os()
    argv_list = list(sys.argv[1:] if argv is None else argv)
    cache = ModelCache(s)
    done: dict[str, list[dict]] = {"train": [], "sampling": [], "attention": []}
    skipped: list[str] = []
    write_json(out, build_result(s, env, budget, done, skipped, argv_list, finished=False))
    for unit in plan(s, cache, args.sections):
        reason = budget.refusal(unit.cost_s)
        if reason is not None:
            done[unit.section].append(dict(unit.meta, status="skipped", reason=reason))
            skipped.append(f"{unit.section} {unit.label}: {reason}")
            print(f"[{budget.elapsed():6.1f} s] skip {unit.section} {unit.label}: {reason}", flush=True)
            continue
        print(f"[{budget.elapsed():6.1f} s] {unit.section} {unit.label} ...", flush=True)
        t0 = time.perf_counter()
        failure = None
        try:
            row = unit.run()
            row.setdefault("status", "ok")
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            failure = dict(unit.meta, **error_record(e))
        free_memory(s.device)
        if failure is not None:
            row = failure
        row["unit_s"] = round(time.perf_counter() - t0, 2)
        done[unit.section].append(row)
        brief = row.get("images_per_s", row.get("fwd_bwd_s"))
        print(
            f"[{budget.elapsed():6.1f} s]   -> {row['status']}"
            + (f" {brief:.4g}" if isinstance(brief, float) else "")
            + (f" ({row.get('error', '')[:200]})" if row["status"] != "ok" else ""),
            flush=True,
        )
        write_json(out, build_result(s, env, budget, done, skipped, argv_list, finished=False))
    result = build_result(s, env, budget, done, skipped, argv_list, finished=True)
    write_json(out, result)
    print("\n" + markdown(result))
    print(f"\nwrote {out} ({result['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
