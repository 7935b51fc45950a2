"""From a checkpoint to ``make_images``: model, objective with the FID-protocol sampler, VAE.

Sampling defaults are the papers' FID protocols, not the training config's in-loop preview
settings: the ``objective`` section's sampler fields (``sampler``, ``sample_steps``, ``ddim_eta``,
``dpm_solver_order``; flow: ``diffusion_form``, ``diffusion_norm``, ``last_step``,
``last_step_size``, ``atol``, ``rtol``, ``ode_method``) are reset to the dataclass defaults (DiT:
DDPM 250 respaced steps; SiT: SDE Euler-Maruyama 250 steps, diffusion form "sigma", last step
"Mean" of size 0.04). Everything that defines the model's process (schedule, path, prediction,
eps) comes from the checkpoint's config.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..objectives import DiffusionConfig, FlowConfig, Objective, build_objective
from ..utils import rng
from .files import to_uint8
from .plan import SamplingError

SAMPLING_FIELDS = {
    "diffusion": ("sampler", "sample_steps", "ddim_eta", "dpm_solver_order"),
    "flow": ("sampler", "sample_steps", "diffusion_form", "diffusion_norm", "last_step", "last_step_size",
             "atol", "rtol", "ode_method"),
}
PRECISIONS = ("fp32", "bf16")


def protocol_objective(objective_cfg: Any) -> Objective:
    """The checkpoint's objective with its sampler settings reset to the FID-protocol defaults."""
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.to_container(objective_cfg, resolve=True) if isinstance(objective_cfg, DictConfig) else \
        dataclasses.asdict(objective_cfg) if dataclasses.is_dataclass(objective_cfg) else dict(objective_cfg or {})
    kind = str(cfg.get("kind", "diffusion")).lower()
    defaults = {"diffusion": DiffusionConfig(), "flow": FlowConfig()}.get(kind)
    if defaults is not None:
        sub = dict(cfg.get(kind) or {})
        sub.update({f: getattr(defaults, f) for f in SAMPLING_FIELDS[kind]})
        cfg[kind] = sub
    return build_objective(cfg)


@dataclass
class Loaded:
    """A checkpoint ready to sample: model in eval mode on ``device`` and what surrounds it."""

    model: torch.nn.Module
    cfg: Any  # the experiment config (DictConfig)
    objective: Objective
    vae: Optional[torch.nn.Module]
    vae_id: Optional[str]
    normalizer: Any
    class_names: Optional[Sequence[str]]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        m = self.model
        return int(m.in_channels), int(m.input_size), int(m.input_size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        from ..data.vae import vae_downsample_factor

        side = int(self.model.input_size) * (vae_downsample_factor(self.vae) if self.vae is not None else 1)
        return side, side, 3


def _normalizer(data_cfg):
    from ..data.vae import LatentNormalizer

    if data_cfg.get("latent_norm", "scale") == "scale":
        return LatentNormalizer("scale", float(data_cfg.scale_factor))
    from ..data.latents import LatentStore

    if not data_cfg.get("path"):
        raise SamplingError("the checkpoint was trained with per-channel latent normalisation but its config has no "
                            "data.path (latent store) to read the statistics from")
    return LatentStore(data_cfg.path, verify="size").channel_stats_normalizer()


def _class_names(data_cfg) -> Optional[Sequence[str]]:
    if data_cfg.get("kind") == "animal_mnist":
        from ..data.animal_mnist import CLASSES

        return CLASSES
    return None


def load(ckpt: str | Path, use_ema: bool = True, device: Any = "cpu", vae: Optional[str] = None) -> Loaded:
    """Load a checkpoint / export for sampling; ``vae`` overrides the config's ``data.vae``."""
    from ..experiment.checkpoint import load_for_sampling

    if not Path(ckpt).exists():
        raise SamplingError(f"--ckpt {ckpt} does not exist (expected an export directory, a training checkpoint "
                            f"step_XXXXXXXX/ or a run directory)")
    model, cfg = load_for_sampling(ckpt, use_ema=use_ema)
    model = model.to(device).eval().requires_grad_(False)
    objective = protocol_objective(cfg.objective)
    objective.check_model(model)
    data = cfg.data
    vae_id = vae if vae is not None else data.get("vae")
    vae_module, norm = None, None
    latent = data.get("kind") == "latents" or data.get("vae") is not None
    if latent:
        from ..data.vae import load_vae

        if vae_id in (None, "none"):
            raise SamplingError("the model works in latent space; it needs a VAE decoder (--vae ID_OR_FOLDER)")
        vae_module = load_vae(vae_id, subfolder=data.get("vae_subfolder") if vae is None else None, device=device)
        norm = _normalizer(data)
        if int(vae_module.config.latent_channels) != int(model.in_channels):
            raise SamplingError(f"--vae {vae_id} has {vae_module.config.latent_channels} latent channels, the model "
                                f"{model.in_channels}")
    elif vae not in (None, "none"):
        raise SamplingError(f"--vae {vae}: the model works in pixel space (data.vae is null), there is nothing to decode")
    return Loaded(model, cfg, objective, vae_module, vae_id if latent else None, norm, _class_names(data))


def parse_steps(steps: Optional[str]):
    """``--steps``: an int ("250") or a respacing string ("ddim50", "10,10,10") kept as a string."""
    if steps is None:
        return None
    s = str(steps).strip()
    return int(s) if s.isdigit() else s


def autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise SamplingError(f"--precision {precision!r} is not valid; accepted: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class _Probe(Exception):
    pass


def check_sampler_args(loaded: Loaded, sampler, steps, cfg_scale, guide_channels, options: dict) -> str:
    """Validate sampler, steps and options before anything is written (no model evaluation).

    Runs ``objective.sample`` with a model function that stops at its first call, so every check
    the objective makes up front raises here. Returns the resolved sampler name.
    """
    def stop(*_):
        raise _Probe

    c, h, w = loaded.latent_shape
    try:
        name = loaded.objective.check_sampler(sampler)
        loaded.objective.sample(stop, torch.zeros(1, c, h, w), torch.zeros(1, dtype=torch.long), sampler=sampler,
                                steps=steps, cfg_scale=cfg_scale, guide_channels=guide_channels,
                                generator=rng.per_sample_generators([0]), null_label=int(loaded.model.num_classes),
                                **options)
    except _Probe:
        return name
    raise SamplingError("the sampler finished without calling the model")  # pragma: no cover


def image_maker(loaded: Loaded, device: torch.device, sampler=None, steps=None, cfg_scale: float = 1.0,
                guide_channels: Optional[int] = None, options: Optional[dict] = None, precision: str = "fp32",
                vae_batch_size: int = 16):
    """``make_images(indices, labels, generators) -> (uint8 (B, H, W, 3), nfe)`` for the engine."""
    from ..data.vae import decode

    model, objective, options = loaded.model, loaded.objective, dict(options or {})
    null = int(model.num_classes)

    @torch.no_grad()
    def make_images(indices, labels, generators):
        noise = rng.randn((len(indices), *loaded.latent_shape), generators, device=device)
        with autocast(device, precision):
            out = objective.sample(model, noise, labels, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                                   guide_channels=guide_channels, generator=generators, null_label=null, **options)
        x = out.x.float()
        if loaded.vae is not None:
            x = decode(loaded.vae, x, loaded.normalizer, batch_size=vae_batch_size)
        return to_uint8(x), int(out.nfe)

    return make_images
