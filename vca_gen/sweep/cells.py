"""One cell (variant × seed): train → sample (each scored checkpoint) → score, through the project's commands.

Layout of a cell under ``output_dir/cells/<variant>__seed<k>/exp-<experiment hash[:12]>/``::

    cell.json                  the plan (overrides, hashes, commands)
    train/                     train.py's run directory (checkpoints/step_XXXXXXXX, logs, config.yaml)
    train.json                 stage output: written when train.py exited 0
    eval-<protocol hash[:12]>/step_XXXXXXXX/
        samples/               sample.py --out (shards, sampling.json, samples.npz)
        sample.json            stage output: sample.py's summary line
        score.json             stage output: evaluate_fid.py --json-out
    logs/<stage>.stdout|.stderr  every attempt appended, with a header line
    stages.jsonl               one line per stage event (start, done, skipped, failed, interrupted; seconds, exit code)
    failure.json               the last failure (stage, exit code, last lines of stderr); removed on success

Every stage's process runs with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to the cell's thread count
(``execution.threads``, else this process's ``torch.get_num_threads()``), recorded on each ``start`` event
and in the result file: CPU training reproduces bit for bit only at the same thread count.

A stage whose output JSON exists is skipped; an unfinished one is re-run with its command's own resume
(training ``train.resume=auto``, sampling's shards). A changed experiment (or protocol) gets a new
``exp-`` (or ``eval-``) folder, so nothing stale is reused. A finished cell writes
``results_dir/cells/<variant>__seed<k>.json`` (see :func:`result_record`).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vca_gen.sweep.plan import StageHooks
from vca_gen.utils.io import append_text, atomic_write_json, write_faults

CELL_LOCK_PURPOSE = "sweep cell"

RESULT_FORMAT, RESULT_VERSION = "vca-gen-sweep-cell", 1
STDERR_TAIL = 40
PORT_BASE = 29500
FORCED_FAILURE_EXIT = 9  # exit status of a stage named in the plan's ``hooks.fail`` (tests)


def repo_root() -> Path:
    """The checkout holding ``train.py`` / ``sample.py`` / ``evaluate_fid.py`` (the commands cells run)."""
    return Path(__file__).resolve().parent.parent.parent


@dataclass
class Stage:
    name: str  # train | sample@STEP | score@STEP
    kind: str
    step: int | None
    argv: list[str]
    output: str  # the JSON whose existence means the stage is done


def step_name(step: int) -> str:
    return f"step_{int(step):08d}"


def eval_dir(plan) -> Path:
    return Path(plan.cell_dir) / f"eval-{plan.protocol_hash[:12]}"


def _hooks(plan) -> StageHooks:
    """The plan's test hooks (none for a plan without the field)."""
    return getattr(plan, "hooks", None) or StageHooks()


def _launcher(plan, script: str, processes: int | None = None) -> list[str]:
    """The command prefix of ``script`` (through the plan's test launcher, if any)."""
    path = [*_hooks(plan).launcher, str(Path(plan.repo) / script)]
    if (plan.processes if processes is None else processes) <= 1:
        return [sys.executable, *path]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(plan.processes),
        "--main_process_port",
        str(PORT_BASE + 1 + plan.index % 1000),
        *path,
    ]


def _option_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "none" if v is None else str(v)


def score_metrics(metrics: list[str]) -> list[str]:
    """What a cell's score stage computes: ``evaluate_fid.py``'s defaults (FID, sFID: every cell record
    has carried both) plus the sweep's ``evaluate.metrics``, in registry order."""
    from vca_gen.metrics import registry

    return registry.ordered([*registry.default_names(), *metrics])


