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
import typing
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vca_gen.errors import UserError
from vca_gen.data.config import DataConfig, model_in_channels, model_input_size, validate_data_config
from vca_gen.objectives import OBJECTIVE_KINDS, ObjectiveConfig

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio", "none")
BASE_KEY = "_base_"


class ConfigError(UserError, ValueError):
    """Invalid experiment config: the message names the key, the value and what is accepted."""


@dataclass
class ModelConfig:
    """Backbone (see ``vca_gen.models.create_model``); ``input_size``/``in_channels`` come from data."""

    name: str = "DiT-S/2"                       # DiT-{Ti,S,B,L,XL}/{2,4,8} or SiT-…
    attention: str = "mhsa"                     # mhsa | vca | diff
    attention_options: Dict[str, Any] = field(default_factory=dict)  # kind-specific (validated)
    learn_sigma: bool = True                    # out_channels = 2 * in_channels
    class_dropout_prob: float = 0.1             # label dropout for classifier-free guidance
    grad_checkpointing: bool = False
    num_classes: int = 1000
    depth: Optional[int] = None                 # architecture overrides for custom small models
    hidden_size: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    input_size: Optional[int] = None            # derived from data (error if set and different)
    in_channels: Optional[int] = None           # derived from data (error if set and different)


@dataclass
class TrainConfig:
    """Optimisation, precision, checkpointing, sampling and evaluation during training."""

    global_batch_size: int = 256                # over all processes; must divide by the process count
    micro_batch_size: Optional[int] = None      # per-process forward batch (None: whole share) → accumulation
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0                       # linear warm-up from 0 to lr
    grad_clip: float = 0.0                      # max grad norm; 0 disables clipping
    max_steps: int = 400_000
    ema_decay: float = 0.9999
    ema_warmup: bool = False                    # decay min(ema_decay, (1+n)/(10+n)) after n steps (short runs)
    mixed_precision: str = "auto"               # auto (bf16 on CUDA, fp32 on CPU) | no | bf16 | fp16
    tf32: bool = True
    compile: bool = False                       # torch.compile the training forward
    seed: int = 0                               # weights init, noise/time/label-dropout streams
    log_every: int = 100
    ckpt_every: int = 10_000
    keep_last: int = 2                          # newest checkpoints kept (plus milestones); 0 keeps all
    milestone_every: int = 100_000              # checkpoints at multiples are never pruned; 0 = none
    sample_every: int = 10_000                  # EMA sample grid PNG; 0 = off
    sample_num: int = 16
    sample_classes: List[int] = field(default_factory=list)  # empty: 0, 1, 2, … cycling
    sample_nrow: int = 0                        # images per grid row; 0 = about sqrt(sample_num)
    sample_seed: int = 0
    sample_cfg_scale: float = 1.0
    sample_sampler: Optional[str] = None        # None: the objective's default sampler
    sample_steps: Optional[str] = None          # None: default for the sampler (e.g. "250")
    fid_every: int = 0                          # in-loop FID of EMA samples; 0 = off
    fid_num_samples: int = 5000
    fid_ref: Optional[str] = None               # reference statistics / folder for vca_gen.metrics
    max_nonfinite: int = 10                     # stop after this many consecutive non-finite steps
    output_dir: str = "runs/${name}"
    resume: str = "auto"                        # auto | none | PATH (checkpoint or run dir)


@dataclass
class LoggingConfig:
    tracker: str = "tensorboard"                # any accelerate tracker, or "none"
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
        if dataclasses.is_dataclass(sub) and value is not None:
            _check_keys(value, sub, full, source)


@functools.lru_cache(maxsize=None)
def _type_hints(schema: type) -> Dict[str, Any]:
    return typing.get_type_hints(schema)


