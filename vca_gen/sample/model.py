"""From a checkpoint to ``make_images``: the one generation path of the project.

:func:`load` reads a checkpoint, run directory or export of this project (or, with
``model_name``, an official DiT / SiT file) into a :class:`Loaded`: the model, the experiment it
came from, the experiment's objective with its sampling protocol, and the decoder described by the
checkpoint's ``decoder.json``. :func:`image_maker` turns model + objective + decoder into the
engine's ``make_images(indices, labels, generators)``; ``sample.py``, the training preview grids,
in-loop FID and the demo all generate through it, so the same seed gives the same image everywhere.

Sampling defaults are the experiment's objective protocol (DiT: DDPM 250 respaced steps; SiT: SDE
Euler–Maruyama 250 steps, diffusion form "sigma", last step "Mean" of 0.04, unless the experiment
chose otherwise); training preview settings (``train.grid``) never leak into ``sample.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ..data.decoder import Decoder, DecoderSpec
from ..experiment.build import build_objective_for, decoder_spec
from ..experiment.checkpoint import load_for_sampling
from ..experiment.official import official_experiment
from ..models.official import read_checkpoint_file
from ..objectives import Objective
from ..objectives.base import parse_steps
from ..utils import rng
from .files import to_uint8
from .plan import SamplingError

PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast (+ TF32) on CUDA, fp32 elsewhere
MakeImages = Callable[[Sequence[int], torch.Tensor, list], "tuple[np.ndarray, int]"]


@dataclass
class Loaded:
    """A model ready to sample: model in eval mode on its device and what surrounds it."""

    model: torch.nn.Module
    experiment: DictConfig
    objective: Objective
    decoder: Decoder
    source: dict = field(default_factory=dict)  # what was loaded: kind, path, weights (ema/live), ...

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        m: Any = self.model  # nn.Module attributes read as ints
        return int(m.in_channels), int(m.input_size), int(m.input_size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.decoder.image_shape(self.latent_shape)

    @property
    def class_names(self) -> Sequence[str] | None:
        return self.decoder.spec.class_names

    @property
    def vae_id(self) -> str | None:
        return self.decoder.vae_id if self.decoder.spec.latent else None


def _load_official(path: Path, model_name: str, use_ema: bool, image_size: int, num_classes: int, vae: str | None):
    from ..experiment.build import build_model
    from ..models.official import diagnose_mismatch, infer_learn_sigma
    from ..models.registry import parse_model_name

    state, info = read_checkpoint_file(path, prefer="ema" if use_ema else "model")
    _, _, patch = parse_model_name(model_name)
    learn_sigma = infer_learn_sigma(state, patch, 4)
    exp = official_experiment(
        model_name,
        image_size=image_size,
        num_classes=num_classes,
        learn_sigma=bool(learn_sigma) if learn_sigma is not None else True,
        **({"vae": vae} if vae is not None else {}),
    )
    model = build_model(exp)
    expected = model.state_dict()
    if set(expected) != set(state) or any(tuple(expected[k].shape) != tuple(state[k].shape) for k in expected):
        raise SamplingError(
            f"--ckpt {path} does not fit --model {model_name} at {image_size} px: "
            + diagnose_mismatch(
                state, model_name, int(exp.model.input_size), 4, num_classes, bool(exp.model.learn_sigma)
            )
        )
    model.load_state_dict(state, strict=True)
    # "weights": the entry used ("ema" / "model" of a training dict, "state_dict" for a plain file)
    return model, exp, decoder_spec(exp), {"kind": "official", "path": str(path), **info, "weights": info.entry}


def load(
    ckpt: str | Path,
    use_ema: bool = True,
    device: Any = "cpu",
    vae: str | None = None,
    model_name: str | None = None,
    image_size: int = 256,
    num_classes: int = 1000,
) -> Loaded:
    """Load for sampling. ``ckpt``: an export, a training checkpoint ``step_XXXXXXXX/``, a run directory
    (its latest checkpoint), or with ``model_name`` an official DiT/SiT ``.pt`` (plain state dict or a
    ``{"model", "ema", "opt", "args"}`` training dict). ``vae`` overrides the decoder's VAE."""
    p = Path(ckpt)
    if not p.exists():
        raise SamplingError(
            f"--ckpt {ckpt} does not exist (expected an export directory, a training checkpoint "
            f"step_XXXXXXXX/, a run directory, or an official .pt file with --model)"
        )
    if p.is_file():
        if model_name is None:
            raise SamplingError(
                f"--ckpt {ckpt} is a file: official DiT/SiT checkpoints need --model (e.g. --model "
                f"DiT-XL/2); this project's checkpoints and exports are directories"
            )
        model, exp, spec, source = _load_official(p, model_name, use_ema, image_size, num_classes, vae)
    else:
        if model_name is not None:
            raise SamplingError(
                f"--model {model_name} is only for official .pt files; {ckpt} is a directory of this "
                f"project, which records its own model"
            )
        model, exp, spec, source = load_for_sampling(p, use_ema=use_ema)
        spec = spec if spec is not None else decoder_spec(exp)
    # Frozen by ``torch.no_grad()`` around sampling (image_maker), not by ``requires_grad_(False)``:
    # autocast caches its low-precision copy of a weight for the whole autocast region only for fp32
    # leaf tensors that require grad, and not under ``torch.inference_mode()`` (checked with the
    # profiler: a frozen or inference-mode model re-casts every weight at every one of the 250
    # sampler steps). So the parameters keep requires_grad=True (``load_for_sampling`` freezes them:
    # undone here) and no graph is ever recorded because every call runs under no_grad.
    model = model.to(device).eval()
    for prm in model.parameters():
        prm.requires_grad_(True)
    objective = build_objective_for(exp)
    objective.check_model(model)
    decoder = Decoder(spec, device=device, vae=vae)
    if spec.latent and decoder.vae_id in (None, "none"):
        raise SamplingError("the model works in latent space; it needs a VAE decoder (--vae ID_OR_FOLDER)")
    return Loaded(model, exp, objective, decoder, source)


