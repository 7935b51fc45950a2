"""Typed views of an experiment's OmegaConf nodes.

OmegaConf's ``to_object`` / ``to_container`` / ``merge`` are typed loosely (a union of every
container kind); these helpers state what a validated experiment actually gives, so call sites
need no casts of their own. Kept apart from :mod:`vca_gen.experiment.schema` so that
:mod:`~vca_gen.experiment.validate` and :mod:`~vca_gen.experiment.build` (which ``schema`` imports)
can use them too.
"""

from __future__ import annotations

from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from vca_gen.data.config import DataConfig


def data_config(exp: DictConfig) -> DataConfig:
    """The experiment's ``data`` section as a :class:`DataConfig` instance."""
    return cast(DataConfig, OmegaConf.to_object(exp.data))


def plain(node: Any) -> dict[str, Any]:
    """A mapping node (DictConfig) as a plain resolved dict."""
    return cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))


def merged(*configs: Any) -> DictConfig:
    """``OmegaConf.merge`` of mapping configs (the result is a DictConfig when the first one is)."""
    return cast(DictConfig, OmegaConf.merge(*configs))


__all__ = ["data_config", "plain", "merged"]
