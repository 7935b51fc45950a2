"""High-level evaluation: samples vs a reference -> FID, sFID, KID, precision/recall.

A reference is our statistics file, an ADM reference batch, or another image set (``.npz`` with
``arr_0``, a folder, ``dataset:animal_mnist``, a uint8 array), or a :class:`FeatureStatistics`.

The result's ``notes`` (a list of ``"<metric>: <text>"`` strings) say why a metric is missing and
when one was computed from fewer images than its definition assumes: FID / sFID from fewer images
than feature dimensions (rank-deficient covariance: still computed, but biased and only comparable
at equal N), KID with subsets smaller than requested (the size used is ``kid_subset_size``),
precision/recall with no more images than k.
"""

from __future__ import annotations

import os
from typing import Any, cast

import numpy as np

from vca_gen.metrics.errors import InputFormatError
from vca_gen.metrics.inception import InceptionFeatureExtractor, check_mode
from vca_gen.metrics.scores import (
    frechet_distance,
    frechet_distance_from_features,
    kernel_inception_distance,
    precision_recall,
)
from vca_gen.metrics.scores import kid_subset_size as kid_subset_used
from vca_gen.metrics.sources import NpzSource, open_source
from vca_gen.metrics.statistics import (
    FeatureStatistics,
    check_same_mode,
    compute_statistics,
    load_reference,
    reference_kind,
)


def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def reference_mode(ref) -> str | None:
    """The mode a reference fixes (statistics files, ADM batches), or None for image sets."""
    if isinstance(ref, FeatureStatistics):
        return ref.mode
    if _is_path(ref) and reference_kind(ref) in ("vca-gen", "adm"):
        return load_reference(ref).mode
    return None


def prepare_reference(
    ref,
    extractor: InceptionFeatureExtractor,
    mode: str,
    need_features: bool = False,
    batch_size: int = 50,
    num_workers: int = 0,
    progress: bool = False,
    max_images: int | None = None,
) -> FeatureStatistics:
    """Statistics of ``ref`` in ``mode`` (computing them for image sets; ADM ``arr_0`` features for KID/PR)."""
    if isinstance(ref, FeatureStatistics):
        check_same_mode(mode, ref)
        return ref
    if _is_path(ref) and reference_kind(ref) in ("vca-gen", "adm"):
        stats = load_reference(ref, mode=mode)
        if need_features and stats.feats is None and stats.ref_images is not None:
            img = compute_statistics(
                NpzSource(stats.ref_images),
                extractor,
                mode,
                batch_size,
                num_workers,
                keep_features=True,
                progress=progress,
            )
            stats.feats, stats.count = img.feats, None
        return stats
    return compute_statistics(
        ref,
        extractor,
        mode,
        batch_size,
        num_workers,
        keep_features=need_features,
        progress=progress,
        max_images=max_images,
    )


