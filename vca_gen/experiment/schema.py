"""Typed experiment configs (OmegaConf structured configs), YAML composition and validation.

An experiment YAML has the sections ``model`` (:class:`ModelConfig`), ``objective``
(:class:`vca_gen.objectives.base.ObjectiveConfig`), ``data`` (:class:`vca_gen.data.config.DataConfig`),
``train`` (:class:`TrainConfig`) and ``logging`` (:class:`LoggingConfig`), plus ``name``.
A YAML may start with ``_base_: other.yaml`` (or a list of files; paths relative to the YAML),
which are merged first, in order, so experiment files only state their differences.

``load_config(path, overrides)`` composes, applies dotted ``key=value`` overrides, validates
(unknown keys → :class:`ConfigError` naming the key and listing the valid ones; wrong types and
values → the key, the value and what is accepted) and fills the derived fields
``model.input_size`` / ``model.in_channels`` from the data config.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vca_gen.data.config import DataConfig
from vca_gen.errors import ConfigError
from vca_gen.experiment.typed import data_config, merged, plain
from vca_gen.experiment.validate import MIXED_PRECISION, TRACKERS, check_experiment  # noqa: F401
from vca_gen.objectives import ObjectiveConfig
from vca_gen.utils import yaml_files
from vca_gen.utils.settings import declared_run_defining, setting
from vca_gen.utils.yaml_files import read_yaml_mapping

BASE_KEY = "_base_"
_TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}  # OmegaConf type names


@dataclass
class ModelConfig:
    """Backbone (see ``vca_gen.models.create_model``); ``input_size``/``in_channels`` come from data."""

    name: str = "DiT-S/2"  # DiT-{Ti,S,B,L,XL}/{2,4,8} or SiT-…
    attention: str = "mhsa"  # mhsa | vca | diff
    attention_options: dict[str, Any] = field(default_factory=dict)  # kind-specific (validated)
    learn_sigma: bool = True  # out_channels = 2 * in_channels
    class_dropout_prob: float = 0.1  # label dropout for classifier-free guidance
    grad_checkpointing: bool = setting(False, run_defining=False)
    num_classes: int = 1000
    depth: int | None = None  # architecture overrides for custom small models
    hidden_size: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    input_size: int | None = None  # derived from data (error if set and different)
    in_channels: int | None = None  # derived from data (error if set and different)
    init_from: str | None = setting(None, run_defining=False)  # start from: official .pt, checkpoint, export


@dataclass
class GridConfig:
    """EMA preview grid PNGs during training (``train.grid``), made by the sampling engine's image maker.

    Sample i of the grid has label ``classes[i % len(classes)]`` and all its randomness from a
    generator seeded ``seed + i`` (as sample.py), so grids of successive steps are comparable.
    ``sampler``/``steps``/``options`` ``None``/empty: the objective's sampling protocol.
    """

    every: int = 10_000  # optimizer steps between grids; 0 = off
    num: int = 16  # images in the grid
    classes: list[int] = field(default_factory=list)  # empty: 0, 1, 2, … cycling
    nrow: int = 0  # images per row; 0 = about sqrt(num)
    seed: int = 0  # image i uses seed + i
    sampler: str | None = None  # None: the objective's sampler
    steps: str | None = None  # None: that sampler's default steps
    cfg_scale: float = 1.0  # classifier-free guidance (1 = none)
    cfg_interval: list[float] | None = None  # [LO, HI]: guide only there (objective's time); None: everywhere
    options: dict[str, Any] = field(default_factory=dict)  # extra sampler options (eta, last_step, ...)


@dataclass
class FidConfig:
    """In-loop FID (``train.fid``): a small-N version of ``sample.py`` + ``evaluate_fid.py``.

    Sample i has label ``i % num_classes`` and its randomness from a generator seeded
    ``seed + i``, exactly as ``sample.py --seed SEED``, and every process samples its share.
    Defaults are the objective's sampling protocol with no guidance (the FID protocol).
    """

    every: int = 0  # optimizer steps between evaluations; 0 = off
    num_samples: int = 5000  # N (a multiple of model.num_classes)
    ref: str | None = None  # reference statistics .npz (evaluate_fid.py --make-ref) or ADM batch
    seed: int = 0  # sample i uses seed + i (sample.py --seed)
    sampler: str | None = None  # None: the objective's FID-protocol sampler
    steps: str | None = None  # None: that sampler's default steps
    cfg_scale: float = 1.0  # 1 = no guidance (the papers' protocol)
    cfg_interval: list[float] | None = None  # [LO, HI]: guide only there (objective's time); None: everywhere
    options: dict[str, Any] = field(default_factory=dict)  # extra sampler options
    batch_size: int = 50  # per-process sampling and Inception batch (evaluate_fid.py's 50)
    metrics: list[str] = field(default_factory=lambda: ["fid"])  # vca_gen.metrics.registry names, e.g. density


@dataclass
class TrainConfig:
    """Optimisation, precision, checkpointing, sampling and evaluation during training.

    Every field declares ``run_defining``: ``True`` when changing it changes what the run computes,
    so resume refuses the change (naming the key); ``False`` when it may change between resumes
    (:func:`run_defining_fields` refuses a field that declares neither).
    """

    global_batch_size: int = setting(256, run_defining=True)  # over all processes; divides by the process count
    micro_batch_size: int | None = setting(None, run_defining=False)  # per-process forward batch → accumulation
    lr: float = setting(1e-4, run_defining=True)
    weight_decay: float = setting(0.0, run_defining=True)
    betas: list[float] = setting(factory=lambda: [0.9, 0.999], run_defining=True)
    eps: float = setting(1e-8, run_defining=True)
    warmup_steps: int = setting(0, run_defining=True)  # linear warm-up from 0 to lr
    grad_clip: float = setting(0.0, run_defining=True)  # max grad norm; 0 disables clipping
    max_steps: int = setting(400_000, run_defining=False)
    ema_decay: float = setting(0.9999, run_defining=True)
    ema_warmup: bool = setting(False, run_defining=True)  # decay min(ema_decay, (1+n)/(10+n)) after n steps
    mixed_precision: str = setting("auto", run_defining=False)  # auto (bf16 on CUDA, fp32 on CPU) | no | bf16 | fp16
    tf32: bool = setting(True, run_defining=False)
    compile: bool = setting(False, run_defining=False)  # torch.compile the training forward
    seed: int = setting(0, run_defining=True)  # weights init, noise/time/label-dropout streams
    log_every: int = setting(100, run_defining=False)
    ckpt_every: int = setting(10_000, run_defining=False)
    keep_last: int = setting(2, run_defining=False)  # newest checkpoints kept (plus milestones); 0 keeps all
    milestone_every: int = setting(100_000, run_defining=False)  # multiples are never pruned; 0 = none
    grid: GridConfig = setting(factory=GridConfig, run_defining=False)  # EMA preview grids
    fid: FidConfig = setting(factory=FidConfig, run_defining=False)  # in-loop FID
    max_nonfinite: int = setting(10, run_defining=False)  # stop after this many consecutive non-finite steps
    output_dir: str = setting("runs/${name}", run_defining=False)
    resume: str = setting("auto", run_defining=False)  # auto | none | PATH (checkpoint or run dir)
    timeout_s: float = setting(1800.0, run_defining=False)  # collective timeout (s): a rank stuck longer fails


@dataclass
class LoggingConfig:
    tracker: str = "tensorboard"  # any accelerate tracker, or "none"
    project: str = "vca-gen"


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# ----------------------------------------------------------------------------- key checking
def _check_keys(user: Any, schema: type, prefix: str, source: str) -> None:
    """Raise ConfigError for any key of ``user`` (nested mapping) not in dataclass ``schema``."""
    if not isinstance(user, Mapping):
        where = prefix or "the config"
        raise ConfigError(f"{source}: '{where}' must be a mapping of keys, got {type(user).__name__} {user!r}")
    fields = [f.name for f in dataclasses.fields(schema)]
    hints = _type_hints(schema)
    for key, value in user.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{source}: unknown config key '{full}'{hint}; valid keys in "
                f"'{prefix or '<top level>'}': {', '.join(fields)}"
            )
        sub = hints.get(key)
        if isinstance(sub, type) and dataclasses.is_dataclass(sub) and value is not None:
            _check_keys(value, sub, full, source)


@functools.cache
def _type_hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


# ----------------------------------------------------------------------------- composition
def _kind_set_by(layer: Any) -> str | None:
    """The attention kind a layer (one file, or the whole override list) states, else None."""
    model = layer.get("model") if isinstance(layer, Mapping) else None
    kind = model.get("attention") if isinstance(model, Mapping) else None
    return kind if isinstance(kind, str) else None


def merge_layer(composed: DictConfig, layer: DictConfig) -> DictConfig:
    """``layer`` merged over ``composed``; a layer that switches ``model.attention`` to another kind
    first drops the ``model.attention_options`` of the layers before it.

    So options belong to the kind they were written for: ``_base_/vca.yaml``'s ``dwconv: true`` never
    turns a later ``model.attention=mhsa`` into MHSA+conv, while options stated in the same layer as the
    switch, or after it (``model.attention=mhsa model.attention_options.dwconv=true``), apply to the new kind.
    """
    new = _kind_set_by(layer)
    model = composed.get("model")
    if new is not None and isinstance(model, Mapping):
        old = model.get("attention") or ModelConfig.attention
        if new != old and "attention_options" in model:
            composed = composed.copy()
            del composed.model["attention_options"]
    return merged(composed, layer)


def compose_yaml(path: Path | str, _seen: Sequence[Path] = ()) -> DictConfig:
    """The YAML at ``path`` merged over its ``_base_`` files (recursively), as an untyped DictConfig."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: circular _base_ chain: {' -> '.join(map(str, (*_seen, path)))}")
    data = read_yaml_mapping(path, "config file", ConfigError)  # one line naming the file on any parse error
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(
            f"{path}: {BASE_KEY} must be a file name or a list of file names (relative to this file), got {bases!r}"
        )
    base = OmegaConf.create()
    for b in bases:
        base = merge_layer(base, compose_yaml(path.parent / b, (*_seen, path)))
    return merge_layer(base, OmegaConf.create(data))


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """Dotted ``key=value`` strings (values parsed as YAML, as OmegaConf does) → DictConfig; a bad one is
    one line naming it (``vca_gen.utils.yaml_files``, shared with the sweep files)."""
    return yaml_files.parse_overrides(overrides, ConfigError)


