"""The reference statistics of a sweep: a given file, or a recipe computed once per sweep.

A recipe ``{source, num_images, mode, balanced}`` is computed in this process (before any cell starts)
into ``output_dir/reference/ref_<recipe hash>.npz`` with :mod:`vca_gen.metrics`; ``source:
dataset:animal_mnist[:SPLIT]`` with ``balanced: true`` takes the first ``num_images / 10`` images of
each class of that split — the demo's class-balanced subset (``vca_gen.metrics.sources.balanced_animal_mnist``).
Any other source takes its first ``num_images`` images.
"""

from __future__ import annotations

from pathlib import Path

from vca_gen.sweep.plan import reference_path
from vca_gen.sweep.spec import Sweep


def recipe_source(source: str, num_images: int, balanced: bool):
    """The image source of a reference recipe."""
    if balanced and source.startswith("dataset:animal_mnist"):
        from vca_gen.metrics.sources import balanced_animal_mnist

        parts = source.split(":")
        split = parts[2] if len(parts) > 2 and parts[2] else "all"
        return balanced_animal_mnist(split, num_images)
    from vca_gen.metrics import open_source

    return open_source(source, max_images=num_images)


def ensure_reference(sweep: Sweep, progress: bool = True) -> Path:
    """The sweep's reference statistics file, computing a recipe's once.

    A recipe's file stores every pool3 feature (the metrics that need reference features, e.g. KID,
    precision/recall, density/coverage, read them). One written before without them is recomputed when
    the sweep's metrics need them (same statistics, features added; the protocol hash names the recipe)."""
    from vca_gen.metrics import registry

    ref, path = sweep.evaluate.reference, reference_path(sweep)
    need_feats = registry.needing(sweep.evaluate.metrics, "features")
    if not ref.is_recipe:
        return path
    if path.is_file():
        if not need_feats or _has_features(path):
            return path
        print(f"[sweep] reference {path} stores no features, which {', '.join(need_feats)} need: recomputing it")
    from vca_gen.metrics import InceptionFeatureExtractor, compute_statistics, save_statistics

    print(
        f"[sweep] reference statistics: {ref.num_images} images of {ref.source} "
        f"({'class-balanced, ' if ref.balanced else ''}mode {ref.mode}) -> {path}",
        flush=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fx = InceptionFeatureExtractor(mode=ref.mode)
    stats = compute_statistics(
        recipe_source(str(ref.source), ref.num_images, ref.balanced),
        fx,
        ref.mode,
        batch_size=50,
        keep_features=True,
        progress=progress,
    )
    save_statistics(stats, path, max_features=ref.num_images)
    return path


def _has_features(path: Path) -> bool:
    from vca_gen.metrics import load_reference

    return load_reference(path).feats is not None


__all__ = ["ensure_reference", "recipe_source"]
