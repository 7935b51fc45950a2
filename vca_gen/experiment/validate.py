"""Semantic checks of a composed experiment, run once at load time.

Every value is checked by the code that will use it: the objective config's own ``check`` and
constructor, the sampler registry's entry (name, steps, each option's own check, the guidance
scale and interval: for the preview grid and in-loop FID settings), the
backbone's constructor (built on the meta device: sizes, patch vs input, heads, attention options),
the objective's channel check against that model, and the data config's validation. So a bad value
fails here, under ``--print-config`` too, and never after hours of training.

:func:`check_experiment` also *resolves* the experiment in place: ``model.input_size`` and
``model.in_channels`` are derived from the data, and ``model.attention_options`` is reduced to the
options of the attention kind in use (filled with that kind's defaults), so switching the kind by
one override (``model.attention=mhsa``) is never blocked by another kind's options (and never
inherits them: ``schema.merge_layer`` drops the options of earlier layers when a layer switches kind).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vca_gen.data.config import model_in_channels, model_input_size, validate_data_config
from vca_gen.errors import ConfigError
from vca_gen.experiment.build import ARCH_KEYS, build_model
from vca_gen.experiment.typed import data_config, plain
from vca_gen.metrics.evaluation import check_selection
from vca_gen.models import ATTENTION_KINDS, list_models, parse_model_name
from vca_gen.models.attention import attention_options, resolve_options
from vca_gen.models.registry import SIZES
from vca_gen.objectives import OBJECTIVE_KINDS, build_objective
from vca_gen.objectives.base import parse_steps
from vca_gen.utils.checks import choice, in_range, positive

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio", "none")
TIMEOUT_MAX_S = 1e9  # seconds (~31 years): any finite bound a collective timeout can represent
DATA_CLASSES = {"animal_mnist": 10}  # class count fixed by the data source


def _user(fn, *args, **kwargs):
    """Call ``fn``; its ``ValueError`` (a bad value) becomes a :class:`ConfigError`."""
    try:
        return fn(*args, **kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def resolve_attention_options(m: DictConfig) -> None:
    """``model.attention_options`` → exactly the options of ``model.attention`` (with defaults).

    Keys only another kind accepts are dropped (they do not get in the way of switching kinds; the
    options inherited from before a switch are already gone, see ``schema.merge_layer``); a key no kind
    accepts is an error listing every kind's options. Late options at their default are not recorded
    (:func:`vca_gen.models.attention.resolve_options`)."""
    opts = m.attention_options
    given: dict[str, Any] = plain(opts) if isinstance(opts, DictConfig) else dict(opts or {})
    accepted = {kind: attention_options(kind) for kind in ATTENTION_KINDS}
    unknown = sorted(k for k in given if not any(k in a for a in accepted.values()))
    if unknown:
        per_kind = "; ".join(f"{k}: {', '.join(a) or 'none'}" for k, a in accepted.items())
        raise ConfigError(
            f"model.attention_options: unknown option(s) {unknown}; accepted per attention kind: {per_kind}"
        )
    mine = {k: v for k, v in given.items() if k in accepted[m.attention]}
    m.attention_options = _user(resolve_options, m.attention, mine)


def _check_model(exp: DictConfig) -> None:
    m = exp.model
    choice("model.name", m.name, list_models())
    choice("model.attention", m.attention, ATTENTION_KINDS)
    resolve_attention_options(m)
    if not 0.0 <= m.class_dropout_prob < 1.0:
        raise ConfigError(
            f"model.class_dropout_prob={m.class_dropout_prob!r} is not valid; accepted: a number in [0, 1)"
        )
    positive("model.num_classes", m.num_classes)
    for key in ARCH_KEYS:  # architecture overrides (None: the named size's)
        if m[key] is not None:
            positive(f"model.{key}", m[key])
    _, size, _ = parse_model_name(m.name)
    _, size_hidden, size_heads = SIZES[size]
    hidden = m.hidden_size if m.hidden_size is not None else size_hidden
    heads = m.num_heads if m.num_heads is not None else size_heads
    if hidden % heads:
        key = "model.num_heads" if m.num_heads is not None else "model.hidden_size"
        raise ConfigError(
            f"{key}: the width {hidden} is not divisible by the {heads} heads (model.hidden_size="
            f"{m.hidden_size}, model.num_heads={m.num_heads}, {m.name}: {size_hidden} x {size_heads} heads); "
            f"accepted: a number of heads dividing the width"
        )
    data_obj = data_config(exp)
    for key, derived in (("input_size", model_input_size(data_obj)), ("in_channels", model_in_channels(data_obj))):
        given = m[key]
        if given is not None and given != derived:
            raise ConfigError(
                f"model.{key}={given} does not match the data ({derived} for data.kind={exp.data.kind}, "
                f"image_size={exp.data.image_size}, vae={exp.data.vae}); remove model.{key} (it is derived)"
            )
        m[key] = derived
    _, _, patch = parse_model_name(m.name)
    if m.input_size % patch:
        raise ConfigError(
            f"model.name={m.name}: the model input size {m.input_size} (from data.image_size="
            f"{exp.data.image_size}) is not divisible by the patch size {patch}; accepted: a patch "
            f"size dividing {m.input_size}"
        )
    fixed = DATA_CLASSES.get(exp.data.kind)
    if fixed is not None and m.num_classes < fixed:
        raise ConfigError(
            f"model.num_classes={m.num_classes}: data.kind={exp.data.kind} has {fixed} classes; accepted: >= {fixed}"
        )
    if m.init_from is not None and not Path(m.init_from).exists():
        raise ConfigError(
            f"model.init_from={m.init_from!r} does not exist; accepted: an official DiT/SiT .pt file, "
            f"a training checkpoint, a run directory or an export"
        )


def _check_sampling(section: str, s: DictConfig, objective, exp: DictConfig) -> None:
    """Grid / FID sampling settings, checked by the sampler registry's entry (no model is evaluated):
    the sampler name, its steps, its options (each by the entry's own check) and the guidance."""
    positive(f"{section}.every", s.every, allow_zero=True)
    interval = None if s.cfg_interval is None else list(s.cfg_interval)
    objective.check_guidance(s.cfg_scale, interval, section)
    if s.cfg_scale != 1.0 and exp.model.class_dropout_prob <= 0:
        raise ConfigError(
            f"{section}.cfg_scale={s.cfg_scale}: guidance needs a model trained with label dropout "
            f"(model.class_dropout_prob > 0); accepted here: 1.0"
        )
    if s.sampler is not None:
        choice(f"{section}.sampler", s.sampler, objective.samplers)
    entry = objective.sampler_entry(s.sampler)
    try:
        objective.resolve_steps(entry, parse_steps(s.steps))
    except ValueError as e:
        raise ConfigError(f"{section}.steps={s.steps!r} is not valid for sampler {entry.name!r}: {e}") from None
    objective.resolve_options(entry, plain(s.options), f"{section}.options")


def _check_train(exp: DictConfig, objective) -> None:
    t, m = exp.train, exp.model
    for key in ("global_batch_size", "max_steps", "log_every", "max_nonfinite"):
        positive(f"train.{key}", t[key])
    for key in ("warmup_steps", "ckpt_every", "keep_last", "milestone_every", "grad_clip", "weight_decay"):
        positive(f"train.{key}", t[key], allow_zero=True)
    positive("train.lr", t.lr)
    positive("train.eps", t.eps)
    in_range("train.timeout_s", t.timeout_s, 0.0, TIMEOUT_MAX_S, "(]")  # finite: a timedelta holds it
    if t.micro_batch_size is not None:
        positive("train.micro_batch_size", t.micro_batch_size)
    if len(t.betas) != 2 or not all(0.0 <= b < 1.0 for b in t.betas):
        raise ConfigError(f"train.betas={list(t.betas)} is not valid; accepted: two numbers in [0, 1)")
    if not 0.0 <= t.ema_decay <= 1.0:
        raise ConfigError(f"train.ema_decay={t.ema_decay} is not valid; accepted: a number in [0, 1]")
    choice("train.mixed_precision", t.mixed_precision, MIXED_PRECISION)
    if t.resume not in ("auto", "none") and not t.resume:
        raise ConfigError("train.resume='' is not valid; accepted: auto, none or a checkpoint path")
    g, f = t.grid, t.fid
    positive("train.grid.num", g.num)
    positive("train.grid.nrow", g.nrow, allow_zero=True)
    bad = [c for c in g.classes if not 0 <= c < m.num_classes]
    if bad:
        raise ConfigError(f"train.grid.classes {bad} is not valid; accepted: class indices in [0, {m.num_classes})")
    _check_sampling("train.grid", g, objective, exp)
    positive("train.fid.num_samples", f.num_samples)
    positive("train.fid.batch_size", f.batch_size)
    if f.num_samples % m.num_classes:
        raise ConfigError(
            f"train.fid.num_samples={f.num_samples} is not valid; accepted: a multiple of "
            f"model.num_classes={m.num_classes} (class-balanced, as sample.py)"
        )
    if f.every > 0 and not f.ref:
        raise ConfigError(
            "train.fid.every > 0 needs train.fid.ref (reference statistics from evaluate_fid.py "
            "--make-ref, or an ADM reference batch)"
        )
    if f.every > 0 and not Path(f.ref).is_file():
        raise ConfigError(f"train.fid.ref={f.ref!r} is not a file; accepted: reference statistics .npz")
    _user(check_selection, list(f.metrics), f.ref if f.every > 0 else None, f.num_samples, "train.fid.metrics")
    _check_sampling("train.fid", f, objective, exp)
    choice("logging.tracker", exp.logging.tracker, TRACKERS)


def check_experiment(exp: DictConfig) -> None:
    """Validate and resolve a composed, typed experiment in place (raises :class:`ConfigError`)."""
    _user(validate_data_config, data_config(exp))
    _user(_check_model, exp)
    choice_ = _user
    choice_(choice, "objective.kind", exp.objective.kind, OBJECTIVE_KINDS)
    objective = _user(build_objective, exp.objective)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. VCA's n > N warning is repeated when the model is built for real
        model = _user(build_model, exp, device="meta")
    _user(objective.check_model, model)
    _user(_check_train, exp, objective)


__all__ = ["check_experiment", "resolve_attention_options", "MIXED_PRECISION", "TRACKERS"]