def resolve_precision(precision: str, device: Any) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA, ``"fp32"`` elsewhere; ``"fp32"`` / ``"bf16"`` as given."""
    if precision not in PRECISIONS:
        raise SamplingError(f"--precision {precision!r} is not valid; accepted: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def configure_tf32(device: Any, precision: str) -> bool:
    """On CUDA: TF32 matmuls/convolutions on under bf16 (the ops autocast leaves in fp32 run on
    tensor cores too), off under fp32 (exact protocol runs). Returns whether TF32 is on."""
    if torch.device(device).type != "cuda":
        return False
    on = resolve_precision(precision, device) == "bf16"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return on


def autocast(device: torch.device, precision: str):
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def check_sampler_args(
    loaded: Loaded, sampler, steps, cfg_scale, guide_channels, options: dict, cfg_interval=None
) -> str:
    """Validate sampler, steps, options and guidance before anything is written; returns the sampler name."""
    net: Any = loaded.model
    try:
        return loaded.objective.check_sample_args(
            sampler,
            steps,
            cfg_scale,
            guide_channels,
            options,
            loaded.latent_shape[0],
            int(net.num_classes),
            cfg_interval=cfg_interval,
        )
    except ValueError as e:
        raise SamplingError(str(e)) from None


class ImageMaker:
    """``make_images(indices, labels, generators) -> (uint8 (B, H, W, 3), nfe)`` (the engine's
    ``MakeImages``), counting over its calls ``images``, ``evaluations`` (sum of nfe per image) and
    ``guided`` (sum of the evaluations per image that ran the doubled cond + uncond batch)."""

    def __init__(self, fn: Callable[[Sequence[int], torch.Tensor, list], tuple[np.ndarray, int, int]]):
        self.fn = fn
        self.images = self.evaluations = self.guided = 0

    def __call__(self, indices, labels, generators) -> tuple[np.ndarray, int]:
        images, nfe, guided = self.fn(indices, labels, generators)
        self.images += len(images)
        self.evaluations += nfe * len(images)
        self.guided += guided * len(images)
        return images, nfe

    @property
    def guided_per_image(self) -> float | None:
        return self.guided / self.images if self.images else None


def image_maker(
    model: torch.nn.Module,
    objective: Objective,
    decoder: Decoder,
    latent_shape: tuple,
    device: Any,
    sampler=None,
    steps=None,
    cfg_scale: float = 1.0,
    guide_channels: int | None = None,
    options: dict | None = None,
    precision: str = "fp32",
    cfg_interval: Sequence[float] | None = None,
) -> ImageMaker:
    """``make_images(indices, labels, generators) -> (uint8 (B, H, W, 3), nfe)``: noise from
    ``generators`` (one per sample), the objective's sampler (guided only inside ``cfg_interval``
    when given), then the decoder."""
    device = torch.device(device)
    net: Any = model
    options, null = dict(options or {}), int(net.num_classes)
    steps = parse_steps(steps)
    interval = None if cfg_interval is None else list(cfg_interval)

    @torch.no_grad()  # not inference_mode: it would switch off autocast's weight cache (see load)
    def make_images(indices, labels, generators):
        noise = rng.randn((len(indices), *latent_shape), generators, device=device)
        with autocast(device, precision):
            out = objective.sample(
                model,
                noise,
                labels.to(device),
                sampler=sampler,
                steps=steps,
                cfg_scale=cfg_scale,
                guide_channels=guide_channels,
                generator=generators,
                null_label=null,
                cfg_interval=interval,
                **options,
            )
        return to_uint8(decoder(out.x.float())), int(out.nfe), int(out.guided)

    return ImageMaker(make_images)


def loaded_image_maker(loaded: Loaded, device: Any, **kwargs) -> ImageMaker:
    """:func:`image_maker` for a :class:`Loaded` checkpoint."""
    return image_maker(loaded.model, loaded.objective, loaded.decoder, loaded.latent_shape, device, **kwargs)


def generate(
    make_images: MakeImages, labels: Sequence[int], seeds: Sequence[int], device: Any, batch_size: int = 64
) -> np.ndarray:
    """uint8 images for explicit labels and seeds (image j from a generator seeded ``seeds[j]``), in
    batches; the preview grids and in-loop FID use this with the engine's seeding rule."""
    out = []
    for i0 in range(0, len(labels), batch_size):
        idx = list(range(i0, min(len(labels), i0 + batch_size)))
        gens = rng.per_sample_generators([int(seeds[i]) for i in idx], device=device)
        y = torch.tensor([int(labels[i]) for i in idx], dtype=torch.long, device=device)
        images, _ = make_images(idx, y, gens)
        out.append(images)
    return np.concatenate(out) if out else np.zeros((0, 1, 1, 3), np.uint8)


__all__ = [
    "Loaded",
    "load",
    "autocast",
    "resolve_precision",
    "configure_tf32",
    "check_sampler_args",
    "image_maker",
    "ImageMaker",
    "loaded_image_maker",
    "generate",
    "parse_steps",
    "PRECISIONS",
    "DecoderSpec",
]
