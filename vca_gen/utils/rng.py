"""Explicit randomness.

Every random draw in sampling goes through these helpers so that a sample is a pure function of
its seed. A *generator spec* is one of:

* ``None``                 – the global torch RNG (training convenience only);
* a ``torch.Generator``    – one stream for the whole batch;
* a sequence of generators – one stream per sample (row ``i`` of every draw comes from
  ``generators[i]``), which makes sample ``i`` independent of the batch it is drawn in;
* a :class:`RowStream`     – rows ``[start, stop)`` of a global batch of ``total`` rows: draw ``k``
  is the full ``(total, ...)`` tensor of a fresh generator seeded by ``(seed, k)``, sliced. Every
  process and every micro-batch split sees the same values for the same global row, with one
  kernel launch per draw whatever the batch size (training).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """One step of the SplitMix64 finaliser (a bijective 64-bit integer hash)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


class RowStream:
    """Rows ``[start, stop)`` of a reproducible stream over a global batch of ``total`` rows.

    The ``k``-th draw (of shape ``(stop - start, ...)``) draws the full ``(total, ...)`` tensor from
    a fresh generator seeded by ``(seed, k)`` on the requested device and returns rows
    ``[start, stop)``. So row ``j`` of draw ``k`` depends only on ``(seed, k, j, total, shape)``:
    not on the process count nor on how the rows are split into micro-batches, provided every
    split makes the same sequence of draws. Costs one generator seed and one kernel per draw.
    """

    def __init__(self, seed: int, start: int, stop: int, total: int):
        if not 0 <= int(start) <= int(stop) <= int(total):
            raise ValueError(f"RowStream rows [{start}, {stop}) do not fit a batch of {total}")
        self.seed, self.start, self.stop, self.total = int(seed), int(start), int(stop), int(total)
        self.draws = 0  # index k of the next draw

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def seed_of(self, k: int) -> int:
        """The generator seed of draw ``k`` (63 bits)."""
        return splitmix64(splitmix64(self.seed & MASK64) ^ splitmix64(int(k) & MASK64)) >> 1

    def draw(self, fn, shape, device, dtype) -> torch.Tensor:
        shape = tuple(shape)
        if not shape or shape[0] != self.rows:
            raise ValueError(f"RowStream of rows [{self.start}, {self.stop}) asked for a draw of shape {shape}")
        g = torch.Generator(device=device if device is not None else "cpu")
        g.manual_seed(self.seed_of(self.draws))
        self.draws += 1
        return fn((self.total, *shape[1:]), generator=g, device=g.device, dtype=dtype)[self.start : self.stop]

    def __repr__(self) -> str:
        return f"RowStream(seed={self.seed}, rows=[{self.start}, {self.stop}) of {self.total}, draws={self.draws})"


GeneratorSpec = torch.Generator | RowStream | Sequence[torch.Generator] | None


def per_sample_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per seed, on ``device`` (CUDA generators draw on the GPU)."""
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)
    return gens


def _draw(fn, shape, generator: GeneratorSpec, device, dtype) -> torch.Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        return fn(shape, generator=generator, device=device, dtype=dtype)
    if isinstance(generator, RowStream):
        return generator.draw(fn, shape, device, dtype)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} per-sample generators for a batch of {shape[0]}")
    return torch.stack([fn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in gens])


def randn(shape: Sequence[int], generator: GeneratorSpec = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal of ``shape``; row ``i`` from ``generator[i]`` when given a sequence."""
    return _draw(torch.randn, tuple(shape), generator, device, dtype)


def rand(shape: Sequence[int], generator: GeneratorSpec = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Uniform [0, 1) of ``shape``; row ``i`` from ``generator[i]`` when given a sequence."""
    return _draw(torch.rand, tuple(shape), generator, device, dtype)


def randn_like(x: torch.Tensor, generator: GeneratorSpec = None) -> torch.Tensor:
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)