def stages(plan) -> list[Stage]:
    """The cell's stages with their exact commands, in order."""
    cell, ev = Path(plan.cell_dir), plan.evaluate
    out = [
        Stage(
            "train",
            "train",
            None,
            _launcher(plan, "train.py") + ["--config", plan.base, *plan.overrides, *plan.managed],
            str(cell / "train.json"),
        )
    ]
    for s in plan.steps:
        d = eval_dir(plan) / step_name(s)
        argv = _launcher(plan, "sample.py") + [
            "--ckpt",
            str(cell / "train" / "checkpoints" / step_name(s)),
            "--out",
            str(d / "samples"),
            "--num-samples",
            str(ev["num_samples"]),
            "--seed",
            str(ev["seed"]),
            "--batch-size",
            str(ev["batch_size"]),
            "--shard-size",
            str(ev["shard_size"]),
            "--cfg-scale",
            str(ev["cfg_scale"]),
            "--grid-classes",
            "0",
            "--no-progress",
        ]
        if ev["sampler"]:
            argv += ["--sampler", str(ev["sampler"])]
        if ev["steps"] is not None:
            argv += ["--steps", str(ev["steps"])]
        if ev["guide_channels"] is not None:
            argv += ["--guide-channels", str(ev["guide_channels"])]
        if ev.get("cfg_interval") is not None:
            argv += ["--cfg-interval", *(repr(float(v)) for v in ev["cfg_interval"])]
        for k, v in ev["options"].items():
            argv += ["--sampler-option", f"{k}={_option_text(v)}"]
        if not ev["ema"]:
            argv.append("--no-ema")
        out.append(Stage(f"sample@{s}", "sample", s, argv, str(d / "sample.json")))
        score = _launcher(plan, "evaluate_fid.py", processes=1) + [
            str(d / "samples" / "samples.npz"),
            "--ref",
            plan.reference_path,
            "--json-out",
            str(d / "score.json"),
            "--no-progress",
        ]
        if ev["mode"]:
            score += ["--mode", ev["mode"]]
        score += ["--metrics", ",".join(score_metrics(ev["metrics"]))]
        out.append(Stage(f"score@{s}", "score", s, score, str(d / "score.json")))
    return out


# ----------------------------------------------------------------------------- events and records
def _event(cell: Path, **fields) -> None:
    fields = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
    append_text(cell / "stages.jsonl", json.dumps(fields) + "\n", what="the cell's stage log", resumable=True)


def read_events(cell_dir: Path | str) -> list[dict[str, Any]]:
    p = Path(cell_dir) / "stages.jsonl"
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    return out


ENDED = ("done", "failed", "interrupted")  # events that close an attempt and carry its seconds


def stage_minutes(events: list[dict[str, Any]], kind: str) -> float:
    """Minutes spent in every attempt (done, failed, or interrupted and resumed) of stages of ``kind``."""
    return sum(e.get("seconds", 0.0) for e in events if e.get("kind") == kind and e["event"] in ENDED) / 60


def _close_interrupted_attempt(cell: Path, stage: Stage, logs: tuple[Path, ...]) -> None:
    """A previous attempt of ``stage`` that started and never ended (the sweep was killed, even by
    SIGKILL) is closed with an ``interrupted`` event: its seconds run from its start event to the
    last write to the stage's logs (the commands write progress as they go)."""
    mine = [e for e in read_events(cell) if e.get("stage") == stage.name]
    if not mine or mine[-1]["event"] != "start":
        return
    try:
        started = time.mktime(time.strptime(mine[-1]["time"], "%Y-%m-%dT%H:%M:%S"))
    except (KeyError, ValueError):
        return
    ended = max((p.stat().st_mtime for p in logs if p.is_file()), default=started)
    _event(cell, stage=stage.name, kind=stage.kind, event="interrupted", seconds=round(max(0.0, ended - started), 1))


