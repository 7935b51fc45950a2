"""YAML files and ``key=value`` overrides read the one way OmegaConf reads them, every failure one line.

Experiment files (:mod:`vca_gen.experiment.schema`) and sweep files (:mod:`vca_gen.sweep.spec`) are
both read here, with OmegaConf's own YAML loader (``OmegaConf.create`` of the text: YAML 1.2 floats
such as ``1e-4``, duplicate keys refused, no Python tags) and turned into plain containers without
resolving ``${...}`` interpolations (those belong to the experiment that receives them). A file that
is a directory, missing, unreadable, not UTF-8, not YAML, or holds a key twice raises ``error`` (a
:class:`~vca_gen.errors.UserError` subclass given by the caller) with one line naming the file, the
line and column where the parser stopped, and what is accepted. :func:`parse_overrides` does the same
for dotted overrides (``train.lr=2e-4``), naming the override that does not parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vca_gen.errors import UserError


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _yaml_problem(e: yaml.YAMLError) -> str:
    """``problem at line L, column C`` of a YAML error (one line, 1-based positions)."""
    if isinstance(e, yaml.MarkedYAMLError):
        where = e.problem_mark
        problem = _one_line(e.problem or e.context or type(e).__name__)
        if where is not None:
            return f"{problem} at line {where.line + 1}, column {where.column + 1}"
        return problem
    return _one_line(str(e))


def parse_yaml_text(text: str, source: str, error: type[UserError] = UserError) -> Any:
    """YAML ``text`` → plain data (dict / list / scalar; ``{}`` for an empty text), with OmegaConf's loader."""
    try:
        if not text.strip():
            return {}
        node = OmegaConf.create(text)
    except yaml.constructor.ConstructorError as e:
        problem = e.problem or ""
        if problem.startswith("found duplicate key "):
            key = problem[len("found duplicate key ") :]
            line = e.problem_mark.line + 1 if e.problem_mark is not None else "?"
            raise error(
                f"{source}: key {key!r} appears twice (again at line {line}); YAML would silently keep only one; "
                f"accepted: each key once per mapping"
            ) from None
        raise error(f"{source}: not valid YAML: {_yaml_problem(e)}") from None
    except yaml.YAMLError as e:
        raise error(f"{source}: not valid YAML: {_yaml_problem(e)}") from None
    except OmegaConfBaseException as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(f"{source}: not a valid config: {_one_line(first)}") from None
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return node


def read_yaml_file(path: str | Path, what: str = "config file", error: type[UserError] = UserError) -> Any:
    """The YAML file ``path`` as plain data; ``what`` names it in errors (``"sweep file"``)."""
    p = Path(path)
    if p.is_dir():
        raise error(f"{what} {p} is a directory; accepted: a YAML file")
    if not p.exists():
        raise error(f"{what} {p} does not exist")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise error(f"{what} {p} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise error(
            f"{p}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}, line {line}); "
            f"accepted: a UTF-8 YAML file"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return parse_yaml_text(text, str(p), error)


def read_yaml_mapping(path: str | Path, what: str = "config file", error: type[UserError] = UserError) -> dict:
    """:func:`read_yaml_file` that must be a mapping at the top level (an empty file is ``{}``)."""
    data = read_yaml_file(path, what, error)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} must be a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str, error: type[UserError] = UserError) -> tuple[str, Any]:
    """One dotted ``key=value`` override → (key, value parsed as OmegaConf parses it); one line naming it."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise error(f"override {text!r} is not of the form key=value (e.g. train.lr=2e-4)")
    try:
        node = OmegaConf.from_dotlist([text])
    except yaml.YAMLError as e:
        raise error(f"override {text!r}: the value is not valid YAML: {_yaml_problem(e)}") from None
    except OmegaConfBaseException as e:
        msg = _one_line(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise error(f"override {text!r} does not parse: {msg}") from None
    value: Any = node
    for part in key.strip().split("."):
        value = value[part]
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    return key.strip(), value


def parse_overrides(overrides: Sequence[str], error: type[UserError] = UserError) -> DictConfig:
    """Dotted overrides → one DictConfig; each override is checked alone first, so an error names it."""
    for o in overrides:
        parse_override(o, error)
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except (yaml.YAMLError, OmegaConfBaseException) as e:  # e.g. a.b=1 then a=2: one key both leaf and section
        raise error(f"overrides {list(overrides)} do not combine: {_one_line(str(e))}") from None


def scalar_round_trips(value: str) -> bool:
    """Whether the text ``value``, given bare as an override value, parses back to the same string."""
    try:
        return OmegaConf.from_dotlist([f"_v={value}"])["_v"] == value
    except (yaml.YAMLError, OmegaConfBaseException, ValueError):
        return False


__all__ = [
    "parse_yaml_text",
    "read_yaml_file",
    "read_yaml_mapping",
    "parse_override",
    "parse_overrides",
    "scalar_round_trips",
]
