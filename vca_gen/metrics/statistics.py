"""Feature statistics: streamed computation, our ``.npz`` statistics files, ADM reference batches.

Our statistics file (written atomically by :func:`save_statistics`, ``--make-ref``, with the
umask's mode) is an ``.npz``:
``mu`` (2048,) / ``sigma`` (2048, 2048) float64 (pool3), ``mu_s`` / ``sigma_s`` (2023-d spatial,
for sFID), optionally ``feats`` (K, 2048) float32 (a seeded random subset of pool3 features, for
KID and precision/recall), and ``vca_gen_meta``: a JSON string with ``format``, ``version``,
``mode``, ``resolution`` [H, W], ``extractor``, ``extractor_sha256``, ``count``, ``source``.

An ADM reference batch (``mu``, ``sigma``, optional ``mu_s``, ``sigma_s``, ``arr_0``; no meta) is
``legacy_tensorflow`` by definition; its ``arr_0`` images serve precision/recall and KID, never FID.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vca_gen.metrics.errors import InputFormatError, ModeMismatchError
from vca_gen.metrics.inception import EXTRACTOR_NAME, InceptionFeatureExtractor, check_mode
from vca_gen.utils.io import atomic_savez, make_parent_dir

FORMAT_NAME, FORMAT_VERSION = "vca-gen-fid-stats", 1
META_KEY = "vca_gen_meta"


class RunningMoments:
    """Streamed mean / covariance (ddof=1) of D-dim features in float64 (shifted sums for accuracy)."""

    def __init__(self):
        self.n, self.shift, self.s1, self.s2 = 0, None, None, None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)  # (B, D)
        if self.shift is None:
            self.shift = x.mean(axis=0)
            self.s1 = np.zeros_like(self.shift)
            self.s2 = np.zeros((x.shape[1], x.shape[1]))
        c = x - self.shift
        self.n += len(x)
        self.s1 += c.sum(axis=0)
        self.s2 += c.T @ c

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise InputFormatError(f"need at least 2 images for a covariance, got {self.n}")
        m = self.s1 / self.n
        cov = (self.s2 - self.n * np.outer(m, m)) / (self.n - 1)
        return self.shift + m, (cov + cov.T) / 2


@dataclass
class FeatureStatistics:
    """Gaussian statistics of one image set, with provenance."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None
    mode: str
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    feats: np.ndarray | None = None  # (K, 2048) float32 pool3, for KID / PR / exact small-set FID
    feats_s: np.ndarray | None = None  # (count, 2023) float32 spatial, small sets only (sFID)
    resolution: tuple[int, int] | None = None
    extractor_sha256: str | None = None
    source: str = ""
    kind: str = "vca-gen"  # "vca-gen" | "adm" | "computed"
    ref_images: str | None = field(default=None, repr=False)  # ADM: path whose arr_0 gives PR/KID features

    def complete(self, spatial: bool = False) -> np.ndarray | None:
        """All ``count`` features (pool or spatial) when they are kept, else None."""
        f = self.feats_s if spatial else self.feats
        return f if f is not None and self.count is not None and len(f) == self.count else None

    def meta(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "mode": self.mode,
            "resolution": list(self.resolution) if self.resolution else None,
            "extractor": EXTRACTOR_NAME,
            "extractor_sha256": self.extractor_sha256,
            "count": self.count,
            "source": self.source,
        }


SMALL_SET = 2048  # sets up to this size keep all their features (<= 16 MB pool + 16 MB spatial)


def compute_statistics(
    source,
    extractor: InceptionFeatureExtractor,
    mode: str | None = None,
    batch_size: int = 50,
    num_workers: int = 0,
    keep_features: bool = False,
    progress: bool = False,
    max_images: int | None = None,
) -> FeatureStatistics:
    """Stream ``source`` (path, ``dataset:name``, uint8 array or iterable of batches) through Inception.

    Keeps float64 running sums; the (N, 2048) float32 pool3 features too with ``keep_features``
    (50K images -> 400 MB), and all features of sets of at most ``SMALL_SET`` images (for the exact
    small-set FID / sFID of :func:`~vca_gen.metrics.scores.frechet_distance_from_features`).
    """
    from vca_gen.metrics.sources import open_source

    mode = check_mode(mode or extractor.mode)
    src = open_source(source, max_images=max_images)
    pool, spatial = RunningMoments(), RunningMoments()
    kept, kept_s, small = [], [], True
    try:
        total = len(src)
    except TypeError:
        total = None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"inception[{mode}] {src.description}", unit="img", file=sys.stderr)
    for batch in src.batches(batch_size, num_workers):
        fb = extractor(batch, mode=mode)  # pool (B, 2048), spatial (B, 2023) float32
        pool.update(fb.pool)
        if fb.spatial is not None:
            spatial.update(fb.spatial)
        small = small and pool.n <= SMALL_SET
        if keep_features or small:
            kept.append(fb.pool)
        if small and fb.spatial is not None:
            kept_s.append(fb.spatial)
        if not small:
            kept_s = []
            if not keep_features:
                kept = []
        if bar is not None:
            bar.update(len(fb.pool))
    if bar is not None:
        bar.close()
    if pool.n < 2:
        raise InputFormatError(f"{src.description}: {pool.n} image(s); FID statistics need at least 2")
    mu, sigma = pool.finalize()
    mu_s, sigma_s = spatial.finalize() if spatial.n >= 2 else (None, None)
    return FeatureStatistics(
        mu=mu,
        sigma=sigma,
        count=pool.n,
        mode=mode,
        mu_s=mu_s,
        sigma_s=sigma_s,
        feats=np.concatenate(kept) if kept else None,
        feats_s=np.concatenate(kept_s) if kept_s else None,
        resolution=src.resolution,
        extractor_sha256=extractor.weights_sha256,
        source=src.description,
        kind="computed",
    )


