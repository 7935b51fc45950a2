"""``sweep.py``: run a sweep (variants × seeds), show its state, aggregate its results.

    python sweep.py run FILE [--dry-run] [--only V1,V2] [--seeds 0,1] [--parallel K] [--rerun]
    python sweep.py status FILE [--only ...] [--seeds ...]
    python sweep.py report FILE

``run`` validates the whole sweep first (nothing is created on an error: ``sweep.py: error: ...``, exit
2), computes a recipe reference once, runs the unfinished cells (each stage cached: see
:mod:`vca_gen.sweep.cells`), then writes the report. A cell whose committed result file matches its
experiment and protocol hashes is done and never recomputed; a mismatching one is reported and only
recomputed with ``--rerun``. Exit status: 0 when every selected cell is done, 1 when some failed or are
stale, 2 on invalid input (every option is checked before the file is read: :mod:`vca_gen.utils.cli_types`),
141 when the reader of stdout left (``sweep.py run --dry-run | head``: no traceback). ``--dry-run`` lists
every cell and stage with its exact command and runs nothing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from vca_gen.errors import cli_boundary
from vca_gen.utils import cli_types as T

TOOL = "sweep.py"


def _variants(text: str) -> str:
    """``--only``: comma-separated variant names (which exist is checked against the file)."""
    from vca_gen.sweep.spec import NAME_RE

    names = [v.strip() for v in text.split(",")]
    if not any(names) or not all(NAME_RE.match(v) for v in names if v):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid; accepted: comma-separated variant names (letters, digits, '.', '_', '-')"
        )
    return text


def _seeds(text: str) -> str:
    """``--seeds``: comma-separated seeds in [0, 2**63) (which exist is checked against the file)."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; accepted: comma-separated integers >= 0")
    for v in items:
        try:
            T.seed(v)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {v!r} is not valid; accepted: comma-separated integers in [0, 2**63)"
            ) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=TOOL,
        description=__doc__.split("\n\n")[0],
        epilog="sweep files: vca_gen/configs/sweeps/ (format: vca_gen/sweep/spec.py)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the unfinished cells, then write the report")
    status = sub.add_parser("status", help="table of cells and stages (train step, samples, scores, failures)")
    report = sub.add_parser("report", help="aggregate the committed cell results into results.json / report.md")
    for sp in (run, status, report):
        sp.add_argument("file", metavar="FILE", type=T.nonempty, help="sweep YAML")
    for sp in (run, status):
        sp.add_argument("--only", metavar="VARIANT[,..]", type=_variants, help="only these variants")
        sp.add_argument("--seeds", metavar="S[,..]", type=_seeds, help="only these seeds (of the file's)")
    run.add_argument("--dry-run", action="store_true", help="list every cell, stage and command; run nothing")
    run.add_argument(
        "--parallel", type=T.positive_int, default=None, help="cells at a time (default: execution.parallel)"
    )
    run.add_argument(
        "--rerun",
        action="store_true",
        help="recompute cells whose committed result does not match the sweep (changed experiment/protocol)",
    )
    run.add_argument("--wait", action="store_true", help="SLURM: wait for the jobs (default: submit and return)")
    run.add_argument("--no-report", action="store_true", help="do not write the report after running")
    return p


def _load(args, allow_missing_reference: bool = False, hooks=None):
    from vca_gen.sweep.plan import select, validate
    from vca_gen.sweep.spec import load_sweep

    sweep = load_sweep(args.file)
    variants, seeds = select(sweep, getattr(args, "only", None), getattr(args, "seeds", None))
    validated = validate(sweep, allow_missing_reference=allow_missing_reference, hooks=hooks)
    chosen = [c for c in validated.cells if c.variant in variants and c.seed in seeds]
    return sweep, validated, chosen


