"""The one base class of user-facing errors, and the CLI boundary that reports them.

Anything the user can fix (a config value, a missing or damaged file, a bad option) raises a
subclass of :class:`UserError` whose message says what was wrong, where, and what is accepted.
Every CLI wraps its work in :func:`cli_boundary`: a ``UserError`` prints
``<tool>: error: <message>`` on one line and exits 2, with no traceback. Any other exception is a
bug and propagates with its traceback (it is never disguised as a user error).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_USAGE = 2


class UserError(Exception):
    """An error the user can fix; the message names the value, where it came from and what is accepted."""


class ConfigError(UserError, ValueError):
    """Invalid experiment config: the message names the key, the value and what is accepted."""


def report(tool: str, err: BaseException) -> None:
    """Print ``<tool>: error: <message>`` (one line) to stderr."""
    msg = " ".join(str(err).split("\n")).strip() or type(err).__name__
    print(f"{tool}: error: {msg}", file=sys.stderr, flush=True)


def cli_boundary(tool: str, fn: Callable[[], int | None]) -> int:
    """Run ``fn``; a :class:`UserError` becomes a one-line report and exit status 2."""
    try:
        rc = fn()
    except UserError as e:
        report(tool, e)
        return EXIT_USAGE
    return 0 if rc is None else int(rc)


__all__ = ["UserError", "ConfigError", "EXIT_USAGE", "report", "cli_boundary"]