def read_json(path: Path | str) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def git_commit(repo: str) -> dict[str, Any]:
    def git(*args):
        r = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": None if dirty is None else bool(dirty)}


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    except Exception:  # pragma: no cover - torch always imports here
        pass
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def cpu_kind() -> str:
    """The CPU's model name and the instruction set torch's kernels use on it (e.g. ``AMD EPYC (AVX2)``):
    CPU results reproduce bit for bit only on the same kind, with the same torch build and thread count."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:  # not Linux
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def result_record(plan, events: list[dict[str, Any]]) -> dict[str, Any]:
    """The committed result of a finished cell: per scored step, every registered metric field of
    ``score.json`` (``None`` when not computed) with ``n``, ``n_ref`` and ``mode``; where it ran (host,
    device, CPU kind, torch build, thread counts: what exact reproduction needs)."""
    import torch

    from vca_gen.metrics import registry

    metrics: dict[str, dict[str, Any]] = {}
    for s in plan.steps:
        score = read_json(eval_dir(plan) / step_name(s) / "score.json") or {}
        metrics[str(s)] = {k: score.get(k) for k in (*registry.value_keys(), "n", "n_ref", "mode") if k in score}
    g = git_commit(plan.repo)
    return {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "sweep": plan.sweep,
        "variant": plan.variant,
        "seed": plan.seed,
        "base": Path(plan.base).name,
        "overrides": plan.overrides,
        "experiment_hash": plan.experiment_hash,
        "protocol_hash": plan.protocol_hash,
        "max_steps": plan.max_steps,
        "steps": plan.steps,
        "metrics": metrics,
        "train_minutes": round(stage_minutes(events, "train"), 3),
        "sample_minutes": round(stage_minutes(events, "sample"), 3),
        "score_minutes": round(stage_minutes(events, "score"), 3),
        "processes": plan.processes,
        "threads": {k: stage_threads(events, k) for k in ("train", "sample", "score")},
        "git_commit": g["commit"],
        "git_dirty": g["dirty"],
        "host": socket.gethostname(),
        "device": device_name(),
        "cpu": cpu_kind(),
        "torch": torch.__version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def committed_state(plan) -> str | None:
    """None (no result file), "done", or why a result file does not match this cell."""
    rec = read_json(plan.result_file)
    if rec is None:
        return None
    why = [
        what
        for what, key in (("experiment", "experiment_hash"), ("protocol", "protocol_hash"))
        if rec.get(key) != getattr(plan, key)
    ]
    return "done" if not why else f"stale committed result ({' and '.join(why)} changed; --rerun recomputes)"


# ----------------------------------------------------------------------------- running
def _tail(path: Path, offset: int, n: int = STDERR_TAIL) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cell_threads(plan) -> int:
    """The torch thread count the cell's stages run with: ``execution.threads``, else this process's."""
    if getattr(plan, "threads", None):
        return int(plan.threads)
    import torch

    return int(torch.get_num_threads())


def stage_env(plan, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a stage's process: ``env`` (default: this one's) with the thread count pinned."""
    out = dict(os.environ if env is None else env)
    n = str(cell_threads(plan))
    out.update({k: n for k in THREAD_VARS})
    return out


def stage_threads(events: list[dict[str, Any]], kind: str) -> int | list[int] | None:
    """Thread count(s) of every attempt of stages of ``kind`` (one int when they agree; None if unrecorded)."""
    seen = sorted({int(e["threads"]) for e in events if e.get("kind") == kind and e.get("threads") is not None})
    return None if not seen else seen[0] if len(seen) == 1 else seen


