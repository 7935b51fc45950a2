"""Statistics over seeds of the committed cell results.

Per variant, metric and scored step: n, mean, sample std (n − 1), min, max and the 95% Student-t
interval ``mean ± t(0.975, n − 1) · std / √n`` (none for n < 2). Against the baseline variant: the
paired per-seed differences ``variant − baseline`` over the seeds both have, with the same interval
and a flag when it contains 0 (no difference shown at 95%). The sweep's named ``comparisons`` (``a − b``)
get the same paired statistics at the final checkpoint and at every step both variants scored.
Thread counts: per variant and overall, the torch thread counts its cells trained and sampled with;
platforms: the CPU kinds and torch builds they ran on (bit-for-bit reproduction needs all three).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from vca_gen.sweep.cells import committed_state, read_json
from vca_gen.sweep.plan import CellPlan
from vca_gen.sweep.spec import Sweep
from vca_gen.sweep.status import cell_status

CONFIDENCE = 0.95


def metric_names(metrics: Sequence[str]) -> list[str]:
    """The numbers aggregated over seeds: the summary fields of the sweep's metrics (registry order)."""
    from vca_gen.metrics import registry

    return [f.key for f in registry.fields_of(metrics, summary_only=True)]


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """n, mean, std (ddof 1), min, max and the Student-t interval of the mean."""
    from scipy import stats

    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "ci": None}
    mean = sum(v) / n
    std, ci = None, None
    if n > 1:
        std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {"n": n, "mean": mean, "std": std, "min": min(v), "max": max(v), "ci": ci}


def _threads(per_cell) -> dict[str, Any]:
    """``{"counts": sorted thread counts seen, "unrecorded": cells without a record}`` over cell records."""
    counts, unrecorded = set(), 0
    for t in per_cell:
        vals = [x for x in (t or {}).values() if x is not None]
        if not vals:
            unrecorded += 1
        for x in vals:
            counts.update(x if isinstance(x, list) else [x])
    return {"counts": sorted(counts), "unrecorded": unrecorded}


def _platforms(cells) -> dict[str, Any]:
    """``{"kinds": sorted "CPU kind, torch build" strings seen, "unrecorded": cells without a record}``."""
    kinds, unrecorded = set(), 0
    for c in cells:
        if c.get("cpu") and c.get("torch"):
            kinds.add(f"{c['cpu']}, torch {c['torch']}")
        else:
            unrecorded += 1
    return {"kinds": sorted(kinds), "unrecorded": unrecorded}


def load_results(plans: Sequence[CellPlan]) -> dict[str, dict[str, Any]]:
    """Result records of the cells whose committed result matches their hashes, by cell key."""
    return {p.key: read_json(p.result_file) or {} for p in plans if committed_state(p) == "done"}