# ----------------------------------------------------------------------------- run-defining settings
# What a run computes is defined by the sections model / objective / data (every field, unless it
# declares ``run_defining=False``) and by the train fields that declare ``run_defining=True``; resume
# refuses any change to them, naming each key. Everything else (max_steps, logging, checkpoint
# cadence, grids, FID, workers, paths) may change. The rule is declared on each field with
# :func:`vca_gen.utils.settings.setting`.
RUN_DEFINING_SECTIONS = ("model", "objective", "data")


def run_defining_fields(schema: type, default: bool | None) -> tuple[str, ...]:
    """Names of the fields of dataclass ``schema`` that define the run. A field without a declaration
    counts as ``default``; with ``default=None`` every field must declare it (else a TypeError naming it)."""
    out = []
    for f in dataclasses.fields(schema):
        declared = declared_run_defining(f)
        if declared is None and default is None:
            raise TypeError(
                f"{schema.__name__}.{f.name} does not declare whether changing it breaks resume: write "
                f"`{f.name}: ... = setting(default, run_defining=True|False)` (vca_gen.utils.settings)"
            )
        if default if declared is None else declared:
            out.append(f.name)
    return tuple(out)


def _free_keys() -> frozenset[str]:
    """Keys of the run-defining sections that declare ``run_defining=False``."""
    free = set()
    for section in RUN_DEFINING_SECTIONS:
        cls = _type_hints(ExperimentConfig)[section]
        defining = set(run_defining_fields(cls, default=True))
        free |= {f"{section}.{f.name}" for f in dataclasses.fields(cls) if f.name not in defining}
    return frozenset(free)


