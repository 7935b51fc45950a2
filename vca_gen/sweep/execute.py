"""Running a sweep's cells: locally (``parallel`` cells at a time) or as submitit jobs (one job per cell).

- ``backend: local``: a thread pool of ``execution.parallel`` workers, each running
  :func:`vca_gen.sweep.cells.run_cell` (whose stages are subprocesses) in this process.
- ``backend: submitit``: ``submitit.AutoExecutor`` with ``cluster`` = ``execution.submitit_cluster``
  (``local``: submitit's LocalExecutor, one process per job on this machine, submitted ``parallel`` at a
  time; ``slurm``: one SLURM job array, ``slurm.array_parallelism`` jobs at a time; ``auto``: SLURM when
  submitit finds it; submitted and left queued unless ``sweep.py run --wait``; ``sweep.py status`` follows
  them). Job logs and pickles go to ``output_dir/submitit/``. Each job runs one cell; a
  failing stage is recorded by the cell (``failure.json``) and the job still returns, so one cell's
  failure never stops another. A job that dies (killed, timed out) is reported with submitit's error.

**Locked.** While it runs cells, ``sweep.py run`` holds a :class:`~vca_gen.utils.lock.RunLock`
(purpose ``"sweep"``) on the sweep's ``output_dir`` and on its ``results_dir``: a second ``sweep.py
run`` of the same sweep (or another sweep writing the same results) exits 2 naming the holder (host,
pid, start time, command). Each cell also holds a lock on its own folder while it runs (also inside
a submitit job), so a cell's bookkeeping never closes or counts another process's attempt.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

from vca_gen.sweep.cells import run_cell
from vca_gen.sweep.plan import CellPlan
from vca_gen.sweep.spec import Execution, Sweep

DEFAULT_TIMEOUT_MIN = 3 * 24 * 60
LOCK_PURPOSE = "sweep"
LOCK_HEARTBEAT_S = 600.0


@contextmanager
def sweep_lock(sweep: Sweep) -> Iterator[None]:
    """Hold the sweep's lock on ``output_dir`` and ``results_dir`` (see the module docstring)."""
    from vca_gen.utils.lock import RunLock

    with ExitStack() as stack:
        for d in dict.fromkeys((sweep.output_dir, sweep.results_dir)):  # once if they are one folder
            stack.enter_context(RunLock(d, LOCK_PURPOSE, heartbeat_s=LOCK_HEARTBEAT_S))
        yield


def slurm_parameters(ex: Execution, name: str) -> dict[str, Any]:
    """AutoExecutor parameters of one cell's job (``execution.slurm`` translated)."""
    s = ex.slurm
    params: dict[str, Any] = {
        "name": f"sweep-{name}",
        "timeout_min": int(s.get("timeout_min") or DEFAULT_TIMEOUT_MIN),
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": int(s.get("cpus_per_task") or 1),
    }
    gpus = s.get("gpus_per_node")
    if gpus is None and ex.submitit_cluster == "local":
        try:
            import torch

            gpus = ex.processes if torch.cuda.is_available() else 0
        except ImportError:  # pragma: no cover
            gpus = 0
    params["gpus_per_node"] = int(gpus or 0)
    if s.get("mem_gb"):
        params["mem_gb"] = int(s["mem_gb"])
    if s.get("partition"):
        params["slurm_partition"] = str(s["partition"])
    if s.get("array_parallelism"):
        params["slurm_array_parallelism"] = int(s["array_parallelism"])
    if s.get("additional_parameters"):
        params["slurm_additional_parameters"] = dict(s["additional_parameters"])
    return params


def _run_local(cells: list[CellPlan], parallel: int, rerun: bool) -> list[dict[str, Any]]:
    if parallel <= 1:
        return [run_cell(c, rerun) for c in cells]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda c: run_cell(c, rerun), cells))