def aggregate(sweep: Sweep, plans: Sequence[CellPlan], ref_identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """``results.json``'s content for the cells of ``plans`` (every variant × seed of the sweep)."""
    records = load_results(plans)
    names = metric_names(sweep.evaluate.metrics)
    by_variant: dict[str, list[CellPlan]] = {}
    for p in plans:
        by_variant.setdefault(p.variant, []).append(p)

    def values(variant: str, metric: str, step: int) -> dict[int, float]:
        out = {}
        for p in by_variant.get(variant, []):
            rec = records.get(p.key) or {}
            x = rec.get("metrics", {}).get(str(step), {}).get(metric)
            if x is not None:
                out[p.seed] = float(x)
        return out

    def paired(a: str, step_a: int, b: str, step_b: int, m: str) -> dict[str, Any]:
        mine, base = values(a, m, step_a), values(b, m, step_b)
        common = sorted(set(mine) & set(base))
        d = summarize([mine[s] - base[s] for s in common])
        d["seeds"] = common
        d["contains_zero"] = None if d["ci"] is None else bool(d["ci"][0] <= 0.0 <= d["ci"][1])
        return d

    variants: dict[str, Any] = {}
    for v, vplans in by_variant.items():
        bname = sweep.baseline_of(v)
        base_plans = by_variant.get(bname, [])
        final = vplans[0].max_steps
        entry: dict[str, Any] = {
            "final_step": final,
            "steps": vplans[0].steps,
            "seeds_done": sorted(p.seed for p in vplans if p.key in records),
            "metrics": {},
            "paired": {},
            "reference": sweep.references.get(v, {}),
            "baseline": bname,
        }
        for m in names:
            by_step = {}
            for s in vplans[0].steps:
                vals = values(v, m, s)
                by_step[str(s)] = {**summarize(list(vals.values())), "values": {str(k): x for k, x in vals.items()}}
            entry["metrics"][m] = {"final": by_step[str(final)], "by_step": by_step}
            if v != bname and base_plans:
                entry["paired"][m] = paired(v, final, bname, base_plans[0].max_steps, m)
        minutes = {
            k: [records[p.key][k] for p in vplans if p.key in records and records[p.key].get(k) is not None]
            for k in ("train_minutes", "sample_minutes", "score_minutes")
        }
        entry["minutes"] = {k: summarize(x) for k, x in minutes.items()}
        entry["cells"] = {
            p.key: {
                "seed": p.seed,
                "train_minutes": records[p.key].get("train_minutes"),
                "sample_minutes": records[p.key].get("sample_minutes"),
                "score_minutes": records[p.key].get("score_minutes"),
                "device": records[p.key].get("device"),
                "git_commit": records[p.key].get("git_commit"),
                "threads": records[p.key].get("threads"),
                "cpu": records[p.key].get("cpu"),
                "torch": records[p.key].get("torch"),
                "reused_from": p.reused_from,
            }
            for p in vplans
            if p.key in records
        }
        entry["threads"] = _threads(c["threads"] for c in entry["cells"].values())
        variants[v] = entry
    comparisons = []
    for c in sweep.comparisons:
        if c.a not in by_variant or c.b not in by_variant:
            continue
        pa, pb = by_variant[c.a][0], by_variant[c.b][0]
        comparisons.append(
            {
                "name": c.name,
                "a": c.a,
                "b": c.b,
                "metrics": {
                    m: {
                        "final": paired(c.a, pa.max_steps, c.b, pb.max_steps, m),
                        "by_step": {str(s): paired(c.a, s, c.b, s, m) for s in sorted(set(pa.steps) & set(pb.steps))},
                    }
                    for m in names
                },
            }
        )
    incomplete = []
    for p in plans:
        if p.key not in records:
            st = cell_status(p)
            incomplete.append(
                {"cell": p.key, "variant": p.variant, "seed": p.seed, "state": st["state"], "failure": st["failure"]}
            )
    ev = sweep.evaluate
    return {
        "format": "vca-gen-sweep-results",
        "version": 1,
        "sweep": sweep.name,
        "file": str(sweep.path),
        "baseline": sweep.baseline,
        "baselines": sweep.baselines,
        "seeds": sweep.seeds,
        "metrics": names,
        "confidence": CONFIDENCE,
        "protocol": {
            "checkpoints": ev.checkpoints,
            "sampler": ev.sampler,
            "steps": ev.steps,
            "cfg_scale": ev.cfg_scale,
            "guide_channels": ev.guide_channels,
            **({"cfg_interval": ev.cfg_interval} if ev.cfg_interval is not None else {}),
            "options": ev.options,
            "num_samples": ev.num_samples,
            "seed": ev.seed,
            "ema": ev.ema,
            "mode": ev.mode,
            "reference": (
                ev.reference.path
                if not ev.reference.is_recipe
                else {
                    "source": ev.reference.source,
                    "num_images": ev.reference.num_images,
                    "mode": ev.reference.mode,
                    "balanced": ev.reference.balanced,
                }
            ),
            "reference_identity": ref_identity,
            "protocol_hash": plans[0].protocol_hash if plans else None,
        },
        "reference_note": sweep.reference_note,
        "threads": _threads(c["threads"] for e in variants.values() for c in e["cells"].values()),
        "platforms": _platforms(c for e in variants.values() for c in e["cells"].values()),
        "reused": sorted({str(p.reused_from) for p in plans if p.reused_from and p.key in records}),
        "variants": variants,
        "comparisons": comparisons,
        "incomplete": incomplete,
        "cells_total": len(plans),
        "cells_done": len(records),
    }


__all__ = ["aggregate", "summarize", "metric_names", "load_results", "CONFIDENCE"]
