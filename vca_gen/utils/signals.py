"""Stop signals from a process's first instruction: a stop during start-up exits 75 with nothing written.

``train.py`` and ``sample.py`` finish their current step / shard on SIGTERM, SIGUSR1 or SIGINT,
write what they have and exit 75 (EX_TEMPFAIL: re-run the same command to continue). Those handlers
are installed once the loop is about to start; before that a process spends seconds to minutes
importing torch, checking data and verifying a latent store, and a SIGTERM then (a SLURM preemption)
used to kill it with 143, which a requeue script keyed on 75 drops.

:func:`install_early_stop_handlers`, called as the script's first statement, closes that gap: a stop
signal during start-up is recorded (:func:`received`) and ends the process at once by raising
:class:`EarlyStop`, a ``SystemExit`` with code 75. ``SystemExit`` passes through ``except Exception``,
runs every ``finally`` / ``except BaseException`` clean-up on its way (locks released, temporary files
removed), prints no traceback, and nothing has been written yet: there is nothing to lose, and the
re-run starts afresh. Inside :func:`deferred` (a short critical section, e.g. while a file is renamed
into place) the signal is only recorded and the stop happens when the section ends. The loop's own
handlers replace these when they are installed and may look at :func:`received` to stop before the
first step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

EXIT_REQUEUE = 75  # EX_TEMPFAIL: stopped early, re-run the same command
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class EarlyStop(SystemExit):
    """Raised by the early handlers: exits the process with 75 (no traceback)."""

    def __init__(self, signum: int):
        super().__init__(EXIT_REQUEUE)
        self.signum = signum


class _State:
    tool: str = ""
    received: int | None = None
    defer_depth: int = 0


_state = _State()


def _message(signum: int) -> bytes:
    name = signal.Signals(signum).name
    return (
        f"{_state.tool}: received {name} while starting: stopping before the first step, nothing written; "
        f"re-run the same command (exit {EXIT_REQUEUE})\n"
    ).encode()


def _on_signal(signum: int, frame: Any) -> None:
    first = _state.received is None
    if first:
        _state.received = signum
        try:
            os.write(2, _message(signum))  # os.write: safe even if the signal interrupted a print
        except OSError:
            pass
    if _state.defer_depth == 0:
        raise EarlyStop(signum)


def install_early_stop_handlers(tool: str) -> dict[int, Any]:
    """Install the start-up handlers for SIGTERM, SIGUSR1 and SIGINT (main thread only; elsewhere a no-op).

    Call it as the first statement of a script, before any slow import. Returns the handlers it
    replaced (:func:`restore` puts them back)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    _state.tool = tool
    _state.received = None
    # the three are installed one after the other: block them meanwhile, so that a SIGUSR1 arriving
    # just after SIGTERM's handler is in waits for its own handler instead of killing the process
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if hasattr(signal, "pthread_sigmask") else None
    try:
        return {sig: signal.signal(sig, _on_signal) for sig in STOP_SIGNALS}
    finally:
        if blocked is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a signal that came meanwhile is delivered now


def restore(previous: dict[int, Any]) -> None:
    """Put back the handlers :func:`install_early_stop_handlers` replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def received() -> int | None:
    """The stop signal received during start-up (its number), or None."""
    return _state.received


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A critical section: a stop signal inside it is recorded, and acted on when it ends."""
    _state.defer_depth += 1
    try:
        yield
    finally:
        _state.defer_depth -= 1
    if _state.defer_depth == 0 and _state.received is not None and _early_handlers_active():
        raise EarlyStop(_state.received)


def _early_handlers_active() -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    return signal.getsignal(signal.SIGTERM) is _on_signal


__all__ = [
    "EXIT_REQUEUE",
    "STOP_SIGNALS",
    "EarlyStop",
    "install_early_stop_handlers",
    "restore",
    "received",
    "deferred",
]
