"""Loader throughput: how many items per second the data pipeline alone delivers.

``loader_throughput(dataset, batch_size, num_workers, steps)`` times ``steps`` batches of a
:class:`~vca_gen.data.sampler.ResumableLoader` after ``warmup`` batches (worker start-up excluded)
and returns items/s; the unit is latents/s for a latent store, images/s otherwise.
"""

from __future__ import annotations

import time

from vca_gen.data.latents import LatentDataset
from vca_gen.data.sampler import ResumableLoader


def loader_throughput(
    dataset, batch_size: int, num_workers: int = 0, steps: int = 20, warmup: int = 2, seed: int = 0
) -> dict:
    """Time the loader alone -> {"items_per_s", "batches_per_s", "unit", "batch_size", "num_workers", "steps"}."""
    if steps <= 0 or warmup < 0:
        raise ValueError(f"need steps > 0 and warmup >= 0, got steps={steps}, warmup={warmup}")
    loader = ResumableLoader(dataset, batch_size, seed=seed, num_workers=num_workers)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        x, _y = next(it)
        n += x.shape[0]
    dt = time.perf_counter() - t0
    unit = "latents/s" if isinstance(dataset, LatentDataset) else "images/s"
    return {
        "items_per_s": n / dt,
        "batches_per_s": steps / dt,
        "unit": unit,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "steps": steps,
    }
