"""The image <-> latent bridge: loading a diffusers ``AutoencoderKL``, posterior moments, decoding,
and latent normalisation.

* :func:`load_vae` – hub id (default ``stabilityai/sd-vae-ft-ema``) or local folder; offline, a
  missing model is a clear error telling how to provide it. Honours the config's ``force_upcast``
  (diffusers: a VAE that overflows in fp16 says so): asked for fp16, such a VAE is kept in fp32.
* :func:`encode_moments` – posterior ``(mean, std)`` of images in [-1, 1], (B, C, H, W) ->
  2 x (B, c, H/f, W/f), float32. 1-channel images are replicated to the VAE's input channels.
* :class:`LatentNormalizer` – model-space latents from VAE latents: ``"scale"`` (``z * s``, DiT's
  0.18215) or ``"per_channel"`` (``(z - mean_c) / std_c``, statistics stored in a latent store's
  manifest). :meth:`~LatentNormalizer.denormalize` inverts it before decoding.
* :func:`encode_latents` – on-the-fly training input: ``normalize(mean + std * eps)``.
* :func:`decode` – model-space latents -> images in [-1, 1], in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vca_gen.data.config import DEFAULT_SCALE_FACTOR, DEFAULT_VAE, LATENT_NORMS
from vca_gen.errors import UserError
from vca_gen.utils.rng import GeneratorSpec, randn

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; accepted: {sorted(DTYPES)}")
    return DTYPES[dtype]


class VAELoadError(UserError, OSError):
    """The VAE cannot be loaded from the given hub id or folder."""


def needs_upcast(config, dtype: str | torch.dtype) -> bool:
    """True when a VAE with ``config`` must run in fp32 although ``dtype`` is asked: fp16 and the
    diffusers config flag ``force_upcast`` (``AutoencoderKL``'s default is true)."""
    return parse_dtype(dtype) == torch.float16 and bool(getattr(config, "force_upcast", False))


def upcast_if_forced(vae) -> torch.dtype:
    """The dtype ``vae`` computes in: an fp16 VAE whose config sets ``force_upcast`` is moved to
    fp32 in place first (as diffusers pipelines' ``upcast_vae`` does). :func:`load_vae` never
    returns such a VAE; this covers VAEs loaded elsewhere."""
    _, dtype = _vae_device_dtype(vae)
    if needs_upcast(vae.config, dtype):
        vae.to(torch.float32)
        return torch.float32
    return dtype


def load_vae(
    id_or_path: str = DEFAULT_VAE,
    subfolder: str | None = None,
    dtype: str | torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
):
    """An ``AutoencoderKL`` in eval mode, frozen, from a hub id or a local folder.

    ``dtype`` fp16 with a config that sets ``force_upcast`` loads fp32 weights instead (loading in
    fp16 and casting up would lose their precision); check the returned model's parameter dtype.
    """
    from diffusers import AutoencoderKL

    local = Path(id_or_path).expanduser()
    is_path_like = str(id_or_path).startswith((".", "/", "~")) or str(id_or_path).count("/") > 1
    if (local.exists() or is_path_like) and not local.is_dir():
        raise VAELoadError(
            f"VAE folder {local} is not an existing folder (expected a diffusers AutoencoderKL folder "
            f"with config.json and diffusion_pytorch_model.safetensors, or a hub id "
            f"like {DEFAULT_VAE!r})"
        )
    source = str(local) if local.is_dir() else id_or_path
    try:
        want = parse_dtype(dtype)
        if want == torch.float16:
            from types import SimpleNamespace

            config = AutoencoderKL.load_config(source, subfolder=subfolder)
            if needs_upcast(SimpleNamespace(**config), want):
                want = torch.float32
        vae = AutoencoderKL.from_pretrained(source, subfolder=subfolder, torch_dtype=want)
    except (OSError, ValueError) as e:
        where = f"{id_or_path}" + (f" (subfolder {subfolder!r})" if subfolder else "")
        raise VAELoadError(
            f"cannot load the VAE {where}: {e}\nWithout network access, pre-download it into the "
            f"Hugging Face cache (`huggingface-cli download {id_or_path}` on a machine with access, "
            f"then copy ~/.cache/huggingface) or pass a local folder saved with "
            f"`AutoencoderKL.save_pretrained`."
        ) from e
    return vae.to(device).eval().requires_grad_(False)


def vae_downsample_factor(vae) -> int:
    """Spatial down-sampling of an ``AutoencoderKL`` (2 ** (number of blocks - 1); sd-vae: 8)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _vae_device_dtype(vae) -> tuple[torch.device, torch.dtype]:
    p = next(vae.parameters())
    return p.device, p.dtype


@torch.no_grad()
def encode_moments(vae, images: torch.Tensor, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of ``images`` (B, C, H, W) in [-1, 1] -> float32 (B, c, H/f, W/f) each."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    want = int(vae.config.in_channels)
    if images.shape[1] == 1 and want != 1:
        images = images.expand(-1, want, -1, -1)  # grayscale -> RGB
    if images.shape[1] != want:
        raise ValueError(f"the VAE takes {want}-channel images, got {images.shape[1]} channels")
    device, _ = _vae_device_dtype(vae)
    dtype = upcast_if_forced(vae)
    means, stds = [], []
    step = batch_size or images.shape[0]
    for chunk in images.split(step):
        post = vae.encode(chunk.to(device=device, dtype=dtype)).latent_dist
        means.append(post.mean.float())
        stds.append(post.std.float())
    return torch.cat(means), torch.cat(stds)


@dataclass
class LatentNormalizer:
    """Map VAE latents ``z`` to model space and back.

    ``kind="scale"``: ``x = z * scale_factor``; ``kind="per_channel"``: ``x = (z - mean[c]) / std[c]``.
    """

    kind: str = "scale"
    scale_factor: float = DEFAULT_SCALE_FACTOR
    mean: Sequence[float] | None = field(default=None)
    std: Sequence[float] | None = field(default=None)

    def __post_init__(self):
        if self.kind not in LATENT_NORMS:
            raise ValueError(f"latent normalisation {self.kind!r} is not valid; accepted: {list(LATENT_NORMS)}")
        if self.kind == "scale" and not self.scale_factor > 0:
            raise ValueError(f"scale_factor must be > 0, got {self.scale_factor}")
        if self.kind == "per_channel":
            if self.mean is None or self.std is None or len(self.mean) != len(self.std):
                raise ValueError("per-channel normalisation needs per-channel mean and std lists of equal length")
            if min(self.std) <= 0:
                raise ValueError(f"per-channel std must be > 0, got {list(self.std)}")

    def _mean_std(self) -> tuple[Sequence[float], Sequence[float]]:
        if self.mean is None or self.std is None:  # (excluded by __post_init__ for "per_channel")
            raise ValueError("per-channel normalisation needs per-channel mean and std lists")
        return self.mean, self.std

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = z.shape[-3]
        mean, std = self._mean_std()
        if len(mean) != c:
            raise ValueError(f"per-channel statistics are for {len(mean)} channels, latents have {c}")
        shape = (c, 1, 1)
        return (
            torch.tensor(mean, dtype=z.dtype, device=z.device).view(shape),
            torch.tensor(std, dtype=z.dtype, device=z.device).view(shape),
        )

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents (..., C, h, w) -> model space."""
        if self.kind == "scale":
            return z * self.scale_factor
        m, s = self._stats(z)
        return (z - m) / s

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model space (..., C, h, w) -> VAE latents."""
        if self.kind == "scale":
            return x / self.scale_factor
        m, s = self._stats(x)
        return x * s + m

    def to_dict(self) -> dict:
        if self.kind == "scale":
            return {"kind": "scale", "scale_factor": float(self.scale_factor)}
        mean, std = self._mean_std()
        return {"kind": "per_channel", "mean": [float(v) for v in mean], "std": [float(v) for v in std]}

    @classmethod
    def from_dict(cls, d: dict) -> LatentNormalizer:
        return cls(**d)


def as_normalizer(norm: LatentNormalizer | float | dict) -> LatentNormalizer:
    """Accept a normaliser, a plain scale factor, or a manifest ``normalization`` dict."""
    if isinstance(norm, LatentNormalizer):
        return norm
    if isinstance(norm, dict):
        return LatentNormalizer.from_dict(norm)
    return LatentNormalizer("scale", float(norm))


@torch.no_grad()
def encode_latents(
    vae,
    images: torch.Tensor,
    normalizer: LatentNormalizer | float = DEFAULT_SCALE_FACTOR,
    generator: GeneratorSpec = None,
) -> torch.Tensor:
    """Training input from images: ``normalize(mean + std * eps)``, float32 (B, c, h, w) on the VAE device.

    ``generator`` is a generator spec (:mod:`vca_gen.utils.rng`); per-sample generators make each
    draw independent of the batch it is in.
    """
    mean, std = encode_moments(vae, images)
    eps = randn(mean.shape, generator, device=mean.device, dtype=mean.dtype)
    return as_normalizer(normalizer).normalize(mean + std * eps)


@torch.no_grad()
def decode(
    vae, latents: torch.Tensor, normalizer: LatentNormalizer | float = DEFAULT_SCALE_FACTOR, batch_size: int = 16
) -> torch.Tensor:
    """Model-space latents (B, c, h, w) -> images float32 (B, C, H, W) in [-1, 1] (on the latents' device)."""
    if latents.ndim != 4:
        raise ValueError(f"expected latents of shape (B, C, h, w), got {tuple(latents.shape)}")
    if latents.shape[1] != vae.config.latent_channels:
        raise ValueError(f"the VAE has {vae.config.latent_channels} latent channels, got {latents.shape[1]}")
    norm = as_normalizer(normalizer)
    device, _ = _vae_device_dtype(vae)
    dtype = upcast_if_forced(vae)
    out = []
    for chunk in latents.split(batch_size):
        z = norm.denormalize(chunk.float()).to(device=device, dtype=dtype)
        out.append(vae.decode(z).sample.float().clamp(-1, 1).to(latents.device))
    return torch.cat(out)