def statistics_from_features(
    feature_batches,
    mode: str,
    extractor_sha256: str | None = None,
    resolution: tuple[int, int] | None = None,
    source: str = "features",
    spatial_batches=None,
    keep_features: bool = False,
) -> FeatureStatistics:
    """Pool3 (and, given ``spatial_batches``, spatial) statistics from feature batches (each (B, 2048) /
    (B, 2023) float32), accumulated exactly as :func:`compute_statistics` does for the images they came
    from (same order and batches → the same float64 sums, the same kept features): in-loop evaluation
    gathers per-process features and finishes here."""
    pool, spatial, kept, kept_s = RunningMoments(), RunningMoments(), [], []
    for feats in feature_batches:
        pool.update(feats)
        kept.append(feats)
    for feats in spatial_batches or ():
        spatial.update(feats)
        kept_s.append(feats)
    if pool.n < 2:
        raise InputFormatError(f"{source}: {pool.n} image(s); FID statistics need at least 2")
    mu, sigma = pool.finalize()
    mu_s, sigma_s = spatial.finalize() if spatial.n >= 2 else (None, None)
    small = pool.n <= SMALL_SET
    return FeatureStatistics(
        mu=mu,
        sigma=sigma,
        count=pool.n,
        mode=check_mode(mode),
        mu_s=mu_s,
        sigma_s=sigma_s,
        feats=np.concatenate(kept) if small or keep_features else None,
        feats_s=np.concatenate(kept_s) if small and kept_s else None,
        resolution=resolution,
        extractor_sha256=extractor_sha256,
        source=source,
        kind="computed",
    )


def save_statistics(
    stats: FeatureStatistics, path: str | os.PathLike, max_features: int = 10000, seed: int = 0
) -> Path:
    """Write our statistics file atomically (:func:`vca_gen.utils.io.atomic_savez`: temp file in the
    same folder, mode per umask, then ``os.replace``); overwrites ``path`` (the CLI refuses that
    without ``--overwrite``). Its folder is created; one that cannot be raises ``OutputDirError``; a full
    disk or read-only file system raises :class:`~vca_gen.utils.io.WriteFaultError` (exit 2), leaving
    an existing ``path`` untouched and no temporary file."""
    path = Path(path)
    arrays: dict[str, Any] = {"mu": stats.mu, "sigma": stats.sigma, META_KEY: np.array(json.dumps(stats.meta()))}
    if stats.mu_s is not None:
        arrays.update(mu_s=stats.mu_s, sigma_s=stats.sigma_s)
    if stats.feats is not None and max_features > 0:
        f = stats.feats
        if len(f) > max_features:
            f = f[np.sort(np.random.default_rng(seed).choice(len(f), max_features, replace=False))]
        arrays["feats"] = f.astype(np.float32)
    if (
        stats.complete(spatial=True) is not None
        and stats.complete() is not None
        and "feats" in arrays
        and len(arrays["feats"]) == stats.count
    ):
        feats_s = stats.feats_s
        assert feats_s is not None  # complete(spatial=True) implies the spatial features
        arrays["feats_s"] = feats_s.astype(np.float32)
    make_parent_dir(path, "statistics file")
    return atomic_savez(path, what="the statistics file", **arrays)


