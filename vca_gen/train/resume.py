"""The run directory of a training: its lock and the one resume decision.

The main process holds a :class:`~vca_gen.utils.lock.RunLock` (purpose "train") on
``train.output_dir`` for the whole run; it decides which checkpoint to resume (verifying its
checksums, falling back to the newest intact one) and broadcasts the decision; every process checks
it can read exactly that checkpoint before the first step (:func:`vca_gen.utils.dist.agree`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vca_gen.experiment import checkpoint as ckpt
from vca_gen.experiment.schema import ConfigError
from vca_gen.utils import dist

if TYPE_CHECKING:
    from vca_gen.train.trainer import Trainer

LOCK_HEARTBEAT_S = 600.0  # the run lock is refreshed this often (kept fresh on shared storage)


def acquire_lock(tr: Trainer) -> None:
    from vca_gen.utils.lock import RunLock

    created = not tr.out_dir.exists()
    tr.lock = RunLock(tr.out_dir, "train", heartbeat_s=LOCK_HEARTBEAT_S)
    tr.created_out_dir = created
    tr.lock.acquire()


def release(tr: Trainer) -> None:
    """Release the run lock (main process); removes an output dir this run created and left empty."""
    lock, tr.lock = tr.lock, None
    if lock is not None and lock.held:
        lock.release()
        if tr.created_out_dir:
            with contextlib.suppress(OSError):
                tr.out_dir.rmdir()  # only if empty: nothing was written


def decide_resume(tr: Trainer) -> Path | None:
    """Main process: lock the run dir, pick the checkpoint to resume (verified, with fallback)."""
    resume = tr.exp.train.resume
    acquire_lock(tr)
    chosen = ckpt.resolve_resume(resume, tr.ckpt_root, verify=True)
    existing = ckpt.latest_checkpoint(tr.ckpt_root)
    own = chosen is not None and chosen.parent.resolve() == tr.ckpt_root.resolve()
    if existing is not None and not own:
        raise ConfigError(
            f"{tr.out_dir} already holds checkpoints up to {existing.name}, and train.resume={resume} would "
            f"start a different run there and overwrite/prune them; use train.resume=auto to continue it, or a "
            f"new train.output_dir"
        )
    return chosen


def agree_on_resume(tr: Trainer) -> Path | None:
    """One decision: the main process decides (and locks); every process checks it can read exactly
    that checkpoint; any failure stops every process with the same error."""

    def decide() -> tuple[str | None, Any]:
        chosen = decide_resume(tr)
        return (None, None) if chosen is None else (str(chosen), ckpt.read_checksums(chosen))

    def verify(decision: tuple[str | None, Any]) -> str | None:
        path, checksums = decision
        if path is None or tr.acc.is_main_process:  # the main process verified it while deciding
            return None
        return ckpt.readable_problem(path, checksums, hidden=tr.faults.hidden_checkpoint_files)

    path, _ = dist.agree(
        dist.as_group(tr.acc),
        decide,
        verify,
        error=ckpt.CheckpointError,
        failure=lambda d: f"cannot read the checkpoint chosen by the main process, {d[0]}",
        advice="Every process must see the same files (shared storage, fully synced) before training can resume",
    )
    return None if path is None else Path(path)
