"""Explicit randomness.

Every random draw in sampling goes through these helpers so that a sample is a pure function of
its seed. A *generator spec* is one of:

* ``None``                 – the global torch RNG (training convenience only);
* a ``torch.Generator``    – one stream for the whole batch;
* a sequence of generators – one stream per sample (row ``i`` of every draw comes from
  ``generators[i]``), which makes sample ``i`` independent of the batch it is drawn in.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

GeneratorSpec = Union[None, torch.Generator, Sequence[torch.Generator]]


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
