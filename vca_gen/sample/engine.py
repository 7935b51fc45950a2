"""The sharded, resumable, process-count-independent generation loop.

The engine knows nothing about models: it asks a ``make_images(indices, labels, generators)``
callable for the uint8 images of a batch of global sample indices (``generators[j]`` seeded
``seed + indices[j]``) and takes care of labels, seeds, shards, the manifest, resumption, the
final ``samples.npz``, PNGs and the grid. Processes are those of ``accelerate`` (``PartialState``);
one process works too.

**One decision, broadcast; no long collective.** At the start the main process locks ``--out``
(:class:`~vca_gen.utils.lock.RunLock`, purpose ``"sample"``), checks / writes ``sampling.json`` and
lists the finished shards; that decision (or its error) is broadcast, and every process checks that
it sees the same directory (``sampling.json``'s sha256 and the same finished shards) -- a mismatch
stops every process with an error naming the rank and the path, before anything is sampled. These
are the only collectives, all short. Then each process samples its round-robin share of the pending
shards, writes each one atomically and leaves; the main process, after its own share, streams the
shards into ``samples.npz`` as they appear on disk (polling the files with a sleep: no collective
while waiting, so a slow process never trips the process-group timeout).

**Preemption.** SIGTERM, SIGUSR1 and Ctrl-C (SIGINT) make every process finish the shard it is
computing, write it and stop (``RunResult.stopped_by`` set; ``sample.py`` exits
:data:`EXIT_PREEMPTED` = 75, EX_TEMPFAIL). Re-running the same command continues and gives the same
bytes as an uninterrupted run. A second Ctrl-C aborts at once. A process that stops or fails leaves
a marker ``.rank_XXXXX.{stopped,failed}`` in ``--out`` so the waiting main process stops too
instead of waiting for shards that will not come.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..utils import dist
from ..utils.faults import Faults
from ..utils.io import atomic_write_json, make_dir, sha256_file
from ..utils.rng import per_sample_generators
from . import files
from .grid import GridCollector, save_grid
from .manifest import FORMAT, MANIFEST, check_resume, write_manifest
from .plan import SamplingError, ShardPlan, batches, check_num_samples, labels_for, seeds_for

MakeImages = Callable[[range, torch.Tensor, list], "tuple[np.ndarray, int]"]
FINAL = "samples.npz"
GRID = "grid.png"
LOCK_PURPOSE = "sample"
LOCK_HEARTBEAT_S = 600.0  # the --out lock is refreshed this often (kept fresh on shared storage)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL, as train.py: stopped by a signal, shards written, re-run the same command
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, n))
POLL_S = 0.25  # how often the main process looks for the shards of the other processes


@dataclass
class RunSpec:
    """Everything the engine needs besides ``make_images``.

    ``settings`` are the determining settings recorded in ``sampling.json`` (the engine adds N,
    seed, shard size, classes and image shape itself); ``info`` are recorded but not compared.
    ``lock``: hold a :class:`~vca_gen.utils.lock.RunLock` on ``out_dir`` (main process).
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
    class_names: Sequence[str] | None = None
    progress: bool = True
    lock: bool = True


@dataclass
class RunResult:
    path: Path | None  # samples.npz (main process, when finished)
    generated: int  # samples this process generated (0 when everything was resumed)
    resumed_shards: int
    nfe_per_image: float | None  # model evaluations per image, when anything was generated
    stopped_by: str | None = None  # signal name when preempted (samples.npz not written yet)
    shards_written: int = 0  # shards this process wrote


