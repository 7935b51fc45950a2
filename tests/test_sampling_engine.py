"""The sampling engine with a stand-in generator: labels, shards, process-count independence,
resume after a failure, manifest checks, file format and atomicity."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vca_gen.sample import (
    RunSpec,
    SamplingError,
    ShardPlan,
    check_num_samples,
    files,
    labels_for,
    run_sampling,
    to_uint8,
)
from vca_gen.utils import rng
from vca_gen.utils.faults import Faults

C = 5  # classes of the stand-in


class FakeWorld:
    """What ``world`` threads share: a barrier (with the process-group timeout) and mailboxes."""

    def __init__(self, world: int, timeout: float = 60.0):
        self.barrier, self.timeout = threading.Barrier(world), timeout
        self.box, self.slots = None, [None] * world


class FakeState:
    """accelerate's PartialState for one of ``world`` threads: broadcast / gather through a barrier
    that times out like a process group; no ``wait_for_everyone`` (the engine must not need one)."""

    def __init__(self, rank: int, world: int, shared: FakeWorld):
        self.process_index, self.num_processes, self._w = rank, world, shared
        self.is_main_process = rank == 0
        self.device = torch.device("cpu")

    def _sync(self):
        self._w.barrier.wait(timeout=self._w.timeout)

    def broadcast_object(self, obj):
        if self.is_main_process:
            self._w.box = copy.deepcopy(obj)
        self._sync()
        value = copy.deepcopy(self._w.box)
        self._sync()
        return value

    def gather_object(self, obj):
        self._w.slots[self.process_index] = obj
        self._sync()
        value = list(self._w.slots)
        self._sync()
        return value

    def all_ok(self, ok):
        return all(self.gather_object(bool(ok)))


def stand_in(indices, labels, gens, fail_after=None, calls=None):
    """Noise from per-sample generators, a batch matmul and a stochastic step (like an SDE)."""
    if calls is not None:
        calls.append(len(indices))
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt("simulated kill")
    x = rng.randn((len(indices), 1, 6, 6), gens)
    w = torch.linspace(-1, 1, 36).reshape(6, 6)
    x = torch.tanh(x @ w + 0.3 * rng.randn(x.shape, gens) + labels.view(-1, 1, 1, 1) / C)
    return to_uint8(x), 7


def spec(out: Path, n=30, **kw) -> RunSpec:
    kw = {
        "batch_size": 4,
        "shard_size": 8,
        "settings": {"sampler": "fake", "ckpt_sha256": "abc"},
        "progress": False,
        **kw,
    }
    return RunSpec(out_dir=out, num_samples=n, num_classes=C, image_shape=(6, 6, 3), seed=11, **kw)


def run_world(s: RunSpec, world: int, make=stand_in, timeout: float = 60.0, stop=None, all_errors=None, faults=None):
    """``run_sampling`` on ``world`` threads; ``faults``: {rank: Faults} injected into those ranks."""
    shared, results, errors = FakeWorld(world, timeout), [None] * world, []

    def work(r):
        try:
            state = FakeState(r, world, shared)
            results[r] = run_sampling(make, s, state=state, stop=stop, faults=(faults or {}).get(r))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
            if all_errors is None:
                shared.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    if all_errors is not None:
        all_errors.extend(errors)
    if errors:
        raise errors[0]
    return results


def load(path):
    with np.load(path) as z:
        return z["arr_0"], z["arr_1"]


def test_balanced_labels_and_count_errors():
    y = labels_for(range(50), 10)
    assert torch.equal(torch.bincount(y), torch.full((10,), 5))
    assert y[:10].tolist() == list(range(10))  # interleaved: every prefix of 10 covers all classes
    with pytest.raises(SamplingError, match="fewer than the model's 10 classes"):
        check_num_samples(7, 10)
    with pytest.raises(SamplingError, match="use 20 or 30"):
        check_num_samples(25, 10)


@pytest.mark.parametrize("n,size,world", [(30, 8, 1), (30, 8, 3), (7, 10, 2), (64, 16, 5)])
def test_shards_cover_every_index_once(n, size, world):
    plan = ShardPlan(n, size)
    got = [
        i
        for r in range(world)
        for k in ShardPlan.assign(list(range(plan.num_shards)), r, world)
        for i in plan.indices(k)
    ]
    assert sorted(got) == list(range(n))


def test_to_uint8_replicates_gray_and_rounds():
    x = torch.tensor([-1.0, 1.0, 0.0, -2.0]).view(1, 1, 2, 2)
    u = to_uint8(x)
    assert u.shape == (1, 2, 2, 3) and u.dtype == np.uint8
    assert u[0, :, :, 0].tolist() == [[0, 255], [128, 0]] and (u[..., 0] == u[..., 2]).all()


def test_process_count_independent_and_balanced(tmp_path):
    r1 = run_world(spec(tmp_path / "w1"), 1)
    run_world(spec(tmp_path / "w3"), 3)
    a1, y1 = load(r1[0].path)
    a3, y3 = load(tmp_path / "w3" / "samples.npz")
    assert a1.shape == (30, 6, 6, 3) and a1.dtype == np.uint8
    assert np.array_equal(a1, a3) and np.array_equal(y1, y3)
    assert np.bincount(y1).tolist() == [6] * C
    assert r1[0].nfe_per_image == 7 and (tmp_path / "w1" / "grid.png").is_file()
    # sample i is a function of (seed + i) only: a shorter run reproduces the prefix
    run_world(spec(tmp_path / "s", n=10), 1)
    assert np.array_equal(load(tmp_path / "s" / "samples.npz")[0], a1[:10])


def test_resume_after_interrupt_gives_same_bytes(tmp_path):
    ref = load(run_world(spec(tmp_path / "ref"), 1)[0].path)[0]
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_world(spec(tmp_path / "run"), 1, make=lambda *a: stand_in(*a, fail_after=5, calls=calls))
    done = sorted(p.name for p in (tmp_path / "run").glob("shard_*.npz"))
    assert done == ["shard_00000.npz", "shard_00001.npz"] and not (tmp_path / "run" / "samples.npz").exists()
    calls.clear()
    res = run_world(spec(tmp_path / "run"), 2, make=lambda *a: stand_in(*a, calls=calls))
    assert sum(calls) == 30 - 16 and res[0].resumed_shards == 2  # only the missing shards ran
    assert np.array_equal(load(tmp_path / "run" / "samples.npz")[0], ref)


def test_rerun_of_finished_run_reuses_or_reassembles(tmp_path):
    run_world(spec(tmp_path), 1)
    final = tmp_path / "samples.npz"
    before, stamp = final.read_bytes(), final.stat().st_mtime_ns
    calls = []
    res = run_world(spec(tmp_path), 1, make=lambda *a: stand_in(*a, calls=calls))[0]
    assert calls == [] and res.generated == 0 and final.stat().st_mtime_ns == stamp  # nothing redone
    final.unlink()
    run_world(spec(tmp_path), 2, make=lambda *a: stand_in(*a, calls=calls))
    assert calls == [] and final.read_bytes() == before  # reassembled from the shards


def test_settings_mismatch_on_resume(tmp_path):
    run_world(spec(tmp_path), 1)
    before = (tmp_path / "samples.npz").read_bytes()
    other = spec(tmp_path, settings={"sampler": "fake", "ckpt_sha256": "abd"})
    with pytest.raises(SamplingError, match=r"different settings:\n  ckpt_sha256: 'abc' \(existing\) vs 'abd'"):
        run_world(other, 1)
    with pytest.raises(SamplingError, match="shard_size"):
        run_world(spec(tmp_path, shard_size=10), 1)
    assert (tmp_path / "samples.npz").read_bytes() == before
    run_world(spec(tmp_path, settings=other.settings, overwrite=True), 1)
    assert (tmp_path / "sampling.json").read_text().count('"abd"') == 1


def test_foreign_files_without_manifest_are_refused(tmp_path):
    (tmp_path / "samples.npz").write_bytes(b"not ours")
    with pytest.raises(SamplingError, match="no sampling.json"):
        run_world(spec(tmp_path), 1)


def test_stream_npz_is_atomic(tmp_path):
    final = tmp_path / "x.npz"

    def chunks():
        yield np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        files.stream_npz(final, 4, (4, 4, 3), chunks())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="only 2 of 4"):
        files.stream_npz(final, 4, (4, 4, 3), iter([(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2))]))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_shard_is_reported(tmp_path):
    run_world(spec(tmp_path), 1)
    files.shard_path(tmp_path, 1).write_bytes(b"garbage")
    (tmp_path / "samples.npz").unlink()
    with pytest.raises(ValueError, match="shard_00001.npz is unreadable"):
        run_world(spec(tmp_path), 1)


# ---------------------------------------------------------------------------------- scale-ready
def test_slow_process_past_the_group_timeout_completes(tmp_path):
    """No collective after the start: a process slower than the group timeout is simply waited for."""
    ref = load(run_world(spec(tmp_path / "ref", n=40), 1)[0].path)
    slow = {2: Faults(shard_sleep_s=1.5)}  # rank 2 sleeps 1.5 s before each shard
    t0 = time.monotonic()
    res = run_world(spec(tmp_path / "w3", n=40), 3, timeout=1.0, faults=slow)  # 5 shards: rank 2 computes shard 2
    assert time.monotonic() - t0 > 1.5 and res[2].shards_written == 1 and res[1].path is None
    got = load(res[0].path)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
    assert not (tmp_path / "w3" / ".lock").exists() and not list((tmp_path / "w3").glob(".rank_*"))


def test_ranks_that_see_other_finished_shards_stop_before_sampling(tmp_path):
    run_world(spec(tmp_path), 1)
    (tmp_path / "samples.npz").unlink()
    files.shard_path(tmp_path, 3).unlink()
    stamp = files.shard_path(tmp_path, 0).stat().st_mtime_ns
    hidden = {1: Faults(hidden_shards=(0,))}  # rank 1 does not see shard_00000.npz
    calls, errors = [], []
    with pytest.raises(SamplingError) as info:
        run_world(spec(tmp_path), 2, make=lambda *a: stand_in(*a, calls=calls), all_errors=errors, faults=hidden)
    msg = str(info.value)
    assert "rank 1 does not see the output directory" in msg and str(tmp_path) in msg
    assert "does not see shard_00000.npz" in msg and "nothing was sampled" in msg
    assert len(errors) == 2 and all(str(e) == msg for e in errors)  # every process stops with the same error
    assert calls == [] and not files.shard_path(tmp_path, 3).exists()  # before any sampling
    assert files.shard_path(tmp_path, 0).stat().st_mtime_ns == stamp and not (tmp_path / ".lock").exists()


def test_other_ranks_stop_with_the_main_process_error(tmp_path):
    run_world(spec(tmp_path), 1)
    errors = []
    with pytest.raises(SamplingError):
        run_world(spec(tmp_path, shard_size=10), 2, all_errors=errors)
    msgs = sorted(str(e) for e in errors)
    assert len(msgs) == 2 and "different settings" in msgs[0]
    assert msgs[1].startswith("the main process stopped: SamplingError: --out") and "shard_size" in msgs[1]


@pytest.mark.parametrize("world", [1, 2])
def test_stop_request_finishes_the_shard_then_resumes_exactly(tmp_path, world):
    from vca_gen.sample.engine import StopRequest

    ref = load(run_world(spec(tmp_path / "ref", n=40), 1)[0].path)[0]
    stop, calls = StopRequest(), []

    def make(indices, labels, gens):
        if indices.start >= 8 * world:  # a process starts its second shard: the signal arrives
            stop.request()
        return stand_in(indices, labels, gens, calls=calls)

    res = run_world(spec(tmp_path / "run", n=40), world, make=make, stop=stop)  # 5 shards
    assert all(r.stopped_by == "SIGTERM" and r.path is None and 1 <= r.shards_written <= 2 for r in res)
    done = sorted(p.name for p in (tmp_path / "run").glob("shard_*.npz"))
    assert len(done) == sum(r.shards_written for r in res) < 5
    assert sum(calls) == 8 * len(done)  # the shard in flight was finished and written, nothing more started
    assert not (tmp_path / "run" / "samples.npz").exists() and not (tmp_path / "run" / ".lock").exists()
    res = run_world(spec(tmp_path / "run", n=40), 1)
    assert res[0].stopped_by is None and res[0].resumed_shards == len(done)
    assert np.array_equal(load(res[0].path)[0], ref)


def test_failed_process_stops_the_waiting_main(tmp_path):
    def make(indices, labels, gens):
        if indices.start == 8:  # shard 1: process 1
            raise RuntimeError("CUDA out of memory (simulated)")
        return stand_in(indices, labels, gens)

    errors = []
    with pytest.raises((RuntimeError, SamplingError)):
        run_world(spec(tmp_path), 2, make=make, all_errors=errors)
    main_err = [e for e in errors if isinstance(e, SamplingError)]
    assert len(errors) == 2 and len(main_err) == 1
    assert "process 1 failed (RuntimeError: CUDA out of memory (simulated))" in str(main_err[0])
    assert not (tmp_path / "samples.npz").exists() and not (tmp_path / ".lock").exists()
    run_world(spec(tmp_path), 1)  # the markers are cleared by the next run
    assert not list(tmp_path.glob(".rank_*")) and (tmp_path / "samples.npz").is_file()


def test_out_dir_lock(tmp_path):
    import json
    import subprocess
    import sys

    from vca_gen.utils.lock import RunDirLockedError, RunLock, StaleLockWarning

    with RunLock(tmp_path, "sample"):
        with pytest.raises(RunDirLockedError, match=r"locked by pid \d+ on host .* \(sample\)"):
            run_world(spec(tmp_path), 1)
    assert not list(tmp_path.glob("*.npz"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(
        json.dumps(
            {
                "pid": dead.pid,
                "host": __import__("socket").gethostname(),
                "purpose": "sample",
                "started_unix": time.time(),
            }
        )
    )
    with pytest.warns(StaleLockWarning, match="taking over"):
        run_world(spec(tmp_path), 1)
    assert (tmp_path / "samples.npz").is_file() and not (tmp_path / ".lock").exists()