def evaluate(
    samples,
    ref,
    mode: str | None = None,
    extractor: InceptionFeatureExtractor | None = None,
    kid: bool = False,
    pr: bool = False,
    batch_size: int = 50,
    num_workers: int = 0,
    device=None,
    weights=None,
    progress: bool = False,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    seed: int = 0,
    max_images: int | None = None,
) -> dict:
    """Score ``samples`` against ``ref``; returns a JSON-ready dict (None + a note when unavailable).

    ``mode=None`` takes the reference's mode (ADM batches: legacy_tensorflow), else ``clean``;
    an explicit mode that differs from the reference's raises :class:`ModeMismatchError`.
    """
    ref_mode = reference_mode(ref)
    mode = check_mode(mode or ref_mode or (extractor.mode if extractor else "clean"))
    if ref_mode is not None and ref_mode != mode:
        load_ref = ref if isinstance(ref, FeatureStatistics) else load_reference(ref)
        check_same_mode(mode, load_ref)  # raises with both modes named
    samples = open_source(samples, max_images=max_images)  # validate inputs before loading Inception
    if ref_mode is None and not isinstance(ref, FeatureStatistics):
        ref = open_source(ref)
    extractor = extractor or InceptionFeatureExtractor(mode=mode, device=device, weights=weights)
    need = kid or pr
    ref_stats = prepare_reference(ref, extractor, mode, need, batch_size, num_workers, progress)
    stats = compute_statistics(samples, extractor, mode, batch_size, num_workers, keep_features=need, progress=progress)
    notes: list[str] = []
    result: dict[str, Any] = {
        "fid": fid_between(stats, ref_stats),
        "sfid": None,
        "kid": None,
        "kid_std": None,
        "precision": None,
        "recall": None,
        "n": stats.count,
        "n_ref": ref_stats.count,
        "mode": mode,
        "samples": stats.source,
        "reference": ref_stats.source or "array",
        "reference_kind": ref_stats.kind,
        "resolution": list(stats.resolution) if stats.resolution else None,
        "ref_resolution": list(ref_stats.resolution) if ref_stats.resolution else None,
        "weights": str(extractor.weights_path),
        "weights_sha256": extractor.weights_sha256,
        "fid_method": fid_method(stats, ref_stats),
        "kid_subsets": None,
        "kid_subset_size": None,
        "n_ref_features": None if ref_stats.feats is None or not need else len(ref_stats.feats),
    }
    notes += few_images_notes("fid", len(stats.mu), stats.count, ref_stats.count)
    if ref_stats.mu_s is not None and stats.mu_s is not None:
        result["sfid"] = fid_between(stats, ref_stats, spatial=True)
        notes += few_images_notes("sfid", len(stats.mu_s), stats.count, ref_stats.count)
    else:
        notes.append(
            "sfid: unavailable: the reference has no spatial statistics (mu_s/sigma_s)"
            if ref_stats.mu_s is None
            else "sfid: unavailable: no spatial features were extracted"
        )
    ref_feats_missing = (
        "unavailable: the reference holds no features or images (make it with "
        "--make-ref and --ref-features > 0, or use an ADM batch with arr_0)"
    )
    if kid:
        assert stats.feats is not None  # compute_statistics(keep_features=True)
        n1, n2 = len(stats.feats), (None if ref_stats.feats is None else len(ref_stats.feats))
        if n2 is None:
            notes.append(f"kid: {ref_feats_missing}")
        elif min(n1, n2) < 2:
            notes.append(
                f"kid: unavailable: the unbiased MMD needs at least 2 features per set; the samples "
                f"have {n1}, the reference {n2}"
            )
        else:
            m = kid_subset_used(n1, n2, kid_subset_size)
            result["kid"], result["kid_std"] = kernel_inception_distance(
                stats.feats, ref_stats.feats, kid_subsets, kid_subset_size, seed
            )
            result["kid_subsets"], result["kid_subset_size"] = kid_subsets, m
            notes += kid_notes(n1, n2, kid_subset_size)
    if pr:
        assert stats.feats is not None  # compute_statistics(keep_features=True)
        if ref_stats.feats is None:
            notes.append(f"precision_recall: {ref_feats_missing}")
        elif len(ref_stats.feats) <= pr_k or len(stats.feats) <= pr_k:
            notes.append(
                f"precision_recall: unavailable: the radius of a point is the distance to its "
                f"k-th nearest neighbour in its own set, which needs more than k={pr_k} images per "
                f"set; the samples have {len(stats.feats)}, the reference {len(ref_stats.feats)} "
                f"features (use more images or a smaller --pr-k)"
            )
        else:
            result["precision"], result["recall"] = precision_recall(ref_stats.feats, stats.feats, k=pr_k)
    if ref_stats.extractor_sha256 and ref_stats.extractor_sha256 != extractor.weights_sha256:
        notes.append(
            f"weights: reference made with weights sha256 {ref_stats.extractor_sha256}, "
            f"samples with {extractor.weights_sha256}"
        )
    if result["resolution"] and result["ref_resolution"] and result["resolution"] != result["ref_resolution"]:
        notes.append(f"resolution: samples are {result['resolution']}, reference {result['ref_resolution']}")
    result["notes"] = notes
    return result