class StopRequest:
    """The first SIGTERM / SIGUSR1 / SIGINT, recorded (not acted on) while installed.

    ``with StopRequest() as stop: ...`` installs the handlers (main thread only; elsewhere it only
    holds a flag that :meth:`request` sets); a second SIGINT raises ``KeyboardInterrupt`` at once.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def request(self, signum: int = signal.SIGTERM) -> None:
        if self.signum is None:
            self.signum = int(signum)

    def _on_signal(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now
        self.request(signum)
        print(
            f"sample.py: received {signal.Signals(signum).name}: finishing the current shard, then stopping "
            f"(exit {EXIT_PREEMPTED}; re-run the same command to continue)",
            file=sys.stderr,
            flush=True,
        )

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()


class _Stopped(Exception):
    """Internal: the main process stopped waiting (a stop signal, or another process stopped)."""


def _log(state, msg: str) -> None:
    if state.is_main_process:
        print(msg, file=sys.stderr, flush=True)


def finished_shards(out: Path, plan: ShardPlan, hidden: Sequence[int] = ()) -> list[int]:
    """Shards whose file exists in ``out`` (``hidden``: shards to treat as absent, injected by tests)."""
    skip = set(hidden)
    return [k for k in range(plan.num_shards) if k not in skip and files.shard_path(out, k).is_file()]


# ------------------------------------------------------------------------------ markers
def _marker(out: Path, rank: int, kind: str) -> Path:
    return Path(out) / f".rank_{rank:05d}.{kind}"


def _clear_markers(out: Path) -> None:
    for p in list(Path(out).glob(".rank_*.stopped")) + list(Path(out).glob(".rank_*.failed")):
        p.unlink(missing_ok=True)


def _write_marker(out: Path, rank: int, kind: str, text: str) -> None:
    try:
        atomic_write_json(_marker(out, rank, kind), {"rank": rank, "pid": os.getpid(), "message": text})
    except OSError:
        pass  # best effort: the launcher also stops the other processes


def _check_markers(out: Path) -> None:
    """Raise if another process left a failure (SamplingError) or stop (_Stopped) marker."""
    for kind in ("failed", "stopped"):
        for p in sorted(Path(out).glob(f".rank_*.{kind}")):
            try:
                info = json.loads(p.read_text())
            except (OSError, ValueError):
                continue  # being written
            if kind == "failed":
                raise SamplingError(
                    f"process {info.get('rank')} failed ({info.get('message')}); its shards are "
                    f"missing from {out}; fix the cause and re-run the same command to continue"
                )
            raise _Stopped(f"process {info.get('rank')} was stopped ({info.get('message')})")


# ------------------------------------------------------------------------------ the decision
def manifest_settings(spec: RunSpec) -> dict:
    return {
        "format": FORMAT,
        **spec.settings,
        "num_samples": spec.num_samples,
        "num_classes": spec.num_classes,
        "seed": spec.seed,
        "shard_size": spec.shard_size,
        "image_shape": list(spec.image_shape),
        "labels": "i % num_classes",
        "noise_seed": "seed + i",
        "batch_size": spec.batch_size,
        **spec.info,
    }


def _main_decision(spec: RunSpec, plan: ShardPlan, state, hidden: Sequence[int]) -> dict:
    """Main process: validate / write the manifest; return the decision to broadcast."""
    out = Path(spec.out_dir)
    settings = manifest_settings(spec)
    warnings = check_resume(out, settings, spec.overwrite)
    files.clean_temp_files(out)
    _clear_markers(out)
    if spec.overwrite:
        for p in list(out.glob("shard_*.npz")) + [out / FINAL, out / GRID]:
            p.unlink(missing_ok=True)
        shutil.rmtree(out / "png", ignore_errors=True)
    write_manifest(out, settings)
    for w in warnings:
        _log(state, f"warning: {w}")
    return {"finished": finished_shards(out, plan, hidden), "manifest_sha256": sha256_file(out / MANIFEST)}


def view_problem(out: Path, plan: ShardPlan, decision: dict, hidden: Sequence[int] = ()) -> str | None:
    """What this process sees differently from the main process's ``decision`` (None: the same)."""
    out = Path(out)
    man = out / MANIFEST
    if not man.is_file():
        return f"it cannot see {man}, which the main process wrote"
    sha = sha256_file(man)
    if sha != decision["manifest_sha256"]:
        return (
            f"its {man} has sha256 {sha[:12]}..., the main process's {decision['manifest_sha256'][:12]}... "
            f"(another directory, or not synced)"
        )
    mine, main = set(finished_shards(out, plan, hidden)), set(decision["finished"])
    if mine != main:
        parts = []
        if main - mine:
            parts.append("it does not see " + ", ".join(files.shard_path(out, k).name for k in sorted(main - mine)))
        if mine - main:
            parts.append(
                "it sees "
                + ", ".join(files.shard_path(out, k).name for k in sorted(mine - main))
                + " that the main process does not"
            )
        return f"finished shards differ in {out}: " + "; ".join(parts)
    return None


def _decide(spec: RunSpec, plan: ShardPlan, state: dist.Collectives, faults: Faults):
    """The one resume decision (:func:`vca_gen.utils.dist.agree`): the main process locks ``--out``,
    checks / writes the manifest and lists the finished shards; every process checks it sees the same.

    Returns (pending shards, the RunLock held by the main process or None)."""
    out = Path(spec.out_dir)
    held: list = []

    def decide() -> dict:
        make_dir(out, "the sampling output (--out)")
        if spec.lock:
            from ..utils.lock import RunLock

            held.append(RunLock(out, LOCK_PURPOSE, heartbeat_s=LOCK_HEARTBEAT_S).acquire())
        return _main_decision(spec, plan, state, faults.hidden_shards)

    decision = dist.agree(
        state,
        decide,
        lambda d: view_problem(out, plan, d, faults.hidden_shards),
        error=SamplingError,
        failure=f"does not see the output directory {out} as the main process does",
        advice="Every process must see the same --out (shared storage, fully synced); nothing was sampled",
        undo=lambda: [lock.release() for lock in held],
    )
    finished = set(decision["finished"])
    return [k for k in range(plan.num_shards) if k not in finished], (held[0] if held else None)


# ------------------------------------------------------------------------------ assembly (main process)
def _wait_for(path: Path, out: Path, stop: StopRequest, state, what: str) -> None:
    """Poll until ``path`` exists (no collective); stop on a signal or another process's marker."""
    announced = False
    while not path.is_file():
        if stop.requested:
            raise _Stopped(f"stopped by {stop.name}")
        _check_markers(out)
        if not announced:
            _log(state, f"waiting for {what} (written by another process)")
            announced = True
        time.sleep(POLL_S)


