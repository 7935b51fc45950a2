"""Deterministic, resumable, process-count-independent data order.

Contract (the trainer relies on it):

* Epoch ``e`` visits ``perm_e = randperm(N, seed=mix(seed, e))`` (identity when ``shuffle=False``).
* Global batch ``b`` of size ``G`` is ``perm_e[b*G:(b+1)*G]``; the last incomplete global batch of an
  epoch is dropped, so an epoch has ``N // G`` steps.
* With ``P`` processes, rank ``r`` takes the contiguous slice ``[r*G/P:(r+1)*G/P]`` of every global
  batch (``G % P == 0`` is required). One process with batch ``G`` and two with ``G/2`` each therefore
  see exactly the same examples at every step, in the same order once gathered by rank.
* The sampler yields *keys* ``(epoch, index)`` (:class:`ItemKey`) rather than bare indices; datasets
  seed their per-item randomness from ``(seed, epoch, index)`` (:func:`item_generator`), so the data
  position alone reproduces every flip and latent draw, whatever ``num_workers`` is.
* :class:`ResumableLoader` wraps a ``torch.utils.data.DataLoader`` over that order, iterates forever
  across epochs and exposes ``state_dict() -> {"epoch", "batch"}`` (the *next* batch to be yielded;
  prefetching by workers does not advance it) and ``load_state_dict`` to resume mid-epoch exactly.

* Items are ``(x, y)``: x a float32 tensor (C, H, W), y an int64 scalar label; every dataset has
  ``set_epoch(e)`` (used for bare-int indexing) and accepts ``dataset[ItemKey(epoch, index)]``.

Do not pass the loader through ``accelerator.prepare``: it is already sharded per rank. Multi-node:
``rank`` is the *global* process index (``accelerator.process_index``), ``num_replicas`` the world size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vca_gen.utils.rng import MASK64, splitmix64


class ItemKey(NamedTuple):
    """What a dataset receives from the sampler: the epoch and the dataset index."""

    epoch: int
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose: the field name is the API


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (chained SplitMix64; ~1 us, platform-independent)."""
    h = splitmix64(len(parts))
    for p in parts:
        p = int(p)
        if p < 0:
            raise ValueError(f"seed parts must be non-negative integers, got {parts}")
        h = splitmix64(h ^ splitmix64(p & MASK64) ^ (p >> 64))
    return h & ((1 << 63) - 1)


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The CPU generator behind all random choices for item ``index`` in ``epoch`` (constraint B)."""
    g = torch.Generator()
    g.manual_seed(mix_seed(seed, 1, epoch, index))  # stream 1: items (stream 0: epoch permutations)
    return g


def split_key(key) -> tuple[int | None, int]:
    """``ItemKey`` / ``(epoch, index)`` -> (epoch, index); a bare int -> (None, index)."""
    if isinstance(key, (tuple, list)):
        epoch, index = key
        return int(epoch), int(index)
    return None, int(key)


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The order of epoch ``epoch``: a permutation of ``range(n)`` depending only on (seed, epoch)."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator()
    g.manual_seed(mix_seed(seed, 0, epoch))
    return torch.randperm(n, generator=g)


class DeterministicBatchSampler(Sampler):
    """Batch sampler yielding this rank's slice of each global batch as lists of :class:`ItemKey`.

    ``set_position(epoch, batch)`` chooses where the next ``__iter__`` starts; one ``__iter__`` runs
    to the end of that epoch.
    """

    def __init__(
        self,
        num_items: int,
        global_batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for num_replicas={num_replicas}")
        if global_batch_size % num_replicas:
            raise ValueError(
                f"global batch size {global_batch_size} is not divisible by the number of "
                f"processes {num_replicas}; choose a multiple of {num_replicas}"
            )
        if num_items < global_batch_size:
            raise ValueError(f"dataset has {num_items} items, fewer than one global batch of {global_batch_size}")
        self.num_items, self.global_batch_size = int(num_items), int(global_batch_size)
        self.num_replicas, self.rank, self.seed, self.shuffle = int(num_replicas), int(rank), int(seed), shuffle
        self.local_batch_size = self.global_batch_size // self.num_replicas
        self.batches_per_epoch = self.num_items // self.global_batch_size
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, batch: int = 0) -> None:
        if not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(f"batch {batch} outside [0, {self.batches_per_epoch}] for epoch {epoch}")
        self.epoch, self.start_batch = int(epoch), int(batch)

    def global_batch(self, epoch: int, batch: int) -> torch.Tensor:
        """Indices of global batch ``batch`` of ``epoch`` (all ranks together), shape (G,)."""
        perm = epoch_permutation(self.num_items, self.seed, epoch, self.shuffle)
        return perm[batch * self.global_batch_size : (batch + 1) * self.global_batch_size]

    def __iter__(self) -> Iterator[list[ItemKey]]:
        epoch = self.epoch
        perm = epoch_permutation(self.num_items, self.seed, epoch, self.shuffle)
        G, L = self.global_batch_size, self.local_batch_size
        for b in range(self.start_batch, self.batches_per_epoch):
            local = perm[b * G + self.rank * L : b * G + (self.rank + 1) * L]  # (G/P,)
            yield [ItemKey(epoch, int(i)) for i in local]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def _set_epoch(dataset, epoch: int) -> None:
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


class ResumableLoader:
    """An endless, resumable iterator of this rank's batches in the order described above.

    ``num_workers`` worker processes (persistent across epochs), ``pin_memory`` when ``device`` is
    CUDA. Batches are whatever the dataset's items collate to (``(x, y)`` -> ``(B, C, H, W)``,
    ``(B,)``). ``state_dict()`` gives the position of the next batch to be yielded.
    """

    def __init__(
        self,
        dataset: Dataset,
        global_batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        num_workers: int = 0,
        device: torch.device | str | None = None,
        shuffle: bool = True,
        prefetch_factor: int | None = None,
    ):
        self.dataset = dataset
        n = len(dataset)  # type: ignore[arg-type]  # map-style datasets define __len__
        self.sampler = DeterministicBatchSampler(n, global_batch_size, num_replicas, rank, seed, shuffle)
        pin = torch.device(device).type == "cuda" if device is not None else False
        kwargs: dict[str, Any] = {}
        if num_workers > 0:
            kwargs = dict(persistent_workers=True, prefetch_factor=prefetch_factor or 2)
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=num_workers, pin_memory=pin, **kwargs)
        self.epoch, self.batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def state_dict(self) -> dict:
        return {"epoch": int(self.epoch), "batch": int(self.batch)}

    def load_state_dict(self, state: dict) -> None:
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(
                f"data position batch={batch} outside [0, {self.batches_per_epoch}] "
                f"(dataset or global batch size changed since the checkpoint?)"
            )
        self.epoch, self.batch = epoch, batch

    def __iter__(self):
        while True:
            if self.batch >= self.batches_per_epoch:
                self.epoch, self.batch = self.epoch + 1, 0
            self.sampler.set_position(self.epoch, self.batch)
            _set_epoch(self.dataset, self.epoch)
            for item in self.loader:
                self.batch += 1
                yield item
