"""Density and coverage (Naeem et al. 2020) against a brute-force float64 computation written here
(explicit loops over the pairs, numpy), closed forms, and evaluate_fid.py on real Inception features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vca_gen.metrics import InputFormatError
from vca_gen.metrics.density_coverage import density_coverage


def _bruteforce(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """The paper's definitions with prdc's conventions: the radius of X_i is the distance to its k-th
    nearest neighbour among the other reference points; a sample is in a ball when strictly closer."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    n, m = len(real), len(fake)
    radius = np.empty(n)
    for i in range(n):
        others = sorted(float(np.sqrt(((real[i] - real[j]) ** 2).sum())) for j in range(n) if j != i)
        radius[i] = others[k - 1]
    inside, covered = 0, 0
    for i in range(n):
        hit = False
        for j in range(m):
            if np.sqrt(((fake[j] - real[i]) ** 2).sum()) < radius[i]:
                inside += 1
                hit = True
        covered += hit
    return inside / (k * m), covered / n


def _sets(seed: int):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(60, 6))
    # a third on the reference distribution, a third shrunk into its centre (dense: density > coverage),
    # a third shifted away (outside most balls)
    fake = np.concatenate([rng.normal(size=(15, 6)), rng.normal(size=(15, 6)) * 0.3, rng.normal(size=(15, 6)) + 2.5])
    return real, fake


@pytest.mark.parametrize("k", [1, 3, 5])
def test_density_coverage_match_bruteforce(k):
    real, fake = _sets(k)
    want = _bruteforce(real, fake, k)
    assert 0.1 < want[1] < 0.95 and want[0] > 0  # neither trivial nor saturated
    # tiles much smaller than the sets: the running top-(k+1) radii and the ball counts cross tile borders
    for block in (7, 64, 4096):
        got = density_coverage(real, fake, k=k, block=block)
        assert got == pytest.approx(want, abs=1e-12), block
    # float32 arithmetic: the same up to a pair or two whose distance sits within round-off of a radius
    d32, c32 = density_coverage(real.astype(np.float32), fake.astype(np.float32), k=k, dtype=torch.float32)
    assert abs(d32 - want[0]) <= 2 / (k * len(fake)) and abs(c32 - want[1]) <= 2 / len(real)


def test_density_can_exceed_one_and_coverage_cannot():
    rng = np.random.default_rng(11)
    real = rng.normal(size=(40, 4))
    fake = rng.normal(size=(30, 4)) * 0.1  # every sample at the centre: inside most balls
    d, c = density_coverage(real, fake, k=3)
    assert (d, c) == pytest.approx(_bruteforce(real, fake, 3), abs=1e-12)
    assert d > 1.0 and c < 1.0


@pytest.mark.parametrize("k", [1, 5])
def test_closed_forms(k):
    rng = np.random.default_rng(3)
    real = rng.normal(size=(50, 8))
    # identical sets: ball i holds its own copy and the k-1 neighbours strictly inside its radius,
    # so every ball holds exactly k samples: density = N k / (k N) = 1, coverage = 1
    assert density_coverage(real, real.copy(), k=k) == (1.0, 1.0)
    # every sample twice: twice the hits over twice the samples, still (1, 1)
    assert density_coverage(real, np.concatenate([real, real]), k=k) == (1.0, 1.0)
    # disjoint sets far apart: no sample in any ball
    assert density_coverage(real, real + 1e3, k=k) == (0.0, 0.0)
    # a single sample far away, and one sample placed exactly at reference point 0
    assert density_coverage(real, real[:1] + 1e3, k=k) == (0.0, 0.0)
    d, c = density_coverage(real, real[:1], k=k)
    assert c == pytest.approx(_bruteforce(real, real[:1], k)[1], abs=1e-12) and c >= 1 / len(real)


