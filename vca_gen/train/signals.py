"""Stop signals of a training run: SIGTERM, SIGUSR1 and SIGINT (Ctrl-C).

:func:`install_stop_handlers` installs the loop's handlers (the trainer calls it when its loop starts,
replacing the start-up handlers of :func:`vca_gen.utils.signals.install_early_stop_handlers`, which
``train.py`` installs first: a stop while starting exits 75 with nothing written; a caller may also
install them earlier and the trainer then reads that :class:`StopRequest`). From then on every
process finishes the current step (the stop is agreed through that step's all-reduce), writes a
checkpoint and returns with ``stopped_by`` set; ``train.py`` then exits :data:`EXIT_PREEMPTED`.
A second Ctrl-C aborts at once (``KeyboardInterrupt``).
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from typing import Any

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal, checkpoint written, re-run the same command
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, n))


@dataclass
class StopRequest:
    """The stop signal received (``signum``; ``None``: none yet) and the handlers it replaced."""

    signum: int | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now, no checkpoint
        self.signum = signum


_installed: StopRequest | None = None


def install_stop_handlers() -> StopRequest:
    """Record SIGTERM / SIGUSR1 / SIGINT in the returned :class:`StopRequest` from now on (main
    thread only; elsewhere the request is returned but nothing is installed). Idempotent: a second
    call returns the request already installed."""
    global _installed
    if _installed is not None:
        return _installed
    request = StopRequest()
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            request.previous[sig] = signal.signal(sig, request.on_signal)
        _installed = request
    return request


def installed_stop_request() -> StopRequest | None:
    """The request of :func:`install_stop_handlers` while its handlers are installed, else ``None``."""
    return _installed


def restore_stop_handlers(request: StopRequest) -> None:
    """Put back the handlers ``request`` replaced (no-op for one that installed nothing)."""
    global _installed
    for sig, handler in request.previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    request.previous = {}
    if _installed is request:
        _installed = None


__all__ = [
    "EXIT_PREEMPTED",
    "STOP_SIGNALS",
    "StopRequest",
    "install_stop_handlers",
    "installed_stop_request",
    "restore_stop_handlers",
]
