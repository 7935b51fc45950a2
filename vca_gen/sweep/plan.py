"""A validated sweep: every cell's experiment composed, the evaluation and reference checked, hashes, plans.

:func:`validate` runs every check of the sweep file (see :mod:`vca_gen.sweep.spec`) and creates nothing;
it returns one :class:`CellPlan` (plain data, pickled to submitit jobs) per variant × seed.

- experiment hash: sha256 of the resolved experiment's run-defining settings (those training's resume
  compares, ``schema.run_defining_diff``, plus ``train.max_steps``; paths excluded);
- protocol hash: sha256 of the evaluation protocol (batch sizes excluded) and the reference's identity
  (the statistics file's sha256, or the recipe).

A cell with no result file of its own whose experiment and protocol hashes match a committed cell of a
sweep named under ``reuse`` takes that file as its result (``CellPlan.result_file`` points there;
``reused_from`` names the sweep): nothing is copied or recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vca_gen.errors import ConfigError
from vca_gen.sweep.spec import Evaluate, Sweep, SweepError, format_override


# ----------------------------------------------------------------------------- hashes
def _canonical_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def run_defining(exp_container: dict[str, Any]) -> dict[str, Any]:
    """The settings that define what a cell computes: the resume-defining ones plus ``train.max_steps``."""
    from vca_gen.experiment.schema import RUN_DEFINING_SECTIONS, RUN_DEFINING_TRAIN, RUN_FREE_KEYS

    out: dict[str, Any] = {}
    for section in RUN_DEFINING_SECTIONS:
        sec = dict(exp_container.get(section) or {})
        for key in list(sec):
            if f"{section}.{key}" in RUN_FREE_KEYS:
                del sec[key]
        out[section] = sec
    train = exp_container.get("train") or {}
    out["train"] = {k: train.get(k) for k in (*RUN_DEFINING_TRAIN, "max_steps")}
    return out


def experiment_hash(exp_container: dict[str, Any]) -> str:
    return _canonical_hash(run_defining(exp_container))


def protocol_hash(ev: Evaluate, ref_identity: dict[str, Any]) -> str:
    d = dataclasses.asdict(ev)
    for k in ("batch_size", "shard_size", "reference"):  # batch sizes do not change the samples (sample.py)
        d.pop(k)
    if d.get("cfg_interval") is None:  # no interval: the protocols (and hashes) from before it existed
        d.pop("cfg_interval", None)
    d["reference"] = ref_identity
    return _canonical_hash(d)


# ----------------------------------------------------------------------------- validation → cell plans
@dataclass(frozen=True)
class StageHooks:
    """Test hooks of the cells' stages, given to :func:`validate` (none by default; nothing reads them
    from the environment).

    ``launcher``: a Python script and its options through which every stage's script runs
    (``python LAUNCHER... SCRIPT ARGS``, under ``accelerate launch`` too), e.g. ``tests/hooked_cli.py``
    injecting faults into ``train.py``. ``fail``: ``CELL:STAGE`` names (``vca__seed1:score@4``) whose
    command is replaced by one that writes "forced failure" to stderr and exits 9.
    """

    launcher: tuple[str, ...] = ()
    fail: tuple[str, ...] = ()


@dataclass
class CellPlan:
    """Everything one cell needs, as plain data (pickled to a submitit job)."""

    sweep: str
    variant: str
    seed: int
    base: str
    overrides: list[str]  # the experiment overrides (sweep, variant, seed keys)
    managed: list[str]  # set by the sweep: run dir, resume, milestones
    experiment_hash: str
    protocol_hash: str
    max_steps: int
    steps: list[int]  # checkpoints to score
    cell_dir: str
    result_file: str
    evaluate: dict[str, Any]
    reference_path: str
    processes: int
    index: int
    repo: str
    threads: int | None = None  # torch threads of each stage (None: the running process's count)
    reused_from: str | None = None  # the sweep whose committed cell file this cell reuses
    hooks: StageHooks = field(default_factory=StageHooks)  # test hooks of the stages (none by default)

    @property
    def key(self) -> str:
        return f"{self.variant}__seed{self.seed}"


def cell_key(variant: str, seed: int) -> str:
    return f"{variant}__seed{seed}"


def select(sweep: Sweep, only: str | None, seeds: str | None) -> tuple[list[str], list[int]]:
    """``--only`` / ``--seeds`` → the variants and seeds to act on (subsets of the file's)."""
    variants = list(sweep.variants)
    if only:
        wanted = [v.strip() for v in only.split(",") if v.strip()]
        bad = [v for v in wanted if v not in sweep.variants]
        if bad:
            raise SweepError(f"--only {only}: {bad} not variant(s) of {sweep.path}; accepted: {', '.join(variants)}")
        variants = [v for v in variants if v in wanted]
    every = sorted({s for v in sweep.variants for s in sweep.seeds_of(v)})
    chosen = list(every)
    if seeds:
        try:
            wanted_s = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise SweepError(f"--seeds {seeds}: accepted: comma-separated integers") from None
        bad_s = [s for s in wanted_s if s not in every]
        if bad_s or not wanted_s:
            raise SweepError(
                f"--seeds {seeds}: {bad_s} not in the sweep's seeds {every} (add seeds to the "
                f"file so the report covers them)"
            )
        chosen = [s for s in chosen if s in wanted_s]
    return variants, chosen


def _scored_steps(ev: Evaluate, exp, variant: str) -> list[int]:
    max_steps, every = int(exp.train.max_steps), int(exp.train.ckpt_every)
    steps = set()
    for c in ev.checkpoints:
        s = max_steps if c == "final" else int(c)
        if s > max_steps or (s != max_steps and (not every or s % every)):
            raise SweepError(
                f"variant {variant!r}: evaluate.checkpoints {c} will not exist (train.max_steps="
                f"{max_steps}, train.ckpt_every={every}); accepted: multiples of train.ckpt_every up to "
                f"max_steps, or final"
            )
        steps.add(s)
    return sorted(steps)


def _check_evaluation(ev: Evaluate, exp, variant: str) -> None:
    from vca_gen.experiment.build import build_objective_for
    from vca_gen.objectives.base import parse_steps

    obj = build_objective_for(exp)
    try:
        obj.check_guidance(ev.cfg_scale, ev.cfg_interval, "evaluate")
    except ValueError as e:
        raise SweepError(f"{e} (variant {variant!r}, {exp.objective.kind} objective)") from None
    try:
        steps = parse_steps(ev.steps)
        obj.check_sample_args(
            ev.sampler,
            steps,
            ev.cfg_scale,
            ev.guide_channels,
            ev.options,
            int(exp.model.in_channels),
            int(exp.model.num_classes),
            cfg_interval=ev.cfg_interval,
        )
    except (ValueError, TypeError) as e:
        raise SweepError(
            f"evaluate: sampler={ev.sampler or obj.default_sampler!r}, steps={ev.steps!r}, "
            f"options={ev.options} are not valid for variant {variant!r} ({exp.objective.kind} "
            f"objective; samplers {', '.join(obj.samplers)}): {e}"
        ) from None
    if ev.cfg_scale != 1.0 and float(exp.model.class_dropout_prob) <= 0:
        raise SweepError(
            f"evaluate.cfg_scale={ev.cfg_scale}: variant {variant!r} trains without label dropout; accepted: 1.0"
        )
    if ev.num_samples % int(exp.model.num_classes):
        raise SweepError(
            f"evaluate.num_samples={ev.num_samples} is not a multiple of model.num_classes="
            f"{exp.model.num_classes} (variant {variant!r}); sample.py draws class-balanced sets"
        )


def check_reference(ev: Evaluate, resolutions: dict[str, int], allow_missing: bool = False) -> str | None:
    """The reference's mode and resolution against the protocol and every variant's image size, and
    what the metrics' registry entries need of it (stored features, spatial statistics, their numbers).

    Returns a warning (a missing file with ``allow_missing``), else None."""
    from vca_gen.metrics import MetricsError, registry

    ref = ev.reference
    n_ref: int | None
    if ref.is_recipe:
        if ev.mode is not None and ev.mode != ref.mode:
            raise SweepError(f"evaluate.mode={ev.mode} but evaluate.reference.mode={ref.mode}")
        res = 32 if ref.source and ref.source.startswith("dataset:animal_mnist") else None
        mode, feats, spatial, n_ref = ref.mode, True, True, ref.num_images  # a recipe stores what is needed
        what = f"the recipe ({ref.num_images} images of {ref.source})"
    else:
        from vca_gen.metrics import load_reference

        if not Path(str(ref.path)).is_file():
            msg = (
                f"evaluate.reference={ref.path!r} does not exist; supply the file (a statistics .npz from "
                f"evaluate_fid.py --make-ref, or an ADM reference batch) at that path"
            )
            if allow_missing:
                return msg
            raise SweepError(msg)
        try:
            stats = load_reference(str(ref.path))
        except MetricsError as e:
            raise SweepError(f"evaluate.reference: {e}") from None
        mode, res = stats.mode, (stats.resolution[0] if stats.resolution else None)
        feats = stats.feats is not None or stats.ref_images is not None
        spatial, what = stats.mu_s is not None, str(ref.path)
        n_ref = len(stats.feats) if stats.feats is not None else None  # ADM arr_0: not counted here
        if ev.mode is not None and ev.mode != mode:
            raise SweepError(
                f"evaluate.reference {ref.path} holds {mode} statistics, but evaluate.mode={ev.mode}; "
                f"features of different modes cannot be compared"
            )
    if res is not None:
        bad = {v: r for v, r in resolutions.items() if r != res}
        if bad:
            raise SweepError(
                f"evaluate.reference is {res}x{res} images, but the models generate "
                + ", ".join(f"{r}x{r} ({v})" for v, r in bad.items())
                + f"; accepted: a reference of the models' resolution (data.image_size; mode {mode})"
            )
    try:  # what the metrics' registry entries need: stored features, spatial statistics, their numbers
        registry.check_reference(
            ev.metrics, feats, spatial, f"evaluate.metrics {ev.metrics}", what, None, ev.num_samples, n_ref
        )
    except MetricsError as e:
        raise SweepError(str(e)) from None
    return None


@dataclass
class Validated:
    sweep: Sweep
    cells: list[CellPlan]
    warnings: list[str]
    reference_identity: dict[str, Any]


def reference_path(sweep: Sweep) -> Path:
    ref = sweep.evaluate.reference
    if not ref.is_recipe:
        return Path(str(ref.path)).absolute()
    tag = _canonical_hash(ref.identity())[:12]
    return sweep.output_dir / "reference" / f"ref_{tag}.npz"


def reusable_cells(sweep: Sweep) -> dict[tuple[str, str], tuple[str, str]]:
    """``{(experiment hash, protocol hash): (result file, sweep name)}`` of the committed cells of the
    sweeps in ``sweep.reuse`` (their result files only: nothing is recomputed or validated again)."""
    from vca_gen.sweep.cells import read_json
    from vca_gen.sweep.spec import load_sweep

    out: dict[tuple[str, str], tuple[str, str]] = {}
    for path in sweep.reuse:
        try:
            other = load_sweep(path)
        except SweepError as e:
            raise SweepError(f"reuse: {path}: {e}") from None
        for f in sorted((other.results_dir / "cells").glob("*.json")):
            rec = read_json(f) or {}
            key = (rec.get("experiment_hash"), rec.get("protocol_hash"))
            if all(isinstance(k, str) for k in key):
                out.setdefault((str(key[0]), str(key[1])), (str(f), other.name))
    return out


def validate(
    sweep: Sweep,
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    allow_missing_reference: bool = False,
    hooks: StageHooks | None = None,
) -> Validated:
    """Every check of the sweep, every cell's experiment composed; creates nothing. ``hooks``: test
    hooks given to every cell's stages (:class:`StageHooks`)."""
    from vca_gen.experiment.schema import load_config, to_container
    from vca_gen.sweep.cells import repo_root

    ev, warnings = sweep.evaluate, []
    names = list(variants) if variants is not None else list(sweep.variants)
    chosen_seeds = list(seeds) if seeds is not None else sorted({s for v in sweep.variants for s in sweep.seeds_of(v)})
    resolutions, exps = {}, {}
    for v in sweep.variants:  # every variant is validated, even when --only picks some
        var = sweep.variants[v]
        try:
            exp = load_config(var.base, sweep.cell_overrides(v, sweep.seeds_of(v)[0]))
        except ConfigError as e:
            raise SweepError(f"variant {v!r} (base {var.base.name}): {e}") from None
        _check_evaluation(ev, exp, v)
        resolutions[v] = int(exp.data.image_size)
        exps[v] = exp
    warn = check_reference(ev, resolutions, allow_missing=allow_missing_reference)
    if warn:
        warnings.append(warn)
    ref_id = ev.reference.identity()
    p_hash = protocol_hash(ev, ref_id)
    reusable = reusable_cells(sweep)
    cells, index = [], 0
    for v in names:
        var, exp0 = sweep.variants[v], exps[v]
        steps = _scored_steps(ev, exp0, v)
        milestone = math.gcd(int(exp0.train.milestone_every), *steps)
        for s in [s for s in sweep.seeds_of(v) if s in chosen_seeds]:
            overrides = sweep.cell_overrides(v, s)
            try:
                exp = load_config(var.base, overrides)
            except ConfigError as e:
                raise SweepError(f"variant {v!r}, seed {s}: {e}") from None
            e_hash = experiment_hash(to_container(exp))
            cell_dir = sweep.output_dir / "cells" / cell_key(v, s) / f"exp-{e_hash[:12]}"
            result_file, reused_from = sweep.results_dir / "cells" / f"{cell_key(v, s)}.json", None
            if not result_file.is_file() and (e_hash, p_hash) in reusable:
                found, reused_from = reusable[e_hash, p_hash]
                result_file = Path(found)
            managed = [
                format_override("train.output_dir", str(cell_dir / "train")),
                "train.resume=auto",
                f"train.milestone_every={milestone}",
            ]
            cells.append(
                CellPlan(
                    sweep=sweep.name,
                    variant=v,
                    seed=s,
                    base=str(var.base),
                    overrides=overrides,
                    managed=managed,
                    experiment_hash=e_hash,
                    protocol_hash=p_hash,
                    max_steps=int(exp.train.max_steps),
                    steps=steps,
                    cell_dir=str(cell_dir),
                    result_file=str(result_file),
                    evaluate=dataclasses.asdict(ev),
                    reference_path=str(reference_path(sweep)),
                    processes=sweep.execution.processes,
                    index=index,
                    repo=str(repo_root()),
                    threads=sweep.execution.threads,
                    reused_from=reused_from,
                    hooks=hooks or StageHooks(),
                )
            )
            index += 1
    return Validated(sweep, cells, warnings, ref_id)


__all__ = [
    "CellPlan",
    "StageHooks",
    "Validated",
    "validate",
    "select",
    "experiment_hash",
    "protocol_hash",
    "cell_key",
    "reference_path",
    "reusable_cells",
]
