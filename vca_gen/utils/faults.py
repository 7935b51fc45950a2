"""Faults that tests inject into the long-running commands, passed down as a parameter.

Production code never reads them from anywhere: every entry point takes ``faults: Faults | None``
(None and ``Faults()`` inject nothing) and hands it to the code that acts on it. Tests build one
in-process, or start a command through ``tests/hooked_cli.py``, which builds it from its own
options for the process it runs in and calls the command's ``main`` with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Faults:
    """What to make go slow or missing in this process (all off by default)."""

    save_pause_s: float = 0.0  # a checkpoint write sleeps half-way (a kill lands mid-write)
    step_sleep_s: float = 0.0  # training sleeps after every step (a signal lands mid-run)
    stall_step: int = 0  # this process sleeps stall_s before training step stall_step (a slow rank) ...
    stall_s: float = 0.0  # ... once; past train.timeout_s, the others' gradient all-reduce times out
    hidden_checkpoint_files: tuple[str, ...] = ()  # files of the resume checkpoint this process does not see
    shard_sleep_s: float = 0.0  # sampling / extraction sleep before each shard of this process
    hidden_shards: tuple[int, ...] = ()  # finished sampling shards this process does not see


NO_FAULTS = Faults()

__all__ = ["Faults", "NO_FAULTS"]