def run_stage(plan, stage: Stage, env: dict[str, str] | None = None) -> int:
    """Run one stage's command, logs appended; writes the stage's output JSON or ``failure.json``."""
    cell = Path(plan.cell_dir)
    logs = cell / "logs"
    with write_faults(logs, "the cell's log folder", resumable=True):
        logs.mkdir(parents=True, exist_ok=True)
    tag = stage.name.replace("@", "_")
    out_log, err_log = logs / f"{tag}.stdout", logs / f"{tag}.stderr"
    out0, err0 = _size(out_log), _size(err_log)
    header = f"===== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(stage.argv)}\n"
    argv = stage.argv
    if f"{plan.key}:{stage.name}" in _hooks(plan).fail:  # test hook (StageHooks.fail)
        argv = [
            sys.executable,
            "-c",
            f"import sys; sys.stderr.write('forced failure (StageHooks.fail)\\n'); sys.exit({FORCED_FAILURE_EXIT})",
        ]
    _close_interrupted_attempt(cell, stage, (out_log, err_log))
    env = stage_env(plan, env)
    with write_faults(out_log, "the stage's log", resumable=True):
        fo = open(out_log, "a")
        try:
            fe = open(err_log, "a")
        except BaseException:
            fo.close()
            raise
    with fo, fe:
        with write_faults(out_log, "the stage's log", resumable=True):
            fo.write(header)
            fe.write(header)
            fo.flush()
            fe.flush()
        # the start event only once the logs are writable: a disk fault leaves no attempt open
        _event(cell, stage=stage.name, kind=stage.kind, event="start", threads=int(env[THREAD_VARS[0]]))
        t0 = time.perf_counter()
        rc = subprocess.run(argv, stdout=fo, stderr=fe, env=env, stdin=subprocess.DEVNULL).returncode
    secs = time.perf_counter() - t0
    if rc != 0:
        _event(cell, stage=stage.name, kind=stage.kind, event="failed", rc=rc, seconds=secs)
        atomic_write_json(
            cell / "failure.json",
            what="the cell's failure record",
            resumable=True,
            obj={
                "variant": plan.variant,
                "seed": plan.seed,
                "stage": stage.name,
                "exit_code": rc,
                "command": stage.argv,
                "stderr_tail": _tail(err_log, err0),
                "stderr_log": str(err_log),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        return rc
    if stage.kind == "train":
        info = {"command": stage.argv, "seconds": secs}
    elif stage.kind == "sample":
        lines = [ln for ln in _tail(out_log, out0, 5) if ln.startswith("{")]
        info = json.loads(lines[-1]) if lines else {}
        info["command"] = stage.argv
    else:
        info = None  # evaluate_fid.py wrote its --json-out itself
    if info is not None:
        atomic_write_json(stage.output, info, what=f"the {stage.name} stage's record", resumable=True)
    _event(cell, stage=stage.name, kind=stage.kind, event="done", rc=0, seconds=secs)
    return 0


def run_cell(plan, rerun: bool = False) -> dict[str, Any]:
    """Run (or finish) one cell; returns ``{"cell", "status": done|failed|stale|busy, ...}``. Never raises
    for a failing stage: it is recorded in ``failure.json`` and reported. The cell's folder is locked
    while it runs (:class:`~vca_gen.utils.lock.RunLock`): a cell another process is running is
    reported ``busy`` and left alone (its events are never closed or counted by this process)."""
    from vca_gen.utils.lock import RunDirLockedError, RunLock

    key = plan.key
    state = committed_state(plan)
    if state == "done":
        return {"cell": key, "status": "done", "committed": True}
    if state is not None and not rerun:
        return {"cell": key, "status": "stale", "detail": state}
    cell = Path(plan.cell_dir)
    try:
        lock = RunLock(cell, CELL_LOCK_PURPOSE, heartbeat_s=600.0).acquire()
    except RunDirLockedError as e:
        return {"cell": key, "status": "busy", "stage": "lock", "detail": str(e)}
    try:
        return _run_cell(plan, cell)
    finally:
        lock.release()


def _run_cell(plan, cell: Path) -> dict[str, Any]:
    key = plan.key
    atomic_write_json(
        cell / "cell.json",
        {**asdict(plan), "stages": [asdict(s) for s in stages(plan)]},
        what="the cell's plan",
        resumable=True,
    )
    if not Path(plan.reference_path).is_file():
        atomic_write_json(
            cell / "failure.json",
            {
                "variant": plan.variant,
                "seed": plan.seed,
                "stage": "reference",
                "exit_code": None,
                "stderr_tail": [f"reference {plan.reference_path} is missing"],
            },
            what="the cell's failure record",
            resumable=True,
        )
        return {"cell": key, "status": "failed", "stage": "reference"}
    for stage in stages(plan):
        if Path(stage.output).is_file():
            _event(cell, stage=stage.name, kind=stage.kind, event="skipped")
            continue
        print(f"[sweep] {key}: {stage.name}", flush=True)
        rc = run_stage(plan, stage)
        if rc != 0:
            print(f"[sweep] {key}: {stage.name} failed (exit {rc}); see {cell / 'failure.json'}", flush=True)
            return {"cell": key, "status": "failed", "stage": stage.name, "exit_code": rc}
    record = result_record(plan, read_events(cell))
    with write_faults(plan.result_file, "the cell's result", resumable=True):
        Path(plan.result_file).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.result_file, record, what="the cell's result", resumable=True)
    (cell / "failure.json").unlink(missing_ok=True)
    final = record["metrics"].get(str(plan.max_steps), {}).get("fid")
    print(f"[sweep] {key}: done (FID {final})", flush=True)
    return {"cell": key, "status": "done", "committed": False}


__all__ = [
    "Stage",
    "stages",
    "run_cell",
    "run_stage",
    "committed_state",
    "result_record",
    "read_events",
    "read_json",
    "repo_root",
    "stage_env",
    "stage_threads",
    "eval_dir",
    "step_name",
]
