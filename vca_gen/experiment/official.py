"""The experiment an official DiT / SiT checkpoint belongs to, with its paper's FID protocol.

Users' first FID benchmark is usually ``DiT-XL-2-256x256.pt`` or SiT's ``SiT-XL-2-256x256.pt``.
:func:`official_experiment` builds the validated experiment config those weights need, so that
sampling and evaluation run the protocol of the paper and nothing else has to be typed:

* model: the registry name, ``attention: mhsa``, ``learn_sigma`` / ``num_classes`` as released;
* DiT family: ``objective.kind: diffusion``, linear β 1e-4 → 0.02 over 1000 steps, ancestral
  DDPM respaced to 250 steps (the DiT paper);
* SiT family: ``objective.kind: flow``, linear path, velocity prediction, SDE Euler–Maruyama
  sampler, 250 steps, diffusion form ``sigma``, last step ``mean`` of size 0.04 (the SiT paper's
  no-guidance FIDs);
* data: ``kind: latents`` at ``image_size``, decoded with ``vae`` (DiT's FIDs were decoded with
  ``stabilityai/sd-vae-ft-mse``), scale factor 0.18215, and a placeholder ``path`` (there is no
  training data behind an official checkpoint).

:func:`protocol_description` summarises any validated experiment's sampling protocol for a run
summary.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from vca_gen.errors import ConfigError
from vca_gen.experiment.schema import config_from_dict

OFFICIAL_VAE = "stabilityai/sd-vae-ft-mse"
OFFICIAL_SCALE_FACTOR = 0.18215
NO_DATA_PATH = "<official checkpoint: no training data>"

# The DiT paper's protocol (improved-DDPM's create_gaussian_diffusion as DiT's sample.py calls it).
DIT_PROTOCOL: dict[str, Any] = {
    "num_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "sampler": "ddpm",
    "sample_steps": "250",
}
# The SiT paper's protocol (sample.py SDE mode with its defaults).
SIT_PROTOCOL: dict[str, Any] = {
    "path": "linear",
    "prediction": "velocity",
    "loss_weight": "none",
    "sampler": "sde",
    "sample_steps": 250,
    "diffusion_form": "sigma",
    "diffusion_norm": 1.0,
    "last_step": "mean",
    "last_step_size": 0.04,
}


def _family(model_name: str) -> str:
    from vca_gen.models import parse_model_name

    try:
        return parse_model_name(model_name)[0]
    except ValueError as e:
        raise ConfigError(f"official_experiment: {e}") from None


def official_experiment(
    model_name: str,
    image_size: int = 256,
    num_classes: int = 1000,
    learn_sigma: bool = True,
    vae: str = OFFICIAL_VAE,
) -> DictConfig:
    """Validated experiment for an official checkpoint of ``model_name`` (e.g. ``"DiT-XL/2"``, ``"SiT-XL/2"``).

    The family prefix picks the objective and its paper's sampling protocol (module docstring).
    ``image_size`` is in pixels (latents are ``image_size // 8``); ``vae`` is the decoder used to
    turn samples into images. Raises :class:`~vca_gen.experiment.schema.ConfigError` for an unknown
    model name or a size the model cannot take.
    """
    family = _family(model_name)
    if family == "DiT":
        objective: dict[str, Any] = {"kind": "diffusion", "diffusion": dict(DIT_PROTOCOL)}
    else:
        objective = {"kind": "flow", "flow": dict(SIT_PROTOCOL)}
    data = {
        "kind": "latents",
        "path": NO_DATA_PATH,
        "image_size": int(image_size),
        "vae": vae,
        "latent_norm": "scale",
        "scale_factor": OFFICIAL_SCALE_FACTOR,
        "latent_channels": 4,
        "vae_downsample": 8,
    }
    exp = {
        "name": f"official-{model_name.replace('/', '-')}-{int(image_size)}",
        "model": {
            "name": model_name,
            "attention": "mhsa",
            "learn_sigma": bool(learn_sigma),
            "num_classes": int(num_classes),
            "class_dropout_prob": 0.1,  # > 0: the label table has the null class the checkpoints have
        },
        "objective": objective,
        "data": data,
    }
    return config_from_dict(exp, source=f"official experiment for {model_name}")


def _steps(value: Any) -> Any:
    text = str(value)
    return int(text) if text.isdigit() else text


def protocol_description(exp: DictConfig) -> dict[str, Any]:
    """The sampling protocol of a validated experiment, for a run summary.

    ``{"family", "objective", "sampler", "steps", "last_step", "last_step_size", "decoder"}``;
    ``steps`` is an int when it is a plain count (``"250"`` → 250), else the spacing string
    (e.g. ``"ddim50"``); ``last_step`` / ``last_step_size`` are ``None`` unless the flow SDE
    sampler is used; ``decoder`` is the VAE (``None`` in pixel space).
    """
    name = str(exp.model.name)
    family = name.split("-", 1)[0]
    kind = str(exp.objective.kind)
    if kind == "diffusion":
        d = exp.objective.diffusion
        sampler, steps, last_step, last_size = str(d.sampler), _steps(d.sample_steps), None, None
    else:
        fl = exp.objective.flow
        sampler, steps = str(fl.sampler), _steps(fl.sample_steps)
        sde = sampler == "sde"
        last_step = str(fl.last_step) if sde else None
        last_size = float(fl.last_step_size) if sde else None
    vae = exp.data.vae
    return {
        "family": family,
        "objective": kind,
        "sampler": sampler,
        "steps": steps,
        "last_step": last_step,
        "last_step_size": last_size,
        "decoder": None if vae is None else str(vae),
    }


__all__ = [
    "official_experiment",
    "protocol_description",
    "OFFICIAL_VAE",
    "NO_DATA_PATH",
    "DIT_PROTOCOL",
    "SIT_PROTOCOL",
]