def test_bad_inputs():
    x = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(InputFormatError, match="more than 5 reference features"):
        density_coverage(x, x, k=5)
    with pytest.raises(InputFormatError, match="dimensions differ"):
        density_coverage(x, x[:, :2], k=2)
    with pytest.raises(InputFormatError, match="expected a"):
        density_coverage(x, x[0], k=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_equals_cpu():
    real, fake = _sets(4)
    assert density_coverage(real, fake, k=5, device="cuda") == pytest.approx(
        density_coverage(real, fake, k=5), abs=1e-12
    )


# ----------------------------------------------------------------------------- evaluate_fid.py, real Inception
@pytest.mark.slow
def test_evaluate_fid_density_coverage_on_inception_features(
    tmp_path, capsys, monkeypatch, inception_weights, animal_mnist_dir
):
    """``evaluate_fid.py --metrics fid,density,coverage`` on Animal-MNIST: the reference is 20 real images
    (all their features stored), the samples are the same 20 images plus 10 noise images, so the numbers
    equal the brute force on [reference features; noise features] (the first 20 sample features are the
    reference's, computed in the same batches)."""
    from vca_gen.metrics import InceptionFeatureExtractor, cli, load_reference, open_source

    monkeypatch.setenv("VCA_GEN_ASSETS", str(animal_mnist_dir.parent))
    real = np.concatenate(list(open_source("dataset:animal_mnist:a", max_images=20).batches(20)))
    noise = np.random.default_rng(0).integers(0, 256, size=(10, *real.shape[1:]), dtype=np.uint8)
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=np.concatenate([real, noise]))
    common = ["--inception", str(inception_weights), "--device", "cpu", "--batch-size", "10", "--no-progress"]
    ref = tmp_path / "ref.npz"
    assert cli.main(["dataset:animal_mnist:a", "--max-images", "20", "--make-ref", str(ref), *common]) == 0
    capsys.readouterr()
    out_json = tmp_path / "score.json"
    argv = [str(samples), "--ref", str(ref), "--metrics", "fid,density,coverage", "--density-k", "3"]
    assert cli.main([*argv, "--coverage-k", "3", "--json-out", str(out_json), *common]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert json.loads(out_json.read_text()) == result
    assert result["metrics"] == ["fid", "density", "coverage"] and result["n"] == 30 and result["n_ref_features"] == 20
    assert result["density_k"] == 3 and result["coverage_k"] == 3 and result["params"]["density"] == {"k": 3}
    assert result["sfid"] is None and result["kid"] is None and result["fid"] > 0  # only what was asked

    ref_feats = load_reference(ref).feats  # (20, 2048) float32, all of them
    assert ref_feats.shape == (20, 2048)
    fx = InceptionFeatureExtractor(mode="clean", device="cpu", weights=inception_weights)
    fake = np.concatenate([ref_feats, fx(noise).pool])
    want = _bruteforce(ref_feats, fake, 3)
    assert (result["density"], result["coverage"]) == pytest.approx(want, abs=1e-12)
    assert result["coverage"] == 1.0  # every reference image is among the samples
    print(f"\ndensity/coverage of 20 real + 10 noise vs the 20 real (k=3): {want}")
    assert f"density   : {result['density']:.4f}" in out and f"coverage  : {result['coverage']:.4f}" in out


@pytest.mark.parametrize("block", [3, 7, 64, 2048])
def test_exact_ties_do_not_depend_on_the_tiling(block):
    """Duplicated samples sit exactly on other balls' radii: the product form rounds them differently
    with the tile shape, the exact tie-break must not (closed form: every ball holds exactly k copies
    per copy of the set, so density 1 and coverage 1 for any tiling and order)."""
    from vca_gen.metrics.density_coverage import ball_counts

    rng = np.random.default_rng(5)
    real = rng.normal(size=(40, 16)) * 30.0  # large norms: the product form's round-off is largest
    fake = np.concatenate([real, real[::-1], real[rng.permutation(40)]])  # every point three times
    inside, covered = ball_counts(real, fake, k=5, block=block)
    assert inside == 3 * 40 * 5 and covered.all()