def few_images_notes(metric: str, dim: int, n: int | None, n_ref: int | None) -> list[str]:
    """A note when either set has fewer images than the ``dim`` feature dimensions of ``metric``
    (its sample covariance then has rank <= n - 1 < dim: the Fréchet distance is still computed,
    but it is biased upward and depends strongly on n). ``None`` counts (ADM batches) are unknown."""
    small = [f"{what} {k}" for what, k in (("samples", n), ("reference", n_ref)) if k is not None and k < dim]
    if not small:
        return []
    return [
        f"{metric}: computed from fewer images than its {dim} feature dimensions ({', '.join(small)}): the "
        f"sample covariance is rank-deficient, so the value is biased upward and depends on the number "
        f"of images; compare it only with {metric.upper()}s computed from the same numbers of images"
    ]


def kid_notes(n1: int, n2: int, requested: int) -> list[str]:
    """A note when KID subsets are smaller than ``requested`` because a set has fewer features."""
    m = kid_subset_used(n1, n2, requested)
    if m >= requested:
        return []
    note = (
        f"kid: subsets of {m} images, not the requested --kid-subset-size {requested} (the samples have {n1}, "
        f"the reference {n2} features)"
    )
    if m == n1 and m == n2:
        note += "; every subset is the whole of both sets, so kid_std is 0 by construction, not an uncertainty"
    else:
        note += (
            f"; every subset of the {'samples' if m == n1 else 'reference'} is the whole set, so kid_std "
            f"understates the uncertainty"
        )
    return [note]


def _small_side(a: FeatureStatistics, b: FeatureStatistics, spatial: bool):
    """(features, mu, sigma of the other side) when one side holds all its <= D features, else None."""
    mu_a, sig_a = (a.mu_s, a.sigma_s) if spatial else (a.mu, a.sigma)
    mu_b, sig_b = (b.mu_s, b.sigma_s) if spatial else (b.mu, b.sigma)
    for x, mu, sig in ((a.complete(spatial), mu_b, sig_b), (b.complete(spatial), mu_a, sig_a)):
        if x is not None and len(x) <= len(cast(np.ndarray, mu)):
            return x, mu, sig
    return None


def fid_method(a: FeatureStatistics, b: FeatureStatistics, spatial: bool = False) -> str:
    """ "small-set-exact" (n x n eigenproblem) or "sqrtm" (the D x D path of ADM / clean-fid)."""
    return "sqrtm" if _small_side(a, b, spatial) is None else "small-set-exact"


def fid_between(a: FeatureStatistics, b: FeatureStatistics, spatial: bool = False) -> float:
    """FID (or sFID) of two statistics; exact small-set form when either side has all its <= D features."""
    small = _small_side(a, b, spatial)
    if small is not None:
        return frechet_distance_from_features(*small)
    if spatial:
        return frechet_distance(a.mu_s, a.sigma_s, b.mu_s, b.sigma_s)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fid_from_uint8(
    images, ref_stats, mode: str | None = None, extractor: InceptionFeatureExtractor | None = None, batch_size: int = 50
) -> float:
    """FID of uint8 images (array (N, H, W, 3) or an iterable of batches) against reference statistics
    (a :class:`FeatureStatistics` or a path) - for in-loop evaluation with a reused extractor."""
    if _is_path(ref_stats):
        ref_stats = load_reference(ref_stats, mode=mode)
    if not isinstance(ref_stats, FeatureStatistics):
        raise InputFormatError(
            f"ref_stats must be FeatureStatistics or a statistics path, got {type(ref_stats).__name__}"
        )
    mode = check_mode(mode or ref_stats.mode)
    check_same_mode(mode, ref_stats)
    extractor = extractor or InceptionFeatureExtractor(mode=mode)
    stats = compute_statistics(images, extractor, mode, batch_size)
    return fid_between(stats, ref_stats)
