"""``sample.py`` over several gloo processes (the same collectives and timeouts as NCCL): no long
collective (a rank slower than the process-group timeout is waited for through the files), one
broadcast decision checked by every rank, preemption of every rank with exit 75 and an exact resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_sample_cli import REPO, make_export

pytestmark = pytest.mark.slow
# 7 shards of 5; every run compared byte for byte uses these settings
RUN7 = [
    "--num-samples",
    "35",
    "--shard-size",
    "5",
    "--batch-size",
    "5",
    "--steps",
    "10",
    "--seed",
    "3",
    "--no-progress",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1", **extra}


def _sample(export, out, *extra, faults: tuple[str, ...] = ()) -> list[str]:
    """sample.py's command line (through ``tests/hooked_cli.py`` with ``faults``, its options)."""
    hooked = [str(REPO / "tests" / "hooked_cli.py"), *faults] if faults else []
    return [*hooked, str(REPO / "sample.py"), "--ckpt", str(export), "--out", str(out), *RUN7, *extra]


def _launch(n: int, args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        *args,
    ]


def _why(r: subprocess.CompletedProcess) -> str:
    """What a failed launch said: every line naming an error (from any rank), then the tail."""
    lines = [ln for ln in r.stderr.splitlines() if "rror" in ln or "imed out" in ln]
    return "\n".join(lines[:40]) + "\n--- tail ---\n" + r.stderr[-2000:]


def _arr(out: Path):
    with np.load(out / "samples.npz") as z:
        return z["arr_0"], z["arr_1"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("ckpt") / "export")


@pytest.fixture(scope="module")
def reference(export, tmp_path_factory) -> Path:
    """One uninterrupted single-process run, with PNGs."""
    out = tmp_path_factory.mktemp("ref") / "s"
    subprocess.run([sys.executable, *_sample(export, out, "--save-png")], check=True, env=_env(), cwd=REPO, timeout=300)
    return out


def test_three_processes_with_a_rank_slower_than_the_timeout(export, reference, tmp_path):
    out = tmp_path / "s3"
    t0 = time.monotonic()
    # rank 2 computes shards 2 and 5 and sleeps 12 s before each: 24 s past the others, timeout 10 s.
    # The timeout also bounds the start-up collectives (the other ranks load the export while the main
    # waits), so it leaves room for a busy machine; each sleep alone is longer than it.
    r = subprocess.run(
        _launch(3, _sample(export, out, "--save-png", "--timeout-s", "10", faults=("--shard-sleep", "2:12"))),
        cwd=REPO,
        timeout=400,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, _why(r)
    assert time.monotonic() - t0 > 24
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["processes"] == 3 and summary["generated_by_main"] == 15  # shards 0, 3, 6
    assert "waiting for shard_00002.npz" in r.stderr
    a, y = _arr(out)
    a1, y1 = _arr(reference)
    assert np.array_equal(a, a1) and np.array_equal(y, y1)
    pngs = sorted(p.name for p in (reference / "png").glob("*.png"))
    assert len(pngs) == 35 and sorted(p.name for p in (out / "png").glob("*.png")) == pngs
    assert all((out / "png" / n).read_bytes() == (reference / "png" / n).read_bytes() for n in pngs)
    assert (out / "grid.png").read_bytes() == (reference / "grid.png").read_bytes()
    assert not (out / ".lock").exists() and not list(out.glob(".*.tmp")) and not list(out.glob(".rank_*"))


def test_a_rank_seeing_other_finished_shards_stops_everyone_before_sampling(export, reference, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    for name in ["sampling.json"] + [f"shard_{k:05d}.npz" for k in (0, 1, 2)]:
        (out / name).write_bytes((reference / name).read_bytes())
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = subprocess.run(
        _launch(2, _sample(export, out, faults=("--hide-shards", "1:1"))),
        cwd=REPO,
        timeout=400,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    msg = f"rank 1 does not see the output directory {out} as the main process does: finished shards differ"
    assert r.stderr.count(msg) == 2, _why(r)  # both processes stop with the same one-line error
    assert "it does not see shard_00001.npz" in r.stderr and "nothing was sampled" in r.stderr
    assert f'File "{REPO / "vca_gen"}' not in r.stderr  # no traceback from our code (the launcher prints its own)
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(after) == set(before) and all(after[n] == before[n] for n in before if n.startswith("shard_"))


def test_sigterm_to_every_rank_exits_75_and_the_rerun_is_identical(export, reference, tmp_path):
    """srun-style: each process started by hand (no launcher in between) and each signalled."""
    out = tmp_path / "s"
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, *_sample(export, out, faults=("--shard-sleep", f"{rank}:1.5"))],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE="2",
                LOCAL_WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
        )
        for rank in range(2)
    ]
    deadline = time.time() + 240
    while not (out / "shard_00000.npz").exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    results = [p.communicate(timeout=120) for p in procs]
    for rank, (p, (_, err)) in enumerate(zip(procs, results, strict=True)):
        assert p.returncode == 75, err[-3000:]
        assert f"stopped by SIGTERM (process {rank} of 2)" in err and "Traceback" not in err
    shards = sorted(out.glob("shard_*.npz"))
    assert 1 <= len(shards) < 7 and not (out / "samples.npz").exists() and not (out / ".lock").exists()
    r = subprocess.run(
        [sys.executable, *_sample(export, out)], env=_env(), cwd=REPO, timeout=300, capture_output=True, text=True
    )
    assert r.returncode == 0, _why(r)
    assert json.loads(r.stdout.strip().splitlines()[-1])["resumed_shards"] == len(shards)
    assert np.array_equal(_arr(out)[0], _arr(reference)[0])
