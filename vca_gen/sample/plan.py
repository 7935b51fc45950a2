"""What a sampling run produces, independent of how many processes produce it.

A run of ``N`` samples is fully described by its settings (checkpoint, sampler, steps, guidance,
base seed, ...). Sample ``i``:

* has class label ``i % num_classes`` (balanced and interleaved: every class gets exactly
  ``N / num_classes`` samples and any prefix of the run is as balanced as it can be);
* draws its initial noise and every stochastic sampler step from its own generator seeded
  ``seed + i``;
* lives in shard ``i // shard_size``; shard ``k`` covers samples ``[k*S, min((k+1)*S, N))``.

Shards are the unit of work and of resumption: pending shards are dealt round-robin over the
processes, so the bytes of every shard depend neither on the process count nor on which process
computed it (only on the per-process batch size, through floating-point reassociation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vca_gen.errors import UserError


class SamplingError(UserError, ValueError):
    """Bad input to a sampling run (reported to the user without a traceback)."""


def check_num_samples(num_samples: int, num_classes: int) -> None:
    """Balanced labels need ``num_samples`` to be a positive multiple of ``num_classes``."""
    if num_classes < 1:
        raise SamplingError(f"the model has num_classes={num_classes}; class-conditional sampling needs >= 1")
    if num_samples < num_classes:
        raise SamplingError(
            f"--num-samples {num_samples} is fewer than the model's {num_classes} classes; labels are balanced "
            f"(N / num_classes per class), so N must be a positive multiple of {num_classes}"
        )
    if num_samples % num_classes:
        lo = num_samples // num_classes * num_classes
        raise SamplingError(
            f"--num-samples {num_samples} is not divisible by the model's {num_classes} classes; labels are "
            f"balanced (N / num_classes per class): use {lo} or {lo + num_classes}"
        )


def labels_for(indices: torch.Tensor | range, num_classes: int) -> torch.Tensor:
    """Class label of each global sample index: ``i % num_classes`` (int64)."""
    return torch.as_tensor(list(indices) if isinstance(indices, range) else indices, dtype=torch.long) % num_classes


def seeds_for(indices: range, seed: int) -> list[int]:
    """Generator seed of each global sample index: ``seed + i``."""
    return [seed + i for i in indices]


@dataclass(frozen=True)
class ShardPlan:
    """Fixed-size shards of a run of ``num_samples`` samples."""

    num_samples: int
    shard_size: int

    def __post_init__(self):
        if self.num_samples < 1:
            raise SamplingError(f"--num-samples must be >= 1, got {self.num_samples}")
        if self.shard_size < 1:
            raise SamplingError(f"--shard-size must be >= 1, got {self.shard_size}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def indices(self, shard: int) -> range:
        """Global sample indices of ``shard``."""
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} out of range 0..{self.num_shards - 1}")
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.num_samples))

    @staticmethod
    def assign(pending: list[int], rank: int, world_size: int) -> list[int]:
        """Shards of ``pending`` (in order) that process ``rank`` of ``world_size`` computes."""
        return list(pending[rank::world_size])


def batches(indices: range, batch_size: int) -> list[range]:
    """Split a shard's indices into consecutive batches of ``batch_size`` (the last may be shorter)."""
    if batch_size < 1:
        raise SamplingError(f"--batch-size must be >= 1, got {batch_size}")
    return [indices[j : j + batch_size] for j in range(0, len(indices), batch_size)]
