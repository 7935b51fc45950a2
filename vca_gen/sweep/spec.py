"""The sweep file (YAML): read as experiment files are (OmegaConf's loader, duplicate keys refused),
validated before a cell runs.

Keys (``*`` required)::

    name: toy_flow                # default: the file's stem; names output_dir / results_dir defaults
    base*: demo.yaml              # experiment YAML: relative to this file, else to the packaged configs/
    overrides: {train.max_steps: 1500}           # dotted experiment overrides applied to every cell
    variants*:                    # name -> dotted overrides (nested mappings are flattened)
      mhsa: {model.attention: mhsa}
      vca-stage1: {model.attention: vca, model.attention_options.stages: stage1}
      sit_s2-vca: {base: sit_s2_vca.yaml}        # optional per-variant experiment file
      vca-nodw: {model.attention_options.dwconv: false, seeds: [0, 1]}   # optional per-variant seeds
    baseline*: mhsa               # a variant: paired differences are taken against it
    baselines: {sit_s2-vca: sit_s2-mhsa}         # optional per-variant baselines (default: baseline)
    comparisons: ["vca - mhsa-dw", "mhsa-dw - mhsa"]   # more paired differences (A − B over shared seeds)
    reuse: [toy_flow.yaml]        # other sweep files whose committed cells this one reuses (same hashes)
    seeds*: [0, 1, 2]             # one cell per variant x seed
    seed_keys: [train.seed, data.seed]           # experiment keys set to the cell's seed
    evaluate*:                    # one protocol for every cell
      checkpoints: [750, final]   # training steps to score (multiples of train.ckpt_every) and/or final
      sampler: euler              # null: the objective's FID protocol (DiT DDPM 250, SiT SDE 250)
      steps: "10"                 # sampler steps / respacing (sample.py --steps); null: the sampler's default
      cfg_scale: 1.0              # 1 = no guidance
      cfg_interval: null          # [LO, HI]: guide only there (sample.py --cfg-interval); null: everywhere
      guide_channels: null        # sample.py --guide-channels
      options: {}                 # sampler options (sample.py --sampler-option KEY=VALUE)
      num_samples*: 1000          # a multiple of model.num_classes
      batch_size: 125             # sample.py --batch-size (per process)
      shard_size: 250             # sample.py --shard-size (the unit of its resume)
      seed: 0                     # sample i uses seed + i, the same in every cell
      ema: true                   # EMA weights (false: sample.py --no-ema)
      reference*: PATH.npz        # statistics file (evaluate_fid.py --make-ref, or an ADM batch), or a recipe:
      #   {source: "dataset:animal_mnist:a", num_images: 1000, mode: clean, balanced: true}
      mode: null                  # feature mode; null: the reference's (a recipe's mode)
      metrics: [fid]              # fid plus other vca_gen.metrics.registry names (sfid, kid, pr, ...)
    execution:
      backend: local              # local | submitit
      processes: 1                # per cell: 1 = python train.py, P > 1 = accelerate launch --num_processes P
      parallel: 1                 # cells at a time on this machine (local backend, submitit_cluster local)
      threads: null               # torch threads per stage (OMP_NUM_THREADS); null: this process's count
      submitit_cluster: auto      # local (submitit's LocalExecutor) | slurm | auto (slurm when available)
      slurm: {partition: null, gpus_per_node: 0, cpus_per_task: 8, timeout_min: 4320, mem_gb: null,
              array_parallelism: 64, additional_parameters: {}}
    references: {mhsa: {fid: 67.2}}   # numbers shown beside the measured ones (bare number = fid; null: none)
    reference_note: "..."             # free text printed with them
    output_dir: runs/sweeps/<name>    # run directories (big, git-ignored); relative to the current directory
    results_dir: docs/results/<name>  # small result files meant to be committed

Validation (:func:`vca_gen.sweep.plan.validate`) raises :class:`SweepError` (a ``UserError``: ``sweep.py: error: ...``,
exit 2) and creates nothing: unknown keys; duplicate keys anywhere; bad variant names; no or
duplicate seeds; a baseline that is not a variant; a comparison naming something that is not a variant,
or two variants that share no seed; a reused sweep file that does not load; every cell's experiment composed with
``load_config`` (an override key no experiment has names the variant); checkpoints that will not
exist; the evaluation settings checked by the objective's own ``check_sample_args``; the reference
(mode, resolution against ``data.image_size``, stored features and their number for the metrics that need
them, as their registry entries say).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vca_gen.errors import UserError
from vca_gen.utils.yaml_files import read_yaml_file, scalar_round_trips

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
BACKENDS = ("local", "submitit")
CLUSTERS = ("local", "slurm", "auto")
TOP_KEYS = (
    "name",
    "base",
    "overrides",
    "variants",
    "baseline",
    "baselines",
    "comparisons",
    "reuse",
    "seeds",
    "seed_keys",
    "evaluate",
    "execution",
    "references",
    "reference_note",
    "output_dir",
    "results_dir",
)
EVAL_KEYS = (
    "checkpoints",
    "sampler",
    "steps",
    "cfg_scale",
    "cfg_interval",
    "guide_channels",
    "options",
    "num_samples",
    "batch_size",
    "shard_size",
    "seed",
    "ema",
    "reference",
    "mode",
    "metrics",
)
RECIPE_KEYS = ("source", "num_images", "mode", "balanced")
EXEC_KEYS = ("backend", "processes", "parallel", "threads", "submitit_cluster", "slurm")
SLURM_KEYS = (
    "partition",
    "gpus_per_node",
    "cpus_per_task",
    "timeout_min",
    "mem_gb",
    "array_parallelism",
    "additional_parameters",
)
DEFAULT_SEED_KEYS = ("train.seed", "data.seed")


class SweepError(UserError, ValueError):
    """The sweep file (or a command-line choice) is invalid; the message names the key and what is accepted."""


# ----------------------------------------------------------------------------- the file, read as experiments are
def read_yaml_unique(path: Path) -> Any:
    """The sweep file as plain data, read by :mod:`vca_gen.utils.yaml_files` (OmegaConf's YAML loader, as
    experiment files): a directory, a missing or non-UTF-8 file, invalid YAML or a key given twice is one
    :class:`SweepError` line naming the file."""
    return read_yaml_file(path, "sweep file", SweepError)


# ----------------------------------------------------------------------------- the sweep, parsed
@dataclass
class Reference:
    path: str | None = None  # a statistics file
    source: str | None = None  # or a recipe
    num_images: int = 0
    mode: str = "clean"
    balanced: bool = True

    @property
    def is_recipe(self) -> bool:
        return self.path is None

    def identity(self) -> dict[str, Any]:
        if self.is_recipe:
            return {"source": self.source, "num_images": self.num_images, "mode": self.mode, "balanced": self.balanced}
        from vca_gen.utils.io import sha256_file

        return {"sha256": sha256_file(str(self.path))} if Path(str(self.path)).is_file() else {"path": self.path}


@dataclass
class Evaluate:
    checkpoints: list[Any]
    num_samples: int
    reference: Reference
    sampler: str | None = None
    steps: str | None = None
    cfg_scale: float = 1.0
    guide_channels: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    shard_size: int = 256
    seed: int = 0
    ema: bool = True
    mode: str | None = None
    metrics: list[str] = field(default_factory=lambda: ["fid"])
    cfg_interval: Any = None  # [LO, HI] or None (checked with the objective: plan._check_evaluation)


@dataclass
class Execution:
    backend: str = "local"
    processes: int = 1
    parallel: int = 1
    threads: int | None = None  # torch threads of every stage's process (None: this process's count)
    submitit_cluster: str = "auto"
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass
class Variant:
    name: str
    base: Path
    overrides: dict[str, Any]
    seeds: list[int] | None = None  # None: the sweep's seeds


@dataclass(frozen=True)
class Comparison:
    """A paired difference ``a − b`` over the seeds both variants have (written ``"a - b"``)."""

    a: str
    b: str

    @property
    def name(self) -> str:
        return f"{self.a} - {self.b}"


@dataclass
class Sweep:
    path: Path
    name: str
    base: Path
    overrides: dict[str, Any]
    variants: dict[str, Variant]
    baseline: str
    seeds: list[int]
    seed_keys: list[str]
    evaluate: Evaluate
    execution: Execution
    references: dict[str, dict[str, float]]
    reference_note: str
    output_dir: Path
    results_dir: Path
    baselines: dict[str, str] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    reuse: list[Path] = field(default_factory=list)  # other sweep files whose committed cells are reused

    def baseline_of(self, variant: str) -> str:
        return self.baselines.get(variant, self.baseline)

    def seeds_of(self, variant: str) -> list[int]:
        own = self.variants[variant].seeds
        return list(own) if own is not None else list(self.seeds)

    def cell_overrides(self, variant: str, seed: int) -> list[str]:
        """The cell's experiment overrides (``key=value``): sweep-wide, the variant's, then the seed keys."""
        flat = dict(self.overrides)
        flat.update(self.variants[variant].overrides)
        flat.update({k: seed for k in self.seed_keys})
        return [format_override(k, v) for k, v in flat.items()]


def _mapping(value: Any, where: str, keys: Sequence[str] | None = None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepError(f"{where} must be a mapping, got {type(value).__name__} {value!r}")
    if keys is not None:
        bad = [k for k in value if k not in keys]
        if bad:
            raise SweepError(f"{where}: unknown key(s) {bad}; accepted: {', '.join(keys)}")
    return value


def flatten(value: dict[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """Nested mapping → ``{dotted key: leaf}``; a key reached twice is an error."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        leaves = flatten(v, where, key) if isinstance(v, dict) and v else {key: v}
        for lk, lv in leaves.items():
            if lk in out:
                raise SweepError(f"{where}: {lk!r} is given twice")
            out[lk] = lv
    return out


