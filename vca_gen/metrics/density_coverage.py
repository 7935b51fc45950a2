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
(``dtype=torch.float32`` is faster), in tiles of ``block × block`` on any torch device: memory
O((N + M)·D + block²), so reference sets of 50k features run on a CPU or a GPU; time O((N + M)·N·D)
(measured: 5k × 5k features, float64, 2 busy CPU cores: 23 s; float32: 11 s). The matrix product
rounds differently with the tile's shape, so a distance and a radius that are equal in exact
arithmetic (a duplicate of a reference point, a sample set holding every sample twice) could land on
either side of the strict comparison. Every decision that is that close is therefore made on the
exact form Σ (x − y)²: the radii are the exact distances of the k + 1 + ``EXTRA`` nearest candidates
found by the product, and a pair whose product distance is within ``TIE_EPS`` × (||x||² + ||y||²)
of the radius is compared on its exact distance. Identical pairs then give identical distances and
the open-ball comparisons are consistent, whatever the tiling.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from vca_gen.metrics.errors import InputFormatError
from vca_gen.metrics.registry import Field, Metric, MetricInput, Needs, Param, Scored, register

DEFAULT_K = 5  # the paper's choice
BLOCK = 2048  # rows / columns per distance tile: 32 MB in float64
EXTRA = 4  # candidates beyond the k + 1 nearest whose exact distances decide the radius
EXACT_ROWS = 64  # rows whose candidates' exact distances are computed at once (memory 64·keep·D)
TIE_EPS = 1e4  # x machine epsilon: relative band around a radius decided on exact distances


# ----------------------------------------------------------------------------- computation
def _as_tensor(x, name: str, dtype: torch.dtype, device) -> torch.Tensor:
    a = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if a.ndim != 2 or len(a) < 1:
        raise InputFormatError(f"{name}: expected a (N >= 1, D) feature array, got shape {tuple(a.shape)}")
    return a.to(device=device, dtype=dtype)


def _sq_tile(a: torch.Tensor, aa: torch.Tensor, b: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) squared distances from precomputed squared norms, clamped at 0."""
    return (aa[:, None] + bb[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)  # (R, C)


def _exact_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise squared distances Σ (a − b)² of (..., D) tensors: the same rounding for the same pair."""
    return ((a - b) ** 2).sum(-1)


def knn_sq_radii(real: torch.Tensor, k: int, block: int = BLOCK) -> torch.Tensor:
    """(N,) squared distance from each row of ``real`` (N, D) to its k-th nearest neighbour, itself
    excluded: the (k+1)-th smallest of its distances to all rows, itself included. The product form
    finds the k + 1 + EXTRA nearest candidates over column tiles (memory O(block² + N·k)); their exact
    distances decide."""
    n = len(real)
    if n <= k:
        raise InputFormatError(f"density/coverage with k={k} need more than {k} reference features, got {n}")
    keep = min(k + 1 + EXTRA, n)
    rr = (real * real).sum(1)  # (N,)
    out = torch.empty(n, dtype=real.dtype, device=real.device)
    for i in range(0, n, block):
        best_d, best_i = None, None  # (R, <= keep) smallest so far and their column indices
        for j in range(0, n, block):
            d = _sq_tile(real[i : i + block], rr[i : i + block], real[j : j + block], rr[j : j + block])
            idx = torch.arange(j, j + d.shape[1], device=real.device).expand_as(d)  # (R, C)
            if best_d is not None and best_i is not None:
                d, idx = torch.cat([best_d, d], dim=1), torch.cat([best_i, idx], dim=1)
            best_d, pos = torch.topk(d, min(keep, d.shape[1]), dim=1, largest=False)
            best_i = torch.gather(idx, 1, pos)
        assert best_i is not None
        for r in range(0, len(best_i), EXACT_ROWS):  # (rows, keep, D) differences: a few MB at a time
            idx = best_i[r : r + EXACT_ROWS]  # (rows, keep)
            exact = _exact_sq(real[i + r : i + r + len(idx), None, :], real[idx])  # (rows, keep)
            out[i + r : i + r + len(idx)] = torch.sort(exact, dim=1).values[:, k]
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
    tol = TIE_EPS * torch.finfo(dtype).eps
    inside = torch.zeros((), dtype=torch.int64, device=x.device)
    covered = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for i in range(0, len(x), block):
        for j in range(0, len(y), block):
            d = _sq_tile(x[i : i + block], xx[i : i + block], y[j : j + block], yy[j : j + block])  # (R, C)
            r = r2[i : i + block, None]  # (R, 1)
            hit = d < r  # open balls, as prdc
            band = tol * (xx[i : i + block, None] + yy[None, j : j + block])  # (R, C)
            near = ((d - r).abs() <= band).nonzero()  # (P, 2): too close to the radius for the product form
            if len(near):
                a, b = near[:, 0], near[:, 1]
                exact = _exact_sq(x[i + a], y[j + b])  # (P,)
                hit[a, b] = exact < r2[i + a]
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
