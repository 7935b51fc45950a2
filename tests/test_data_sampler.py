"""Data order and per-item randomness: process-count independence, exact resume, num_workers."""

from __future__ import annotations

import itertools

import pytest
import torch

from vca_gen.data.animal_mnist import AnimalMNIST
from vca_gen.data.sampler import DeterministicBatchSampler, ItemKey, ResumableLoader, epoch_permutation, item_generator


def _indices(batch):
    return [k.index for k in batch]


def test_one_vs_two_ranks_same_examples_per_step():
    n, G = 103, 8
    one = DeterministicBatchSampler(n, G, num_replicas=1, rank=0, seed=7)
    two = [DeterministicBatchSampler(n, G, num_replicas=2, rank=r, seed=7) for r in range(2)]
    for epoch in range(3):
        for s in [one, *two]:
            s.set_position(epoch)
        b1 = [_indices(b) for b in one]
        b2 = [[_indices(a) + _indices(b)] for a, b in zip(*two)]
        assert len(b1) == n // G == 12  # last incomplete global batch dropped
        assert [x[0] for x in b2] == b1
        # independent check: global batch b = perm[b*G:(b+1)*G] with the permutation of (seed, epoch)
        perm = epoch_permutation(n, 7, epoch).tolist()
        assert b1 == [perm[b * G : (b + 1) * G] for b in range(n // G)]
        assert sorted(sum(b1, [])) == sorted(perm[: 12 * G])  # no repeats within an epoch
    assert epoch_permutation(n, 7, 0).tolist() != epoch_permutation(n, 7, 1).tolist()
    assert epoch_permutation(n, 7, 0).tolist() != epoch_permutation(n, 8, 0).tolist()


def test_batch_not_divisible_by_processes_is_an_error():
    with pytest.raises(ValueError, match="not divisible by the number of processes 3"):
        DeterministicBatchSampler(100, 8, num_replicas=3, rank=0)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        DeterministicBatchSampler(5, 8)


@pytest.fixture(scope="module")
def animals(animal_mnist_dir):
    ds = AnimalMNIST(animal_mnist_dir, split="a", random_flip=True, seed=3)
    ds.images, ds.labels = ds.images[:600], ds.labels[:600]  # smaller epochs keep the test fast
    return ds


def _take(loader, k):
    return [(x.clone(), y.clone()) for x, y in itertools.islice(iter(loader), k)]


def test_mid_epoch_resume_equals_straight_run(animals):
    G, steps = 64, 20  # 600 items -> 9 batches per epoch: the run crosses two epoch boundaries
    straight = _take(ResumableLoader(animals, G, seed=5), steps)
    first = ResumableLoader(animals, G, seed=5)
    part1 = _take(first, 5)
    state = first.state_dict()
    assert state == {"epoch": 0, "batch": 5}
    resumed = ResumableLoader(animals, G, seed=5)
    resumed.load_state_dict(state)
    part2 = _take(resumed, steps - 5)
    assert resumed.state_dict() == {"epoch": 2, "batch": steps - 18}
    assert len(straight) == len(part1 + part2) == steps
    for (xa, ya), (xb, yb) in zip(straight, part1 + part2):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the position is global: resuming on 2 processes continues the same global batches
    halves = []
    for r in range(2):
        loader = ResumableLoader(animals, G, num_replicas=2, rank=r, seed=5)
        loader.load_state_dict(state)
        halves.append(_take(loader, 3))
    for i in range(3):
        assert torch.equal(torch.cat([halves[0][i][0], halves[1][i][0]]), straight[5 + i][0])


def test_per_item_randomness_independent_of_num_workers_and_ranks(animals):
    G = 32
    ref = _take(ResumableLoader(animals, G, seed=1, num_workers=0), 4)
    workers = _take(ResumableLoader(animals, G, seed=1, num_workers=2), 4)
    ranks = [_take(ResumableLoader(animals, G, num_replicas=2, rank=r, seed=1, num_workers=1), 4) for r in range(2)]
    for i, (x, y) in enumerate(ref):
        assert torch.equal(x, workers[i][0]) and torch.equal(y, workers[i][1])
        assert torch.equal(x, torch.cat([ranks[0][i][0], ranks[1][i][0]]))
    # independent computation of item 0 of batch 0: flip iff the (seed, epoch, index) coin says so
    key = DeterministicBatchSampler(len(animals), G, seed=1).global_batch(0, 0)[0].item()
    raw = animals.images[key].float().div(127.5).sub(1).unsqueeze(0)
    flip = torch.rand((), generator=item_generator(3, 0, key)) < 0.5
    assert torch.equal(ref[0][0][0], raw.flip(-1) if flip else raw)
    # flips actually happen, and differ between epochs for the same item
    coins = [bool(torch.rand((), generator=item_generator(3, e, key)) < 0.5) for e in range(16)]
    assert any(coins) and not all(coins)
    assert torch.equal(animals[ItemKey(0, key)][0], ref[0][0][0])