def format_override(key: str, value: Any) -> str:
    """``key=value`` whose value parses back (YAML, as ``load_config``'s overrides) to ``value``."""
    if isinstance(value, str):
        plain = scalar_round_trips(value) and "," not in value and value.strip() == value
        return f"{key}={value}" if plain and value else f"{key}={json.dumps(value)}"
    if value is None or isinstance(value, (bool, int, float, list, dict)):
        return f"{key}={json.dumps(value)}"
    raise SweepError(f"override {key}: value {value!r} of type {type(value).__name__} is not a YAML scalar/list/map")


def find_base(value: Any, sweep_path: Path, where: str) -> Path:
    """An experiment path: absolute, relative to the sweep file, else to the packaged configs."""
    from vca_gen.utils.assets import packaged_config

    if not isinstance(value, str) or not value:
        raise SweepError(f"{where} must be the path of an experiment YAML, got {value!r}")
    p = Path(value)
    candidates = [p] if p.is_absolute() else [sweep_path.parent / p]
    if not p.is_absolute():
        try:
            candidates.append(packaged_config(value))
        except FileNotFoundError:
            pass
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise SweepError(
        f"{where}={value!r}: no such experiment file (looked in {', '.join(str(c) for c in candidates)} "
        f"and the packaged configs/)"
    )


