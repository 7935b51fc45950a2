"""The sampler registry: one :class:`Sampler` entry per sampler of each objective family.

An entry holds everything the rest of the code needs to know about a sampler:

* ``run(call) -> x``: the sampler itself, given a :class:`SampleCall` (the objective, the counting,
  already-guided model function, noise, labels, parsed steps, checked options, generators);
* ``default_steps``, ``parse_steps(steps, cfg)`` (the steps check) and ``steps_help`` (what it accepts);
* ``options``: the accepted ``--sampler-option`` keys, each a :class:`SamplerOption` with its check
  and, when it has one, the objective-config field that gives its default;
* ``nfe``: the rule for the number of model evaluations; ``help``: one line for ``--help``.

Everything else reads the registry: the objectives' ``sample()`` / ``samplers`` / ``check_sample_args``,
the objective configs' checks of ``sampler`` / ``sample_steps`` and of the option fields, ``sample.py
--help``, the experiment validator (``train.grid`` / ``train.fid``) and the sweeps' ``evaluate`` checks.
A new sampler is one :func:`register` call (the built-in ones register in ``diffusion/samplers.py`` and
``flow/samplers.py`` when :mod:`vca_gen.objectives` is imported).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vca_gen.utils.checks import choice
from vca_gen.utils.rng import GeneratorSpec

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (key, value, the options resolved before this one) -> the checked value; ValueError naming ``key``
OptionCheck = Callable[[str, Any, Mapping[str, Any]], Any]


# --------------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerOption:
    """One accepted sampler option.

    ``check(key, value, resolved)`` returns the value the sampler receives or raises ``ValueError``
    naming ``key`` (``resolved``: the entry's options checked before this one, for dependent options).
    ``field``: the objective-config field that gives the default (and is checked by this same
    ``check`` when the config is checked), else ``default`` is used.
    """

    name: str
    check: OptionCheck
    help: str
    field: str | None = None
    default: Any = None


@dataclass
class SampleCall:
    """What an entry's ``run`` receives. ``model_fn(x (B, C, ...), t (B,), y (B,))`` is already guided
    and counted; ``steps`` is what the entry's ``parse_steps`` returned; ``options`` holds every
    option of the entry, checked, with its default filled in."""

    objective: Any
    model_fn: ModelFn
    noise: torch.Tensor
    labels: torch.Tensor
    steps: Any
    options: dict[str, Any]
    generator: GeneratorSpec = None
    progress: bool = False


@dataclass(frozen=True)
class Sampler:
    """A registered sampler of the objective family ``kind`` ("diffusion" or "flow")."""

    kind: str
    name: str
    run: Callable[[SampleCall], torch.Tensor]
    default_steps: int | str
    parse_steps: Callable[[Any, Any], Any]  # (steps, objective config) -> parsed; ValueError
    steps_help: str  # what parse_steps accepts; ``{field}`` is filled from the objective config
    nfe: str  # the number of model evaluations, in words
    help: str  # one line
    options: tuple[SamplerOption, ...] = field(default_factory=tuple)

    @property
    def option_names(self) -> list[str]:
        return sorted(o.name for o in self.options)

    def accepted_steps(self, cfg: Any) -> str:
        return self.steps_help.format(**(vars(cfg) if cfg is not None else {}))


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------
_REGISTRY: dict[str, dict[str, Sampler]] = {}


def register(entry: Sampler) -> Sampler:
    """Add ``entry`` (a name already taken in its family is an error); returns it."""
    family = _REGISTRY.setdefault(entry.kind, {})
    if entry.name in family:
        raise ValueError(f"a {entry.kind} sampler named {entry.name!r} is already registered")
    if entry.name != entry.name.lower() or not entry.name:
        raise ValueError(f"sampler names are lower case and not empty, got {entry.name!r}")
    family[entry.name] = entry
    return entry


def unregister(kind: str, name: str) -> None:
    """Remove a registered sampler (tests and plug-ins that register temporarily)."""
    _REGISTRY.get(kind, {}).pop(name, None)


def sampler_names(kind: str) -> tuple[str, ...]:
    """Names of the ``kind`` family's samplers, in registration order."""
    return tuple(_REGISTRY.get(kind, {}))


def get_sampler(kind: str, name: str) -> Sampler:
    """The entry, or ``ValueError`` naming the accepted samplers."""
    family = _REGISTRY.get(kind, {})
    if name not in family:
        raise ValueError(f"unknown {kind} sampler {name!r}; accepted: {', '.join(family)}")
    return family[name]


def entries(kind: str | None = None) -> list[Sampler]:
    """Every entry (of one family, or of all)."""
    kinds = [kind] if kind is not None else list(_REGISTRY)
    return [e for k in kinds for e in _REGISTRY.get(k, {}).values()]


def config_options(kind: str) -> list[SamplerOption]:
    """The options of the ``kind`` family that are objective-config fields, once each, in order."""
    seen: dict[str, SamplerOption] = {}
    for e in entries(kind):
        for o in e.options:
            if o.field is not None and o.field not in seen:
                seen[o.field] = o
    return list(seen.values())


def check_config(kind: str, cfg: Any, prefix: str) -> None:
    """The objective config's ``sampler``, ``sample_steps`` and sampler-option fields, by the entries'
    own checks; each error names ``prefix.<field>``, its value and what is accepted."""
    choice(f"{prefix}.sampler", cfg.sampler, sampler_names(kind))
    entry = get_sampler(kind, cfg.sampler)
    try:
        entry.parse_steps(cfg.sample_steps, cfg)
    except ValueError as e:
        raise ValueError(
            f"{prefix}.sample_steps={cfg.sample_steps!r} is not valid; accepted: {entry.accepted_steps(cfg)} ({e})"
        ) from None
    resolved: dict[str, Any] = {}
    for opt in config_options(kind):
        resolved[opt.name] = opt.check(f"{prefix}.{opt.field}", getattr(cfg, str(opt.field)), resolved)


# --------------------------------------------------------------------------------------------
# Option checks (each raises ValueError naming the key, the value and what is accepted)
# --------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def number(low: float | None = None, high: float | None = None, closed: str = "()", allow_zero: bool = False):
    """A finite real number (not a bool), returned as float: in ``closed[0] low, high closed[1]`` when
    ``low`` is given, else ``> 0`` (``>= 0`` with ``allow_zero``)."""
    if low is None:
        accepted = f"a number {'>= 0' if allow_zero else '> 0'}"
    else:
        accepted = f"a number in {closed[0]}{low}, {high}{closed[1]}"

    def check(key: str, value: Any, resolved: Mapping[str, Any]) -> float:
        if not _is_number(value):
            raise ValueError(f"{key}={value!r} is not valid; accepted: a number")
        v = float(value)
        if low is None:
            ok = v >= 0 if allow_zero else v > 0
        else:
            lo_ok = v >= low if closed[0] == "[" else v > low
            ok = lo_ok and (high is None or (v <= high if closed[1] == "]" else v < high))
        if not (ok and math.isfinite(v)):
            raise ValueError(f"{key}={v!r} is not valid; accepted: {accepted}")
        return v

    return check


def one_of(accepted: Sequence[Any], none_as: Any = None):
    """One of ``accepted`` (exactly; ``None`` becomes ``none_as`` when that is given)."""

    def check(key: str, value: Any, resolved: Mapping[str, Any]) -> Any:
        if value is None and none_as is not None:
            value = none_as
        if not any(value == a and type(value) is type(a) for a in accepted):
            raise ValueError(f"{key}={value!r} is not valid; accepted: {', '.join(map(str, accepted))}")
        return value

    return check


def boolean(key: str, value: Any, resolved: Mapping[str, Any]) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key}={value!r} is not valid; accepted: true or false")
    return value


