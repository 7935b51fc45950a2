"""evaluate_fid.py / vca_gen.metrics: bad input -> clear error, exit code 2, nothing written.

All checks here fail before Inception would run (inputs are validated first), so they are fast;
the notes on metrics from too few images are checked with a stand-in extractor (``FakeExtractor``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vca_gen.metrics import (
    FeatureStatistics,
    InceptionWeightsNotFound,
    InputFormatError,
    ModeMismatchError,
    cli,
    evaluate,
    load_reference,
    open_source,
    resolve_inception_weights,
    save_statistics,
    statistics,
    weights,
)

REPO = Path(__file__).resolve().parent.parent


def _images(n=6, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _fake_stats(mode="clean", d=8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, d))
    return FeatureStatistics(
        mu=x.mean(0),
        sigma=np.cov(x, rowvar=False),
        count=20,
        mode=mode,
        resolution=(16, 16),
        extractor_sha256="0" * 64,
        source="test",
    )


def _run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_npz_without_arr_0(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=_images())
    code, out, err = _run_cli([bad, "--ref", bad, "--json-out", tmp_path / "r.json"], capsys)
    assert code == 2 and "no `arr_0` array" in err and "'images'" in err and str(bad) in err
    assert out == "" and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    "array,expect",
    [
        (np.zeros((4, 8, 8, 3), np.float32), "dtype float32, expected uint8"),
        (np.zeros((4, 8, 8, 4), np.uint8), "shape (4, 8, 8, 4), expected (N, H, W, 3)"),
        (np.zeros((4, 8), np.uint8), "shape (4, 8), expected (N, H, W, 3)"),
    ],
)
def test_npz_wrong_dtype_or_shape(tmp_path, capsys, array, expect):
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr_0=array)
    good_ref = tmp_path / "ref.npz"
    save_statistics(_fake_stats(), good_ref)
    before = good_ref.read_bytes()
    # as samples, and as the source of --make-ref over an existing good file: error, file untouched
    code, _, err = _run_cli([bad, "--ref", good_ref], capsys)
    assert code == 2 and expect in err
    code, _, err = _run_cli([bad, "--make-ref", good_ref], capsys)
    assert code == 2 and expect in err
    assert good_ref.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "ref.npz"]


def test_grayscale_arrays_are_replicated():
    src = open_source(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3))
    (batch,) = list(src.batches(8))
    assert batch.shape == (2, 3, 3, 3) and (batch[..., 0] == batch[..., 2]).all()


def test_reference_of_the_other_mode(tmp_path, capsys):
    samples = tmp_path / "s.npz"
    np.savez(samples, arr_0=_images())
    clean_ref = tmp_path / "clean_ref.npz"
    save_statistics(_fake_stats("clean"), clean_ref)
    adm_ref = tmp_path / "adm_ref.npz"
    np.savez(adm_ref, mu=np.zeros(8), sigma=np.eye(8))
    code, out, err = _run_cli([samples, "--ref", clean_ref, "--mode", "legacy_tensorflow"], capsys)
    assert code == 2 and "mode clean" in err and "legacy_tensorflow" in err and out == ""
    code, out, err = _run_cli([samples, "--ref", adm_ref, "--mode", "clean"], capsys)
    assert code == 2 and "ADM reference batch (legacy_tensorflow by definition)" in err and "mode clean" in err
    with pytest.raises(ModeMismatchError, match="legacy_tensorflow"):
        evaluate(samples, adm_ref, mode="clean")
    with pytest.raises(ModeMismatchError):
        load_reference(clean_ref, mode="legacy_tensorflow")
    assert load_reference(adm_ref).mode == "legacy_tensorflow"


def test_unrecognised_reference_and_bad_stats(tmp_path, capsys):
    samples = tmp_path / "s.npz"
    np.savez(samples, arr_0=_images())
    weird = tmp_path / "weird.npz"
    np.savez(weird, foo=np.zeros(3))
    code, _, err = _run_cli([samples, "--ref", weird], capsys)
    assert code == 2 and "keys ['foo']" in err
    bad_sigma = tmp_path / "bad_sigma.npz"
    np.savez(bad_sigma, mu=np.zeros(8), sigma=np.eye(7))
    with pytest.raises(InputFormatError, match=r"`sigma` is float64 \(7, 7\), expected finite float \(8x8\)"):
        load_reference(bad_sigma)
    code, _, err = _run_cli([samples, "--ref", tmp_path / "missing.npz"], capsys)
    assert code == 2 and "no such file or folder" in err


def test_cli_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([str(tmp_path / "x.npz")])
    assert e.value.code == 2 and "exactly one of --ref" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["x.npz", "--ref", "r.npz", "--mode", "tf"])
    assert e.value.code == 2


def test_missing_inception_weights_message(tmp_path, monkeypatch):
    monkeypatch.delenv("VCA_GEN_INCEPTION", raising=False)
    monkeypatch.setenv("VCA_GEN_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setattr(weights, "_cleanfid_dirs", lambda: [str(tmp_path / "tmpdir")])
    with pytest.raises(InceptionWeightsNotFound) as e:
        resolve_inception_weights()
    msg = str(e.value)
    for needle in (
        str(tmp_path / "assets" / "inception" / "default_1.pt"),
        str(tmp_path / "tmpdir"),
        "make assets",
        "python scripts/fetch_assets.py inception",
        "inception-2015-12-05.pt",
        "--inception PATH",
    ):
        assert needle in msg
    # order: explicit > env > clean-fid's temp file > assets copy
    (tmp_path / "tmpdir").mkdir()
    cf = tmp_path / "tmpdir" / "inception-2015-12-05.pt"
    cf.write_bytes(b"x")
    helper = tmp_path / "assets" / "inception" / "default_1.pt"
    helper.parent.mkdir(parents=True)
    helper.write_bytes(b"y")
    assert resolve_inception_weights() == cf
    cf.unlink()
    assert resolve_inception_weights() == helper
    monkeypatch.setenv("VCA_GEN_INCEPTION", str(cf))
    with pytest.raises(InceptionWeightsNotFound, match="VCA_GEN_INCEPTION"):
        resolve_inception_weights()
    assert resolve_inception_weights(helper) == helper


def test_missing_weights_cli_exit_code(tmp_path):
    samples = tmp_path / "s.npz"
    np.savez(samples, arr_0=_images())
    env = dict(os.environ, VCA_GEN_INCEPTION=str(tmp_path / "nope.pt"))
    out_ref = tmp_path / "ref.npz"
    p = subprocess.run(
        [sys.executable, str(REPO / "evaluate_fid.py"), str(samples), "--make-ref", str(out_ref), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr
    assert "Inception weights not found at" in p.stderr and "fetch_assets.py inception" in p.stderr
    assert "Traceback" not in p.stderr and not out_ref.exists()


def test_statistics_file_roundtrip_and_atomic_write(tmp_path, monkeypatch):
    st = _fake_stats()
    st.feats = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    path = save_statistics(st, tmp_path / "ref.npz", max_features=5)
    back = load_reference(path)
    assert back.mode == "clean" and back.count == 20 and back.resolution == (16, 16)
    assert np.array_equal(back.mu, st.mu) and np.array_equal(back.sigma, st.sigma)
    assert back.feats.shape == (5, 8) and back.extractor_sha256 == "0" * 64
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(statistics.np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_statistics(_fake_stats(), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ref.npz"]


def test_dataset_spec(animal_mnist_dir, monkeypatch):
    monkeypatch.setenv("VCA_GEN_ASSETS", str(animal_mnist_dir.parent))
    src = open_source("dataset:animal_mnist:b:28")
    assert len(src) == 5000 and src.resolution == (28, 28)
    (first,) = list(open_source("dataset:animal_mnist", max_images=3, split="a").batches(8))
    assert first.shape == (3, 32, 32, 3) and first.dtype == np.uint8 and first[:, :2].max() == 0  # padded border
    for bad, msg in (("dataset:animal_mnist:c", "split 'c'"), ("dataset:cifar", "unknown dataset")):
        with pytest.raises(InputFormatError, match=msg):
            open_source(bad)


def test_bad_image_folders(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    code, _, err = _run_cli([empty, "--make-ref", tmp_path / "ref.npz"], capsys)
    assert code == 2 and "no images found (accepted extensions: .png" in err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    code, _, err = _run_cli([junk, "--make-ref", tmp_path / "ref.npz"], capsys)
    assert code == 2 and "cannot identify image file" in err and "a.png" in err
    assert not (tmp_path / "ref.npz").exists()


# ------------------------------------------------------------ notes on metrics from too few images
class FakeExtractor:
    """Stands in for Inception in CLI tests: fixed random projections of the pixels to ``POOL_DIM``
    pool and ``SPATIAL_DIM`` spatial features (deterministic, no weights, milliseconds)."""

    POOL_DIM, SPATIAL_DIM = 64, 48

    def __init__(self, mode="clean", device=None, weights=None):
        self.mode = mode
        self.weights_path = Path("fake-inception.pt")
        self.weights_sha256 = "f" * 64

    def __call__(self, images, mode=None):
        from vca_gen.metrics.inception import FeatureBatch

        x = np.asarray(images, np.float64).reshape(len(images), -1) / 255.0
        rng = np.random.default_rng(x.shape[1])
        w = rng.normal(size=(x.shape[1], self.POOL_DIM + self.SPATIAL_DIM)) / np.sqrt(x.shape[1])
        f = (x @ w).astype(np.float32)
        return FeatureBatch(f[:, : self.POOL_DIM], f[:, self.POOL_DIM :])


@pytest.fixture
def fake_inception(monkeypatch):
    monkeypatch.setattr(cli, "InceptionFeatureExtractor", FakeExtractor)
    return FakeExtractor


def _score(tmp_path, capsys, n, n_ref, *extra, seed=0):
    s, r = tmp_path / f"s{n}.npz", tmp_path / f"r{n_ref}.npz"
    np.savez(s, arr_0=_images(n, 8, seed=seed))
    np.savez(r, arr_0=_images(n_ref, 8, seed=seed + 100))
    code, out, err = _run_cli([s, "--ref", r, "--no-progress", "--device", "cpu", "--threads", "1", *extra], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    return result, out


def _notes(result, prefix):
    return [n for n in result["notes"] if n.startswith(prefix + ":")]


def test_fid_from_fewer_images_than_feature_dims_is_noted(tmp_path, capsys, fake_inception):
    d, ds = FakeExtractor.POOL_DIM, FakeExtractor.SPATIAL_DIM
    # 50 samples: fewer than the 64 pool dimensions (noted), more than the 48 spatial ones (not noted)
    result, out = _score(tmp_path, capsys, 50, 80)
    assert isinstance(result["notes"], list) and all(isinstance(n, str) for n in result["notes"])
    (fid_note,) = _notes(result, "fid")
    assert f"its {d} feature dimensions (samples 50):" in fid_note
    assert "rank-deficient" in fid_note and f"note      : {fid_note}" in out
    assert result["fid"] is not None and result["fid"] > 0  # still computed
    assert not _notes(result, "sfid") and result["sfid"] is not None
    # 40 reference images: both sides below 64 and the spatial 48 too
    result, _ = _score(tmp_path, capsys, 50, 40)
    (fid_note,) = _notes(result, "fid")
    assert "(samples 50, reference 40):" in fid_note
    (sfid_note,) = _notes(result, "sfid")
    assert f"its {ds} feature dimensions (reference 40):" in sfid_note
    # enough images on both sides: no note at all
    result, _ = _score(tmp_path, capsys, 70, 80)
    assert result["notes"] == [] and result["fid"] is not None


def _mmd2_unbiased(x, y):
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    m = len(x)
    return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()


def test_kid_with_fewer_images_than_the_subset_size_is_noted(tmp_path, capsys, fake_inception):
    # 10 vs 10 images, default --kid-subset-size 1000: subsets are the whole sets -> std 0 by construction
    result, out = _score(tmp_path, capsys, 10, 10, "--kid", "--kid-subsets", "7")
    assert result["kid_subset_size"] == 10 and result["kid_subsets"] == 7
    (note,) = _notes(result, "kid")
    assert "subsets of 10 images, not the requested --kid-subset-size 1000" in note and "0 by construction" in note
    assert f"note      : {note}" in out and "(subsets of 10)" in out
    fx = FakeExtractor()
    x = fx(_images(10, 8, seed=0)).pool.astype(np.float64)
    y = fx(_images(10, 8, seed=100)).pool.astype(np.float64)
    assert result["kid"] == pytest.approx(_mmd2_unbiased(x, y), rel=1e-9)
    assert abs(result["kid_std"]) <= 1e-12 * abs(result["kid"])
    # one set smaller than requested: subsets of 10, the std understates the spread
    result, _ = _score(tmp_path, capsys, 10, 30, "--kid", "--kid-subset-size", "20")
    (note,) = _notes(result, "kid")
    assert result["kid_subset_size"] == 10 and "requested --kid-subset-size 20" in note and "understates" in note
    # both sets at least the subset size: no note, the requested size is used, a real spread
    result, _ = _score(tmp_path, capsys, 10, 30, "--kid", "--kid-subset-size", "5")
    assert result["kid_subset_size"] == 5 and not _notes(result, "kid") and result["kid_std"] > 0


def test_precision_recall_with_too_few_images_for_k_is_noted(tmp_path, capsys, fake_inception):
    result, out = _score(tmp_path, capsys, 10, 3, "--pr", "--pr-k", "3")
    (note,) = _notes(result, "precision_recall")
    assert "more than k=3 images per set" in note and "samples have 10, the reference 3" in note
    assert result["precision"] is None and result["recall"] is None and f"note      : {note}" in out
    result, _ = _score(tmp_path, capsys, 10, 4, "--pr", "--pr-k", "3")
    assert not _notes(result, "precision_recall") and result["precision"] is not None
    assert result["n_ref_features"] == 4


def test_make_ref_from_few_images_is_noted(tmp_path, capsys, fake_inception):
    s = tmp_path / "s.npz"
    np.savez(s, arr_0=_images(12, 8))
    code, out, err = _run_cli([s, "--make-ref", tmp_path / "ref.npz", "--no-progress", "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    (note,) = result["notes"]
    assert "statistics of 12 images, fewer than the 64 feature dimensions" in note and f"note      : {note}" in out
