"""EMA sample grids and in-loop FID during training.

Grids use fixed noise and labels (seeded by ``train.sample_seed``, one generator per image), so
the grids of successive steps are directly comparable. Latent models are decoded with the data
VAE; if that VAE cannot be loaded (e.g. offline), the grid shows the first three latent channels
and a warning says so.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import List, Optional

import torch
from omegaconf import DictConfig

from vca_gen.data.config import uses_latents
from vca_gen.data.sampler import mix_seed
from vca_gen.utils.rng import per_sample_generators, randn

GRID_NOISE_STREAM, GRID_SAMPLER_STREAM = 11, 12
FID_SEED_OFFSET = 10_000_000  # FID sample seeds, disjoint from the grid's
_VAE_CACHE: dict = {}


def grid_labels(cfg: DictConfig) -> List[int]:
    """``train.sample_classes`` cycled to ``train.sample_num`` (default 0, 1, 2, …)."""
    t, n = cfg.train, int(cfg.train.sample_num)
    classes = list(t.sample_classes) or list(range(int(cfg.model.num_classes)))
    return [int(classes[i % len(classes)]) for i in range(n)]


def parse_steps(steps):
    """Config ``sample_steps`` (string or None) → int when numeric, else the string (e.g. "ddim50")."""
    if steps is None:
        return None
    s = str(steps)
    return int(s) if s.isdigit() else s


def _decoder(cfg: DictConfig, vae, device):
    if vae is not None:
        return vae
    key = (cfg.data.vae, cfg.data.vae_subfolder, str(device))
    if key not in _VAE_CACHE:
        from vca_gen.data.vae import load_vae

        try:
            _VAE_CACHE[key] = load_vae(cfg.data.vae, subfolder=cfg.data.vae_subfolder, device=device)
        except (OSError, FileNotFoundError, ValueError) as e:
            warnings.warn(f"sample grids show raw latent channels: cannot load the VAE {cfg.data.vae!r} ({e})")
            _VAE_CACHE[key] = None
    return _VAE_CACHE[key]


@torch.no_grad()
def generate(cfg: DictConfig, model, objective, labels: List[int], seeds: List[int], device,
             normalizer=None, vae=None) -> torch.Tensor:
    """Images in [-1, 1] (B, C, H, W) from ``model`` for ``labels``, sample i a function of ``seeds[i]``."""
    m, t = cfg.model, cfg.train
    n = len(labels)
    noise_g = per_sample_generators([mix_seed(s, GRID_NOISE_STREAM) for s in seeds], device=device)
    samp_g = per_sample_generators([mix_seed(s, GRID_SAMPLER_STREAM) for s in seeds], device=device)
    noise = randn((n, int(m.in_channels), int(m.input_size), int(m.input_size)), noise_g, device=device)
    y = torch.tensor(labels, device=device, dtype=torch.long)
    cfg_scale = float(t.sample_cfg_scale)
    if cfg_scale != 1.0 and float(m.class_dropout_prob) <= 0:
        cfg_scale = 1.0  # no null class to guide with
    out = objective.sample(model, noise, y, sampler=t.sample_sampler, steps=parse_steps(t.sample_steps),
                           cfg_scale=cfg_scale, generator=samp_g, null_label=int(m.num_classes))
    x = out.x.float()
    if uses_latents(cfg.data):
        dec = _decoder(cfg, vae, device)
        if dec is not None:
            from vca_gen.data.vae import decode

            return decode(dec, x, normalizer if normalizer is not None else float(cfg.data.scale_factor))
        x = x[:, :3]
        return (x / x.flatten(1).abs().amax(1).clamp_min(1e-6)[:, None, None, None]).clamp(-1, 1)
    return x.clamp(-1, 1)


def save_sample_grid(cfg: DictConfig, model, objective, out: Path, device, normalizer=None, vae=None) -> Path:
    """Write the fixed-noise grid of ``model`` to ``out`` (PNG) and return the path."""
    from torchvision.utils import save_image

    n = int(cfg.train.sample_num)
    seeds = [int(cfg.train.sample_seed) + i for i in range(n)]
    was_training = model.training
    model.eval()
    try:
        images = generate(cfg, model, objective, grid_labels(cfg), seeds, device, normalizer, vae)
    finally:
        model.train(was_training)
    nrow = int(cfg.train.sample_nrow) or max(1, math.ceil(math.sqrt(n)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    save_image((images + 1) / 2, tmp, nrow=nrow, padding=2)
    tmp.replace(out)
    return out


def to_uint8_nhwc(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (B, C, H, W) → uint8 (B, H, W, C) on the CPU (the evaluators' format)."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def in_loop_fid(trainer, batch_size: int = 64) -> Optional[float]:
    """FID of ``train.fid_num_samples`` EMA samples (class-balanced labels, fixed seeds) against the
    reference statistics ``train.fid_ref``, via ``vca_gen.metrics.fid_from_uint8``; main process
    only (others return None). The Inception extractor and reference are loaded once."""
    if not trainer.acc.is_main_process:
        return None
    from vca_gen.metrics import InceptionFeatureExtractor, fid_from_uint8, load_reference

    cfg = trainer.cfg
    if getattr(trainer, "_fid_cache", None) is None:
        ref = load_reference(cfg.train.fid_ref)
        trainer._fid_cache = (ref, InceptionFeatureExtractor(mode=ref.mode, device=trainer.device))
    ref, extractor = trainer._fid_cache
    n, nc = int(cfg.train.fid_num_samples), int(cfg.model.num_classes)

    def batches():
        for i0 in range(0, n, batch_size):
            idx = list(range(i0, min(n, i0 + batch_size)))
            with trainer.acc.autocast():
                x = generate(cfg, trainer.ema.model, trainer.objective, [i % nc for i in idx],
                             [FID_SEED_OFFSET + i for i in idx], trainer.device, trainer.normalizer, trainer.vae)
            yield to_uint8_nhwc(x).numpy()

    return float(fid_from_uint8(batches(), ref, extractor=extractor))
