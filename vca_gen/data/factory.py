"""``build_dataset(cfg)``: a :class:`~vca_gen.data.config.DataConfig` -> dataset, plus the latent
normaliser and the resumable loader for training.

* ``latents``      -> :class:`~vca_gen.data.latents.LatentDataset`, checked against the config
  (resolution, latent channels, latent size, VAE id when ``cfg.vae`` is set) and normalised as the
  config says (``scale_factor`` or the store's per-channel statistics).
* ``images``       -> :class:`~vca_gen.data.images.ImageFolderDataset` (encode on the fly with
  :func:`~vca_gen.data.vae.encode_latents` when ``cfg.vae`` is set).
* ``animal_mnist`` -> :class:`~vca_gen.data.animal_mnist.AnimalMNIST`.
"""

from __future__ import annotations

from typing import cast

import torch

from vca_gen.data.animal_mnist import AnimalMNIST
from vca_gen.data.config import DataConfig, model_input_size, validate_data_config
from vca_gen.data.images import ImageFolderDataset
from vca_gen.data.latents import LatentDataset, LatentStore
from vca_gen.data.sampler import ResumableLoader
from vca_gen.data.vae import LatentNormalizer


def latent_normalizer(cfg: DataConfig, store: LatentStore | None = None) -> LatentNormalizer | None:
    """The latent normalisation of this data config (None in pixel space).

    Per-channel statistics come from the latent store (``cfg.kind == "latents"``)."""
    if cfg.kind != "latents" and cfg.vae is None:
        return None
    if cfg.latent_norm == "scale":
        return LatentNormalizer("scale", float(cfg.scale_factor))
    if cfg.kind != "latents":
        raise ValueError(
            "data.latent_norm='per_channel' needs the statistics of a latent store (data.kind='latents'); "
            "for on-the-fly encoding use data.latent_norm='scale'"
        )
    store = store or LatentStore(cast(str, cfg.path), verify="size")  # (validated: latents have a path)
    return store.channel_stats_normalizer()


def build_dataset(cfg: DataConfig):
    """The training dataset for ``cfg`` (items ``(x (C, H, W) float32, y int64)``; ``set_epoch``)."""
    validate_data_config(cfg)
    if cfg.kind == "latents":
        ds = LatentDataset(cast(str, cfg.path), random_flip=cfg.random_flip, seed=cfg.seed, verify=cfg.verify)
        ds.check_compatible(
            image_size=cfg.image_size, channels=cfg.latent_channels, input_size=model_input_size(cfg), vae=cfg.vae
        )
        ds.normalizer = cast(LatentNormalizer, latent_normalizer(cfg, ds.store))  # (not None for latents)
        return ds
    if cfg.kind == "images":
        return ImageFolderDataset(
            cast(str, cfg.path), cfg.image_size, random_flip=cfg.random_flip, seed=cfg.seed, strict=cfg.strict
        )
    return AnimalMNIST(cfg.path, split=cfg.split, image_size=cfg.image_size, random_flip=cfg.random_flip, seed=cfg.seed)


def build_loader(
    cfg: DataConfig,
    dataset,
    global_batch_size: int,
    num_processes: int = 1,
    process_index: int = 0,
    device: torch.device | str | None = None,
) -> ResumableLoader:
    """This process's :class:`~vca_gen.data.sampler.ResumableLoader` (order seeded by ``cfg.seed``)."""
    return ResumableLoader(
        dataset,
        global_batch_size,
        num_replicas=num_processes,
        rank=process_index,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        device=device,
    )
