"""Small pieces of the training set-up: precision choice, data building and checks, hparams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vca_gen.experiment.schema import ConfigError, data_config
from vca_gen.utils import dist


def resolve_mixed_precision(mode: str) -> str:
    """``train.mixed_precision`` for accelerate on this run's device: ``auto`` → ``bf16`` on a CUDA
    device that supports it, else ``no`` (fp32). A precision the device cannot run is refused with a
    :class:`ConfigError` (accelerate would accept ``fp16`` on a CPU and silently train in fp32)."""
    cpu = dist.use_cpu()
    bf16 = not cpu and torch.cuda.is_bf16_supported()
    if mode == "auto":
        return "bf16" if bf16 else "no"
    if cpu and mode == "fp16":
        raise ConfigError(
            "train.mixed_precision=fp16 cannot run on this device (CPU: no fp16 autocast, the run would train "
            "in fp32); accepted here: auto, no, bf16"
        )
    if not cpu and mode == "bf16" and not bf16:
        raise ConfigError(
            f"train.mixed_precision=bf16 cannot run on this device ({torch.cuda.get_device_name()} has no bf16); "
            f"accepted here: auto, no, fp16"
        )
    return mode


def check_runnable(cfg: DictConfig) -> None:
    """What a validated experiment needs of this machine to train, checked by ``train.py`` before
    anything is written (under ``--print-config`` too): a precision the device runs, an output dir
    that is not a file, an existing ``train.resume`` path. (Not part of loading an experiment: a
    recorded experiment must still load for sampling on another machine. The data are checked when
    the trainer builds them, also before anything is written.)"""
    t = cfg.train
    resolve_mixed_precision(t.mixed_precision)
    if Path(t.output_dir).exists() and not Path(t.output_dir).is_dir():
        raise ConfigError(f"train.output_dir={t.output_dir!r} is a file; accepted: a new or existing run directory")
    if t.resume not in ("auto", "none") and not Path(t.resume).exists():
        raise ConfigError(
            f"train.resume={t.resume!r} does not exist; accepted: auto, none, a checkpoint or a run directory"
        )


def build_dataset_for(cfg: DictConfig):
    """``(dataset, latent normalizer or None)`` for the experiment's data section.

    Errors of the data layer (missing/empty folder, latent store not matching the config) are
    re-raised as :class:`ConfigError` so the CLI reports them uniformly.
    """
    from vca_gen.data.factory import build_dataset, latent_normalizer

    data_cfg = data_config(cfg)
    try:
        dataset = build_dataset(data_cfg)
        normalizer = getattr(dataset, "normalizer", None) if data_cfg.kind == "latents" else latent_normalizer(data_cfg)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise ConfigError(
            f"data (kind={data_cfg.kind}, path={data_cfg.path}): {e}; accepted: data.path naming the existing "
            f"data of data.kind={data_cfg.kind!r}"
        ) from e
    except (ValueError, OSError) as e:
        raise ConfigError(f"data (kind={data_cfg.kind}, path={data_cfg.path}): {e}") from e
    if len(dataset) == 0:
        raise ConfigError(f"data (kind={data_cfg.kind}, path={data_cfg.path}) has no items")
    batch = cfg.train.global_batch_size
    if len(dataset) < batch:
        raise ConfigError(
            f"data (kind={data_cfg.kind}, path={data_cfg.path}) has {len(dataset)} items, fewer than one global "
            f"batch (train.global_batch_size={batch}; each epoch drops its last incomplete batch); accepted: "
            f"train.global_batch_size <= {len(dataset)}, or more data"
        )
    return dataset, normalizer


def check_batch_shape(dataset, cfg: DictConfig, encodes_on_the_fly: bool) -> None:
    """Error if the dataset's items or classes do not fit the model config."""
    from vca_gen.data.sampler import ItemKey

    classes = list(getattr(dataset, "classes", []) or [])
    if len(classes) > cfg.model.num_classes:
        raise ConfigError(
            f"the data has {len(classes)} classes "
            f"({', '.join(map(str, classes[:5]))}{', …' if len(classes) > 5 else ''}) "
            f"but model.num_classes={cfg.model.num_classes}; set model.num_classes={len(classes)}"
        )
    x, _ = dataset[ItemKey(0, 0)]
    m = cfg.model
    if encodes_on_the_fly:
        from vca_gen.data.config import image_channels

        expected = (image_channels(cfg.data), cfg.data.image_size, cfg.data.image_size)
        what = "images for on-the-fly VAE encoding"
    else:
        expected = (m.in_channels, m.input_size, m.input_size)
        what = f"model inputs of {m.name} (in_channels={m.in_channels}, input_size={m.input_size})"
    if tuple(x.shape) != expected:
        raise ConfigError(
            f"data items have shape {tuple(x.shape)} but the config expects {expected} ({what}); "
            f"check data.kind / data.image_size / data.vae / data.latent_channels against the data at {cfg.data.path}"
        )


def disable_internal_label_dropout(model: torch.nn.Module) -> None:
    """Turn off the backbone's own (global-RNG) label dropout: the trainer drops labels itself
    from its per-row streams (RowStream) so that results do not depend on the process count."""
    emb = getattr(model, "y_embedder", None)
    if emb is None or not hasattr(emb, "dropout_prob"):
        raise TypeError(f"{type(model).__name__} has no y_embedder.dropout_prob; cannot control label dropout")
    emb.dropout_prob = 0.0


def flat_hparams(container: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config → flat ``{"train.lr": 1e-4, ...}`` with scalar values (for trackers)."""
    out: dict[str, Any] = {}
    for k, v in container.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def batch_geometry(global_batch: int, num_processes: int, micro_batch: int | None) -> tuple[int, int]:
    """``(per-process batch, micro batch)``; errors when the numbers do not divide."""
    if global_batch % num_processes:
        raise ConfigError(
            f"train.global_batch_size={global_batch} is not divisible by the number of processes "
            f"({num_processes}); use a multiple of {num_processes}"
        )
    local = global_batch // num_processes
    micro = micro_batch or local
    if local % micro:
        raise ConfigError(
            f"train.micro_batch_size={micro} must divide the per-process batch {local} "
            f"(= global_batch_size {global_batch} / {num_processes} processes)"
        )
    return local, micro
