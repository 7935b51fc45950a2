"""Density and coverage (Naeem et al., ICML 2020, "Reliable Fidelity and Diversity Metrics for Generative
Models"): the computation and its two registry entries, the whole of both metrics in this one file.

With reference ("real") features X_1..X_N, sample ("fake") features Y_1..Y_M, both Inception pool3 (the
features precision/recall use), and NND_k(X_i) the distance from X_i to its k-th nearest neighbour among
the other reference features::

    density  = 1/(kM) Σ_j Σ_i 1[Y_j ∈ B(X_i, NND_k(X_i))]
    coverage = 1/N    Σ_i 1[∃ j: Y_j ∈ B(X_i, NND_k(X_i))]

Conventions of the authors' reference implementation (``prdc``): the balls are open (distance strictly
below the radius); the radius of X_i is the (k+1)-th smallest distance from X_i to the reference set
including X_i itself, i.e. the k-th excluding it (a duplicate of X_i is a neighbour at distance 0);
k = 5 as in the paper. Density is not bounded by 1 (samples crowding dense reference regions exceed
it); the expected density of samples from the reference distribution is 1. Identical sets give density
1 and coverage 1 (with distinct pairwise distances); sets far apart give 0 and 0.

Arithmetic: squared Euclidean distances ||x||² + ||y||² − 2 x·y (clamped at 0) in float64 by default
(``dtype=torch.float32`` is faster; ties within its round-off may then flip), compared with squared
radii. Tiles of ``block × block`` distances on any torch device: memory O((N + M)·D + block²) (the
features in ``dtype`` plus one tile), so reference sets of 50k features run on a CPU or a GPU; time
O((N + M)·N·D) (measured: 5k × 5k features, float64, 2 busy CPU cores: 23 s; float32: 11 s). Every
tile of reference rows is computed the same way for the radii (against the reference) and for the
balls (against the samples), so identical inputs give bit-identical distances and the strict
comparisons are consistent.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from vca_gen.metrics.errors import InputFormatError
from vca_gen.metrics.registry import Field, Metric, MetricInput, Needs, Param, Scored, register

DEFAULT_K = 5  # the paper's choice
BLOCK = 2048  # rows / columns per distance tile: 32 MB in float64


# ----------------------------------------------------------------------------- computation
def _as_tensor(x, name: str, dtype: torch.dtype, device) -> torch.Tensor:
    a = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if a.ndim != 2 or len(a) < 1:
        raise InputFormatError(f"{name}: expected a (N >= 1, D) feature array, got shape {tuple(a.shape)}")
    return a.to(device=device, dtype=dtype)


def _sq_tile(a: torch.Tensor, aa: torch.Tensor, b: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) squared distances from precomputed squared norms, clamped at 0."""
    return (aa[:, None] + bb[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)  # (R, C)


def knn_sq_radii(real: torch.Tensor, k: int, block: int = BLOCK) -> torch.Tensor:
    """(N,) squared distance from each row of ``real`` (N, D) to its k-th nearest neighbour, itself
    excluded: the (k+1)-th smallest of its distances to all rows, itself included. Running top-(k+1)
    over column tiles: memory O(block² + N·k)."""
    n = len(real)
    if n <= k:
        raise InputFormatError(f"density/coverage with k={k} need more than {k} reference features, got {n}")
    rr = (real * real).sum(1)  # (N,)
    out = torch.empty(n, dtype=real.dtype, device=real.device)
    for i in range(0, n, block):
        best = None  # (R, <= k+1) smallest so far
        for j in range(0, n, block):
            d = _sq_tile(real[i : i + block], rr[i : i + block], real[j : j + block], rr[j : j + block])
            cand = d if best is None else torch.cat([best, d], dim=1)
            best = torch.topk(cand, min(k + 1, cand.shape[1]), dim=1, largest=False).values
        assert best is not None
        out[i : i + block] = best[:, k]  # topk sorts ascending with largest=False
    return out


def ball_counts(real, fake, k: int = DEFAULT_K, device=None, dtype=torch.float64, block: int = BLOCK):
    """``(inside, covered)``: the number of (reference i, sample j) pairs with Y_j inside X_i's k-NN ball,
    and the (N,) bool mask of reference points whose ball holds at least one sample."""
    x = _as_tensor(real, "reference features", dtype, device)  # (N, D)
    y = _as_tensor(fake, "sample features", dtype, device)  # (M, D)
    if x.shape[1] != y.shape[1]:
        raise InputFormatError(f"density/coverage: feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    r2 = knn_sq_radii(x, k, block)  # (N,)
    xx, yy = (x * x).sum(1), (y * y).sum(1)
    inside = torch.zeros((), dtype=torch.int64, device=x.device)
    covered = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for i in range(0, len(x), block):
        for j in range(0, len(y), block):
            d = _sq_tile(x[i : i + block], xx[i : i + block], y[j : j + block], yy[j : j + block])  # (R, C)
            hit = d < r2[i : i + block, None]  # open balls, as prdc
            inside += hit.sum()
            covered[i : i + block] |= hit.any(dim=1)
    return int(inside.item()), covered.cpu().numpy()


def density_coverage(
    real, fake, k: int = DEFAULT_K, device=None, dtype=torch.float64, block: int = BLOCK
) -> tuple[float, float]:
    """(density, coverage) of ``fake`` (M, D) samples against ``real`` (N, D) reference features."""
    inside, covered = ball_counts(real, fake, k, device, dtype, block)
    m = len(fake)
    return inside / (k * m), float(covered.mean())


# ----------------------------------------------------------------------------- registry entries
def _shared(inp: MetricInput, k: int) -> tuple[float, float]:
    """One pass serves both entries when they use the same k (cached for this evaluation)."""
    key = ("density_coverage", k)
    if key not in inp.cache:
        real, fake = inp.ref.feats, inp.samples.feats
        assert real is not None and fake is not None  # the driver checked Needs.features
        inp.cache[key] = density_coverage(real, fake, k, device=inp.device)
    return inp.cache[key]


def _density(inp: MetricInput, params: Mapping[str, int]) -> Scored:
    return Scored({"density": _shared(inp, params["k"])[0], "density_k": params["k"]})


def _coverage(inp: MetricInput, params: Mapping[str, int]) -> Scored:
    return Scored({"coverage": _shared(inp, params["k"])[1], "coverage_k": params["k"]})


def _counts(p: Mapping[str, int]) -> tuple[int, int, str]:
    k = p["k"]
    return 1, k + 1, f"the k-NN radius of a reference point needs more than k={k} reference features"


register(
    Metric(
        name="density",
        help="Naeem et al. 2020: samples inside the reference k-NN balls, per sample and per k",
        fields=(Field("density", "density", ".4f", lower_is_better=False),),
        compute=_density,
        needs=Needs(features=True, counts=_counts),
        params=(Param("k", DEFAULT_K, 1, "density: the k of the reference k-NN radii (paper: 5)"),),
        info=("density_k",),
    )
)
register(
    Metric(
        name="coverage",
        help="Naeem et al. 2020: share of the reference k-NN balls holding at least one sample",
        fields=(Field("coverage", "coverage", ".4f", lower_is_better=False),),
        compute=_coverage,
        needs=Needs(features=True, counts=_counts),
        params=(Param("k", DEFAULT_K, 1, "coverage: the k of the reference k-NN radii (paper: 5)"),),
        info=("coverage_k",),
    )
)
