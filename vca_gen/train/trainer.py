"""The training loop (``train.py`` → :func:`train`), through 🤗 accelerate.

One optimizer step consumes one *global* batch of ``train.global_batch_size`` examples, split in
equal contiguous shares over the processes (``vca_gen.data.sampler``) and, inside a process, in
micro-batches of ``train.micro_batch_size`` (gradient accumulation; DDP syncs once per step).
The per-sample loss is averaged over the global batch, so 1 process with batch G, 2 with G/2, or
1 with G in micro-batches compute the same gradient up to float rounding.

**Steps.** ``step`` (the checkpoint name, ``train.max_steps``, ``*_every``) counts *applied*
optimizer updates; the LR warm-up and the EMA warm-up follow it. A batch whose loss or gradient
is not finite (or, under fp16 loss scaling, whose scaled gradient overflowed) is consumed but not
applied: the data position and ``counters["batches"]`` advance, ``step`` does not. Non-finite
losses count towards ``train.max_nonfinite`` consecutive ones (then :class:`NonFiniteLossError`);
fp16 overflows only lower the loss scale (up to ``MAX_OVERFLOW_STREAK`` in a row).

**Randomness** is process-count independent: the randomness of global batch ``b`` comes from two
:class:`~vca_gen.utils.rng.RowStream` streams over the global batch, seeded by
``(train.seed, b, stage)``: the *prepare* stage (label dropout, the VAE posterior draw of images
encoded on the fly) and the *loss* stage (the objective's time / noise draws; micro-batch
``[i0, i1)`` of the process whose share starts at global row ``first`` reads rows
``[first+i0, first+i1)``). Row ``j`` of every draw depends only on (seed, batch, stage, draw, j),
so any process count or micro-batch split sees the same numbers, with a number of RNG kernels per
step that does not grow with the batch. The data order and per-item augmentation depend only on
(data.seed, epoch, index). Together with the checkpointed model / EMA / optimizer / loss scale /
data position this makes resume bit-exact on CPU.

**Host syncs.** Outside logging steps a step reads the device once: one ``tolist()`` of
``[loss finite, grad finite, stop requested]`` after the backward pass (the stop flag rides in
the loss all-reduce, so agreeing on a preemption costs no extra collective). The logged loss and
grad norm are accumulated on the device and read at log steps only. Clipping is skipped when
``train.grad_clip`` is 0; AdamW is fused on CUDA; the EMA update is one ``_foreach_lerp_``.

**Preemption.** SIGTERM, SIGUSR1 and SIGINT (Ctrl-C) make every process finish the current step
(the stop is agreed through that step's all-reduce), write a checkpoint and return with
``stopped_by`` set; ``train.py`` then exits :data:`EXIT_PREEMPTED` (75). Re-running the same
command resumes exactly. A second Ctrl-C aborts at once.

**Run directory.** The main process holds a :class:`~vca_gen.utils.lock.RunLock` (purpose
"train") on ``train.output_dir`` for the whole run; it decides which checkpoint to resume
(verifying its checksums, falling back to the newest intact one) and broadcasts the decision;
every process checks it can read exactly that checkpoint before the first step.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

from vca_gen.data.decoder import Decoder
from vca_gen.data.factory import build_loader
from vca_gen.data.sampler import mix_seed
from vca_gen.errors import UserError
from vca_gen.experiment import checkpoint as ckpt
from vca_gen.experiment.build import build_model, build_objective_for, class_names, decoder_spec
from vca_gen.experiment.schema import ConfigError, data_config, run_defining_diff, to_container, to_yaml
from vca_gen.models.official import MatchReport, load_matching, read_checkpoint_file
from vca_gen.train.ema import EMA
from vca_gen.train.evaluation import InLoopFID, save_grid
from vca_gen.train.helpers import (
    batch_geometry,
    build_dataset_for,
    check_batch_shape,
    disable_internal_label_dropout,
    flat_hparams,
    resolve_mixed_precision,
)
from vca_gen.utils import dist, rng
from vca_gen.utils.faults import Faults

if TYPE_CHECKING:
    from vca_gen.utils.lock import RunLock

SEED_STREAM_STEP = 7  # seed stream tag of the training randomness
STAGE_PREPARE, STAGE_LOSS = 0, 1  # the two RowStreams of a batch
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal, checkpoint written, re-run the same command
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, n))
MAX_OVERFLOW_STREAK = 64  # consecutive fp16 overflows (loss scale 2^-64 of its start) → stop
LOCK_HEARTBEAT_S = 600.0  # the run lock is refreshed this often (kept fresh on shared storage)


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


def step_streams(seed: int, batch: int, first: int, count: int, total: int) -> tuple[int, int]:
    """Seeds of the prepare- and loss-stage :class:`~vca_gen.utils.rng.RowStream` of global batch
    ``batch`` (``first``/``count``/``total`` only checked here; the streams take the rows)."""
    if not 0 <= first <= first + count <= total:
        raise ValueError(f"rows [{first}, {first + count}) do not fit a global batch of {total}")
    return (mix_seed(seed, SEED_STREAM_STEP, batch, STAGE_PREPARE), mix_seed(seed, SEED_STREAM_STEP, batch, STAGE_LOSS))


def drop_labels(y: torch.Tensor, prob: float, null_label: int, generator: rng.GeneratorSpec) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``prob`` (one uniform per row)."""
    if prob <= 0:
        return y
    u = rng.rand((y.shape[0],), generator, device=y.device)
    return torch.where(u < prob, torch.full_like(y, null_label), y)