RUN_DEFINING_TRAIN = run_defining_fields(TrainConfig, default=None)  # every train field must declare
RUN_FREE_KEYS = _free_keys()


# ----------------------------------------------------------------------------- every field
@dataclass(frozen=True)
class FieldInfo:
    """One config value: its dotted ``key`` (``train.grid.seed``), its ``type`` (the annotation:
    ``int``, ``int | None``, ``list[float]``, ``dict[str, Any]``...), its ``default`` and whether
    changing it breaks resume (``run_defining``)."""

    key: str
    type: Any
    default: Any
    run_defining: bool


def iter_fields(schema: type = ExperimentConfig, prefix: str = "", inherited: bool = False) -> Iterator[FieldInfo]:
    """Every leaf field of the experiment schema, depth first in declaration order (nested dataclass
    sections are walked, not listed). The one enumeration of the config keys: the resume rule, the
    value checks at load time and table-driven tests of bad values read it.

    ``run_defining``: what the field declares (:func:`~vca_gen.utils.settings.setting`), else what its
    section is (the sections ``model``, ``objective`` and ``data`` define the run; others do not)."""
    hints = _type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        declared = declared_run_defining(f)
        section = f.name in RUN_DEFINING_SECTIONS if not prefix else inherited
        defining = section if declared is None else declared
        sub = hints[f.name]
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            yield from iter_fields(sub, key, defining)
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        yield FieldInfo(key, sub, default, defining)


