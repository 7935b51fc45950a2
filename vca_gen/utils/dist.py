"""Processes of one run: how they are set up, and the one protocol by which they agree.

**Set-up.** :func:`launched` reads what the launcher said (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``:
``accelerate launch``, ``torchrun`` and srun-style wrappers set them); :func:`backend` is the one
rule for the backend (``nccl`` on CUDA, ``gloo`` on CPU: without CUDA or with
``ACCELERATE_USE_CPU=1``); every collective is bounded by a finite, positive timeout
(:func:`check_timeout`; ``train.timeout_s`` for training, ``--timeout-s`` for sampling and
extraction); a collective of :class:`Group` that runs past it, or loses a peer, raises one
:class:`DistributedError` naming the bound and its option, not the backend's traceback.
:func:`setup` builds accelerate's ``PartialState`` with these choices (training's ``Accelerator``
adopts it) and refuses a process group that does not match the launch
(:func:`check_group`: processes that failed to form a group would each write every file). The
device is the local rank's (accelerate's ``cuda:LOCAL_RANK``), never the global rank. :func:`close`
tears the group down before the interpreter exits.

**The protocol** (:func:`agree`)::

    main process:  decision = decide()          (locks, reads, writes; any error is broadcast)
    everyone:      decision = broadcast(decision)
    everyone:      problem = verify(decision)     (None: this process sees what the main saw)
    everyone:      all_ok = all-reduce(MIN, problem is None)
    if not all_ok: gather every (rank, problem); raise the same error on every process,
                   naming each failing rank and what it saw

so a process never waits in a collective for a process that has already left, and every process
stops with one clear user error. :func:`main_first` (load on the main process first, e.g. to fill a
download cache once, then on the others) is the same protocol with the load as ``verify``.

The protocol needs three collectives of a :class:`Collectives` (``broadcast_object``,
``gather_object``, ``all_ok``): :class:`Group` provides them over accelerate (``Accelerator`` or
``PartialState``); tests pass thread-based stand-ins.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from vca_gen.errors import UserError

T = TypeVar("T")
MAIN = 0  # rank of the process that decides
DEFAULT_TIMEOUT_S = 1800.0
_bound: tuple[float, str] | None = None  # (seconds, option) that :func:`setup` gave the process group


class DistributedError(UserError, RuntimeError):
    """The processes of a run cannot work together (group not formed, bad timeout, disagreement)."""


# ----------------------------------------------------------------------------- launch and backend
@dataclass(frozen=True)
class Launch:
    """What the launcher told this process: its global rank, the number of processes, its rank on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"environment variable {name}={text!r} is not valid; accepted: an integer") from None