def dry_run(sweep, validated, cells) -> int:
    from vca_gen.sweep.cells import committed_state, stages
    from vca_gen.sweep.execute import slurm_parameters

    ex = sweep.execution
    print(
        f"sweep {sweep.name}: {len(cells)} cell(s) of {len(validated.cells)}; output_dir {sweep.output_dir}; "
        f"results_dir {sweep.results_dir}"
    )
    if ex.backend == "local":
        print(f"execution: local, {ex.parallel} cell(s) at a time, {ex.processes} process(es) per cell")
    else:
        print(
            f"execution: submitit (cluster {ex.submitit_cluster}), one job per cell"
            + (" in one SLURM job array" if ex.submitit_cluster != "local" else f", {ex.parallel} at a time")
            + f"; job parameters {slurm_parameters(ex, sweep.name)}"
        )
    ref = sweep.evaluate.reference
    if ref.is_recipe:
        print(
            f"reference: computed once from {ref.num_images} images of {ref.source} ({ref.mode}) -> "
            f"{cells[0].reference_path if cells else '-'}"
        )
    else:
        print(f"reference: {ref.path}")
    for w in validated.warnings:
        print(f"warning: {w}")
    for c in cells:
        state = committed_state(c)
        print(
            f"\n[{c.key}] experiment {c.experiment_hash[:12]} protocol {c.protocol_hash[:12]}"
            + (f" — {'done (committed result): nothing to run' if state == 'done' else state}" if state else "")
        )
        if state == "done":
            continue
        for st in stages(c):
            mark = "done, skipped" if Path(st.output).is_file() else "to run"
            print(f"  {st.name} ({mark}): {shlex.join(st.argv)}")
    return 0


def cmd_run(args, hooks=None) -> int:
    from vca_gen.sweep.cells import committed_state
    from vca_gen.sweep.execute import run_cells
    from vca_gen.sweep.reference import ensure_reference

    sweep, validated, cells = _load(args, allow_missing_reference=args.dry_run, hooks=hooks)
    if args.dry_run:
        return dry_run(sweep, validated, cells)
    todo, stale, done = [], [], []
    for c in cells:
        state = committed_state(c)
        if state == "done":
            done.append(c)
        elif state is not None and not args.rerun:
            stale.append((c, state))
        else:
            todo.append(c)
    for c in done:
        print(f"[sweep] {c.key}: done (committed result)")
    for c, state in stale:
        print(f"[sweep] {c.key}: {state}; not recomputed")
    if todo:
        ensure_reference(sweep)
    results = run_cells(sweep, todo, args.parallel or sweep.execution.parallel, rerun=args.rerun, wait=args.wait)
    queued = [r for r in results if r.get("status") == "queued"]
    for r in queued:
        print(f"[sweep] {r['cell']}: queued ({r['detail']}); `sweep.py status` shows progress")
    failed = [r for r in results if r.get("status") not in ("done", "queued")]
    for r in failed:
        print(
            f"[sweep] {r['cell']}: {r['status']} at {r.get('stage')}"
            + (f" (exit {r['exit_code']})" if r.get("exit_code") is not None else "")
            + (f": {r['detail']}" if r.get("detail") else ""),
            file=sys.stderr,
        )
    if not args.no_report:
        _report(sweep, validated)
    print(
        f"[sweep] {len(cells) - len(failed) - len(stale) - len(queued)} of {len(cells)} cell(s) done; "
        f"{len(failed)} failed; {len(stale)} stale; {len(queued)} queued"
    )
    return 1 if failed or stale else 0


def _report(sweep, validated) -> Path:
    from vca_gen.sweep.aggregate import aggregate
    from vca_gen.sweep.report import write_report

    res = aggregate(sweep, validated.cells, validated.reference_identity)
    path = write_report(res, sweep.results_dir)
    print(f"[sweep] report: {path} ({res['cells_done']} of {res['cells_total']} cells)")
    return path


def cmd_status(args) -> int:
    from vca_gen.sweep.status import cell_status, format_status

    sweep, validated, cells = _load(args, allow_missing_reference=True)
    rows = [cell_status(c) for c in cells]
    from vca_gen.sweep.cells import read_json

    jobs = read_json(sweep.output_dir / "submitit" / "jobs.json") or {}  # SLURM jobs submitted by `run`
    for r in rows:
        if r["cell"] in jobs and not r["state"].startswith("done"):
            r["state"] += f" (SLURM job {jobs[r['cell']]})"
    steps = sorted({s for c in cells for s in c.steps})
    print(f"sweep {sweep.name}: {sum(r['state'].startswith('done') for r in rows)} of {len(rows)} cell(s) done")
    print(format_status(rows, steps))
    return 0


def cmd_report(args) -> int:
    sweep, validated, _ = _load(args, allow_missing_reference=True)
    _report(sweep, validated)
    return 0


def main(argv: Sequence[str] | None = None, hooks=None) -> int:
    """``sweep.py`` with ``argv``; ``hooks`` (a :class:`vca_gen.sweep.plan.StageHooks`): test hooks of
    the stages that ``run`` starts."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return cli_boundary(TOOL, lambda: cmd_run(args, hooks))
    fn = {"status": cmd_status, "report": cmd_report}[args.command]
    return cli_boundary(TOOL, lambda: fn(args))


__all__ = ["main", "build_parser"]