# ----------------------------------------------------------------------------- composition
def _read_yaml(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping at the top level, got {type(data).__name__}")
    return data


def compose_yaml(path: Path | str, _seen: Sequence[Path] = ()) -> DictConfig:
    """The YAML at ``path`` merged over its ``_base_`` files (recursively), as an untyped DictConfig."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: circular _base_ chain: {' -> '.join(map(str, (*_seen, path)))}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else list(bases or [])
    merged = OmegaConf.create()
    for b in bases:
        merged = OmegaConf.merge(merged, compose_yaml(path.parent / b, (*_seen, path)))
    return OmegaConf.merge(merged, OmegaConf.create(data))


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """Dotted ``key=value`` strings (values parsed as YAML) → DictConfig."""
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise ConfigError(f"override {o!r} is not of the form key=value (e.g. train.lr=2e-4)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {e}") from e


# ----------------------------------------------------------------------------- validation
def _choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not valid; accepted: {', '.join(map(str, allowed))}")


def _positive(key: str, value: Any, allow_zero: bool = False) -> None:
    if value is None or (value < 0 if allow_zero else value <= 0):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def _validate(cfg: DictConfig, source: str) -> None:
    from vca_gen.models import ATTENTION_KINDS, list_models
    from vca_gen.models.attention import check_attention_options

    m, t = cfg.model, cfg.train
    try:
        _choice("model.name", m.name, list_models())
        _choice("model.attention", m.attention, ATTENTION_KINDS)
        check_attention_options(m.attention, dict(m.attention_options))
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from e
    if not 0.0 <= m.class_dropout_prob < 1.0:
        raise ConfigError(f"{source}: model.class_dropout_prob={m.class_dropout_prob} must be in [0, 1)")
    _positive("model.num_classes", m.num_classes)
    _choice("objective.kind", cfg.objective.kind, OBJECTIVE_KINDS)
    try:
        validate_data_config(OmegaConf.to_object(cfg.data))
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from e
    for key in ("global_batch_size", "max_steps", "log_every", "sample_num", "fid_num_samples", "max_nonfinite"):
        _positive(f"train.{key}", t[key])
    for key in ("warmup_steps", "ckpt_every", "keep_last", "milestone_every", "sample_every", "fid_every",
                "grad_clip", "weight_decay"):
        _positive(f"train.{key}", t[key], allow_zero=True)
    _positive("train.lr", t.lr)
    if t.micro_batch_size is not None:
        _positive("train.micro_batch_size", t.micro_batch_size)
    if len(t.betas) != 2 or not all(0.0 <= b < 1.0 for b in t.betas):
        raise ConfigError(f"train.betas={list(t.betas)} must be two numbers in [0, 1)")
    if not 0.0 <= t.ema_decay <= 1.0:
        raise ConfigError(f"train.ema_decay={t.ema_decay} must be in [0, 1]")
    _choice("train.mixed_precision", t.mixed_precision, MIXED_PRECISION)
    if t.resume not in ("auto", "none") and not t.resume:
        raise ConfigError("train.resume must be 'auto', 'none' or a checkpoint path")
    if t.fid_every and not t.fid_ref:
        raise ConfigError("train.fid_every > 0 needs train.fid_ref (reference statistics for the FID)")
    bad = [c for c in t.sample_classes if not 0 <= c < m.num_classes]
    if bad:
        raise ConfigError(f"train.sample_classes {bad} outside [0, {m.num_classes})")
    _choice("logging.tracker", cfg.logging.tracker, TRACKERS)
    # derived shapes
    data_obj = OmegaConf.to_object(cfg.data)
    for key, derived in (("input_size", model_input_size(data_obj)), ("in_channels", model_in_channels(data_obj))):
        given = m[key]
        if given is not None and given != derived:
            raise ConfigError(
                f"{source}: model.{key}={given} does not match the data ({derived} for data.kind={cfg.data.kind}, "
                f"image_size={cfg.data.image_size}, vae={cfg.data.vae}); remove model.{key} (it is derived)"
            )
        m[key] = derived
    _, _, patch = _parse_name(m.name)
    if m.input_size % patch:
        raise ConfigError(f"{source}: model input size {m.input_size} is not divisible by the patch size {patch} of {m.name}")


def _parse_name(name: str):
    from vca_gen.models import parse_model_name

    return parse_model_name(name)


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
        cfg = OmegaConf.merge(schema, user)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).split("\n")[0]
        raise ConfigError(f"{source}: invalid value for '{key}': {msg}") from e
    try:
        _validate(cfg, source)
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
        composed = OmegaConf.merge(composed, ov)
    return config_from_container(composed, source=str(path))


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> DictConfig:
    return config_from_container(dict(data), source)


def config_from_yaml_text(text: str, source: str = "<yaml>") -> DictConfig:
    data = yaml.safe_load(text) or {}
    return config_from_container(data, source)


def to_container(cfg: DictConfig) -> Dict[str, Any]:
    """Plain resolved dict (JSON/YAML serialisable)."""
    return OmegaConf.to_container(cfg, resolve=True)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_json(cfg: DictConfig) -> str:
    return json.dumps(to_container(cfg), indent=2)


def model_kwargs(model_cfg: Any) -> Dict[str, Any]:
    """Keyword arguments of ``create_model`` for a validated ``model`` section."""
    m = model_cfg
    kw: Dict[str, Any] = dict(
        attention=m.attention,
        input_size=int(m.input_size),
        in_channels=int(m.in_channels),
        num_classes=int(m.num_classes),
        learn_sigma=bool(m.learn_sigma),
        class_dropout_prob=float(m.class_dropout_prob),
        grad_checkpointing=bool(m.grad_checkpointing),
    )
    for key in ("depth", "hidden_size", "num_heads", "mlp_ratio"):
        if m[key] is not None:
            kw[key] = m[key]
    opts = m.attention_options
    kw.update(OmegaConf.to_container(opts, resolve=True) if isinstance(opts, DictConfig) else dict(opts))
    return kw


def build_model(cfg: DictConfig, device: Any = None):
    """``create_model`` for an experiment config (``device="meta"`` builds without memory)."""
    import torch

    from vca_gen.models import create_model

    if cfg.model.input_size is None or cfg.model.in_channels is None:
        raise ConfigError("build_model needs a validated config (model.input_size / in_channels derived)")
    if device is None:
        return create_model(cfg.model.name, **model_kwargs(cfg.model))
    with torch.device(device):
        return create_model(cfg.model.name, **model_kwargs(cfg.model))


__all__ = [
    "ConfigError", "ModelConfig", "TrainConfig", "LoggingConfig", "ExperimentConfig",
    "load_config", "config_from_dict", "config_from_yaml_text", "config_from_container",
    "compose_yaml", "parse_overrides", "to_container", "to_yaml", "to_json", "model_kwargs", "build_model",
]
