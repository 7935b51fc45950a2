"""The training loop (``train.py`` → :func:`train`), through 🤗 accelerate.

One optimizer step consumes one *global* batch of ``train.global_batch_size`` examples, split in
equal contiguous shares over the processes (``vca_gen.data.sampler``) and, inside a process, in
micro-batches of ``train.micro_batch_size`` (gradient accumulation; DDP syncs once per step).
The per-sample loss is averaged over the global batch, so 1 process with batch G, 2 with G/2, or
1 with G in micro-batches compute the same gradient up to float rounding.

Randomness is process-count independent: sample ``j`` of global step ``s`` gets its own
generator seeded by ``(train.seed, s, j)``; label dropout, the VAE posterior draw (images
encoded on the fly) and the objective's noise/time draws all come from it. The data order and
per-item augmentation depend only on (data.seed, epoch, index). Together with the checkpointed
model / EMA / optimizer / data position this makes resume bit-exact on CPU.

Per step: AdamW (linear warm-up), optional grad clipping, EMA update after the optimizer step;
a non-finite loss (or grad norm, except under fp16 loss scaling) skips the step and is counted;
``train.max_nonfinite`` consecutive ones stop training with :class:`NonFiniteLossError`.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from vca_gen.errors import UserError
from vca_gen.data.decoder import Decoder
from vca_gen.experiment import checkpoint as ckpt
from vca_gen.experiment.build import build_model, build_objective_for, class_names, decoder_spec
from vca_gen.models.official import load_matching, read_checkpoint_file
from vca_gen.experiment.schema import ConfigError, run_defining_diff, to_container, to_yaml
from vca_gen.data.factory import build_loader
from vca_gen.data.sampler import mix_seed
from vca_gen.train.ema import EMA
from vca_gen.train.helpers import (
    batch_geometry,
    build_dataset_for,
    check_batch_shape,
    disable_internal_label_dropout,
    flat_hparams,
    resolve_mixed_precision,
)
from vca_gen.train.evaluation import InLoopFID, save_grid
from vca_gen.utils.rng import per_sample_generators

SEED_STREAM_STEP = 7  # seed stream tag of the per-sample training generators


class TrainingError(UserError, RuntimeError):
    """Training cannot start or continue (message says why and what to change)."""


class NonFiniteLossError(TrainingError):
    """Too many consecutive non-finite losses."""


def lr_at(step: int, base_lr: float, warmup_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant."""
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


def ema_decay_at(n: int, decay: float, warmup: bool) -> float:
    """EMA decay for the update after ``n`` previous optimizer steps (warm-up: (1+n)/(10+n) cap)."""
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay


def step_generators(seed: int, step: int, first_index: int, count: int, device) -> List[torch.Generator]:
    """Generators of global samples ``first_index .. first_index+count-1`` of step ``step``."""
    return per_sample_generators(
        [mix_seed(seed, SEED_STREAM_STEP, step, first_index + i) for i in range(count)], device=device
    )


