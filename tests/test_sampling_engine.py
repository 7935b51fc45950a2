"""The sampling engine with a stand-in generator: labels, shards, process-count independence,
resume after a failure, manifest checks, file format and atomicity."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from vca_gen.sample import RunSpec, SamplingError, ShardPlan, check_num_samples, labels_for, run_sampling, to_uint8
from vca_gen.sample import files
from vca_gen.utils import rng

C = 5  # classes of the stand-in


class FakeState:
    """accelerate's PartialState for ``world`` threads sharing one barrier."""

    def __init__(self, rank: int, world: int, barrier: threading.Barrier):
        self.process_index, self.num_processes, self._barrier = rank, world, barrier
        self.is_main_process = rank == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self):
        self._barrier.wait(timeout=60)


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
    kw = {"batch_size": 4, "shard_size": 8, "settings": {"sampler": "fake", "ckpt_sha256": "abc"}, "progress": False, **kw}
    return RunSpec(out_dir=out, num_samples=n, num_classes=C, image_shape=(6, 6, 3), seed=11, **kw)


def run_world(s: RunSpec, world: int, make=stand_in):
    barrier, results, errors = threading.Barrier(world), [None] * world, []

    def work(r):
        try:
            results[r] = run_sampling(make, s, state=FakeState(r, world, barrier))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    [t.start() for t in threads]
    [t.join() for t in threads]
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
    got = [i for r in range(world) for k in ShardPlan.assign(list(range(plan.num_shards)), r, world)
           for i in plan.indices(k)]
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