def integer_steps(name: str, low: int | None, family: str = "flow"):
    """Steps of the sampler ``name``: an integer (or a digit string) ``>= low`` (any integer if ``low``
    is None: a sampler that ignores them)."""

    def parse(steps: Any, cfg: Any) -> int:
        try:
            if isinstance(steps, bool):
                raise TypeError
            n = int(steps)
        except (TypeError, ValueError):
            raise ValueError(f"{family} steps must be an integer, got {steps!r}") from None
        if low is not None and n < low:
            raise ValueError(f"steps must be >= {low} for the {name} sampler, got {steps!r}")
        return n

    return parse


# --------------------------------------------------------------------------------------------
# Descriptions (``sample.py --help``, docs)
# --------------------------------------------------------------------------------------------
def help_lines() -> list[str]:
    """Every entry as text: family, name, default steps, NFE rule, help, then its options."""
    out = []
    for e in entries():
        out.append(f"  {e.kind} {e.name}: {e.help}")
        out.append(f"      steps: default {e.default_steps}; model evaluations: {e.nfe}")
        out.extend(f"      option {o.name}: {o.help}" for o in e.options)
    return out


def markdown_table() -> str:
    """Every entry as a Markdown table (for the docs)."""
    rows = ["| objective | sampler | default steps | model evaluations | options | what |", "|---|---|---|---|---|---|"]
    for e in entries():
        opts = ", ".join(f"`{o.name}`" for o in e.options) or "-"
        rows.append(f"| {e.kind} | `{e.name}` | {e.default_steps} | {e.nfe} | {opts} | {e.help} |")
    return "\n".join(rows) + "\n"


__all__ = [
    "Sampler",
    "SamplerOption",
    "SampleCall",
    "register",
    "unregister",
    "sampler_names",
    "get_sampler",
    "entries",
    "config_options",
    "check_config",
    "help_lines",
    "markdown_table",
    "number",
    "one_of",
    "boolean",
    "integer_steps",
]
