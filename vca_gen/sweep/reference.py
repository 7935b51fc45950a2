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
    """The sweep's reference statistics file, computing a recipe's once."""
    ref, path = sweep.evaluate.reference, reference_path(sweep)
    if not ref.is_recipe or path.is_file():
        return path
    from vca_gen.metrics import InceptionFeatureExtractor, compute_statistics, save_statistics

    need_feats = any(m in sweep.evaluate.metrics for m in ("kid", "pr"))
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
        keep_features=need_feats,
        progress=progress,
    )
    save_statistics(stats, path, max_features=ref.num_images if need_feats else 0)
    return path


__all__ = ["ensure_reference", "recipe_source"]
