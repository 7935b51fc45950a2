"""From model space to images: the decoder of an experiment and its stand-alone description.

A :class:`DecoderSpec` holds everything decoding needs and nothing else: the VAE (hub id or
folder, subfolder), the latent normalisation (``LatentNormalizer.to_dict()``: the scale factor, or
the per-channel statistics of the training latent store), the image channels, the VAE's spatial
factor and the class names. It is plain JSON, written as ``decoder.json`` into every checkpoint
and export, so a model can be sampled after its run directory and latent store are gone.

:class:`Decoder` applies it: latents (B, c, h, w) → images (B, C, H, W) in [-1, 1]; in pixel space
it only clamps. The VAE is loaded on first use (sampling without decoding never downloads it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vca_gen.data.vae import as_normalizer, decode, load_vae, vae_downsample_factor
from vca_gen.errors import UserError
from vca_gen.utils.io import atomic_write_json

SPEC_FILE = "decoder.json"


class DecoderError(UserError):
    """A decoder description is missing, unreadable, or does not fit the model."""


@dataclass
class DecoderSpec:
    vae: str | None  # hub id or folder; None = pixel space (no decoding)
    subfolder: str | None  # e.g. "vae" inside a pipeline folder
    normalizer: dict | None  # LatentNormalizer.to_dict(); None in pixel space
    image_channels: int = 3  # channels of the decoded images (Animal-MNIST pixels: 1)
    downsample: int = 1  # image side / latent side (sd-vae: 8; pixels: 1)
    class_names: list[str] | None = None

    @property
    def latent(self) -> bool:
        return self.vae is not None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<decoder>") -> DecoderSpec:
        try:
            return cls(**data)
        except TypeError as e:
            raise DecoderError(
                f"{source}: not a decoder description ({e}); expected keys {', '.join(cls.__dataclass_fields__)}"
            ) from None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SPEC_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> DecoderSpec | None:
        """The spec saved in ``directory``, or ``None`` when it has none (checkpoints of older versions)."""
        path = Path(directory) / SPEC_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DecoderError(f"{path}: unreadable decoder description ({e})") from None
        return cls.from_dict(data, str(path))


class Decoder:
    """Latents → images in [-1, 1] as the spec says (``vae`` overrides the spec's VAE id)."""

    def __init__(self, spec: DecoderSpec, device: Any = "cpu", vae: str | None = None, batch_size: int = 16):
        if vae is not None and not spec.latent:
            raise DecoderError(f"--vae {vae}: the model works in pixel space, there is nothing to decode")
        self.spec = spec
        self.vae_id = vae if vae is not None else spec.vae
        self.subfolder = spec.subfolder if vae is None else None
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self._vae: torch.nn.Module | None = None

    @property
    def vae(self) -> torch.nn.Module | None:
        """The VAE module (loaded on first access), ``None`` in pixel space."""
        if self._vae is None and self.spec.latent:
            assert self.vae_id is not None  # spec.latent: spec.vae is set, so is vae_id
            self._vae = load_vae(self.vae_id, subfolder=self.subfolder, device=self.device)
        return self._vae

    @property
    def downsample(self) -> int:
        """Image side / latent side: the VAE's own factor (which ``--vae`` may change), 1 in pixel space."""
        return vae_downsample_factor(self.vae) if self.spec.latent else int(self.spec.downsample)

    def image_shape(self, latent_shape: tuple) -> tuple:
        """(H, W, 3) of the uint8 samples for latents of shape (c, h, w) (loads the VAE in latent space)."""
        _, h, w = latent_shape
        f = self.downsample
        return int(h) * f, int(w) * f, 3  # uint8 samples are RGB (one channel is replicated)

    def check_channels(self, latent_channels: int) -> None:
        if not self.spec.latent:
            return
        vae: Any = self.vae  # a diffusers AutoencoderKL (its config is untyped)
        if int(vae.config.latent_channels) != int(latent_channels):
            raise DecoderError(
                f"the VAE {self.vae_id} has {vae.config.latent_channels} latent channels, the model {latent_channels}"
            )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if not self.spec.latent:
            return x.clamp(-1, 1)
        normalizer = self.spec.normalizer
        if normalizer is None:
            raise DecoderError(f"the decoder description of VAE {self.vae_id} has no latent normalizer")
        return decode(self.vae, x, as_normalizer(normalizer), batch_size=self.batch_size)


__all__ = ["DecoderSpec", "Decoder", "DecoderError", "SPEC_FILE"]
