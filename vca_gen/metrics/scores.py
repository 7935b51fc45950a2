"""Scores on feature statistics / feature sets: FID (and sFID), KID, precision/recall.

* :func:`frechet_distance`: ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) in float64 via
  ``scipy.linalg.sqrtm``, with the handling of pytorch-fid / clean-fid / the ADM evaluator: if the
  square root is not finite, retry with ``eps * I`` added to both covariances; a complex result is
  accepted (real part taken) only when the imaginary parts of its diagonal are below 1e-3.
  :func:`frechet_distance_from_features` computes the same quantity exactly from the n features of
  a small set (n <= D) with an n x n eigenproblem; :mod:`vca_gen.metrics.evaluation` uses it whenever
  one side has at most 2048 images (the D x D path otherwise, i.e. for FID-50K as ADM/clean-fid).
* :func:`kernel_inception_distance`: unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets (clean-fid / StyleGAN-ADA: 100 subsets
  of min(1000, n1, n2) images, without replacement, :func:`kid_subset_size`), with a seeded
  generator. :mod:`vca_gen.metrics.evaluation` reports the size used and notes when it is smaller
  than requested (with both sets smaller, every subset is a whole set and the std is exactly 0).
* :func:`precision_recall`: improved precision/recall (Kynkaanniemi et al. 2019) as the ADM
  evaluator computes it: the radius of each point is the distance to its k-th nearest neighbour
  (k = 3, self excluded) within its own set; precision = share of samples inside the union of the
  reference balls, recall = share of reference points inside the union of the sample balls.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from vca_gen.metrics.errors import InputFormatError, MetricsError


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise InputFormatError(
            f"statistics do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, "
            f"mu2 {mu2.shape}, sigma2 {s2.shape} (were they made by different feature extractors?)"
        )
    diff = mu1 - mu2
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: sqrtm(S1 S2) is singular; adding {eps} to the covariance diagonals", stacklevel=2)
        offset = np.eye(d) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise MetricsError(
                f"FID: sqrtm(S1 S2) has an imaginary component of "
                f"{np.max(np.abs(covmean.imag)):.3g}; the covariances are too ill-conditioned "
                f"(too few images for {d}-d features?)"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def frechet_distance_from_features(feats1, mu2, sigma2) -> float:
    """The same Fréchet distance, exact and fast when set 1 is small: given its n features (n <= D).

    With C the centred (n, D) features and S1 = C^T C / (n - 1), the non-zero eigenvalues of S1 S2
    are those of the n x n PSD matrix M = C S2 C^T / (n - 1), so tr sqrtm(S1 S2) = tr sqrtm(M):
    an n x n symmetric eigenproblem instead of a D x D ``sqrtm`` (D = 2048 costs ~20-100 s on a CPU),
    without the ill-conditioning of a rank-deficient D x D product. Meant for n <= D.
    """
    x = _check_features("feats1", feats1).astype(np.float64)  # (n, D)
    mu2, s2 = np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)
    n, d = x.shape
    if mu2.shape != (d,) or s2.shape != (d, d):
        raise InputFormatError(f"statistics do not match: features (n, {d}), mu2 {mu2.shape}, sigma2 {s2.shape}")
    mu1 = x.mean(axis=0)
    c = x - mu1
    m = c @ s2 @ c.T / (n - 1)  # (n, n) symmetric PSD
    # M is symmetric PSD (and singular: C is centred), so its square root's trace is the sum of the
    # square roots of its eigenvalues; eigvalsh is exact here where a general sqrtm loses ~1e-7.
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    if lam.min() < -1e-6 * max(lam.max(), 1.0):
        raise MetricsError(f"FID: C S2 C^T has a negative eigenvalue {lam.min():.3g}; is sigma2 a covariance?")
    tr_covmean = np.sqrt(np.clip(lam, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (c * c).sum() / (n - 1) + np.trace(s2) - 2.0 * tr_covmean)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's own "singular matrix" chatter; we check finiteness
        out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def _check_features(name: str, f) -> np.ndarray:
    f = np.asarray(f)
    if f.ndim != 2 or len(f) < 2:
        raise InputFormatError(f"{name}: expected a (N >= 2, D) feature array, got shape {f.shape}")
    return f


def kid_subset_size(n1: int, n2: int, max_subset_size: int = 1000) -> int:
    """The subset size KID actually uses: ``min(n1, n2, max_subset_size)`` (subsets are drawn
    without replacement). Below ``max_subset_size`` the estimate is not the requested one, and
    when it equals both set sizes every subset is a whole set, so the std over subsets is 0."""
    return int(min(n1, n2, max_subset_size))


def kernel_inception_distance(
    feats1, feats2, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over subsets) between two feature sets (N1, D), (N2, D); float64.

    Subsets have :func:`kid_subset_size` images (fewer than ``max_subset_size`` when a set is smaller).
    """
    f1, f2 = _check_features("feats1", feats1), _check_features("feats2", feats2)
    if f1.shape[1] != f2.shape[1]:
        raise InputFormatError(f"KID: feature dimensions differ ({f1.shape[1]} vs {f2.shape[1]})")
    d = f1.shape[1]
    m = kid_subset_size(len(f1), len(f2), max_subset_size)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)].astype(np.float64)
        y = f2[rng.choice(len(f2), m, replace=False)].astype(np.float64)
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        off_diag = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off_diag - 2.0 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances, clamped at 0 (ADM's formulation)."""
    aa = np.einsum("ij,ij->i", a, a)[:, None]
    bb = np.einsum("ij,ij->i", b, b)[None, :]
    return np.maximum(aa - 2.0 * (a @ b.T) + bb, 0.0)


def knn_radii(feats: np.ndarray, k: int = 3, block: int = 4096) -> np.ndarray:
    """Squared distance of every point to its k-th nearest neighbour in ``feats`` (self excluded)."""
    if len(feats) <= k:
        raise InputFormatError(f"precision/recall with k={k} needs more than {k} points, got {len(feats)}")
    radii = np.empty(len(feats), dtype=np.float64)
    rows = int(np.clip((1 << 25) // len(feats), 1, block))  # (rows, N) blocks of <= 32M entries
    for i in range(0, len(feats), rows):
        dist = _sq_distances(feats[i : i + rows], feats)  # (rows, N), self ~ 0
        radii[i : i + rows] = np.partition(dist, k, axis=1)[:, k]  # k-th excluding self
    return radii


def _inside_any_ball(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int) -> np.ndarray:
    inside = np.zeros(len(points), dtype=bool)
    for i in range(0, len(points), block):
        for j in range(0, len(centres), block):
            dist = _sq_distances(points[i : i + block], centres[j : j + block])
            inside[i : i + block] |= (dist <= radii[None, j : j + block]).any(axis=1)
    return inside


def precision_recall(real, fake, k: int = 3, dtype=np.float32, block: int = 4096) -> tuple[float, float]:
    """(precision, recall) of ``fake`` (N2, D) against ``real`` (N1, D) features, k-NN manifolds.

    ``dtype=float32`` matches the ADM evaluator's arithmetic and is fast; pass float64 for exactness.
    """
    real = _check_features("real features", real).astype(dtype)
    fake = _check_features("sample features", fake).astype(dtype)
    if real.shape[1] != fake.shape[1]:
        raise InputFormatError(f"precision/recall: feature dimensions differ ({real.shape[1]} vs {fake.shape[1]})")
    r_real, r_fake = knn_radii(real, k, block), knn_radii(fake, k, block)
    precision = _inside_any_ball(fake, real, r_real, block).mean()
    recall = _inside_any_ball(real, fake, r_fake, block).mean()
    return float(precision), float(recall)
