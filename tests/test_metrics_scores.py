"""Scores of vca_gen.metrics against independent float64 computations written here (no Inception)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from vca_gen.metrics import (
    InputFormatError,
    RunningMoments,
    frechet_distance,
    frechet_distance_from_features,
    kernel_inception_distance,
    precision_recall,
)
from vca_gen.metrics.scores import kid_subset_size


def _gaussian_features(rng, n, d, shift=0.0, scale=1.0):
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ a) * scale + shift + rng.normal(size=d) * 0.1


def _fd_eig(x1, x2):
    """Independent FD: tr sqrt(S1 S2) = sum sqrt(eigenvalues of S1^1/2 S2 S1^1/2), via eigh."""
    m1, m2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


@pytest.mark.parametrize("n1,n2", [(400, 300), (30, 500)])
def test_frechet_distance_matches_eigenvalue_form(n1, n2):
    rng = np.random.default_rng(1)
    d = 48
    x1 = _gaussian_features(rng, n1, d)
    x2 = _gaussian_features(rng, n2, d, shift=0.3, scale=1.3)
    want = _fd_eig(x1, x2)
    got = frechet_distance(x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0), np.cov(x2, rowvar=False))
    assert want > 1.0
    assert got == pytest.approx(want, rel=1e-7, abs=1e-7)
    if n1 <= d:  # the exact small-set form from the features of set 1 (rank-deficient S1)
        fast = frechet_distance_from_features(x1, x2.mean(0), np.cov(x2, rowvar=False))
        # rank-deficient S1: square roots of ~1e-16 eigenvalues limit both forms to ~1e-8 relative
        assert fast == pytest.approx(want, rel=1e-7)


def test_frechet_distance_self_is_zero_and_symmetric():
    rng = np.random.default_rng(2)
    x = _gaussian_features(rng, 20, 32)
    y = _gaussian_features(rng, 15, 32, shift=0.2)
    mu, s = x.mean(0), np.cov(x, rowvar=False)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-5  # n < d: sqrtm of a singular S^2
    assert abs(frechet_distance_from_features(x, mu, s)) < 1e-6
    mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
    assert frechet_distance(mu, s, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu, s), rel=1e-7)
    # the mean term alone: identical covariances, shifted means
    assert frechet_distance(mu, s, mu + 0.5, s) == pytest.approx(0.25 * 32, rel=1e-6)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(InputFormatError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_running_moments_match_numpy_cov():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(1000, 16)) * 3 + 1e3).astype(np.float32)  # offset: naive sums would lose digits
    rm = RunningMoments()
    for a, b in [(0, 7), (7, 500), (500, 1000)]:
        rm.update(x[a:b])
    x = x.astype(np.float64)
    mu, cov = rm.finalize()
    assert np.allclose(mu, x.mean(0), rtol=0, atol=1e-9)
    assert np.allclose(cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)


def _mmd2_unbiased_loops(x, y, d):
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m = len(x)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_kid_equals_unbiased_mmd_with_one_full_subset():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(25, 6)), rng.normal(size=(25, 6)) + 0.4
    # one subset as large as the sets: a permutation of each, so KID is the plain unbiased MMD^2
    kid, std = kernel_inception_distance(x, y, num_subsets=1, max_subset_size=25)
    assert kid == pytest.approx(_mmd2_unbiased_loops(x, y, 6), rel=1e-10)
    assert std == 0.0


def test_kid_subset_size_is_clipped_to_the_smaller_set():
    assert kid_subset_size(10, 30, 1000) == 10 and kid_subset_size(30, 12, 1000) == 12
    assert kid_subset_size(5000, 3000, 1000) == 1000
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(12, 6)), rng.normal(size=(12, 6)) + 0.3
    # a requested size above both set sizes: every subset is a permutation of both whole sets, so
    # the mean is the full-set unbiased MMD^2 and the spread over subsets vanishes
    kid, std = kernel_inception_distance(x, y, num_subsets=9, max_subset_size=1000)
    assert kid == pytest.approx(_mmd2_unbiased_loops(x, y, 6), rel=1e-10)
    assert std <= 1e-12 * abs(kid)
    _, std_small = kernel_inception_distance(x, y, num_subsets=9, max_subset_size=6)
    assert std_small > 1e-6 * abs(kid)


def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    c = rng.normal(size=(300, 8)) + 0.5
    same, _ = kernel_inception_distance(a, b, num_subsets=20, max_subset_size=100, seed=1)
    diff, _ = kernel_inception_distance(a, c, num_subsets=20, max_subset_size=100, seed=1)
    assert abs(same) < 0.02 < diff
    # seeded: reproducible
    assert kernel_inception_distance(a, c, 5, 50, seed=3) == kernel_inception_distance(a, c, 5, 50, seed=3)


def _pr_bruteforce(real, fake, k):
    drr = cdist(real, real)
    dff = cdist(fake, fake)
    r_real = np.sort(drr, axis=1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(dff, axis=1)[:, k]
    dfr = cdist(fake, real)
    precision = np.mean([(dfr[i] <= r_real).any() for i in range(len(fake))])
    recall = np.mean([(dfr[:, j] <= r_fake).any() for j in range(len(real))])
    return precision, recall


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_matches_bruteforce(k):
    rng = np.random.default_rng(6)
    real = rng.normal(size=(80, 5))
    fake = np.concatenate([rng.normal(size=(40, 5)) * 0.5, rng.normal(size=(30, 5)) + 3.0])  # half on, half off
    want = _pr_bruteforce(real, fake, k)
    got64 = precision_recall(real, fake, k=k, dtype=np.float64, block=17)  # blocks smaller than the sets
    assert got64 == pytest.approx(want, abs=1e-12)
    assert 0.2 < want[0] < 0.9 and 0.0 < want[1] < 1.0
    assert precision_recall(real, fake, k=k) == pytest.approx(want, abs=1.5 / 70)  # float32 (ADM's arithmetic)


def test_precision_recall_extremes_and_errors():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 4))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)
    with pytest.raises(InputFormatError, match="more than 3"):
        precision_recall(x[:3], x)
    with pytest.raises(InputFormatError, match="dimensions differ"):
        precision_recall(x, x[:, :3])
