"""The one base class of user-facing errors, and the CLI boundary that reports them.

Anything the user can fix (a config value, a missing or damaged file, a bad option) raises a
subclass of :class:`UserError` whose message says what was wrong, where, and what is accepted.
Every CLI wraps its work in :func:`cli_boundary`: a ``UserError`` prints
``<tool>: error: <message>`` on one line and exits with the error's :attr:`UserError.exit_code`
(:data:`EXIT_USAGE` = 2 unless the error says otherwise: a full disk met by a command whose re-run
continues where it stopped exits :data:`EXIT_TEMPFAIL` = 75, as a preempted run does), with no
traceback; a closed stdout (``| head``) ends it quietly with 141. Any other exception is a bug and
propagates with its traceback (it is never disguised as a user error).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_USAGE = 2
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: re-running the same command continues (preempted, or out of space mid-run)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer whose reader left


class UserError(Exception):
    """An error the user can fix; the message names the value, where it came from and what is accepted.

    ``exit_code``: the status a CLI exits with (class default :data:`EXIT_USAGE`; an instance may set
    its own, e.g. :data:`EXIT_TEMPFAIL`)."""

    exit_code: int = EXIT_USAGE


def exit_status(err: BaseException) -> int:
    """The exit status a CLI gives for the user error ``err`` (its ``exit_code``, else 2)."""
    code = getattr(err, "exit_code", EXIT_USAGE)
    return code if isinstance(code, int) and 0 < code < 256 else EXIT_USAGE


class ConfigError(UserError, ValueError):
    """Invalid experiment config: the message names the key, the value and what is accepted."""


def report(tool: str, err: BaseException) -> None:
    """Print ``<tool>: error: <message>`` (one line) to stderr."""
    msg = " ".join(str(err).split("\n")).strip() or type(err).__name__
    print(f"{tool}: error: {msg}", file=sys.stderr, flush=True)


def cli_boundary(tool: str, fn: Callable[[], int | None]) -> int:
    """Run ``fn``; a :class:`UserError` becomes a one-line report and its :func:`exit_status` (2 by default)."""
    try:
        rc = fn()
    except UserError as e:
        report(tool, e)
        return exit_status(e)
    except BrokenPipeError:  # the reader left (``sweep.py run --dry-run | head``): stop quietly
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    return 0 if rc is None else int(rc)


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    import os

    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured in-process)
        pass


__all__ = [
    "UserError",
    "ConfigError",
    "EXIT_USAGE",
    "EXIT_TEMPFAIL",
    "EXIT_BROKEN_PIPE",
    "exit_status",
    "report",
    "cli_boundary",
]
