"""Preemption and run-directory protection, end to end in subprocesses.

SIGTERM / SIGUSR1 / Ctrl-C make training finish the current step on every process, write a
checkpoint and exit 75 (no traceback); re-running the same command reaches the weights of an
uninterrupted run bit for bit. A second training into a locked run directory exits 2 naming the
holder, and the first one finishes intact. A slow step (``tests/hooked_cli.py --step-sleep``)
makes the signal land mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from test_training_common import (
    assert_identical,
    ckpt_tensors,
    launch_direct,
    reset_accelerate,
    tiny_dict,
    wait_all,
    write_yaml,
)
from vca_gen.experiment import checkpoint as ckpt

EXIT_PREEMPTED = 75
MAX_STEPS = 10
pytestmark = pytest.mark.slow


def config(tmp_path: Path, name: str) -> Path:
    return write_yaml(tmp_path / f"{name}.yaml", tiny_dict(tmp_path / name, max_steps=MAX_STEPS, ckpt_every=2))


def wait_for(path: Path, procs: list, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a process exited early ({p.returncode}): {p.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def stop_mid_run(cfg: Path, run_dir: Path, num_processes: int, sig: int, rank: int) -> tuple:
    """Start a slowed training, send ``sig`` to process ``rank`` once step 2 is checkpointed;
    returns the results and the step of the checkpoint it wrote when stopping."""
    procs = launch_direct(cfg, num_processes, faults=["--step-sleep", "0.4"])
    try:
        wait_for(run_dir / "checkpoints/step_00000002/COMPLETE", procs)
        os.kill(procs[rank].pid, sig)
        results = wait_all(procs, timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rc, _, err in results:
        assert rc == EXIT_PREEMPTED, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    step = ckpt.list_checkpoints(run_dir / "checkpoints")[-1][0]
    assert 2 < step < MAX_STEPS, step  # stopped mid-run, after finishing the step the signal fell in
    state = json.loads((run_dir / f"checkpoints/{ckpt.step_dir_name(step)}/state.json").read_text())
    assert state["step"] == step and state["counters"]["batches"] == step
    main_out = results[0][1]
    assert f"at step {step}; checkpoint" in main_out and "re-run the same command" in main_out
    assert not (run_dir / ".lock").exists()  # released on the way out
    return results, step


def finish(cfg: Path, num_processes: int) -> list:
    results = wait_all(launch_direct(cfg, num_processes), timeout=600)
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    return results


@pytest.fixture(scope="module")
def reference_2p(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref2")
    finish(config(tmp, "ref"), 2)
    return ckpt_tensors(tmp / "ref" / f"checkpoints/{ckpt.step_dir_name(MAX_STEPS)}")


@pytest.mark.parametrize("sig,rank", [(signal.SIGTERM, 1), (signal.SIGUSR1, 0)], ids=["SIGTERM-rank1", "SIGUSR1-rank0"])
def test_signal_to_one_of_two_processes_stops_both_and_resumes_exactly(tmp_path, reference_2p, sig, rank):
    cfg = config(tmp_path, "run")
    results, step = stop_mid_run(cfg, tmp_path / "run", 2, sig, rank)
    name = signal.Signals(sig).name
    assert f"[rank {rank}] got {name}: finishing this step" in results[rank][2]
    assert ("stopped by " + (name if rank == 0 else "a signal to another process")) in results[0][1]
    finish(cfg, 2)  # the same command again
    assert_identical(reference_2p, ckpt_tensors(tmp_path / "run" / f"checkpoints/{ckpt.step_dir_name(MAX_STEPS)}"))


def test_ctrl_c_single_process_checkpoints_without_traceback_and_resumes(tmp_path):
    ref = config(tmp_path, "ref")
    finish(ref, 1)
    cfg = config(tmp_path, "run")
    results, step = stop_mid_run(cfg, tmp_path / "run", 1, signal.SIGINT, 0)
    assert "got SIGINT: finishing this step" in results[0][2]
    out = finish(cfg, 1)[0][1]
    assert f"resumed from {tmp_path / 'run/checkpoints' / ckpt.step_dir_name(step)} at step {step}" in out
    assert_identical(
        ckpt_tensors(tmp_path / "ref" / f"checkpoints/{ckpt.step_dir_name(MAX_STEPS)}"),
        ckpt_tensors(tmp_path / "run" / f"checkpoints/{ckpt.step_dir_name(MAX_STEPS)}"),
    )


def test_second_training_into_a_locked_run_dir_exits_2_and_the_first_finishes(tmp_path, capsys):

    cfg = config(tmp_path, "run")
    first = launch_direct(cfg, 1, faults=["--step-sleep", "1.5"])[0]  # outlives the second attempt
    try:
        wait_for(tmp_path / "run/checkpoints/step_00000002/COMPLETE", [first])
        from vca_gen.train.cli import main

        reset_accelerate()
        assert main(["--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert f"run directory {tmp_path / 'run'} is locked by pid {first.pid}" in err and "(train)" in err
        ((rc, out, ferr),) = wait_all([first])
    finally:
        if first.poll() is None:
            first.kill()
    assert rc == 0, ferr[-3000:]
    final = tmp_path / "run" / f"checkpoints/{ckpt.step_dir_name(MAX_STEPS)}"
    ckpt.verify_checkpoint(final)  # intact
    assert json.loads((final / "state.json").read_text())["step"] == MAX_STEPS
    assert not (tmp_path / "run/.lock").exists()