class Trainer:
    """Builds everything from a validated experiment config; :meth:`run` trains to ``max_steps``.

    ``grad_scaler``: a ``torch.amp.GradScaler`` for fp16 loss scaling where accelerate gives none
    (on CPU; tests). Under ``mixed_precision=fp16`` on CUDA accelerate's scaler is used.
    ``faults``: injected by tests (:class:`~vca_gen.utils.faults.Faults`), none by default.
    """

    def __init__(self, cfg: DictConfig, accelerator=None, grad_scaler=None, faults: Faults | None = None):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg = cfg
        t = cfg.train
        self.out_dir = Path(t.output_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.lock: RunLock | None = None
        self._stop_signal: int | None = None
        self.faults = faults or Faults()
        tracker = cfg.logging.tracker
        if accelerator is None:
            dist.setup(t.timeout_s, "train.timeout_s")  # backend, timeout, group checked; adopted below
            accelerator = Accelerator(
                cpu=dist.use_cpu(),
                mixed_precision=resolve_mixed_precision(t.mixed_precision),
                log_with=None if tracker == "none" else tracker,
                project_config=ProjectConfiguration(
                    project_dir=str(self.out_dir), logging_dir=str(self.out_dir / "logs")
                ),
            )
        self.acc = accelerator
        self.device = accelerator.device
        self.scaler = grad_scaler if grad_scaler is not None else accelerator.scaler
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = bool(t.tf32)
            torch.backends.cudnn.allow_tf32 = bool(t.tf32)

        # ---- batch geometry
        self.local_batch, self.micro_batch = batch_geometry(
            int(t.global_batch_size), accelerator.num_processes, t.micro_batch_size
        )

        # ---- data (errors here happen before anything is written)
        self.dataset, self.normalizer = build_dataset_for(cfg)
        self.loader = build_loader(
            data_config(cfg),
            self.dataset,
            int(t.global_batch_size),
            accelerator.num_processes,
            accelerator.process_index,
            device=self.device,
        )
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
        self.init_report: MatchReport | None = None
        check_batch_shape(self.dataset, cfg, self.vae is not None)
        disable_internal_label_dropout(self.model)
        self.model.to(self.device).train()
        self.ema = EMA(self.model, float(t.ema_decay)).to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.torch_optimizer = torch.optim.AdamW(
            self.params,
            lr=float(t.lr),
            betas=tuple(t.betas),
            eps=float(t.eps),
            weight_decay=float(t.weight_decay),
            **({"fused": True} if self.device.type == "cuda" else {}),
        )
        self.optimizer = self.torch_optimizer
        self.step = 0  # applied optimizer updates
        self.counters: dict[str, int] = {
            "nonfinite_total": 0,
            "nonfinite_consecutive": 0,
            "optimizer_steps": 0,
            "batches": 0,
            "overflow_total": 0,
            "overflow_consecutive": 0,
        }

        # ---- run lock and the one resume decision (main process), checked by every process
        try:
            self.resumed_from = self._agree_on_resume()
            if self.resumed_from is not None:
                self._load(self.resumed_from)
            elif cfg.model.init_from:
                self._init_from(str(cfg.model.init_from))
            self.fid = InLoopFID(cfg, self.device) if t.fid.every else None

            self.ddp_model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
            self.forward = torch.compile(self.ddp_model) if t.compile else self.ddp_model
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ run directory
    def _acquire_lock(self) -> None:
        from vca_gen.utils.lock import RunLock

        created = not self.out_dir.exists()
        self.lock = RunLock(self.out_dir, "train", heartbeat_s=LOCK_HEARTBEAT_S)
        self._created_out_dir = created
        self.lock.acquire()

    def close(self) -> None:
        """Release the run lock (main process); removes an output dir this run created and left empty."""
        lock, self.lock = self.lock, None
        if lock is not None and lock.held:
            lock.release()
            if getattr(self, "_created_out_dir", False):
                with contextlib.suppress(OSError):
                    self.out_dir.rmdir()  # only if empty: nothing was written

    def _decide_resume(self) -> Path | None:
        """Main process: lock the run dir, pick the checkpoint to resume (verified, with fallback)."""
        t = self.cfg.train
        self._acquire_lock()
        chosen = ckpt.resolve_resume(str(t.resume), self.ckpt_root, verify=True)
        existing = ckpt.latest_checkpoint(self.ckpt_root)
        own = chosen is not None and chosen.parent.resolve() == self.ckpt_root.resolve()
        if existing is not None and not own:
            raise ConfigError(
                f"{self.out_dir} already holds checkpoints up to {existing.name}, and train.resume={t.resume} would "
                f"start a different run there and overwrite/prune them; use train.resume=auto to continue it, or a "
                f"new train.output_dir"
            )
        return chosen

    def _agree_on_resume(self) -> Path | None:
        """One decision (:func:`vca_gen.utils.dist.agree`): the main process decides (and locks);
        every process checks it can read exactly that checkpoint; any failure stops every process
        with the same error."""

        def decide() -> tuple[str | None, Any]:
            chosen = self._decide_resume()
            return (None, None) if chosen is None else (str(chosen), ckpt.read_checksums(chosen))

        def verify(decision: tuple[str | None, Any]) -> str | None:
            path, checksums = decision
            if path is None or self.acc.is_main_process:  # the main process verified it while deciding
                return None
            return ckpt.readable_problem(path, checksums, hidden=self.faults.hidden_checkpoint_files)

        path, _ = dist.agree(
            dist.as_group(self.acc),
            decide,
            verify,
            error=ckpt.CheckpointError,
            failure=lambda d: f"cannot read the checkpoint chosen by the main process, {d[0]}",
            advice="Every process must see the same files (shared storage, fully synced) before training can resume",
        )
        return None if path is None else Path(path)

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
        diffs = [
            f"{key}: checkpoint {a!r} vs now {b!r}"
            for key, (a, b) in run_defining_diff(saved, to_container(self.cfg)).items()
        ]
        if diffs:
            raise ckpt.CheckpointError(
                f"{path} was saved by a different run: "
                + "; ".join(diffs)
                + ". Resume with the checkpoint's settings, or start a new train.output_dir"
            )

    def _load_unchecked(self, path: Path) -> None:
        self._check_same_experiment(path, (path / "config.yaml").read_text())
        ckpt.load_state_into(self.model, ckpt.load_tensors(path / "model.safetensors"), str(path / "model.safetensors"))
        ckpt.load_state_into(self.ema.model, ckpt.load_tensors(path / "ema.safetensors"), str(path / "ema.safetensors"))
        extra = ckpt.load_training_state(path)
        self.optimizer.load_state_dict(extra["optimizer"])
        state = extra["state"]
        self.step = int(state["step"])
        self.counters.update({k: int(v) for k, v in state.get("counters", {}).items()})
        if "batches" not in state.get("counters", {}):  # written before skipped batches were counted apart
            self.counters["batches"] = self.step + self.counters["nonfinite_total"]
        if int(state.get("global_batch_size", self.cfg.train.global_batch_size)) != int(
            self.cfg.train.global_batch_size
        ):
            raise ConfigError(
                f"{path} was trained with global_batch_size={state['global_batch_size']}, the config says "
                f"{self.cfg.train.global_batch_size}: the data position would not carry over; keep the batch size "
                f"or start a new output_dir"
            )
        self.loader.load_state_dict(state["data"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        rng = extra["rng"]
        rank = self.acc.process_index
        if int(rng["world_size"]) == self.acc.num_processes:
            ckpt.restore_rng_state(rng["states"][rank])
        else:  # training randomness does not use these streams; keep them reproducible anyway
            ckpt.restore_rng_state(rng["states"][rank % int(rng["world_size"])])

    def save(self) -> Path | None:
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
                "images_seen": self.counters["batches"] * int(self.cfg.train.global_batch_size),
                "model": self.cfg.model.name,
                "attention": self.cfg.model.attention,
            }
            if self.scaler is not None:  # fp16 loss scaling
                state["grad_scaler"] = {k: v for k, v in self.scaler.state_dict().items()}
            path = ckpt.save_checkpoint(
                self.ckpt_root,
                self.step,
                model_state=self.model.state_dict(),
                ema_state=self.ema.state_dict(),
                optimizer_state=self.optimizer.state_dict(),
                rng_states=rng_states,
                state=state,
                config_yaml=to_yaml(self.cfg),
                decoder=self.decoder_spec,
                faults=self.faults,
            )
            ckpt.prune_checkpoints(self.ckpt_root, int(self.cfg.train.keep_last), int(self.cfg.train.milestone_every))
        self.acc.wait_for_everyone()
        return path

    # ------------------------------------------------------------------ one step
    def _prepare_batch(self, x: torch.Tensor, y: torch.Tensor, stream: rng.RowStream):
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True).long()
        if self.vae is not None:
            from vca_gen.data.vae import encode_latents

            x = encode_latents(self.vae, x, self.normalizer, generator=stream)
        y = drop_labels(y, float(self.cfg.model.class_dropout_prob), int(self.cfg.model.num_classes), stream)
        return x, y

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """One global batch on this process's share: forward/backward, then the optimizer update
        unless the loss or gradient is not finite. Returns ``loss`` and ``grad_norm`` as device
        tensors (read them only when logging), ``lr``, ``skipped`` (0/1), ``applied`` and ``stop``
        (a stop signal reached some process: every process sees the same value)."""
        t = self.cfg.train
        G = int(t.global_batch_size)
        first = self.acc.process_index * self.local_batch
        seed_prepare, seed_loss = step_streams(int(t.seed), self.counters["batches"], first, x.shape[0], G)
        x, y = self._prepare_batch(x, y, rng.RowStream(seed_prepare, first, first + x.shape[0], G))
        lr = lr_at(self.counters["optimizer_steps"], float(t.lr), int(t.warmup_steps))
        for group in self.torch_optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        chunks = range(0, x.shape[0], self.micro_batch)
        for k, i0 in enumerate(chunks):
            i1 = i0 + self.micro_batch
            last = k == len(chunks) - 1
            sync = contextlib.nullcontext() if last else self.acc.no_sync(self.ddp_model)
            stream = rng.RowStream(seed_loss, first + i0, first + i1, G)
            with sync:
                with self.acc.autocast():
                    losses = self.objective.training_losses(self.forward, x[i0:i1], y[i0:i1], generator=stream)
                    loss = losses["loss"].float().sum() / self.local_batch
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    self.acc.backward(loss)
            total += loss.detach()
        # the per-step all-reduce also carries the stop flag: agreeing on a stop costs nothing
        stop_local = torch.full((), 1.0 if self._stop_signal is not None else 0.0, device=self.device)
        packed = self.acc.reduce(torch.stack([total, stop_local]), reduction="sum")
        loss_mean = packed[0] / self.acc.num_processes
        if self.scaler is not None:
            self.scaler.unscale_(self.torch_optimizer)  # once per step; update() below resets it
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads, 2.0) if grads else torch.zeros((), device=self.device)
        if t.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(self.params, float(t.grad_clip), grad_norm)
        loss_ok, grad_ok, stop = torch.stack(
            [torch.isfinite(loss_mean), torch.isfinite(grad_norm), packed[1] > 0]
        ).tolist()  # the step's one host sync
        applied = loss_ok and grad_ok
        c = self.counters
        if applied:
            self.torch_optimizer.step()
            self.ema.update(self.model, ema_decay_at(c["optimizer_steps"], float(t.ema_decay), bool(t.ema_warmup)))
            c["optimizer_steps"] += 1
            c["nonfinite_consecutive"] = c["overflow_consecutive"] = 0
            self.step += 1
        elif loss_ok and self.scaler is not None:  # scaled gradient overflowed: the scaler backs off
            c["overflow_total"] += 1
            c["overflow_consecutive"] += 1
        else:
            c["nonfinite_total"] += 1
            c["nonfinite_consecutive"] += 1
        if self.scaler is not None:
            self.scaler.update()
        self.torch_optimizer.zero_grad(set_to_none=True)
        c["batches"] += 1
        if c["nonfinite_consecutive"] >= int(t.max_nonfinite) or c["overflow_consecutive"] >= MAX_OVERFLOW_STREAK:
            what = (
                f"{c['nonfinite_consecutive']} consecutive steps had a non-finite loss or gradient"
                if c["nonfinite_consecutive"] >= int(t.max_nonfinite)
                else f"{c['overflow_consecutive']} consecutive fp16 steps overflowed"
            )
            raise NonFiniteLossError(
                f"stopping at step {self.step} (batch {c['batches']}): {what} (last loss {float(loss_mean)}, grad "
                f"norm {float(grad_norm)}); the last checkpoint in {self.ckpt_root} is intact. Lower train.lr, set "
                f"train.grad_clip, add train.warmup_steps or use train.mixed_precision=no/bf16 "
                f"(train.max_nonfinite={t.max_nonfinite})"
            )
        return {
            "loss": loss_mean.detach(),
            "grad_norm": grad_norm.detach(),
            "lr": lr,
            "skipped": 0.0 if applied else 1.0,
            "applied": applied,
            "stop": bool(stop),
        }

    # ------------------------------------------------------------------ periodic work
    @torch.no_grad()
    def sample_grid(self) -> Path | None:
        """EMA samples of ``train.grid`` → ``<output_dir>/samples/step_XXXXXXXX.png`` (main process)."""
        if not self.acc.is_main_process:
            return None
        out = self.out_dir / "samples" / f"{ckpt.step_dir_name(self.step)}.png"
        with self.acc.autocast():
            save_grid(self.cfg, self.ema.model, self.objective, self.decoder, out, self.device)
        return out

    @torch.no_grad()
    def in_loop_fid(self) -> float | None:
        """``train.fid``: every process samples and embeds its share; the main process scores."""
        from accelerate.utils import gather_object

        if self.fid is None:
            self.fid = InLoopFID(self.cfg, self.device)
        feats = self.fid.features(
            self.ema.model, self.objective, self.decoder, self.acc.process_index, self.acc.num_processes
        )
        gathered = gather_object([feats])
        values: dict[str, float | None] = {}  # train.fid.metrics' fields (default: fid)
        if self.acc.is_main_process:
            side = int(self.cfg.model.input_size) * int(self.decoder_spec.downsample)
            values = self.fid.score(gathered, (side, side))
            self.acc.log({f"eval/{k}": v for k, v in values.items() if v is not None}, step=self.step)
            shown = ", ".join(f"{k} {'n/a' if v is None else format(v, '.4f')}" for k, v in values.items())
            self.acc.print(f"step {self.step}: in-loop FID ({self.cfg.train.fid.num_samples} samples) {shown}")
            record = self.out_dir / "fid.jsonl"  # one line per evaluation, full precision
            before = record.read_text() if record.is_file() else ""
            line = {
                "step": self.step,
                **values,
                "num_samples": int(self.cfg.train.fid.num_samples),
                "seed": int(self.cfg.train.fid.seed),
                "reference": str(self.cfg.train.fid.ref),
            }
            ckpt.atomic_write_text(record, before + json.dumps(line) + "\n")
        return values.get("fid")

    def _write_run_files(self) -> None:
        if self.acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.out_dir / "config.yaml", to_yaml(self.cfg))
        self.acc.wait_for_everyone()

    # ------------------------------------------------------------------ signals
    def _install_stop_handlers(self) -> dict[int, Any]:
        """SIGTERM / SIGUSR1 / SIGINT → finish the step, checkpoint, stop (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: abort now, no checkpoint
            self._stop_signal = signum

        previous = {}
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, on_signal)
        return previous

    @staticmethod
    def _restore_handlers(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Train until ``train.max_steps`` applied updates, or until a stop signal; returns a summary
        (final step, counters, last logged scalars, ``stopped_by``: the signal name or None)."""
        try:
            previous = self._install_stop_handlers()
            try:
                return self._run()
            finally:
                self._restore_handlers(previous)
        finally:
            self.close()

    def _run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        t = self.cfg.train
        self._write_run_files()
        if self.cfg.logging.tracker != "none":
            self.acc.init_trackers(self.cfg.logging.project, config=flat_hparams(to_container(self.cfg)))
        if self.resumed_from is not None:
            self.acc.print(f"resumed from {self.resumed_from} at step {self.step}")
        bar = tqdm(
            total=int(t.max_steps),
            initial=self.step,
            disable=not self.acc.is_local_main_process,
            desc=self.cfg.name,
            dynamic_ncols=True,
        )
        zero = torch.zeros((), device=self.device)
        window: dict[str, Any] = {"loss": zero, "grad_norm": zero, "n": 0}  # on the device until logged
        last: dict[str, float] = {}
        tic, tic_step = time.perf_counter(), self.step
        data = iter(self.loader)
        saved_batches = self.counters["batches"] if self.resumed_from is not None else -1
        sleep = self.faults.step_sleep_s
        stopped_by = None
        announced = False
        try:
            while self.step < int(t.max_steps):
                if self._stop_signal is not None and not announced:
                    announced = True
                    name = signal.Signals(self._stop_signal).name
                    print(
                        f"[rank {self.acc.process_index}] got {name}: finishing this step, then writing a "
                        f"checkpoint and stopping (exit {EXIT_PREEMPTED})",
                        file=sys.stderr,
                        flush=True,
                    )
                x, y = next(data)
                stats = self.train_step(x, y)
                if stats["applied"]:
                    bar.update(1)
                    window["loss"] = window["loss"] + stats["loss"]
                    window["grad_norm"] = window["grad_norm"] + stats["grad_norm"]
                    window["n"] += 1
                    if self.step % int(t.log_every) == 0 or self.step == int(t.max_steps):
                        dt = max(time.perf_counter() - tic, 1e-9)
                        n = max(window["n"], 1)
                        loss_sum, gn_sum = torch.stack([window["loss"], window["grad_norm"]]).tolist()
                        last = {
                            "loss": loss_sum / n,
                            "grad_norm": gn_sum / n,
                            "lr": stats["lr"],
                            "steps_per_sec": (self.step - tic_step) / dt,
                            "images_per_sec": (self.step - tic_step) * int(t.global_batch_size) / dt,
                            "nonfinite_total": float(self.counters["nonfinite_total"]),
                        }
                        if self.scaler is not None:
                            last["overflow_total"] = float(self.counters["overflow_total"])
                        self.acc.log({f"train/{k}": v for k, v in last.items()}, step=self.step)
                        bar.set_postfix(loss=f"{last['loss']:.4f}", gn=f"{last['grad_norm']:.3f}")
                        window = {"loss": zero, "grad_norm": zero, "n": 0}
                        tic, tic_step = time.perf_counter(), self.step
                    if t.ckpt_every and self.step % int(t.ckpt_every) == 0:
                        self.save()
                        saved_batches = self.counters["batches"]
                    if t.grid.every and self.step % int(t.grid.every) == 0:
                        self.sample_grid()
                    if t.fid.every and self.step % int(t.fid.every) == 0:
                        self.in_loop_fid()
                if sleep > 0:
                    time.sleep(sleep)
                if stats["stop"] and self.step < int(t.max_steps):
                    stopped_by = (
                        signal.Signals(self._stop_signal).name
                        if self._stop_signal is not None
                        else "a signal to another process"
                    )
                    break
            if saved_batches != self.counters["batches"]:
                self.save()
        finally:
            bar.close()
            self.acc.end_training()
        if stopped_by is not None:
            self.acc.print(
                f"stopped by {stopped_by} at step {self.step}; checkpoint "
                f"{self.ckpt_root / ckpt.step_dir_name(self.step)} written; re-run the same command to "
                f"continue (exit {EXIT_PREEMPTED})"
            )
        return {
            "step": self.step,
            "counters": dict(self.counters),
            "last": last,
            "output_dir": str(self.out_dir),
            "is_main_process": self.acc.is_main_process,
            "stopped_by": stopped_by,
        }


def train(cfg: DictConfig, accelerator=None, faults: Faults | None = None) -> dict[str, Any]:
    """Build a :class:`Trainer` for ``cfg`` and run it (``faults``: injected by tests)."""
    return Trainer(cfg, accelerator, faults=faults).run()
