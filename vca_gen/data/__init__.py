"""Data layer: config, deterministic sampler, image folders, Animal-MNIST, VAE, latent store.

See the module docstrings: ``sampler`` (data-order and per-item randomness contract), ``images``
(ADM crop, unreadable-image policy), ``animal_mnist``, ``vae``, ``latents`` (store format),
``extract`` (extraction CLI), ``factory`` (``build_dataset``), ``bench`` (loader throughput).
"""

from vca_gen.data.config import (
    DataConfig,
    image_channels,
    model_in_channels,
    model_input_size,
    uses_latents,
    validate_data_config,
)

__all__ = [
    "DataConfig",
    "image_channels",
    "model_in_channels",
    "model_input_size",
    "uses_latents",
    "validate_data_config",
    "build_dataset",
    "build_loader",
    "latent_normalizer",
]


def __getattr__(name):  # lazy: keep `import vca_gen.data` light (no diffusers / PIL import)
    if name in ("build_dataset", "build_loader", "latent_normalizer"):
        from vca_gen.data import factory

        return getattr(factory, name)
    raise AttributeError(name)
