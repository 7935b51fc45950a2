"""The metric registry: one entry per metric, read by everything that names, computes, records or reports one.

**Adding a metric = one new entry.** Write its compute function and ``register(Metric(...))`` it in a
module imported by :mod:`vca_gen.metrics` (see :mod:`vca_gen.metrics.density_coverage` for a whole
metric in one file). Nothing else changes: the readers below take its name, parameters, needs and fields
from the entry.

- ``evaluate_fid.py`` (:mod:`vca_gen.metrics.cli`): ``--metrics`` accepts the registered names, each
  parameter becomes ``--<metric>-<param>``, an entry's ``flag`` (``--kid``, ``--pr``) adds it, the JSON
  result carries every registered field (``None`` when not computed), the summary prints each metric.
- :func:`vca_gen.metrics.evaluation.evaluate` / :func:`~vca_gen.metrics.evaluation.score`: keep the
  features the selected entries need, check their inputs, call their compute functions.
- In-loop evaluation (``train.fid.metrics``, :mod:`vca_gen.train.evaluation`), checked at config load
  (:mod:`vca_gen.experiment.validate`).
- Sweeps (:mod:`vca_gen.sweep`): ``evaluate.metrics`` names, the score command, the cell result fields,
  aggregation over seeds (the ``summary`` fields), the report's labels / formats / directions, and which
  references need stored features.

An unknown name anywhere is :class:`MetricSelectionError` (a ``UserError`` and ``ValueError``: one line
naming where and every accepted name).

Contract of ``Metric.compute(inp, params) -> Scored``: ``inp.samples`` / ``inp.ref`` are
:class:`~vca_gen.metrics.statistics.FeatureStatistics` holding what :class:`Needs` asked for (the driver
has already checked availability and the feature counts of ``Needs.counts``); ``params`` holds every
declared parameter (defaults filled, checked); it returns values for its ``fields`` and ``info`` keys
plus notes (``"<note prefix>: <text>"``). ``inp.cache`` is shared by the metrics of one evaluation, so
entries computed from one pass (density and coverage) can share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vca_gen.metrics.errors import MetricsError

if TYPE_CHECKING:
    from vca_gen.metrics.statistics import FeatureStatistics


class MetricSelectionError(MetricsError, ValueError):
    """A metric name no entry has, or a parameter value an entry does not accept."""


# ----------------------------------------------------------------------------- the entry
@dataclass(frozen=True)
class Field:
    """One number a metric writes into the JSON result (``evaluate_fid.py``, cell records, ``fid.jsonl``)."""

    key: str  # JSON key, e.g. "kid", "kid_std"
    label: str  # report / summary label, e.g. "KID"
    fmt: str = ".4f"  # report format
    lower_is_better: bool | None = True  # None: not a score (e.g. a spread)
    summary: bool = True  # aggregated over seeds and tabled by sweep reports


@dataclass(frozen=True)
class Param:
    """An integer parameter of a metric: ``evaluate_fid.py --<metric>-<name>``; defaults elsewhere."""

    name: str
    default: int
    minimum: int = 1
    help: str = ""

    def flag(self, metric: str) -> str:
        return f"--{metric}-{self.name}".replace("_", "-")


@dataclass(frozen=True)
class Needs:
    """What a metric reads.

    ``ref_stats``: the reference's Gaussian statistics (mu, sigma); ``spatial``: spatial statistics of
    both sets (mu_s, sigma_s: sFID); ``features``: the pool3 features of the samples (kept in memory) and
    of the reference (stored by ``--make-ref --ref-features N``, or an ADM batch's ``arr_0`` images);
    ``counts(params) -> (min sample features, min reference features, why)`` when it needs a number of them.
    """

    ref_stats: bool = False
    spatial: bool = False
    features: bool = False
    counts: Callable[[Mapping[str, int]], tuple[int, int, str]] | None = None


@dataclass
class MetricInput:
    """What a compute function receives (see the module docstring)."""

    samples: FeatureStatistics
    ref: FeatureStatistics
    seed: int = 0  # for metrics drawing random subsets (KID)
    device: Any = None  # torch device for heavy computations (None: CPU)
    cache: dict[Any, Any] = field(default_factory=dict)  # shared by the metrics of one evaluation


@dataclass
class Scored:
    values: dict[str, Any]  # field and info keys
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Metric:
    """One registry entry."""

    name: str  # as written in --metrics, train.fid.metrics, a sweep's evaluate.metrics
    help: str  # one line
    fields: tuple[Field, ...]
    compute: Callable[[MetricInput, Mapping[str, int]], Scored]
    needs: Needs
    params: tuple[Param, ...] = ()
    info: tuple[str, ...] = ()  # other JSON keys it writes (provenance: subset sizes, k, method)
    note: str = ""  # prefix of its notes (default: the name)
    default: bool = False  # computed by evaluate_fid.py when no metric is selected
    flag: str | None = None  # a switch adding it to the selection (evaluate_fid.py --kid)
    line: Callable[[Mapping[str, Any]], str] | None = None  # summary line (default: "label: value" per field)

    @property
    def prefix(self) -> str:
        return self.note or self.name

    def defaults(self) -> dict[str, int]:
        return {p.name: p.default for p in self.params}

    def summary_line(self, values: Mapping[str, Any]) -> str:
        if self.line is not None:
            return self.line(values)
        parts = [
            (f"{f.label:<10}" if i == 0 else f.label) + f": {_fmt(values.get(f.key))}"
            for i, f in enumerate(self.fields)
        ]
        return "   ".join(parts)


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


# ----------------------------------------------------------------------------- the table
_REGISTRY: dict[str, Metric] = {}
# keys the result / record / fid.jsonl writers own (an entry's fields and info keys may not take them)
RESERVED_KEYS = frozenset(
    {"n", "n_ref", "mode", "samples", "reference", "reference_kind", "resolution", "ref_resolution", "weights"}
    | {"weights_sha256", "n_ref_features", "metrics", "params", "notes", "step", "num_samples", "seed"}
)


def register(metric: Metric) -> Metric:
    """Add ``metric`` (its name, JSON keys and flag must be new); returns it."""
    if metric.name in _REGISTRY:
        raise ValueError(f"metric {metric.name!r} is already registered")
    if not metric.fields:
        raise ValueError(f"metric {metric.name!r} declares no fields")
    taken = {k for m in _REGISTRY.values() for k in json_keys([m.name])} | RESERVED_KEYS
    clash = sorted(taken & {*(f.key for f in metric.fields), *metric.info})
    if clash:
        raise ValueError(
            f"metric {metric.name!r}: JSON key(s) {clash} are taken (by another metric or the result itself)"
        )
    if metric.flag and any(m.flag == metric.flag for m in _REGISTRY.values()):
        raise ValueError(f"metric {metric.name!r}: flag {metric.flag} is taken")
    _REGISTRY[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    """Remove an entry (tests that register their own)."""
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    """Every registered name, in registration order."""
    return list(_REGISTRY)


def all_metrics() -> list[Metric]:
    return list(_REGISTRY.values())


def get(name: str, where: str = "metric") -> Metric:
    if name not in _REGISTRY:
        raise MetricSelectionError(f"{where}: unknown metric {name!r}; accepted: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def default_names() -> list[str]:
    """What ``evaluate_fid.py`` computes when no metric is selected (FID and sFID)."""
    return [m.name for m in _REGISTRY.values() if m.default]


def parse_names(value: Any, where: str) -> list[str]:
    """A selection (a list of names, or one comma-separated string) → registered names, in the given order.

    Unknown names, duplicates, an empty selection and non-strings are one-line errors naming ``where``
    and every accepted name."""
    items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
    accepted = ", ".join(_REGISTRY)
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(s, str) for s in items):
        raise MetricSelectionError(f"{where}={value!r} is not valid; accepted: a non-empty list of {accepted}")
    unknown = [s for s in items if s not in _REGISTRY]
    if unknown:
        raise MetricSelectionError(
            f"{where}: unknown metric{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"accepted: {accepted}"
        )
    dups = sorted({s for s in items if list(items).count(s) > 1})
    if dups:
        raise MetricSelectionError(f"{where}: {dups} given more than once; accepted: each of {accepted} at most once")
    return list(items)


def ordered(selection: Iterable[str]) -> list[str]:
    """``selection`` in registration order (the order of JSON fields, report tables and plots)."""
    chosen = set(selection)
    return [n for n in _REGISTRY if n in chosen]


def resolve_params(selection: Sequence[str], given: Mapping[str, Mapping[str, int]] | None = None) -> dict:
    """``{metric: {param: value}}`` for ``selection``: defaults overridden by ``given``, each checked."""
    given = dict(given or {})
    out: dict[str, dict[str, int]] = {}
    for name in selection:
        m = get(name)
        mine = dict(given.pop(name, {}) or {})
        known = {p.name: p for p in m.params}
        bad = sorted(set(mine) - set(known))
        if bad:
            raise MetricSelectionError(
                f"metric {name}: unknown parameter(s) {bad}; accepted: {', '.join(known) or 'none'}"
            )
        vals = m.defaults()
        for k, v in mine.items():
            p = known[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < p.minimum:
                raise MetricSelectionError(f"{p.flag(name)}={v!r} is not valid; accepted: an integer >= {p.minimum}")
            vals[k] = v
        out[name] = vals
    return out


# ----------------------------------------------------------------------------- what readers ask
def fields_of(selection: Iterable[str], summary_only: bool = False) -> list[Field]:
    """The fields of the selected metrics, in registration order."""
    return [f for n in ordered(selection) for f in _REGISTRY[n].fields if f.summary or not summary_only]


def json_keys(selection: Iterable[str] | None = None) -> list[str]:
    """Value and info keys of the selected (default: all) metrics."""
    sel = ordered(selection) if selection is not None else list(_REGISTRY)
    return [*(f.key for n in sel for f in _REGISTRY[n].fields), *(k for n in sel for k in _REGISTRY[n].info)]


def value_keys() -> list[str]:
    """Every registered field key (what a sweep cell records from ``score.json``)."""
    return [f.key for m in _REGISTRY.values() for f in m.fields]


def lookup_field(key: str) -> Field:
    """The registered field with JSON key ``key`` (report labels and formats)."""
    for m in _REGISTRY.values():
        for f in m.fields:
            if f.key == key:
                return f
    raise MetricSelectionError(f"unknown metric field {key!r}; accepted: {', '.join(value_keys())}")


def needing(selection: Iterable[str], what: str) -> list[str]:
    """Names in ``selection`` whose :class:`Needs` has ``what`` (``features``, ``spatial``, ``ref_stats``)."""
    return [n for n in ordered(selection) if getattr(_REGISTRY[n].needs, what)]


def count_problems(
    selection: Sequence[str],
    params: Mapping[str, Mapping[str, int]] | None,
    n_samples: int | None,
    n_ref: int | None,
) -> list[tuple[str, str]]:
    """``[(metric, reason)]`` for the selected metrics whose ``Needs.counts`` the given numbers of sample
    and reference features do not meet (``None``: unknown, not checked)."""
    params = resolve_params(selection, params)
    out = []
    for name in ordered(selection):
        counts = _REGISTRY[name].needs.counts
        if counts is None:
            continue
        need_s, need_r, why = counts(params[name])
        short = (n_samples is not None and n_samples < need_s) or (n_ref is not None and n_ref < need_r)
        if short:
            out.append(
                (
                    name,
                    f"{why}; it needs at least {need_s} sample and {need_r} reference features, "
                    f"the samples have {n_samples if n_samples is not None else 'an unknown number of'}, "
                    f"the reference {n_ref if n_ref is not None else 'an unknown number of'} features",
                )
            )
    return out


def check_reference(
    selection: Sequence[str],
    has_features: bool,
    has_spatial: bool,
    where: str,
    what: str,
    params: Mapping[str, Mapping[str, int]] | None = None,
    n_samples: int | None = None,
    n_ref: int | None = None,
) -> None:
    """Raise :class:`MetricSelectionError` (one line) when the reference ``what`` cannot serve the selection:
    features missing, spatial statistics missing, or too few sample / reference features."""
    feats = needing(selection, "features")
    if feats and not has_features:
        raise MetricSelectionError(
            f"{where}: {', '.join(feats)} need{'s' if len(feats) == 1 else ''} reference features, and {what} "
            f"stores none (remake it with evaluate_fid.py --make-ref --ref-features N, or use an ADM batch with arr_0)"
        )
    spatial = needing(selection, "spatial")
    if spatial and not has_spatial:
        raise MetricSelectionError(
            f"{where}: {', '.join(spatial)} need{'s' if len(spatial) == 1 else ''} spatial statistics "
            f"(mu_s, sigma_s), and {what} has none"
        )
    short = count_problems(selection, params, n_samples, n_ref)
    if short:
        raise MetricSelectionError(f"{where}: " + "; ".join(f"{name}: {why}" for name, why in short))


__all__ = [
    "Field",
    "Param",
    "Needs",
    "Metric",
    "MetricInput",
    "Scored",
    "MetricSelectionError",
    "register",
    "unregister",
    "names",
    "all_metrics",
    "get",
    "default_names",
    "parse_names",
    "ordered",
    "resolve_params",
    "fields_of",
    "json_keys",
    "value_keys",
    "lookup_field",
    "needing",
    "count_problems",
    "check_reference",
]
