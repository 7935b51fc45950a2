"""Tiny value checks used by every config's ``check``: each raises ``ValueError`` naming the key,
the value and what is accepted (the experiment turns it into a ConfigError)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def choice(key: str, value: Any, accepted: Sequence[Any]) -> None:
    if value not in accepted:
        raise ValueError(f"{key}={value!r} is not valid; accepted: {', '.join(map(str, accepted))}")


def positive(key: str, value: Any, allow_zero: bool = False) -> None:
    ok = value is not None and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{key}={value!r} is not valid; accepted: a number {'>= 0' if allow_zero else '> 0'}")


def in_range(key: str, value: Any, low: float, high: float, closed: str = "[]") -> None:
    lo_ok = value >= low if closed[0] == "[" else value > low
    hi_ok = value <= high if closed[1] == "]" else value < high
    if value is None or not (lo_ok and hi_ok):
        raise ValueError(f"{key}={value!r} is not valid; accepted: a number in {closed[0]}{low}, {high}{closed[1]}")
