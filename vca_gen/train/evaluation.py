"""EMA preview grids and in-loop FID, both through the sampling engine's image maker.

Both use :func:`vca_gen.sample.model.image_maker`, the same code ``sample.py`` runs, with its seeding
rule: image i draws all its randomness from a generator seeded ``seed + i``.

- Grid (``train.grid``): labels ``classes[i % len(classes)]``, seeds ``grid.seed + i``; written as
  ``<run>/samples/step_XXXXXXXX.png`` on the main process.
- In-loop FID (``train.fid``): sample i has label ``i % num_classes`` and seed ``fid.seed + i``, as
  ``sample.py --seed SEED``. The N samples are cut into batches of ``fid.batch_size`` (the batches
  ``evaluate_fid.py --batch-size`` reads from ``samples.npz``); process r generates and embeds
  batches r, r+P, …; the main process gathers the pool3 features, accumulates them in sample order
  and scores them against ``fid.ref`` with the ``fid.metrics`` registry entries (default FID; e.g.
  density, coverage). So the values equal ``sample.py`` + ``evaluate_fid.py --metrics ...`` at the
  same N, seed, batch size and reference, for any process count, and no process waits while
  another samples everything.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from vca_gen.experiment.schema import ExperimentConfig, FidConfig, GridConfig, plain
from vca_gen.metrics import InceptionFeatureExtractor, load_reference, registry
from vca_gen.metrics.evaluation import prepare_reference, score
from vca_gen.metrics.inception import FeatureBatch
from vca_gen.metrics.statistics import statistics_from_features
from vca_gen.sample.model import generate, image_maker
from vca_gen.utils.io import atomic_open

Experiment = ExperimentConfig | DictConfig  # the typed sections, or the validated DictConfig (same values)


def grid_labels(exp: Experiment) -> list[int]:
    """``train.grid.classes`` cycled to ``train.grid.num`` (default 0, 1, 2, …)."""
    g = exp.train.grid
    classes = list(g.classes) or list(range(exp.model.num_classes))
    return [classes[i % len(classes)] for i in range(g.num)]


def _maker(exp: Experiment, section: GridConfig | FidConfig | DictConfig, model, objective, decoder, device):
    m = exp.model
    options = section.options
    return image_maker(
        model,
        objective,
        decoder,
        (m.in_channels, m.input_size, m.input_size),
        device,
        sampler=section.sampler,
        steps=section.steps,
        cfg_scale=section.cfg_scale,
        options=plain(options) if isinstance(options, DictConfig) else dict(options),
        cfg_interval=None if section.cfg_interval is None else list(section.cfg_interval),
    )


def tile(images: np.ndarray, nrow: int, pad: int = 2) -> np.ndarray:
    """uint8 (B, H, W, 3) → one (rows·(H+pad)+pad, nrow·(W+pad)+pad, 3) grid image, black padding."""
    b, h, w, c = images.shape
    rows = math.ceil(b / nrow)
    out = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, nrow)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = img
    return out


@torch.no_grad()
def save_grid(exp: Experiment, model, objective, decoder, out: Path, device) -> Path:
    """Write the fixed-seed grid of ``model`` to ``out`` (PNG, atomically) and return the path."""
    g = exp.train.grid
    was_training = model.training
    model.eval()
    try:
        labels = grid_labels(exp)
        images = generate(
            _maker(exp, g, model, objective, decoder, device),
            labels,
            [g.seed + i for i in range(len(labels))],
            device,
            batch_size=64,
        )
    finally:
        model.train(was_training)
    nrow = g.nrow or max(1, math.ceil(math.sqrt(len(images))))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a full disk here exits 75: a re-run resumes from the newest checkpoint and draws this grid again
    with atomic_open(out, "wb", what="training preview grid (PNG)", resumable=True) as f:
        Image.fromarray(tile(images, nrow)).save(f, format="PNG")
    return out


class InLoopFID:
    """``train.fid`` evaluation of the ``train.fid.metrics`` registry entries (default: FID); the
    Inception network and the reference (with its features when a metric needs them) are loaded once."""

    def __init__(self, exp: Experiment, device):
        f = exp.train.fid
        self.exp, self.device = exp, device
        self.metrics = registry.parse_names(list(f.metrics), "train.fid.metrics")
        self.params = registry.resolve_params(self.metrics)
        self.need_features = bool(registry.needing(self.metrics, "features"))
        self.need_spatial = bool(registry.needing(self.metrics, "spatial"))
        ref = f.ref
        assert ref is not None  # train.fid.every > 0 needs it (checked at load time)
        mode = load_reference(ref).mode
        self.extractor = InceptionFeatureExtractor(mode=mode, device=device)
        self.ref = prepare_reference(ref, self.extractor, mode, need_features=self.need_features)

    def batches(self, rank: int, world: int) -> list[list[int]]:
        """Sample indices of the batches process ``rank`` of ``world`` evaluates."""
        n, b = self.exp.train.fid.num_samples, self.exp.train.fid.batch_size
        starts = list(range(0, n, b))[rank::world]
        return [list(range(s, min(n, s + b))) for s in starts]

    @torch.no_grad()
    def features(self, model, objective, decoder, rank: int = 0, world: int = 1) -> dict:
        """``{batch start: FeatureBatch}`` of this process's batches: (B, 2048) float32 pool3 features,
        and the (B, 2023) spatial ones when a metric needs them."""
        f, nc = self.exp.train.fid, self.exp.model.num_classes
        make = _maker(self.exp, f, model, objective, decoder, self.device)
        was_training = model.training
        model.eval()
        out = {}
        try:
            for idx in self.batches(rank, world):
                images = generate(
                    make, [i % nc for i in idx], [f.seed + i for i in idx], self.device, batch_size=len(idx)
                )
                fb = self.extractor(images)
                out[idx[0]] = FeatureBatch(fb.pool, fb.spatial if self.need_spatial else None)
        finally:
            model.train(was_training)
        return out

    def score(self, gathered: list[dict], image_size: tuple | None = None) -> dict[str, float | None]:
        """``{field: value}`` of the selected metrics (e.g. ``fid``; ``density``) from every process's
        :meth:`features`, accumulated in sample order (as ``evaluate_fid.py`` reads ``samples.npz``)."""
        merged = {k: v for part in gathered for k, v in part.items()}
        order = [merged[k] for k in sorted(merged)]
        stats = statistics_from_features(
            [fb.pool for fb in order],
            self.ref.mode,
            self.extractor.weights_sha256,
            image_size,
            "in-loop samples",
            spatial_batches=[fb.spatial for fb in order] if self.need_spatial else None,
            keep_features=self.need_features,
        )
        values, _ = score(self.metrics, stats, self.ref, self.params, device=self.device)
        return {fd.key: values[fd.key] for fd in registry.fields_of(self.metrics)}
