"""Resume is exact, and a SIGKILL during a checkpoint write leaves the previous one usable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_training_common import (
    HOOKED,
    REPO,
    assert_identical,
    ckpt_tensors,
    image_data,
    make_images,
    run,
    tiny_dict,
    write_yaml,
)


def test_resume_is_bit_exact_including_data_order(tmp_path):
    """N steps straight == N/2 steps, stop, resume, N/2 steps: model, EMA, optimizer bit-identical.

    12 images with batch 4 → 3 steps per epoch, so the 8 steps cross two epoch boundaries and the
    resume point (step 4) is mid-epoch; flips and label dropout are on; 2 micro-batches per step.
    """
    images = make_images(tmp_path / "images")
    common = dict(data=image_data(images), max_steps=8, ckpt_every=4, micro_batch_size=2)
    straight = run(tiny_dict(tmp_path / "a", **common))
    assert straight["step"] == 8
    first = run(tiny_dict(tmp_path / "b", **{**common, "max_steps": 4}))
    assert first["step"] == 4
    resumed = run(tiny_dict(tmp_path / "b", **common))  # resume=auto
    assert resumed["step"] == 8
    state = json.loads((tmp_path / "b/checkpoints/step_00000008/state.json").read_text())
    assert state["data"] == {"epoch": 2, "batch": 2} and state["counters"]["optimizer_steps"] == 8
    a = ckpt_tensors(tmp_path / "a/checkpoints/step_00000008")
    b = ckpt_tensors(tmp_path / "b/checkpoints/step_00000008")
    assert_identical(a, b)
    mid_a = ckpt_tensors(tmp_path / "a/checkpoints/step_00000004")
    assert any(not (mid_a["model"][k] == a["model"][k]).all() for k in a["model"])  # it did train


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    """model.safetensors of the newest checkpoint truncated under its COMPLETE marker: resume warns
    naming the file, continues from the previous checkpoint and reaches the same final weights."""
    from vca_gen.experiment import checkpoint as ckpt

    images = make_images(tmp_path / "images")
    common = dict(data=image_data(images), max_steps=6, ckpt_every=2)
    run(tiny_dict(tmp_path / "a", **common))
    run(tiny_dict(tmp_path / "b", **{**common, "max_steps": 4}))
    damaged = tmp_path / "b/checkpoints/step_00000004/model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.warns(ckpt.CheckpointWarning, match=str(damaged)):
        resumed = run(tiny_dict(tmp_path / "b", **common))
    assert resumed["step"] == 6
    assert_identical(
        ckpt_tensors(tmp_path / "a/checkpoints/step_00000006"), ckpt_tensors(tmp_path / "b/checkpoints/step_00000006")
    )
    ckpt.verify_checkpoint(tmp_path / "b/checkpoints/step_00000004")  # re-written intact on the way


@pytest.mark.slow
def test_sigkill_during_checkpoint_write(tmp_path):
    """Kill -9 while step 4 is half written: step 2 stays loadable and resume=auto continues from it."""
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path / "run", max_steps=4, ckpt_every=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(HOOKED), "--save-pause", "4", "train.py", "--config", str(cfg)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ckroot = tmp_path / "run/checkpoints"
    deadline = time.time() + 180
    try:
        while not (ckroot / "step_00000004.tmp/model.safetensors").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "training never reached the second checkpoint"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    from vca_gen.experiment import checkpoint as ckpt

    assert [s for s, _ in ckpt.list_checkpoints(ckroot)] == [2]
    assert (ckroot / "step_00000004.tmp").exists() and not (ckroot / "step_00000004").exists()
    model, *_ = ckpt.load_for_sampling(tmp_path / "run")  # previous checkpoint loads
    assert model is not None
    out = subprocess.run(
        [sys.executable, "train.py", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert f"resumed from {ckroot / 'step_00000002'} at step 2" in out.stdout
    assert [s for s, _ in ckpt.list_checkpoints(ckroot)] == [2, 4]
    assert not (ckroot / "step_00000004.tmp").exists()