def drop_labels(y: torch.Tensor, prob: float, null_label: int, gens: List[torch.Generator]) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``prob`` (one uniform per generator)."""
    if prob <= 0:
        return y
    u = torch.stack([torch.rand((), generator=g, device=g.device) for g in gens]).to(y.device)
    return torch.where(u < prob, torch.full_like(y, null_label), y)


class Trainer:
    """Builds everything from a validated experiment config; :meth:`run` trains to ``max_steps``."""

    def __init__(self, cfg: DictConfig, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg = cfg
        t = cfg.train
        self.out_dir = Path(t.output_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        tracker = cfg.logging.tracker
        if accelerator is None:
            accelerator = Accelerator(
                mixed_precision=resolve_mixed_precision(t.mixed_precision),
                log_with=None if tracker == "none" else tracker,
                project_config=ProjectConfiguration(project_dir=str(self.out_dir), logging_dir=str(self.out_dir / "logs")),
            )
        self.acc = accelerator
        self.device = accelerator.device
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = bool(t.tf32)
            torch.backends.cudnn.allow_tf32 = bool(t.tf32)

        # ---- batch geometry
        self.local_batch, self.micro_batch = batch_geometry(
            int(t.global_batch_size), accelerator.num_processes, t.micro_batch_size)

        # ---- data (errors here happen before anything is written)
        self.dataset, self.normalizer = build_dataset_for(cfg)
        self.loader = build_loader(OmegaConf.to_object(cfg.data), self.dataset, int(t.global_batch_size),
                                   accelerator.num_processes, accelerator.process_index, device=self.device)
        self.vae = None
        if cfg.data.kind == "images" and cfg.data.vae is not None:
            from vca_gen.data.vae import load_vae

            self.vae = load_vae(cfg.data.vae, subfolder=cfg.data.vae_subfolder, device=self.device)
        names = class_names(cfg) or [str(c) for c in (getattr(self.dataset, "classes", None) or [])] or None
        self.decoder_spec = decoder_spec(cfg, self.normalizer, names)
        self.decoder = Decoder(self.decoder_spec, device=self.device)
        if self.vae is not None:
            self.decoder._vae = self.vae  # the encoder's VAE decodes the grids too (no second load)

        # ---- model, objective, EMA, optimizer
        torch.manual_seed(int(t.seed))  # identical initial weights on every process
        self.model = build_model(cfg)
        self.objective = build_objective_for(cfg)
        self.objective.check_model(self.model)
        self.init_report = None
        check_batch_shape(self.dataset, cfg, self.vae is not None)
        disable_internal_label_dropout(self.model)
        self.model.to(self.device).train()
        self.ema = EMA(self.model, float(t.ema_decay)).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=float(t.lr), betas=tuple(t.betas), eps=float(t.eps),
                                           weight_decay=float(t.weight_decay))
        self.step = 0
        self.counters: Dict[str, int] = {"nonfinite_total": 0, "nonfinite_consecutive": 0, "optimizer_steps": 0}

        # ---- resume (before prepare: plain modules)
        self.resumed_from = ckpt.resolve_resume(str(t.resume), self.ckpt_root)
        existing = ckpt.latest_checkpoint(self.ckpt_root)
        own = self.resumed_from is not None and self.resumed_from.parent.resolve() == self.ckpt_root.resolve()
        if existing is not None and not own:
            raise ConfigError(
                f"{self.out_dir} already holds checkpoints up to {existing.name}, and train.resume={t.resume} would "
                f"start a different run there and overwrite/prune them; use train.resume=auto to continue it, or a "
                f"new train.output_dir")
        if self.resumed_from is not None:
            self._load(self.resumed_from)
        elif cfg.model.init_from:
            self._init_from(str(cfg.model.init_from))
        self.fid = InLoopFID(cfg, self.device) if t.fid.every else None

        self.ddp_model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        self.forward = torch.compile(self.ddp_model) if t.compile else self.ddp_model

    # ------------------------------------------------------------------ checkpoint I/O
    def _load(self, path: Path) -> None:
        try:
            self._load_unchecked(path)
        except (ValueError, KeyError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ckpt.CheckpointError(f"cannot resume from {path}: {e}") from e

    def _init_from(self, source: str) -> None:
        """Initialise the live (and EMA) weights from an official file, a checkpoint or an export;
        keys of the same name and shape are copied, the rest keep their initialisation."""
        p = Path(source)
        if p.is_file():
            state, _ = read_checkpoint_file(p, prefer="ema")
        else:
            model, _, _, _ = ckpt.load_for_sampling(p, use_ema=True)
            state = model.state_dict()
        self.init_report = load_matching(self.model, state)
        self.ema.model.load_state_dict(self.model.state_dict())
        self.acc.print(f"model.init_from={source}: {self.init_report.summary()}")

    def _check_same_experiment(self, path: Path, config_yaml: str) -> None:
        """Error naming every setting that defines the computation (model, objective, data order,
        seeds, optimisation) and differs from the checkpoint's experiment."""
        import yaml

        saved = yaml.safe_load(config_yaml) or {}
        diffs = [f"{key}: checkpoint {a!r} vs now {b!r}" for key, (a, b) in run_defining_diff(saved, to_container(self.cfg)).items()]
        if diffs:
            raise ckpt.CheckpointError(
                f"{path} was saved by a different run: " + "; ".join(diffs)
                + ". Resume with the checkpoint's settings, or start a new train.output_dir")

    def _load_unchecked(self, path: Path) -> None:
        self._check_same_experiment(path, (path / "config.yaml").read_text())
        ckpt.load_state_into(self.model, ckpt.load_tensors(path / "model.safetensors"), str(path / "model.safetensors"))
        ckpt.load_state_into(self.ema.model, ckpt.load_tensors(path / "ema.safetensors"), str(path / "ema.safetensors"))
        extra = ckpt.load_training_state(path)
        self.optimizer.load_state_dict(extra["optimizer"])
        state = extra["state"]
        self.step = int(state["step"])
        self.counters.update({k: int(v) for k, v in state.get("counters", {}).items()})
        if int(state.get("global_batch_size", self.cfg.train.global_batch_size)) != int(self.cfg.train.global_batch_size):
            raise ConfigError(
                f"{path} was trained with global_batch_size={state['global_batch_size']}, the config says "
                f"{self.cfg.train.global_batch_size}: the data position would not carry over; keep the batch size "
                f"or start a new output_dir")
        self.loader.load_state_dict(state["data"])
        if self.acc.scaler is not None and "grad_scaler" in state:
            self.acc.scaler.load_state_dict(state["grad_scaler"])
        rng = extra["rng"]
        rank = self.acc.process_index
        if int(rng["world_size"]) == self.acc.num_processes:
            ckpt.restore_rng_state(rng["states"][rank])
        else:  # training randomness does not use these streams; keep them reproducible anyway
            ckpt.restore_rng_state(rng["states"][rank % int(rng["world_size"])])

    def save(self) -> Optional[Path]:
        """Checkpoint the current step (main process writes; all processes must call)."""
        from accelerate.utils import gather_object

        rng_states = gather_object([ckpt.capture_rng_state()])
        path = None
        if self.acc.is_main_process:
            state = {
                "step": self.step,
                "data": self.loader.state_dict(),
                "counters": dict(self.counters),
                "global_batch_size": int(self.cfg.train.global_batch_size),
                "num_processes": self.acc.num_processes,
                "images_seen": self.step * int(self.cfg.train.global_batch_size),
                "model": self.cfg.model.name,
                "attention": self.cfg.model.attention,
            }
            if self.acc.scaler is not None:  # fp16 loss scaling
                state["grad_scaler"] = {k: v for k, v in self.acc.scaler.state_dict().items()}
            path = ckpt.save_checkpoint(
                self.ckpt_root, self.step, model_state=self.model.state_dict(), ema_state=self.ema.state_dict(),
                optimizer_state=self.optimizer.state_dict(), rng_states=rng_states, state=state,
                config_yaml=to_yaml(self.cfg), decoder=self.decoder_spec,
            )
            ckpt.prune_checkpoints(self.ckpt_root, int(self.cfg.train.keep_last), int(self.cfg.train.milestone_every))
        self.acc.wait_for_everyone()
        return path

    # ------------------------------------------------------------------ one step
    def _prepare_batch(self, x: torch.Tensor, y: torch.Tensor, gens: List[torch.Generator]):
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True).long()
        if self.vae is not None:
            from vca_gen.data.vae import encode_latents

            x = encode_latents(self.vae, x, self.normalizer, generator=gens)
        y = drop_labels(y, float(self.cfg.model.class_dropout_prob), int(self.cfg.model.num_classes), gens)
        return x, y

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
        """One optimizer step on this process's share of a global batch; returns logged scalars."""
        t = self.cfg.train
        first = self.acc.process_index * self.local_batch
        gens = step_generators(int(t.seed), self.step, first, x.shape[0], self.device)
        x, y = self._prepare_batch(x, y, gens)
        lr = lr_at(self.counters["optimizer_steps"], float(t.lr), int(t.warmup_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        chunks = range(0, x.shape[0], self.micro_batch)
        for k, i0 in enumerate(chunks):
            i1 = i0 + self.micro_batch
            last = k == len(chunks) - 1
            sync = contextlib.nullcontext() if last else self.acc.no_sync(self.ddp_model)
            with sync, self.acc.autocast():
                losses = self.objective.training_losses(self.forward, x[i0:i1], y[i0:i1], generator=gens[i0:i1])
                loss = losses["loss"].float().sum() / self.local_batch
            self.acc.backward(loss)
            total += loss.detach()
        loss_mean = self.acc.reduce(total, reduction="mean")
        max_norm = float(t.grad_clip) if t.grad_clip > 0 else float("inf")
        grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), max_norm)
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        fp16 = self.acc.mixed_precision == "fp16"
        finite = math.isfinite(float(loss_mean)) and (fp16 or math.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.ema.update(self.model, ema_decay_at(self.counters["optimizer_steps"], float(t.ema_decay), bool(t.ema_warmup)))
            self.counters["optimizer_steps"] += 1
            self.counters["nonfinite_consecutive"] = 0
        else:
            self.counters["nonfinite_total"] += 1
            self.counters["nonfinite_consecutive"] += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.counters["nonfinite_consecutive"] >= int(t.max_nonfinite):
            raise NonFiniteLossError(
                f"stopping at step {self.step}: {self.counters['nonfinite_consecutive']} consecutive steps had a "
                f"non-finite loss or gradient (last loss {float(loss_mean)}, grad norm {grad_norm}); the last "
                f"checkpoint in {self.ckpt_root} is intact. Lower train.lr, set train.grad_clip, add "
                f"train.warmup_steps or use train.mixed_precision=no/bf16 (train.max_nonfinite={t.max_nonfinite})")
        return {"loss": float(loss_mean), "grad_norm": grad_norm, "lr": lr, "skipped": 0.0 if finite else 1.0}

    # ------------------------------------------------------------------ periodic work
    @torch.no_grad()
    def sample_grid(self) -> Optional[Path]:
        """EMA samples of ``train.grid`` → ``<output_dir>/samples/step_XXXXXXXX.png`` (main process)."""
        if not self.acc.is_main_process:
            return None
        out = self.out_dir / "samples" / f"{ckpt.step_dir_name(self.step)}.png"
        with self.acc.autocast():
            save_grid(self.cfg, self.ema.model, self.objective, self.decoder, out, self.device)
        return out

    @torch.no_grad()
    def in_loop_fid(self) -> Optional[float]:
        """``train.fid``: every process samples and embeds its share; the main process scores."""
        from accelerate.utils import gather_object

        if self.fid is None:
            self.fid = InLoopFID(self.cfg, self.device)
        feats = self.fid.features(self.ema.model, self.objective, self.decoder, self.acc.process_index,
                                  self.acc.num_processes)
        gathered = gather_object([feats])
        value = None
        if self.acc.is_main_process:
            side = int(self.cfg.model.input_size) * int(self.decoder_spec.downsample)
            value = self.fid.score(gathered, (side, side))
            self.acc.log({"eval/fid": value}, step=self.step)
            self.acc.print(f"step {self.step}: in-loop FID ({self.cfg.train.fid.num_samples} samples) {value:.4f}")
        return value

    def _write_run_files(self) -> None:
        if self.acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.out_dir / "config.yaml", to_yaml(self.cfg))
        self.acc.wait_for_everyone()

    # ------------------------------------------------------------------ loop
    def run(self) -> Dict[str, Any]:
        """Train until ``train.max_steps``; returns a summary (final step, last logged scalars)."""
        from tqdm.auto import tqdm

        t = self.cfg.train
        self._write_run_files()
        if self.cfg.logging.tracker != "none":
            self.acc.init_trackers(self.cfg.logging.project, config=flat_hparams(to_container(self.cfg)))
        if self.resumed_from is not None:
            self.acc.print(f"resumed from {self.resumed_from} at step {self.step}")
        bar = tqdm(total=int(t.max_steps), initial=self.step, disable=not self.acc.is_local_main_process,
                   desc=self.cfg.name, dynamic_ncols=True)
        window: Dict[str, float] = {"loss": 0.0, "grad_norm": 0.0, "n": 0}
        last: Dict[str, float] = {}
        tic, tic_step = time.perf_counter(), self.step
        data = iter(self.loader)
        saved_at = self.step if self.resumed_from is not None else -1
        try:
            while self.step < int(t.max_steps):
                x, y = next(data)
                stats = self.train_step(x, y)
                bar.update(1)
                if not stats["skipped"]:
                    window["loss"] += stats["loss"]
                    window["grad_norm"] += stats["grad_norm"]
                    window["n"] += 1
                if self.step % int(t.log_every) == 0 or self.step == int(t.max_steps):
                    dt = max(time.perf_counter() - tic, 1e-9)
                    n = max(window["n"], 1)
                    last = {
                        "loss": window["loss"] / n, "grad_norm": window["grad_norm"] / n, "lr": stats["lr"],
                        "steps_per_sec": (self.step - tic_step) / dt,
                        "images_per_sec": (self.step - tic_step) * int(t.global_batch_size) / dt,
                        "nonfinite_total": float(self.counters["nonfinite_total"]),
                    }
                    self.acc.log({f"train/{k}": v for k, v in last.items()}, step=self.step)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", gn=f"{last['grad_norm']:.3f}")
                    window = {"loss": 0.0, "grad_norm": 0.0, "n": 0}
                    tic, tic_step = time.perf_counter(), self.step
                if t.ckpt_every and self.step % int(t.ckpt_every) == 0:
                    self.save()
                    saved_at = self.step
                if t.grid.every and self.step % int(t.grid.every) == 0:
                    self.sample_grid()
                if t.fid.every and self.step % int(t.fid.every) == 0:
                    self.in_loop_fid()
            if saved_at != self.step:
                self.save()
        finally:
            bar.close()
            self.acc.end_training()
        return {"step": self.step, "counters": dict(self.counters), "last": last, "output_dir": str(self.out_dir),
                "is_main_process": self.acc.is_main_process}


def train(cfg: DictConfig, accelerator=None) -> Dict[str, Any]:
    """Build a :class:`Trainer` for ``cfg`` and run it."""
    return Trainer(cfg, accelerator).run()
