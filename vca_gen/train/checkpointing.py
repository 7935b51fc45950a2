"""Checkpoint I/O of the trainer: save, load (resume) and ``model.init_from``.

A checkpoint holds the model, EMA and optimizer states, the data position, the counters, every
process's RNG state, the fp16 loss scale, the experiment (``config.yaml``) and the decoder spec
(:mod:`vca_gen.experiment.checkpoint` writes and verifies the files). Resume refuses a checkpoint
whose experiment differs in a run-defining setting (:func:`vca_gen.experiment.schema.run_defining_diff`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vca_gen.experiment import checkpoint as ckpt
from vca_gen.experiment.schema import ConfigError, run_defining_diff, to_container, to_yaml
from vca_gen.models.official import load_matching, read_checkpoint_file
from vca_gen.utils import dist

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from vca_gen.train.trainer import Trainer


def check_same_experiment(cfg: DictConfig, path: Path, config_yaml: str) -> None:
    """Error naming every setting that defines the computation (model, objective, data order,
    seeds, optimisation) and differs from the checkpoint's experiment."""
    import yaml

    saved = yaml.safe_load(config_yaml) or {}
    diffs = [
        f"{key}: checkpoint {a!r} vs now {b!r}" for key, (a, b) in run_defining_diff(saved, to_container(cfg)).items()
    ]
    if diffs:
        raise ckpt.CheckpointError(
            f"{path} was saved by a different run: "
            + "; ".join(diffs)
            + ". Resume with the checkpoint's settings, or start a new train.output_dir"
        )


def load(tr: Trainer, path: Path) -> None:
    """Restore the trainer from checkpoint ``path``; a damaged or foreign one is a CheckpointError."""
    try:
        _load_unchecked(tr, path)
    except (ValueError, KeyError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ckpt.CheckpointError(f"cannot resume from {path}: {e}") from e


def _load_unchecked(tr: Trainer, path: Path) -> None:
    check_same_experiment(tr.cfg, path, (path / "config.yaml").read_text())
    ckpt.load_state_into(tr.model, ckpt.load_tensors(path / "model.safetensors"), str(path / "model.safetensors"))
    ckpt.load_state_into(tr.ema.model, ckpt.load_tensors(path / "ema.safetensors"), str(path / "ema.safetensors"))
    extra = ckpt.load_training_state(path)
    tr.optimizer.load_state_dict(extra["optimizer"])
    state = extra["state"]  # read from a file: its numbers are converted here
    tr.step = int(state["step"])
    tr.counters.update({k: int(v) for k, v in state.get("counters", {}).items()})
    if "batches" not in state.get("counters", {}):  # written before skipped batches were counted apart
        tr.counters["batches"] = tr.step + tr.counters["nonfinite_total"]
    batch = tr.exp.train.global_batch_size
    if int(state.get("global_batch_size", batch)) != batch:
        raise ConfigError(
            f"{path} was trained with global_batch_size={state['global_batch_size']}, the config says "
            f"{batch}: the data position would not carry over; keep the batch size or start a new output_dir"
        )
    tr.loader.load_state_dict(state["data"])
    if tr.scaler is not None and "grad_scaler" in state:
        tr.scaler.load_state_dict(state["grad_scaler"])
    rng = extra["rng"]
    rank, world = tr.acc.process_index, int(rng["world_size"])
    # another process count: training randomness does not use these streams; keep them reproducible anyway
    ckpt.restore_rng_state(rng["states"][rank if world == tr.acc.num_processes else rank % world])


def init_from(tr: Trainer, source: str) -> None:
    """Initialise the live (and EMA) weights from an official file, a checkpoint or an export;
    keys of the same name and shape are copied, the rest keep their initialisation."""
    p = Path(source)
    if p.is_file():
        state, _ = read_checkpoint_file(p, prefer="ema")
    else:
        model, _, _, _ = ckpt.load_for_sampling(p, use_ema=True)
        state = model.state_dict()
    tr.init_report = load_matching(tr.model, state)
    tr.ema.model.load_state_dict(tr.model.state_dict())
    tr.acc.print(f"model.init_from={source}: {tr.init_report.summary()}")


class CheckpointWriteStopped(dist.DistributedError):
    """On the other processes: the main process could not write the checkpoint (a full disk, a
    read-only file system); they stop at once with its message and its exit status instead of
    waiting for it until the process-group timeout."""


def save(tr: Trainer) -> Path | None:
    """Checkpoint the current step (main process writes; all processes must call).

    The write is agreed (:func:`vca_gen.utils.dist.agree`): when it fails on the main process (a
    :class:`vca_gen.utils.io.WriteFaultError`: exit 75 for a full disk, 2 for a read-only file
    system), every other process stops with the same message and exit status at once."""
    from accelerate.utils import gather_object

    t = tr.exp.train
    rng_states = gather_object([ckpt.capture_rng_state()])
    path = dist.agree(
        dist.as_group(tr.acc),
        lambda: _write(tr, t, rng_states),
        lambda _: None,
        error=CheckpointWriteStopped,
    )
    tr.acc.wait_for_everyone()
    return Path(path) if path else None


def _write(tr: Trainer, t, rng_states: list) -> str:
    """The main process's part of :func:`save`: the files, then pruning; returns the checkpoint's path."""
    state = {
        "step": tr.step,
        "data": tr.loader.state_dict(),
        "counters": dict(tr.counters),
        "global_batch_size": t.global_batch_size,
        "num_processes": tr.acc.num_processes,
        "images_seen": tr.counters["batches"] * t.global_batch_size,
        "model": tr.exp.model.name,
        "attention": tr.exp.model.attention,
    }
    if tr.scaler is not None:  # fp16 loss scaling
        state["grad_scaler"] = {k: v for k, v in tr.scaler.state_dict().items()}
    path = ckpt.save_checkpoint(
        tr.ckpt_root,
        tr.step,
        model_state=tr.model.state_dict(),
        ema_state=tr.ema.state_dict(),
        optimizer_state=tr.optimizer.state_dict(),
        rng_states=rng_states,
        state=state,
        config_yaml=to_yaml(tr.cfg),
        decoder=tr.decoder_spec,
        faults=tr.faults,
    )
    ckpt.prune_checkpoints(tr.ckpt_root, t.keep_last, t.milestone_every)
    return str(path)