def _assemble(spec: RunSpec, plan: ShardPlan, stop: StopRequest, state) -> Path:
    out = Path(spec.out_dir)
    grid = GridCollector(min(spec.grid_classes, spec.num_classes), spec.grid_per_class)

    def chunks():
        for k in range(plan.num_shards):
            path = files.shard_path(out, k)
            _wait_for(path, out, stop, state, path.name)
            images, labels = files.read_shard(path, plan.indices(k), spec.image_shape)
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
    if (
        spec.save_png
        or not final.is_file()
        or (spec.grid_classes and spec.grid_per_class and not (out / GRID).is_file())
    ):
        return False
    newest = max(files.shard_path(out, k).stat().st_mtime for k in range(plan.num_shards))
    return final.stat().st_mtime >= newest


# ------------------------------------------------------------------------------ the run
def run_sampling(
    make_images: MakeImages,
    spec: RunSpec,
    state=None,
    device=None,
    stop: StopRequest | None = None,
    faults: Faults | None = None,
) -> RunResult:
    """Generate (or finish) the run described by ``spec``; returns where ``samples.npz`` is.

    ``state``: this process's group (:func:`vca_gen.utils.dist.setup`, an accelerate state, or any
    :class:`~vca_gen.utils.dist.Collectives`); by default one is set up (timeout
    :data:`~vca_gen.utils.dist.DEFAULT_TIMEOUT_S`). ``stop``: a :class:`StopRequest` installed by the
    caller (``sample.py`` installs one for the whole command); by default one is installed for the
    duration of this call (main thread only). ``faults``: injected by tests (``shard_sleep_s``,
    ``hidden_shards``).
    """
    if stop is None:
        with StopRequest() as own:
            return run_sampling(make_images, spec, state, device, own, faults)
    state = dist.as_group(state) if state is not None else dist.setup(dist.DEFAULT_TIMEOUT_S)
    faults = faults or Faults()
    device = torch.device(device) if device is not None else state.device
    check_num_samples(spec.num_samples, spec.num_classes)
    plan = ShardPlan(spec.num_samples, spec.shard_size)
    batches(range(1), spec.batch_size)  # validates the batch size
    out = Path(spec.out_dir)
    rank = state.process_index

    pending, lock = _decide(spec, plan, state, faults)
    try:
        return _run(make_images, spec, plan, state, device, stop, pending, out, rank, faults.shard_sleep_s)
    finally:
        if lock is not None:
            lock.release()


def _run(make_images, spec, plan, state, device, stop, pending, out, rank, sleep: float) -> RunResult:
    mine = ShardPlan.assign(pending, rank, state.num_processes)
    resumed = plan.num_shards - len(pending)
    if resumed:
        _log(state, f"resuming: {resumed} of {plan.num_shards} shards already complete in {out}")
    total = sum(len(plan.indices(k)) for k in mine)
    bar = tqdm(
        total=total,
        unit="img",
        disable=not (spec.progress and state.is_main_process),
        desc=f"sampling (process 0 of {state.num_processes})",
        dynamic_ncols=True,
    )
    nfe_sum, generated, written = 0, 0, 0
    try:
        for k in mine:
            if sleep:  # injected fault: a slow process (wakes early on a stop request)
                t_end = time.monotonic() + sleep
                while time.monotonic() < t_end and not stop.requested:
                    time.sleep(min(0.05, max(t_end - time.monotonic(), 0)))
            if stop.requested:
                break
            idx = plan.indices(k)
            imgs, labs = [], []
            for b in batches(idx, spec.batch_size):
                labels = labels_for(b, spec.num_classes).to(device)
                gens = per_sample_generators(seeds_for(b, spec.seed), device)
                images, nfe = make_images(b, labels, gens)
                if images.shape != (len(b), *spec.image_shape) or images.dtype != np.uint8:
                    raise RuntimeError(
                        f"make_images returned {images.shape} {images.dtype}, "
                        f"expected {(len(b), *spec.image_shape)} uint8"
                    )
                imgs.append(images)
                labs.append(labels.cpu().numpy())
                nfe_sum += nfe * len(b)
                generated += len(b)
                bar.update(len(b))
            files.write_shard(out, k, np.concatenate(imgs), np.concatenate(labs), idx)
            written += 1
    except Exception as e:
        if not state.is_main_process:
            _write_marker(out, rank, "failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        bar.close()
    nfe = nfe_sum / generated if generated else None
    if stop.requested:
        if not state.is_main_process:
            _write_marker(out, rank, "stopped", f"stopped by {stop.name}")
        return RunResult(None, generated, resumed, nfe, stop.name, written)
    if not state.is_main_process:
        return RunResult(None, generated, resumed, nfe, None, written)
    path = out / FINAL
    try:
        if pending or not _final_is_current(spec, plan):
            path = _assemble(spec, plan, stop, state)
    except _Stopped as e:
        _log(state, f"not assembling {FINAL}: {e}")
        return RunResult(None, generated, resumed, nfe, stop.name or "another process stopped", written)
    return RunResult(path, generated, resumed, nfe, None, written)
