"""Feature-extraction throughput (images/s) for ``bench/sampling.py``."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from vca_gen.metrics.inception import InceptionFeatureExtractor


def feature_throughput(
    n: int = 64,
    batch_size: int = 32,
    mode: str = "clean",
    image_size: int = 32,
    device=None,
    weights=None,
    threads: int | None = None,
    extractor: InceptionFeatureExtractor | None = None,
) -> dict:
    """Time Inception features of ``n`` random uint8 images (image_size^2) after one warm-up batch.

    Returns ``{"images_per_s", "seconds", "n", "batch_size", "mode", "device", "threads",
    "cpu_utilisation"}``; cpu_utilisation = process CPU time / wall time (about the number of busy cores).
    """
    if threads:
        torch.set_num_threads(threads)
    fx = extractor or InceptionFeatureExtractor(mode=mode, device=device, weights=weights)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, image_size, image_size, 3), dtype=np.uint8)
    fx(images[: min(batch_size, n)], mode=mode)  # warm-up (TorchScript profiling runs)
    if fx.device.type == "cuda":
        torch.cuda.synchronize(fx.device)
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, n, batch_size):
        fx(images[i : i + batch_size], mode=mode)
    if fx.device.type == "cuda":
        torch.cuda.synchronize(fx.device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "images_per_s": n / wall,
        "seconds": wall,
        "n": n,
        "batch_size": batch_size,
        "mode": mode,
        "device": str(fx.device),
        "threads": torch.get_num_threads(),
        "cpu_utilisation": cpu / wall,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


if __name__ == "__main__":
    for m in ("clean", "legacy_tensorflow"):
        print(feature_throughput(mode=m))