def launched() -> Launch:
    """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` of this process (0 / 1 / 0 when not launched as many)."""
    launch = Launch(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size or launch.local_rank < 0:
        raise DistributedError(
            f"RANK={launch.rank}, WORLD_SIZE={launch.world_size}, LOCAL_RANK={launch.local_rank} are not valid; "
            f"accepted: WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0"
        )
    return launch


def use_cpu() -> bool:
    """True when the processes run on CPU: no CUDA device, or ``ACCELERATE_USE_CPU`` set."""
    from accelerate.utils import parse_flag_from_env

    return bool(parse_flag_from_env("ACCELERATE_USE_CPU")) or not torch.cuda.is_available()


def backend(cpu: bool | None = None) -> str:
    """The process-group backend: ``gloo`` on CPU, ``nccl`` on CUDA (one rule for every command)."""
    return "gloo" if (use_cpu() if cpu is None else cpu) else "nccl"


def check_timeout(timeout_s: Any, option: str) -> float:
    """``timeout_s`` as seconds, or a :class:`DistributedError` naming ``option`` (finite and > 0)."""
    try:
        value = float(timeout_s)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise DistributedError(
            f"{option}={timeout_s!r} is not valid; accepted: a finite number of seconds > 0 (the bound on "
            f"every wait of one process for the others)"
        )
    return value


def check_group(state: Any, launch: Launch | None = None) -> None:
    """Refuse a process group that does not match the launch (each process would write every file)."""
    launch = launch or launched()
    n, rank = int(state.num_processes), int(state.process_index)
    if n != launch.world_size or rank != launch.rank:
        raise DistributedError(
            f"launched as process {launch.rank} of {launch.world_size} (RANK / WORLD_SIZE) but the process group "
            f"has this process as {rank} of {n}; refusing to run (processes would write the same files). On CPU "
            f"the backend is gloo; check MASTER_ADDR / MASTER_PORT and that every process was started"
        )


def setup(timeout_s: Any, option: str = "--timeout-s") -> Group:
    """Set up this process's place in the run and return its :class:`Group`: accelerate's
    ``PartialState`` with the backend rule and a collective timeout of ``timeout_s``, checked against
    the launch. Training builds its ``Accelerator(cpu=use_cpu())`` after this call (it adopts the
    state); sampling and extraction use the group as it is."""
    from accelerate import PartialState

    seconds = check_timeout(timeout_s, option)
    launch = launched()
    cpu = use_cpu()
    kwargs: dict[str, Any] = {}
    if launch.world_size > 1:  # passed as is: no accelerate default can drop them
        kwargs = {"backend": backend(cpu), "timeout": datetime.timedelta(seconds=seconds)}
    state = PartialState(cpu=cpu, **kwargs)
    check_group(state, launch)
    global _bound
    _bound = (seconds, option)
    return Group(state)


def close() -> None:
    """Tear the process group down (before the interpreter exits: left to interpreter shutdown, e.g.
    after every process stopped on the same user error, gloo's threads can abort the process instead
    of letting it exit with its status) and forget accelerate's state of it."""
    import torch.distributed as tdist

    global _bound
    _bound = None
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
        from accelerate.state import AcceleratorState, GradientState, PartialState

        AcceleratorState._reset_state(True)
        PartialState._reset_state()
        GradientState._reset_state()


# ----------------------------------------------------------------------------- collectives
class Collectives(Protocol):
    """What the protocol needs of a group of processes."""

    process_index: int
    num_processes: int
    is_main_process: bool

    def broadcast_object(self, obj: Any) -> Any: ...  # the main process's ``obj`` on every process

    def gather_object(self, obj: Any) -> list[Any]: ...  # [obj of rank 0, obj of rank 1, ...] everywhere

    def all_ok(self, ok: bool) -> bool: ...  # True on every process when ``ok`` is True on every process


class Group:
    """The processes of an accelerate ``Accelerator`` or ``PartialState`` with the three collectives
    of the protocol (picklable objects; one short collective each)."""

    def __init__(self, state: Any):
        self.state = state
        self.process_index = int(state.process_index)
        self.num_processes = int(state.num_processes)
        self.local_process_index = int(getattr(state, "local_process_index", 0))
        self.is_main_process = self.process_index == MAIN
        self.is_local_main_process = self.local_process_index == 0
        self.device: torch.device = state.device

    def broadcast_object(self, obj: Any) -> Any:
        if self.num_processes == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        with self._bounded("broadcast of the main process's decision"):
            return broadcast_object_list([obj], from_process=MAIN)[0]

    def gather_object(self, obj: Any) -> list[Any]:
        if self.num_processes == 1:
            return [obj]
        from accelerate.utils import gather_object

        with self._bounded("gather of every process's findings"):
            return list(gather_object([obj]))

    def all_ok(self, ok: bool) -> bool:
        if self.num_processes == 1:
            return bool(ok)
        import torch.distributed as tdist

        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=self.device)
        with self._bounded("all-reduce of every process's verdict"):
            tdist.all_reduce(flag, op=tdist.ReduceOp.MIN)
        return bool(flag.item())

    def _bounded(self, what: str) -> contextlib.AbstractContextManager[None]:
        return bounded(what, self.process_index, self.num_processes)


def is_backend_failure(e: BaseException) -> bool:
    """Whether ``e`` is the backend's report of a collective that timed out or lost a peer: torch's
    ``DistError`` family (NCCL, the store, the network) or a gloo transport error (a plain
    ``RuntimeError`` whose message names gloo's sources), not an error of the computation around it."""
    import torch.distributed as tdist

    if isinstance(e, getattr(tdist, "DistError", ())):
        return True
    return isinstance(e, RuntimeError) and "/gloo/" in str(e)


@contextlib.contextmanager
def bounded(
    what: str, process_index: int, num_processes: int, *, only_backend: bool = False, then: str = ""
) -> Iterator[None]:
    """A collective (``what``) that timed out or lost a peer becomes one clear :class:`DistributedError`
    naming the bound and its option (gloo and NCCL raise ``RuntimeError`` subclasses with a C++
    traceback and no advice; the backend's error is kept as the cause). ``only_backend``: the block
    also computes (a training step's forward and backward), so only :func:`is_backend_failure`
    errors are translated; any other error passes unchanged. ``then``: a last sentence (what is kept)."""
    try:
        yield
    except RuntimeError as e:
        if isinstance(e, DistributedError) or (only_backend and not is_backend_failure(e)):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if _bound is None:
            bound, fix = "the process-group timeout", "a larger process-group timeout"
        else:
            bound, fix = f"{_bound[1]}={_bound[0]:g} s", f"a larger {_bound[1]}"
        raise DistributedError(
            f"process {process_index} of {num_processes}: the {what} failed: another process did "
            f"not arrive within {bound}, or stopped ({first}). A process slower than that here (loading, a busy "
            f"machine) needs {fix}; a process that stopped printed its own error{'. ' + then if then else ''}"
        ) from e


