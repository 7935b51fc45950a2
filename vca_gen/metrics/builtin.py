"""The registry entries of FID, sFID, KID and precision/recall (see :mod:`vca_gen.metrics.registry`).

Each compute function turns the statistics / features of the samples and the reference into the entry's
JSON fields, with notes when a value rests on fewer images than its definition assumes: FID / sFID from
fewer images than feature dimensions (rank-deficient covariance: still computed, but biased and only
comparable at equal N), KID with subsets smaller than requested (the size used is ``kid_subset_size``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vca_gen.metrics.evaluation import fid_between, fid_method
from vca_gen.metrics.registry import Field, Metric, MetricInput, Needs, Param, Scored, register
from vca_gen.metrics.scores import kernel_inception_distance, kid_subset_size, precision_recall


# ----------------------------------------------------------------------------- notes
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
    m = kid_subset_size(n1, n2, requested)
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


# ----------------------------------------------------------------------------- FID, sFID
def _fid(inp: MetricInput, params: Mapping[str, int]) -> Scored:
    s, r = inp.samples, inp.ref
    return Scored(
        {"fid": fid_between(s, r), "fid_method": fid_method(s, r)},
        few_images_notes("fid", len(s.mu), s.count, r.count),
    )


def _sfid(inp: MetricInput, params: Mapping[str, int]) -> Scored:
    s, r = inp.samples, inp.ref
    assert s.mu_s is not None  # the driver checked Needs.spatial
    return Scored({"sfid": fid_between(s, r, spatial=True)}, few_images_notes("sfid", len(s.mu_s), s.count, r.count))


register(
    Metric(
        name="fid",
        help="Fréchet Inception distance of the pool3 statistics (Heusel et al. 2017)",
        fields=(Field("fid", "FID", ".2f"),),
        compute=_fid,
        needs=Needs(ref_stats=True),
        info=("fid_method",),
        default=True,
    )
)
register(
    Metric(
        name="sfid",
        help="FID of the spatial features (first 7 channels of mixed_6/conv, Nash et al. 2021)",
        fields=(Field("sfid", "sFID", ".2f"),),
        compute=_sfid,
        needs=Needs(ref_stats=True, spatial=True),
        default=True,
    )
)


# ----------------------------------------------------------------------------- KID
def _kid(inp: MetricInput, params: Mapping[str, int]) -> Scored:
    f1, f2 = inp.samples.feats, inp.ref.feats
    assert f1 is not None and f2 is not None  # the driver checked Needs.features
    requested = params["subset_size"]
    kid, std = kernel_inception_distance(f1, f2, params["subsets"], requested, inp.seed)
    values = {
        "kid": kid,
        "kid_std": std,
        "kid_subsets": params["subsets"],
        "kid_subset_size": kid_subset_size(len(f1), len(f2), requested),
    }
    return Scored(values, kid_notes(len(f1), len(f2), requested))


def _kid_line(v: Mapping[str, Any]) -> str:
    used = v.get("kid_subset_size")
    size = f" (subsets of {used})" if used is not None else ""
    kid, std = ("n/a" if v.get(k) is None else format(v[k], ".6f") for k in ("kid", "kid_std"))
    return f"KID       : {kid} ± {std}{size}"


register(
    Metric(
        name="kid",
        help="kernel Inception distance: unbiased MMD^2, cubic kernel, mean ± std over random subsets",
        fields=(Field("kid", "KID", ".4f"), Field("kid_std", "KID std", ".4f", lower_is_better=None, summary=False)),
        compute=_kid,
        needs=Needs(features=True, counts=lambda p: (2, 2, "the unbiased MMD needs at least 2 features per set")),
        params=(
            Param("subsets", 100, 1, "KID: number of random subsets"),
            Param("subset_size", 1000, 2, "KID: images per subset (clipped to the smaller set)"),
        ),
        info=("kid_subsets", "kid_subset_size"),
        flag="--kid",
        line=_kid_line,
    )
)


# ----------------------------------------------------------------------------- precision / recall
def _pr(inp: MetricInput, params: Mapping[str, int]) -> Scored:
    real, fake = inp.ref.feats, inp.samples.feats
    assert real is not None and fake is not None  # the driver checked Needs.features
    precision, recall = precision_recall(real, fake, k=params["k"])
    return Scored({"precision": precision, "recall": recall})


def _pr_counts(p: Mapping[str, int]) -> tuple[int, int, str]:
    k = p["k"]
    why = (
        f"the radius of a point is the distance to its k-th nearest neighbour in its own set, which needs "
        f"more than k={k} images per set (use more images or a smaller --pr-k)"
    )
    return k + 1, k + 1, why


register(
    Metric(
        name="pr",
        help="improved precision / recall (Kynkäänniemi et al. 2019): k-NN manifolds of both sets, as ADM",
        fields=(Field("precision", "precision", ".4f", lower_is_better=False), Field("recall", "recall", ".4f", False)),
        compute=_pr,
        needs=Needs(features=True, counts=_pr_counts),
        params=(Param("k", 3, 1, "precision/recall: the k of the k-NN radii"),),
        note="precision_recall",
        flag="--pr",
    )
)
