"""FID evaluation on clean-fid's conventions, fully offline: FID, sFID, KID, precision/recall and more.

Every metric is one entry of :mod:`vca_gen.metrics.registry` (start there to add one); the built-in
entries are registered below, in the order results and reports list them.

Public API::

    fx = InceptionFeatureExtractor(mode="clean", device="cuda:1")      # load once, reuse
    ref = load_reference("ref.npz")                                     # ours or an ADM batch
    stats = compute_statistics("samples.npz", fx)                      # streamed, float64 sums
    fid = fid_from_uint8(uint8_images_or_batches, ref, extractor=fx)   # in-loop FID
    result = evaluate("samples.npz", "VIRTUAL_imagenet256_labeled.npz", metrics=["fid", "kid", "pr"])
"""

from vca_gen.metrics import builtin, density_coverage  # noqa: F401  (register the entries, in this order)
from vca_gen.metrics.errors import InceptionWeightsNotFound, InputFormatError, MetricsError, ModeMismatchError
from vca_gen.metrics.evaluation import evaluate, fid_between, fid_from_uint8, prepare_reference, score
from vca_gen.metrics.inception import MODES, InceptionFeatureExtractor, tf1_resize_bilinear
from vca_gen.metrics.registry import Field, Metric, MetricInput, MetricSelectionError, Needs, Param, Scored
from vca_gen.metrics.scores import (
    frechet_distance,
    frechet_distance_from_features,
    kernel_inception_distance,
    precision_recall,
)
from vca_gen.metrics.sources import open_source
from vca_gen.metrics.statistics import (
    FeatureStatistics,
    RunningMoments,
    compute_statistics,
    load_reference,
    save_statistics,
)
from vca_gen.metrics.weights import resolve_inception_weights

__all__ = [
    "MODES",
    "InceptionFeatureExtractor",
    "FeatureStatistics",
    "RunningMoments",
    "compute_statistics",
    "evaluate",
    "score",
    "Field",
    "Metric",
    "MetricInput",
    "Needs",
    "Param",
    "Scored",
    "MetricSelectionError",
    "fid_between",
    "fid_from_uint8",
    "frechet_distance",
    "frechet_distance_from_features",
    "kernel_inception_distance",
    "load_reference",
    "open_source",
    "precision_recall",
    "prepare_reference",
    "resolve_inception_weights",
    "save_statistics",
    "tf1_resize_bilinear",
    "MetricsError",
    "InputFormatError",
    "ModeMismatchError",
    "InceptionWeightsNotFound",
]
