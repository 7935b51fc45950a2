"""High-level evaluation: samples vs a reference -> the metrics of :mod:`vca_gen.metrics.registry`.

A reference is our statistics file, an ADM reference batch, or another image set (``.npz`` with
``arr_0``, a folder, ``dataset:animal_mnist``, a uint8 array), or a :class:`FeatureStatistics`.

:func:`evaluate` extracts what the selected metrics need (pool / spatial statistics, the features) and
:func:`score` runs their registry entries. The result's ``notes`` (a list of ``"<metric>: <text>"``
strings) say why a metric is missing and when one was computed from fewer images than its definition
assumes (see :mod:`vca_gen.metrics.builtin`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from vca_gen.metrics import registry
from vca_gen.metrics.errors import InputFormatError
from vca_gen.metrics.inception import InceptionFeatureExtractor, check_mode
from vca_gen.metrics.scores import frechet_distance, frechet_distance_from_features
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


def score(
    selection: Sequence[str],
    stats: FeatureStatistics,
    ref_stats: FeatureStatistics,
    params: Mapping[str, Mapping[str, int]] | None = None,
    seed: int = 0,
    device=None,
) -> tuple[dict[str, Any], list[str]]:
    """Compute the selected registry metrics from the statistics of the samples and the reference.

    Returns every registered JSON key (``None`` unless computed) and the notes: a metric whose inputs
    are missing (no reference features, no spatial statistics, too few features for ``Needs.counts``) is
    ``None`` with a note saying why. ``stats`` must hold the sample features when a selected metric
    needs them (``compute_statistics(keep_features=True)``).
    """
    params = registry.resolve_params(selection, params)
    values: dict[str, Any] = dict.fromkeys(registry.json_keys())
    notes: list[str] = []
    inp = registry.MetricInput(stats, ref_stats, seed, device)
    for name in registry.ordered(selection):
        m = registry.get(name)
        why = _missing_input(m, stats, ref_stats)
        if why is None and m.needs.counts is not None:
            n1 = len(stats.feats) if m.needs.features and stats.feats is not None else stats.count
            n2 = len(ref_stats.feats) if m.needs.features and ref_stats.feats is not None else ref_stats.count
            short = registry.count_problems([name], {name: params[name]}, n1, n2)
            why = short[0][1] if short else None
        if why is not None:
            notes.append(f"{m.prefix}: unavailable: {why}")
            continue
        out = m.compute(inp, params[name])
        extra = sorted(set(out.values) - set(registry.json_keys([name])))
        if extra:
            raise TypeError(
                f"metric {name}: compute returned undeclared key(s) {extra}; declare them as fields or info"
            )
        values.update(out.values)
        notes += out.notes
    return values, notes


REF_FEATURES_MISSING = (
    "the reference holds no features or images (make it with --make-ref and --ref-features > 0, or use an "
    "ADM batch with arr_0)"
)


def _missing_input(m: registry.Metric, stats: FeatureStatistics, ref: FeatureStatistics) -> str | None:
    if m.needs.spatial and ref.mu_s is None:
        return "the reference has no spatial statistics (mu_s/sigma_s)"
    if m.needs.spatial and stats.mu_s is None:
        return "no spatial features were extracted"
    if m.needs.features and ref.feats is None:
        return REF_FEATURES_MISSING
    if m.needs.features and stats.feats is None:
        raise InputFormatError(f"{m.name} needs the sample features; compute the statistics with keep_features=True")
    return None


def select_metrics(
    metrics: Sequence[str] | str | None = None, kid: bool = False, pr: bool = False, where: str = "metrics"
) -> list[str]:
    """The metrics to compute: ``metrics`` (default: the registry's defaults, FID and sFID) plus the
    legacy switches ``kid`` / ``pr`` (``evaluate_fid.py --kid`` / ``--pr``), in registration order."""
    chosen = registry.default_names() if metrics is None else registry.parse_names(metrics, where)
    chosen += [n for n, on in (("kid", kid), ("pr", pr)) if on and n not in chosen]
    return registry.ordered(chosen)


def check_selection(selection, ref_path: str | None, n_samples: int | None, where: str) -> list[str]:
    """Names → registered metrics (:class:`~vca_gen.metrics.registry.MetricSelectionError` otherwise); with
    ``ref_path``, also that the reference serves them: stored features / images, spatial statistics and the
    feature counts their entries need (``n_samples`` samples; only loaded when a metric needs any of it)."""
    names = registry.parse_names(selection, where)
    asks = any(m.needs.features or m.needs.spatial or m.needs.counts for m in map(registry.get, names))
    if ref_path is not None and asks:
        stats = load_reference(ref_path)
        feats = stats.feats is not None or stats.ref_images is not None
        n_ref = len(stats.feats) if stats.feats is not None else None
        registry.check_reference(names, feats, stats.mu_s is not None, where, ref_path, None, n_samples, n_ref)
    return names


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
    metrics: Sequence[str] | str | None = None,
    params: Mapping[str, Mapping[str, int]] | None = None,
) -> dict:
    """Score ``samples`` against ``ref``; returns a JSON-ready dict (None + a note when unavailable).

    ``metrics``: registry names (default: FID and sFID); ``kid`` / ``pr`` add KID / precision-recall
    (with ``kid_subsets``, ``kid_subset_size``, ``pr_k``); ``params``: ``{metric: {param: value}}``.
    ``mode=None`` takes the reference's mode (ADM batches: legacy_tensorflow), else ``clean``;
    an explicit mode that differs from the reference's raises :class:`ModeMismatchError`.
    """
    names = select_metrics(metrics, kid, pr)
    params = {
        "kid": {"subsets": kid_subsets, "subset_size": kid_subset_size},
        "pr": {"k": pr_k},
        **(params or {}),
    }
    params = registry.resolve_params(names, {k: v for k, v in params.items() if k in names})
    ref_mode = reference_mode(ref)
    mode = check_mode(mode or ref_mode or (extractor.mode if extractor else "clean"))
    if ref_mode is not None and ref_mode != mode:
        load_ref = ref if isinstance(ref, FeatureStatistics) else load_reference(ref)
        check_same_mode(mode, load_ref)  # raises with both modes named
    samples = open_source(samples, max_images=max_images)  # validate inputs before loading Inception
    if ref_mode is None and not isinstance(ref, FeatureStatistics):
        ref = open_source(ref)
    extractor = extractor or InceptionFeatureExtractor(mode=mode, device=device, weights=weights)
    need = bool(registry.needing(names, "features"))
    ref_stats = prepare_reference(ref, extractor, mode, need, batch_size, num_workers, progress)
    stats = compute_statistics(samples, extractor, mode, batch_size, num_workers, keep_features=need, progress=progress)
    values, notes = score(names, stats, ref_stats, params, seed, getattr(extractor, "device", device))
    result_fields = registry.value_keys()  # the numbers first, their provenance (info keys) after
    result: dict[str, Any] = {
        **{k: values[k] for k in result_fields},
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
        **{k: v for k, v in values.items() if k not in result_fields},
        "n_ref_features": None if ref_stats.feats is None or not need else len(ref_stats.feats),
        "metrics": names,
        "params": {n: p for n, p in params.items() if p},
    }
    if ref_stats.extractor_sha256 and ref_stats.extractor_sha256 != extractor.weights_sha256:
        notes.append(
            f"weights: reference made with weights sha256 {ref_stats.extractor_sha256}, "
            f"samples with {extractor.weights_sha256}"
        )
    if result["resolution"] and result["ref_resolution"] and result["resolution"] != result["ref_resolution"]:
        notes.append(f"resolution: samples are {result['resolution']}, reference {result['ref_resolution']}")
    result["notes"] = notes
    return result


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