def as_group(state: Any) -> Collectives:
    """``state`` itself when it has the protocol's collectives (a :class:`Group`, a test stand-in),
    else a :class:`Group` over it (an accelerate ``Accelerator`` / ``PartialState``)."""
    if all(hasattr(state, m) for m in ("broadcast_object", "gather_object", "all_ok")):
        return state
    return Group(state)


# ----------------------------------------------------------------------------- the protocol
def agree(
    group: Collectives,
    decide: Callable[[], T],
    verify: Callable[[T], str | None],
    *,
    error: type[Exception] = DistributedError,
    failure: str | Callable[[T], str] = "does not see what the main process decided",
    advice: str = "",
    undo: Callable[[], object] | None = None,
) -> T:
    """The main process's ``decide()``, agreed by every process; returns the decision everywhere.

    ``decide`` runs on the main process only and returns a picklable decision; an exception there
    is re-raised on the main process and reaches every other process as
    ``error("the main process stopped: <Type>: <message>")``. Then every process runs
    ``verify(decision)`` (None: fine; a text: what this process sees differently; an exception
    counts as its text). If any process is not fine, every process raises the same ``error``:
    ``"rank R <failure>: <problem>; ... . <advice>"``. One process: no collective at all.
    ``undo``: called on every process when the agreement fails, before the error propagates
    (e.g. the main process releases the lock ``decide`` took).
    """
    try:
        return _agree(group, decide, verify, error, failure, advice)
    except BaseException:
        if undo is not None:
            undo()
        raise


def _agree(
    group: Collectives,
    decide: Callable[[], T],
    verify: Callable[[T], str | None],
    error: type[Exception],
    failure: str | Callable[[T], str],
    advice: str,
) -> T:
    multi = group.num_processes > 1
    outcome: tuple[str, Any] = ("decided", None)  # ("decided", decision) or ("failed", the main's error)
    if group.is_main_process:
        try:
            outcome = ("decided", decide())
        except BaseException as e:
            if multi:  # release the others with the error (and its exit status) instead of leaving them waiting
                group.broadcast_object(("failed", (f"{type(e).__name__}: {e}", getattr(e, "exit_code", None))))
            raise
    if multi:
        outcome = group.broadcast_object(outcome)
    kind, decision = outcome
    if kind == "failed":
        text, code = decision
        stopped = error(f"the main process stopped: {text}")
        if isinstance(code, int):  # every process exits as the main does (75: re-run to continue)
            stopped.exit_code = code  # type: ignore[attr-defined]
        raise stopped
    cause: Exception | None = None
    try:
        problem = verify(decision)
    except Exception as e:  # noqa: BLE001 - becomes this rank's problem, reported on every rank
        if not multi:
            raise
        problem, cause = f"{type(e).__name__}: {e}", e
    if group.all_ok(problem is None) if multi else problem is None:
        return decision
    everyone = group.gather_object((group.process_index, problem)) if multi else [(group.process_index, problem)]
    failed = [(r, p) for r, p in everyone if p is not None]
    what = failure(decision) if callable(failure) else failure
    text = "; ".join(f"rank {r} {what}: {p}" for r, p in failed)
    raise error(text + (f". {advice}" if advice else "")) from cause


def main_first(
    group: Collectives,
    load: Callable[[], T],
    main_only: Callable[[], Any] | None = None,
    *,
    error: type[Exception] = DistributedError,
    failure: str = "could not load what the main process loaded",
) -> tuple[T, Any]:
    """``load()`` on the main process first (a download fills the cache once), then on the others;
    ``main_only()`` (e.g. a checksum) on the main process only, its value broadcast. Returns
    ``(load(), main_only())`` on every process; a failure anywhere stops every process
    (:func:`agree`: the main's error reaches the others, another rank's failure is named)."""
    box: dict[str, T] = {}

    def decide() -> Any:
        box["loaded"] = load()
        return None if main_only is None else main_only()

    def verify(_: Any) -> None:
        if "loaded" not in box:
            box["loaded"] = load()
        return None

    value = agree(group, decide, verify, error=error, failure=failure)
    return box["loaded"], value


__all__ = [
    "DistributedError",
    "bounded",
    "is_backend_failure",
    "Launch",
    "launched",
    "use_cpu",
    "backend",
    "check_timeout",
    "check_group",
    "setup",
    "close",
    "Collectives",
    "Group",
    "as_group",
    "agree",
    "main_first",
    "MAIN",
    "DEFAULT_TIMEOUT_S",
]
