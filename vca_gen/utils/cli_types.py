"""Typed command-line values, checked at the boundary: ``argparse`` ``type=`` callables shared by every CLI.

Each callable turns the option's text into its value or raises :class:`argparse.ArgumentTypeError`
saying what is accepted; argparse then prints ``<tool>: error: argument --opt: <why>`` (one line
after the usage), exits 2, and nothing has been written. So a seed that does not fit a 64-bit
generator, a timeout of ``nan`` or a device this machine does not have is refused before any
import of the slow parts, any lock or any output directory::

    p.add_argument("--seed", type=cli_types.seed, default=0)
    p.add_argument("--timeout-s", type=cli_types.timeout_s, default=1800.0)
    p.add_argument("--device", type=cli_types.device)

Checks that relate several options (e.g. "--overwrite needs --make-ref") stay with each CLI's
``check_args`` and go through ``parser.error`` so they read the same.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

SEED_LIMIT = 2**63  # seeds index numpy / torch generators: [0, 2**63)
INT_LIMIT = 2**63  # counts beyond this are not representable by torch's int64


def _int(text: str) -> int:
    try:
        return int(str(text).strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _check_int(value: int, text: str, low: int, what: str) -> int:
    if not low <= value < INT_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; accepted: {what}")
    return value


def seed(text: str) -> int:
    """A seed: an integer in [0, 2**63)."""
    value = _int(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; accepted: an integer in [0, 2**63)")
    return value


def positive_int(text: str) -> int:
    """A count that must be at least 1."""
    return _check_int(_int(text), text, 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """A count that may be 0."""
    return _check_int(_int(text), text, 0, "an integer >= 0")


def int_choice(*accepted: int) -> Callable[[str], int]:
    """One of ``accepted`` integers (an argparse ``choices`` that also names a non-integer)."""

    def parse(text: str) -> int:
        value = _int(text)
        if value not in accepted:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid; accepted: {', '.join(map(str, accepted))}")
        return value

    parse.__name__ = "int_choice"
    return parse


def _float(text: str) -> float:
    try:
        return float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def finite_float(text: str) -> float:
    """Any finite number (not nan / inf)."""
    value = _float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; accepted: a finite number")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; accepted: a finite number > 0")
    return value


def timeout_s(text: str) -> float:
    """A timeout in seconds: finite, > 0 and representable by ``datetime.timedelta``."""
    value = positive_float(text)
    if value > 86400 * 365 * 100:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; accepted: a finite number of seconds > 0")
    return value


def fraction(text: str) -> float:
    """A finite number in [0, 1]."""
    value = _float(text)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; accepted: a number in [0, 1]")
    return value


def device(text: str) -> str:
    """A torch device this machine has: ``cpu``, ``cuda`` / ``cuda:N`` (N < the GPU count), ``mps``."""
    import torch

    try:
        dev = torch.device(str(text).strip())
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; accepted: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cpu":
        return str(dev)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA device; accepted: cpu")
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {count} CUDA device(s); accepted: cpu, cuda, cuda:0..cuda:{count - 1}"
            )
        return str(dev)
    if dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; accepted: cpu")
        return str(dev)
    raise argparse.ArgumentTypeError(f"{text!r} is not supported; accepted: cpu, cuda, cuda:N, mps")


def _path(text: str) -> Path:
    if not str(text).strip():
        raise argparse.ArgumentTypeError("an empty path is not valid")
    if "\x00" in str(text):
        raise argparse.ArgumentTypeError(f"{text!r} contains a NUL byte")
    return Path(text)


def existing_path(text: str) -> str:
    """A file or folder that exists (kept as the string the user gave)."""
    p = _path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return str(text)


def existing_file(text: str) -> str:
    """A file that exists (a folder is named as one)."""
    p = _path(text)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; accepted: a file")
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return str(text)


def existing_dir(text: str) -> str:
    """A folder that exists (a file is named as one)."""
    p = _path(text)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; accepted: a directory")
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return str(text)


def output_path(text: str) -> str:
    """A path to create later: non-empty, no NUL byte (whether it can be created is checked by the CLI)."""
    _path(text)
    return str(text)


def nonempty(text: str) -> str:
    """A non-blank string."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("an empty value is not valid")
    return str(text)


__all__ = [
    "SEED_LIMIT",
    "seed",
    "positive_int",
    "non_negative_int",
    "int_choice",
    "finite_float",
    "positive_float",
    "timeout_s",
    "fraction",
    "device",
    "existing_path",
    "existing_file",
    "existing_dir",
    "output_path",
    "nonempty",
]