def _int(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SweepError(f"{where}={value!r} is not valid; accepted: an integer >= {minimum}")
    return value


def _parse_reference(value: Any) -> Reference:
    if isinstance(value, str) and value:
        return Reference(path=value)
    r = _mapping(value, "evaluate.reference", RECIPE_KEYS)
    if not r:
        raise SweepError(
            "evaluate.reference is required: a statistics .npz path, or a recipe "
            "{source: dataset:animal_mnist:a, num_images: 1000, mode: clean}"
        )
    from vca_gen.metrics.inception import MODES

    if not isinstance(r.get("source"), str):
        raise SweepError(
            f"evaluate.reference.source={r.get('source')!r}: accepted: an image source "
            f"(dataset:animal_mnist:SPLIT, an image folder, an .npz with arr_0)"
        )
    mode = r.get("mode", "clean")
    if mode not in MODES:
        raise SweepError(f"evaluate.reference.mode={mode!r} is not valid; accepted: {', '.join(MODES)}")
    ref = Reference(
        source=r["source"],
        num_images=_int(r.get("num_images"), "evaluate.reference.num_images", 2),
        mode=mode,
        balanced=bool(r.get("balanced", True)),
    )
    if ref.balanced and str(ref.source).startswith("dataset:animal_mnist"):
        if ref.num_images % 10:
            raise SweepError(
                f"evaluate.reference.num_images={ref.num_images}: a class-balanced Animal-MNIST subset "
                f"needs a multiple of 10 (the classes)"
            )
    return ref


def _parse_metrics(value: Any) -> list[str]:
    """``evaluate.metrics``: registered names (:mod:`vca_gen.metrics.registry`), FID among them."""
    from vca_gen.metrics import registry

    try:
        metrics = registry.parse_names(value, "evaluate.metrics")
    except registry.MetricSelectionError as e:
        raise SweepError(str(e)) from None
    if "fid" not in metrics:
        raise SweepError(
            f"evaluate.metrics={value!r} is not valid; accepted: fid plus optional "
            f"{', '.join(n for n in registry.names() if n != 'fid')}"
        )
    return list(metrics)


def _parse_evaluate(value: Any) -> Evaluate:
    e = _mapping(value, "evaluate", EVAL_KEYS)
    if not e:
        raise SweepError("evaluate is required (checkpoints, num_samples, reference, ...)")
    ckpts = e.get("checkpoints", ["final"])
    ckpts = ckpts if isinstance(ckpts, list) else [ckpts]
    if not ckpts or any(
        not (c == "final" or (isinstance(c, int) and not isinstance(c, bool) and c > 0)) for c in ckpts
    ):
        raise SweepError(
            f"evaluate.checkpoints={ckpts!r} is not valid; accepted: a list of positive training steps and/or final"
        )
    metrics = _parse_metrics(e.get("metrics", ["fid"]))
    steps = e.get("steps")
    ev = Evaluate(
        checkpoints=ckpts,
        num_samples=_int(e.get("num_samples"), "evaluate.num_samples", 1),
        reference=_parse_reference(e.get("reference")),
        sampler=e.get("sampler"),
        steps=None if steps is None else str(steps),
        cfg_scale=float(e.get("cfg_scale", 1.0)),
        guide_channels=e.get("guide_channels"),
        options=dict(_mapping(e.get("options"), "evaluate.options")),
        batch_size=_int(e.get("batch_size", 32), "evaluate.batch_size", 1),
        shard_size=_int(e.get("shard_size", 256), "evaluate.shard_size", 1),
        seed=_int(e.get("seed", 0), "evaluate.seed"),
        ema=bool(e.get("ema", True)),
        mode=e.get("mode"),
        metrics=list(metrics),
        cfg_interval=_interval(e.get("cfg_interval")),
    )
    return ev


def _interval(value: Any) -> Any:
    """``evaluate.cfg_interval``: numbers as floats (one hash for ``[0.3, 1]`` and ``[0.3, 1.0]``);
    anything else is kept for the objective's check to name (see ``plan._check_evaluation``)."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    return value


def _parse_execution(value: Any) -> Execution:
    x = _mapping(value, "execution", EXEC_KEYS)
    ex = Execution(
        backend=x.get("backend", "local"),
        processes=_int(x.get("processes", 1), "execution.processes", 1),
        parallel=_int(x.get("parallel", 1), "execution.parallel", 1),
        threads=None if x.get("threads") is None else _int(x.get("threads"), "execution.threads", 1),
        submitit_cluster=x.get("submitit_cluster", "auto"),
        slurm=dict(_mapping(x.get("slurm"), "execution.slurm", SLURM_KEYS)),
    )
    if ex.backend not in BACKENDS:
        raise SweepError(f"execution.backend={ex.backend!r} is not valid; accepted: {', '.join(BACKENDS)}")
    if ex.submitit_cluster not in CLUSTERS:
        raise SweepError(
            f"execution.submitit_cluster={ex.submitit_cluster!r} is not valid; accepted: {', '.join(CLUSTERS)}"
        )
    return ex


def _seeds(value: Any, where: str) -> list[int]:
    seeds = value if isinstance(value, list) else [value]
    if not seeds:
        raise SweepError(f"{where} is empty; accepted: a non-empty list of integers >= 0")
    for s in seeds:
        _int(s, f"{where}[]")
    dups = sorted({s for s in seeds if seeds.count(s) > 1})
    if dups:
        raise SweepError(f"{where}={seeds}: seed(s) {dups} appear more than once; each seed is one cell per variant")
    return list(seeds)


_MINUS = (" - ", " − ")


def _parse_comparisons(value: Any, seeds: dict[str, list[int]]) -> list[Comparison]:
    """``["a - b", ...]`` → comparisons; each side a variant, the two sharing at least one seed."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise SweepError(f'comparisons must be a list like ["vca - mhsa"], got {type(value).__name__} {value!r}')
    out: list[Comparison] = []
    accepted = ", ".join(seeds)
    for item in value:
        parts = None
        if isinstance(item, str):
            for sep in _MINUS:
                if item.count(sep) == 1:
                    parts = [x.strip() for x in item.split(sep)]
        if not parts or not all(parts):
            raise SweepError(
                f"comparisons: {item!r} is not valid; accepted: 'A - B' with two variant names separated by "
                f"' - ' (spaces around the minus), e.g. 'vca - mhsa'"
            )
        a, b = parts
        bad = [x for x in (a, b) if x not in seeds]
        if bad:
            raise SweepError(f"comparisons: {item!r}: {bad} not variant(s) of this sweep; accepted: {accepted}")
        if a == b:
            raise SweepError(f"comparisons: {item!r} compares a variant with itself")
        if not set(seeds[a]) & set(seeds[b]):
            raise SweepError(
                f"comparisons: {item!r}: {a} (seeds {seeds[a]}) and {b} (seeds {seeds[b]}) share no seed; a paired "
                f"difference needs the same seeds on both sides"
            )
        c = Comparison(a, b)
        if c in out:
            raise SweepError(f"comparisons: {item!r} is given twice")
        out.append(c)
    return out


def _parse_reuse(value: Any, sweep_path: Path) -> list[Path]:
    """Other sweep files (relative to this one, else the packaged ``configs/sweeps/``)."""
    from vca_gen.utils.assets import packaged_config

    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise SweepError(f"reuse: {item!r} is not valid; accepted: a list of sweep file paths")
        p = Path(item)
        candidates = [p] if p.is_absolute() else [sweep_path.parent / p]
        if not p.is_absolute():
            try:
                candidates.append(packaged_config(str(Path("sweeps") / p)))
            except FileNotFoundError:
                pass
        found = next((c.resolve() for c in candidates if c.is_file()), None)
        if found is None:
            raise SweepError(f"reuse: {item!r}: no such sweep file (looked in {', '.join(map(str, candidates))})")
        if found == sweep_path.resolve():
            raise SweepError(f"reuse: {item!r} is this sweep file itself")
        out.append(found)
    return out


def _reference_keys() -> list[str]:
    """The numbers a ``references`` entry may give: the summary fields of every registered metric."""
    from vca_gen.metrics import registry

    return [f.key for f in registry.fields_of(registry.names(), summary_only=True)]


def _parse_references(value: Any) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, v in _mapping(value, "references").items():
        if v is None:  # stated as not published (a control the paper does not report)
            out[str(name)] = {}
            continue
        v = {"fid": v} if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        v = _mapping(v, f"references.{name}", _reference_keys())
        out[str(name)] = {k: float(x) for k, x in v.items()}
    return out


def load_sweep(path: str | Path) -> Sweep:
    """Parse (not yet validate against the experiments) the sweep file at ``path``."""
    path = Path(path)
    data = read_yaml_unique(path)
    data = _mapping(data, f"{path}: the sweep file", TOP_KEYS)
    for key in ("base", "variants", "baseline", "seeds", "evaluate"):
        if data.get(key) in (None, "", [], {}):
            raise SweepError(f"{path}: {key} is required" + (" (a non-empty list)" if key == "seeds" else ""))
    name = str(data.get("name") or path.stem)
    if not NAME_RE.match(name):
        raise SweepError(f"name={name!r} is not valid; accepted: letters, digits, '.', '_', '-'")
    base = find_base(data["base"], path, "base")
    variants: dict[str, Variant] = {}
    for vname, vover in _mapping(data["variants"], "variants").items():
        vname = str(vname)
        if not NAME_RE.match(vname) or "__" in vname:
            raise SweepError(
                f"variant name {vname!r} is not valid; accepted: letters, digits, '.', '_', '-' "
                f"(no '__', which separates variant and seed in file names)"
            )
        vover = dict(_mapping(vover, f"variants.{vname}"))
        vbase = find_base(vover.pop("base"), path, f"variants.{vname}.base") if "base" in vover else base
        vseeds = _seeds(vover.pop("seeds"), f"variants.{vname}.seeds") if "seeds" in vover else None
        variants[vname] = Variant(vname, vbase, flatten(vover, f"variants.{vname}"), vseeds)
    baseline = str(data["baseline"])
    if baseline not in variants:
        raise SweepError(f"baseline={baseline!r} is not a variant; accepted: {', '.join(variants)}")
    baselines = {str(k): str(b) for k, b in _mapping(data.get("baselines"), "baselines").items()}
    bad_b = sorted({x for kv in baselines.items() for x in kv if x not in variants})
    if bad_b:
        raise SweepError(f"baselines: {bad_b} are not variants; accepted: {', '.join(variants)}")
    seeds = _seeds(data["seeds"], "seeds")
    seed_keys = data.get("seed_keys", list(DEFAULT_SEED_KEYS))
    if not isinstance(seed_keys, list) or not seed_keys or not all(isinstance(k, str) and k for k in seed_keys):
        raise SweepError(
            f"seed_keys={seed_keys!r} is not valid; accepted: a list of dotted experiment keys, "
            f"e.g. [train.seed, data.seed]"
        )
    own_seeds = {v: var.seeds if var.seeds is not None else seeds for v, var in variants.items()}
    comparisons = _parse_comparisons(data.get("comparisons"), own_seeds)
    reuse = _parse_reuse(data.get("reuse"), path)
    references = _parse_references(data.get("references"))
    unknown = sorted(set(references) - set(variants))
    if unknown:
        raise SweepError(f"references: {unknown} are not variants; accepted: {', '.join(variants)}")
    return Sweep(
        path=path,
        name=name,
        base=base,
        overrides=flatten(_mapping(data.get("overrides"), "overrides"), "overrides"),
        variants=variants,
        baseline=baseline,
        seeds=list(seeds),
        seed_keys=list(seed_keys),
        evaluate=_parse_evaluate(data["evaluate"]),
        execution=_parse_execution(data.get("execution")),
        references=references,
        reference_note=str(data.get("reference_note") or ""),
        output_dir=Path(data.get("output_dir") or f"runs/sweeps/{name}").absolute(),
        results_dir=Path(data.get("results_dir") or f"docs/results/{name}").absolute(),
        baselines=baselines,
        comparisons=comparisons,
        reuse=reuse,
    )


__all__ = [
    "SweepError",
    "Sweep",
    "Evaluate",
    "Execution",
    "Reference",
    "Variant",
    "Comparison",
    "load_sweep",
    "format_override",
    "flatten",
    "find_base",
    "read_yaml_unique",
]
