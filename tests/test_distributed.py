"""Two CPU processes (gloo, ``accelerate launch --multi_gpu``) train like one process with the same
global batch and seed, and only the main process writes files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_training_common import (
    REPO,
    ckpt_tensors,
    image_data,
    launch_direct,
    make_images,
    run,
    tiny_dict,
    wait_all,
    write_yaml,
)
from vca_gen.experiment.checkpoint import verify_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: Path, num_processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    accelerate = str(Path(sys.executable).parent / "accelerate")
    if num_processes > 1:
        cmd = [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(num_processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            "train.py",
            "--config",
            str(cfg),
        ]
    else:
        cmd = [sys.executable, "train.py", "--config", str(cfg)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def files(run_dir: Path) -> set:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and "logs" not in p.parts}


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    images = make_images(tmp_path / "images")
    runs = {}
    for n in (1, 2):
        d = tiny_dict(
            tmp_path / f"run{n}", data=image_data(images), max_steps=4, ckpt_every=2, grid={"every": 4, "num": 2}
        )
        d["logging"] = {"tracker": "tensorboard"}
        out = launch(write_yaml(tmp_path / f"c{n}.yaml", d), n)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.count("finished at step 4") == 1, out.stdout  # printed by the main process only
        runs[n] = tmp_path / f"run{n}"
    a = ckpt_tensors(runs[1] / "checkpoints/step_00000004")
    b = ckpt_tensors(runs[2] / "checkpoints/step_00000004")
    for part in ("model", "ema", "optimizer"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=1e-4, atol=1e-6, msg=f"{part}:{k}")
    # same files, no stray temporaries, one TensorBoard writer (the main process's)
    assert files(runs[1]) == files(runs[2])
    assert not [p for p in files(runs[2]) if ".tmp" in p or ".old" in p]
    assert len(list((runs[2] / "logs").rglob("events.out.tfevents.*"))) == len(
        list((runs[1] / "logs").rglob("events.out.tfevents.*"))
    )
    rng = torch.load(runs[2] / "checkpoints/step_00000004/rng.pt", weights_only=True)
    assert rng["world_size"] == 2 and len(rng["states"]) == 2


@pytest.mark.slow
def test_processes_disagreeing_on_the_checkpoint_stop_before_the_first_step(tmp_path):
    """The main process picks the checkpoint and broadcasts it; a rank that cannot read exactly
    that checkpoint (test hook: rank 1 does not see its model.safetensors) stops every process
    with exit 2 and an error naming the rank and the path, before any step."""
    d = tiny_dict(tmp_path / "run", max_steps=2, ckpt_every=2)
    run(d)  # one process writes step 2
    chosen = tmp_path / "run/checkpoints/step_00000002"
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and "logs" not in p.parts}
    cfg = write_yaml(tmp_path / "c.yaml", {**d, "train": {**d["train"], "max_steps": 4}})
    results = wait_all(launch_direct(cfg, 2, faults=["--hide-checkpoint", "1:model.safetensors"]))
    for rc, out, err in results:
        assert rc == 2, err[-3000:]
        assert "Traceback" not in err
        assert f"rank 1 cannot read the checkpoint chosen by the main process, {chosen}" in err
        assert f"{chosen / 'model.safetensors'} does not exist here" in err
        assert "resumed from" not in out
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and "logs" not in p.parts}
    assert after == before  # nothing trained or written; the lock is released


@pytest.mark.slow
def test_a_rank_slower_than_the_timeout_stops_training_with_one_clear_error(tmp_path):
    """Rank 1 stalls 15 s before step 3 with ``train.timeout_s=5``: rank 0's gradient all-reduce (DDP,
    inside the step) times out and rank 1 then finds its peer gone. Each stops with exit 2 and one
    error naming the step and the option, not gloo's traceback; step 2's checkpoint is kept intact."""
    d = tiny_dict(tmp_path / "run", max_steps=4, ckpt_every=2, timeout_s=5)
    cfg = write_yaml(tmp_path / "c.yaml", d)
    results = wait_all(launch_direct(cfg, 2, faults=["--stall-step", "1:3:15"]))
    ckpts = tmp_path / "run/checkpoints"
    for rank, (rc, _out, err) in enumerate(results):
        why = f"rank {rank}:\n{err[-3000:]}"
        assert rc == 2, why
        assert f"train.py: error: process {rank} of 2: the gradient all-reduce of training step 3 failed" in err, why
        assert "needs a larger train.timeout_s" in err and f"The last checkpoint in {ckpts} is intact" in err, why
        assert "Traceback" not in err, why
    assert "within train.timeout_s=5 s" in results[0][2], results[0][2][-3000:]  # rank 0 waited out the bound
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000002"]
    verify_checkpoint(ckpts / "step_00000002")  # intact: every file matches its recorded checksum
