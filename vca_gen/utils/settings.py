"""Config fields that say whether changing them breaks resume.

``setting(default, run_defining=...)`` is a dataclass ``field`` whose metadata records the answer, so
the rule lives on the field itself (read by :func:`vca_gen.experiment.schema.run_defining_keys`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

RUN_DEFINING = "run_defining"  # the metadata key


def setting(default: Any = None, *, run_defining: bool, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with ``default`` (or ``factory``) that declares ``run_defining``: ``True`` when
    a change alters what the run computes (resume refuses it), ``False`` when it may change on resume."""
    metadata = {RUN_DEFINING: bool(run_defining)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared_run_defining(f: dataclasses.Field) -> bool | None:
    """What field ``f`` declares (``None``: nothing)."""
    value = f.metadata.get(RUN_DEFINING)
    return None if value is None else bool(value)


__all__ = ["RUN_DEFINING", "setting", "declared_run_defining"]
