"""Data layer: config, deterministic sampler, image folders, Animal-MNIST, VAE, latent store."""
from vca_gen.data.config import DataConfig, model_in_channels, model_input_size, validate_data_config

__all__ = ["DataConfig", "model_in_channels", "model_input_size", "validate_data_config"]
