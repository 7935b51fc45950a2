"""What ``sweep.py status`` shows: per cell its state, training step / max, each scored checkpoint's
sample state (done, k/m shards) and score, and the last failure (stage, exit code, stderr tail)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vca_gen.sweep.cells import committed_state, eval_dir, read_json, step_name


def _sample_state(d: Path, plan) -> str:
    if (d / "sample.json").is_file():
        return "done"
    shards = len(list((d / "samples").glob("shard_*.npz"))) if (d / "samples").is_dir() else 0
    total = -(-int(plan.evaluate["num_samples"]) // int(plan.evaluate["shard_size"]))
    return f"{shards}/{total} shards" if shards else "-"


def cell_status(plan) -> dict[str, Any]:
    """What ``sweep.py status`` shows for one cell."""
    from vca_gen.experiment.checkpoint import list_checkpoints

    committed = committed_state(plan)
    cell = Path(plan.cell_dir)
    ckpts = list_checkpoints(cell / "train" / "checkpoints")
    step = ckpts[-1][0] if ckpts else 0
    per_step = {}
    for s in plan.steps:
        d = eval_dir(plan) / step_name(s)
        score = read_json(d / "score.json")
        per_step[s] = {"sample": _sample_state(d, plan), "fid": score.get("fid") if score else None}
    failure = read_json(cell / "failure.json")
    if committed == "done":
        rec = read_json(plan.result_file) or {}
        state = "done (committed result)"
        for s in plan.steps:
            m = rec.get("metrics", {}).get(str(s), {})
            if per_step[s]["fid"] is None and m.get("fid") is not None:
                per_step[s] = {"sample": "(committed)", "fid": m["fid"]}
        if not ckpts:
            step = int(rec.get("max_steps", 0))
    elif committed is not None:
        state = committed
    elif failure is not None:
        state = f"failed at {failure.get('stage')} (exit {failure.get('exit_code')})"
    elif (cell / "train.json").is_file() and all(v["fid"] is not None for v in per_step.values()):
        state = "stages done (result file not written yet)"
    elif cell.is_dir():
        state = "partial"
    else:
        state = "not started"
    return {
        "cell": plan.key,
        "variant": plan.variant,
        "seed": plan.seed,
        "state": state,
        "train_step": step,
        "max_steps": plan.max_steps,
        "steps": per_step,
        "failure": failure,
    }


def format_status(rows: list[dict], steps: Sequence[int]) -> str:
    head = ["cell", "state", "train"] + [f"{h}@{s}" for s in steps for h in ("sample", "FID")]
    table = [head]
    for r in rows:
        line = [r["cell"], r["state"], f"{r['train_step']}/{r['max_steps']}"]
        for s in steps:
            st = r["steps"].get(s, {})
            line += [st.get("sample", "-"), "-" if st.get("fid") is None else f"{st['fid']:.2f}"]
        table.append(line)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    out = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    for r in rows:
        f = r.get("failure")
        if f and not r["state"].startswith("done"):
            out.append(
                f"\nfailure of {r['cell']}: stage {f.get('stage')}, exit code {f.get('exit_code')}"
                f" ({f.get('time', '')}); last lines of stderr:"
            )
            out += [f"    {ln}" for ln in (f.get("stderr_tail") or [])[-8:]]
    return "\n".join(out)


__all__ = ["cell_status", "format_status"]