def reference_kind(path: str | os.PathLike) -> str:
    """ "vca-gen" (our stats), "adm" (ADM reference batch), "images" (.npz arr_0 or folder, or dataset:)."""
    p = Path(path)
    if str(path).startswith("dataset:") or p.is_dir():
        return "images"
    if not p.is_file():
        raise InputFormatError(f"reference {path}: no such file or folder")
    try:
        with zipfile.ZipFile(p) as zf:
            keys = {n[:-4] if n.endswith(".npy") else n for n in zf.namelist()}
    except zipfile.BadZipFile as e:
        raise InputFormatError(f"reference {path}: not an .npz file ({e})") from e
    if META_KEY in keys:
        return "vca-gen"
    if {"mu", "sigma"} <= keys:
        return "adm"
    if "arr_0" in keys:
        return "images"
    raise InputFormatError(
        f"reference {path}: keys {sorted(keys)} are none of: our statistics (mu, sigma, "
        f"{META_KEY}), an ADM reference batch (mu, sigma[, mu_s, sigma_s, arr_0]), or an "
        f"image set (arr_0)"
    )


def load_reference(path: str | os.PathLike, mode: str | None = None) -> FeatureStatistics:
    """Load our statistics file or an ADM reference batch; with ``mode``, refuse the other mode."""
    kind = reference_kind(path)
    if kind == "images":
        raise InputFormatError(
            f"reference {path} is an image set, not statistics; compute them with "
            f"compute_statistics() (the CLI does this automatically)"
        )
    with np.load(path, allow_pickle=False) as z:  # never loads arr_0 (ADM: 10k images)
        arrays = {k: z[k] for k in z.files if k != "arr_0"}
        has_images = "arr_0" in z.files
    _check_array(arrays, "mu", (None,), path)
    d = arrays["mu"].shape[0]
    _check_array(arrays, "sigma", (d, d), path)
    has_s = "mu_s" in arrays and "sigma_s" in arrays
    if has_s:
        _check_array(arrays, "mu_s", (None,), path)
        ds = arrays["mu_s"].shape[0]
        _check_array(arrays, "sigma_s", (ds, ds), path)
    if kind == "adm":
        stats = FeatureStatistics(
            mu=arrays["mu"].astype(np.float64),
            sigma=arrays["sigma"].astype(np.float64),
            count=None,
            mode="legacy_tensorflow",
            source=str(path),
            kind="adm",
            ref_images=str(path) if has_images else None,
        )
        if has_images:
            from vca_gen.metrics.sources import NpzSource

            images = NpzSource(path)
            stats.resolution, stats.count = images.resolution, None
    else:
        meta = _parse_meta(arrays[META_KEY], path)
        stats = FeatureStatistics(
            mu=arrays["mu"].astype(np.float64),
            sigma=arrays["sigma"].astype(np.float64),
            count=meta.get("count"),
            mode=meta["mode"],
            source=str(path),
            kind="vca-gen",
            resolution=tuple(meta["resolution"]) if meta.get("resolution") else None,
            extractor_sha256=meta.get("extractor_sha256"),
            feats=arrays.get("feats"),
            feats_s=arrays.get("feats_s"),
        )
    if has_s:
        stats.mu_s, stats.sigma_s = arrays["mu_s"].astype(np.float64), arrays["sigma_s"].astype(np.float64)
    if mode is not None:
        check_same_mode(mode, stats)
    return stats


def check_same_mode(mode: str, stats: FeatureStatistics) -> None:
    check_mode(mode)
    if stats.mode != mode:
        what = (
            "an ADM reference batch (legacy_tensorflow by definition)"
            if stats.kind == "adm"
            else f"statistics computed in mode {stats.mode}"
        )
        raise ModeMismatchError(
            f"reference {stats.source} holds {what}, but mode {mode} was requested; "
            f"features of mode {mode} cannot be compared with {stats.mode} statistics "
            f"(use --mode {stats.mode}, or remake the reference with --mode {mode})"
        )


def _check_array(arrays: dict, key: str, shape: tuple, path) -> None:
    a = arrays[key]
    ok = a.ndim == len(shape) and all(s is None or s == t for s, t in zip(shape, a.shape))
    if not ok or not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
        want = "x".join("D" if s is None else str(s) for s in shape)
        raise InputFormatError(f"reference {path}: `{key}` is {a.dtype} {a.shape}, expected finite float ({want})")


def _parse_meta(raw: np.ndarray, path) -> dict:
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as e:
        raise InputFormatError(f"reference {path}: unreadable {META_KEY} ({e})") from e
    if meta.get("format") != FORMAT_NAME or meta.get("mode") not in ("clean", "legacy_tensorflow"):
        raise InputFormatError(f"reference {path}: {META_KEY} is not a {FORMAT_NAME} header with a valid mode: {meta}")
    return meta


def with_features(stats: FeatureStatistics, feats: np.ndarray) -> FeatureStatistics:
    return replace(stats, feats=feats)