SEED_LIMIT = 2**63  # seeds are 63-bit (vca_gen.data.sampler.mix_seed, torch generators)


def _leaves(cfg: DictConfig) -> Iterator[tuple[FieldInfo, Any]]:
    """``(field, value)`` of every scalar config value (list items one by one)."""
    for f in iter_fields():
        value = OmegaConf.select(cfg, f.key)
        for v in value if isinstance(value, (list, tuple, ListConfig)) else [value]:
            if v is not None and not isinstance(v, bool):
                yield f, v


SELF_CHECKED = ("train.grid.", "train.fid.")  # sampling settings: the sampler registry's entries check them


def check_representable(cfg: DictConfig, finite: bool = False) -> None:
    """Every number a config field holds is finite (``finite``: only that, and not in the sampling
    settings of :data:`SELF_CHECKED`, whose checks state their exact range), and every seed (a key
    named ``seed``) is in [0, 2^63); else a :class:`ConfigError` naming the key, the value and what
    is accepted."""
    for f, v in _leaves(cfg):
        if isinstance(v, float) and not math.isfinite(v) and not (finite and f.key.startswith(SELF_CHECKED)):
            raise ConfigError(f"{f.key}={v!r} is not valid; accepted: a finite number")
        if not finite and isinstance(v, int) and f.key.rsplit(".", 1)[-1] == "seed" and not 0 <= v < SEED_LIMIT:
            raise ConfigError(f"{f.key}={v!r} is not valid; accepted: an integer in [0, 2^63)")


def check_counts(cfg: DictConfig) -> None:
    """Every integer config value is >= 0 (the sections check their own stricter ranges first)."""
    for f, v in _leaves(cfg):
        if isinstance(v, int) and v < 0:
            raise ConfigError(f"{f.key}={v!r} is not valid; accepted: an integer >= 0")