def _job_result(job, cell: CellPlan) -> dict[str, Any]:
    try:
        return job.result()
    except Exception as e:  # the job itself died: killed, timed out, out of memory
        msg = " ".join(str(e).split())[-600:]
        return {"cell": cell.key, "status": "failed", "stage": "job", "detail": f"submitit job {job.job_id}: {msg}"}


ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")


def _submit_slurm(executor, sweep: Sweep, cells: list[CellPlan], rerun: bool, wait: bool) -> list[dict[str, Any]]:
    """One job array for the cells that have no live job yet (``output_dir/submitit/jobs.json`` records the
    job of each cell, so re-running ``sweep.py run`` while jobs are queued does not submit them twice)."""
    import submitit

    from vca_gen.sweep.cells import read_json
    from vca_gen.utils.io import atomic_write_json

    jobs_file = sweep.output_dir / "submitit" / "jobs.json"
    known: dict[str, str] = read_json(jobs_file) or {}
    live, todo = {}, []
    for c in cells:
        jid = known.get(c.key)
        state = "UNKNOWN"
        if jid:
            try:
                state = submitit.SlurmJob(folder=str(sweep.output_dir / "submitit" / "%j"), job_id=jid).state
            except Exception:  # sacct unavailable: assume finished, the cell's stages are cached anyway
                state = "UNKNOWN"
        if jid and state in ACTIVE_STATES:
            live[c.key] = (jid, state)
        else:
            todo.append(c)
    jobs = []
    if todo:
        with executor.batch():  # one job array
            jobs = [executor.submit(run_cell, c, rerun) for c in todo]
        for job, c in zip(jobs, todo):
            known[c.key] = str(job.job_id)
            print(f"[sweep] {c.key}: submitted job {job.job_id}", flush=True)
        jobs_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(jobs_file, known, what="the sweep's job list", resumable=True)
    out = [{"cell": k, "status": "queued", "detail": f"job {j} is {st}"} for k, (j, st) in live.items()]
    if not wait:
        return out + [
            {"cell": c.key, "status": "queued", "detail": f"job {j.job_id} submitted"} for j, c in zip(jobs, todo)
        ]
    return out + [_job_result(j, c) for j, c in zip(jobs, todo)]


def _run_submitit(sweep: Sweep, cells: list[CellPlan], parallel: int, rerun: bool, wait: bool) -> list[dict[str, Any]]:
    import submitit

    ex = sweep.execution
    folder = sweep.output_dir / "submitit" / "%j"
    cluster = None if ex.submitit_cluster == "auto" else ex.submitit_cluster
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params = slurm_parameters(ex, sweep.name)
    if executor.cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    print(f"[sweep] submitit ({executor.cluster}): {len(cells)} job(s), logs in {folder.parent}", flush=True)
    results: list[dict[str, Any]] = []
    if executor.cluster == "slurm":
        return _submit_slurm(executor, sweep, cells, rerun, wait)
    for i in range(0, len(cells), parallel):  # the LocalExecutor starts every job at once: waves of `parallel`
        wave = cells[i : i + parallel]
        jobs = [executor.submit(run_cell, c, rerun) for c in wave]
        results += [_job_result(j, c) for j, c in zip(jobs, wave)]
    return results


def run_cells(
    sweep: Sweep, cells: list[CellPlan], parallel: int, rerun: bool = False, wait: bool = False
) -> list[dict[str, Any]]:
    """Run every cell (finished stages are skipped inside each); returns one status dict per cell.

    On SLURM the jobs are submitted and, unless ``wait``, this returns at once ("queued")."""
    if not cells:
        return []
    with sweep_lock(sweep):
        if sweep.execution.backend == "local":
            out = _run_local(cells, parallel, rerun)
        else:
            out = _run_submitit(sweep, cells, parallel, rerun, wait)
    sys.stdout.flush()
    return out


__all__ = ["run_cells", "slurm_parameters", "sweep_lock"]