def typed_experiment(cfg: DictConfig) -> ExperimentConfig:
    """A validated experiment as its typed section objects (:class:`ExperimentConfig` and the
    dataclasses under it): what the trainer, grids and in-loop FID read, without casts."""
    return cast(ExperimentConfig, OmegaConf.to_object(cfg))


def _dict_diff(a: Any, b: Any, prefix: str) -> dict[str, Any]:
    """``{dotted key: (a value, b value)}`` for every leaf that differs between two nested dicts."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return {} if a == b else {prefix: (a, b)}
    out: dict[str, Any] = {}
    for k in sorted(set(a) | set(b), key=str):
        out.update(_dict_diff(a.get(k), b.get(k), f"{prefix}.{k}"))
    return out


def run_defining_diff(saved: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """Run-defining settings that differ between two experiment containers (saved vs now)."""
    diffs: dict[str, Any] = {}
    for section in RUN_DEFINING_SECTIONS:
        diffs.update(_dict_diff(dict(saved.get(section) or {}), dict(now.get(section) or {}), section))
    st, nt = dict(saved.get("train") or {}), dict(now.get("train") or {})
    for key in RUN_DEFINING_TRAIN:
        diffs.update(_dict_diff(st.get(key), nt.get(key), f"train.{key}"))
    return {k: v for k, v in diffs.items() if k not in RUN_FREE_KEYS}


def config_from_container(user: Any, source: str = "<config>") -> DictConfig:
    """Validate a (composed) mapping against the schema → typed DictConfig with derived fields."""
    if isinstance(user, DictConfig):
        user = OmegaConf.to_container(user, resolve=False)
    _check_keys(user, ExperimentConfig, "", source)
    train = user.get("train") if isinstance(user, dict) else None
    if isinstance(train, dict) and train.get("mixed_precision") is False:
        train["mixed_precision"] = "no"  # YAML 1.1 reads a bare `no` as false
    schema = OmegaConf.structured(ExperimentConfig)
    try:
        cfg = merged(schema, user)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).split("\n")[0]
        wanted = re.search(r"could not be converted to (\w+)", msg)
        if wanted:
            msg += f"; accepted: {_TYPE_WORDS.get(wanted.group(1), wanted.group(1))}"
        raise ConfigError(f"{source}: invalid value for '{key}': {msg}") from e
    try:
        check_representable(cfg, finite=True)  # finite numbers before anything builds from them
        try:
            check_experiment(cfg)  # each section's own checks (their messages state the exact range)
        except ConfigError:
            raise
        except Exception:
            check_representable(cfg)  # a non-finite number or a huge seed broke a build: name it
            raise
        check_representable(cfg)  # then what no section check covers: 63-bit seeds, counts >= 0
        check_counts(cfg)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    OmegaConf.set_readonly(cfg, False)
    return cfg


def load_config(path: Path | str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``path`` (with its ``_base_`` chain), apply ``overrides``, validate, derive."""
    composed = compose_yaml(path)
    if overrides:
        ov = parse_overrides(overrides)
        _check_keys(OmegaConf.to_container(ov), ExperimentConfig, "", "command-line override")
        composed = merge_layer(composed, ov)
    return config_from_container(composed, source=str(path))


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> DictConfig:
    return config_from_container(dict(data), source)


def config_from_yaml_text(text: str, source: str = "<yaml>") -> DictConfig:
    data = yaml.safe_load(text) or {}
    return config_from_container(data, source)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain resolved dict (JSON/YAML serialisable)."""
    return plain(cfg)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_json(cfg: DictConfig) -> str:
    return json.dumps(to_container(cfg), indent=2)


__all__ = [
    "ConfigError",
    "ModelConfig",
    "TrainConfig",
    "LoggingConfig",
    "ExperimentConfig",
    "load_config",
    "config_from_dict",
    "config_from_yaml_text",
    "config_from_container",
    "compose_yaml",
    "merge_layer",
    "parse_overrides",
    "run_defining_diff",
    "to_container",
    "to_yaml",
    "to_json",
    "data_config",
    "plain",
]
