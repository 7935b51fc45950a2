"""The training loop (``train.py`` → :func:`train`), through 🤗 accelerate.

The trainer is split along its seams; this module sets a run up and runs the loop:

- :mod:`vca_gen.train.step` — one optimizer step (global batch, micro-batches, per-row random
  streams, non-finite and fp16-overflow handling) and the rules it follows (LR and EMA warm-up);
- :mod:`vca_gen.train.resume` — the run-directory lock and the one resume decision (the main process
  decides, every process verifies);
- :mod:`vca_gen.train.checkpointing` — save, load (refusing a run-defining change) and ``init_from``;
- :mod:`vca_gen.train.loop` — the loop: logging, checkpoint cadence, periodic work, stopping;
- :mod:`vca_gen.train.periodic` — preview grids and in-loop FID;
- :mod:`vca_gen.train.signals` — SIGTERM / SIGUSR1 / SIGINT: finish the step, checkpoint, exit 75.

The trainer reads the experiment as typed section objects (:func:`vca_gen.experiment.schema.typed_experiment`),
validated once at load time, and keeps the DictConfig only to record it (``config.yaml``, trackers).

**Steps** count *applied* optimizer updates; the LR warm-up and the EMA warm-up follow them. The data
order and per-item augmentation depend only on (data.seed, epoch, index); with the checkpointed
model / EMA / optimizer / loss scale / data position, resume is bit-exact on CPU. Logged loss and
grad norm are accumulated on the device and read at log steps only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

from vca_gen.data.decoder import Decoder
from vca_gen.data.factory import build_loader
from vca_gen.experiment.build import build_model, build_objective_for, class_names, decoder_spec
from vca_gen.experiment.schema import data_config, typed_experiment
from vca_gen.models.official import MatchReport
from vca_gen.train import checkpointing, loop, periodic, resume, step
from vca_gen.train.ema import EMA
from vca_gen.train.evaluation import InLoopFID
from vca_gen.train.helpers import (
    batch_geometry,
    build_dataset_for,
    check_batch_shape,
    disable_internal_label_dropout,
    resolve_mixed_precision,
)
from vca_gen.train.signals import (
    EXIT_PREEMPTED,
    STOP_SIGNALS,
    StopRequest,
    install_stop_handlers,
    installed_stop_request,
    restore_stop_handlers,
)
from vca_gen.train.step import (  # noqa: F401  (re-exported: the trainer's public names)
    MAX_OVERFLOW_STREAK,
    SEED_STREAM_STEP,
    STAGE_LOSS,
    STAGE_PREPARE,
    NonFiniteLossError,
    TrainingError,
    drop_labels,
    ema_decay_at,
    lr_at,
    step_streams,
)
from vca_gen.utils import dist
from vca_gen.utils.faults import Faults

if TYPE_CHECKING:
    from vca_gen.utils.lock import RunLock


class Trainer:
    """Builds everything from a validated experiment config; :meth:`run` trains to ``max_steps``.

    ``grad_scaler``: a ``torch.amp.GradScaler`` for fp16 loss scaling where accelerate gives none
    (on CPU; tests). Under ``mixed_precision=fp16`` on CUDA accelerate's scaler is used.
    ``faults``: injected by tests (:class:`~vca_gen.utils.faults.Faults`), none by default.
    """

    def __init__(self, cfg: DictConfig, accelerator=None, grad_scaler=None, faults: Faults | None = None):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg = cfg  # recorded as is (config.yaml, trackers); values are read from the typed view
        self.exp = exp = typed_experiment(cfg)
        t = exp.train
        self.out_dir = Path(t.output_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.lock: RunLock | None = None
        self.created_out_dir = False
        self.stop: StopRequest = installed_stop_request() or StopRequest()  # train.py installs it first
        self.faults = faults or Faults()
        tracker = exp.logging.tracker
        if accelerator is None:
            precision = resolve_mixed_precision(t.mixed_precision)  # refuses what the device cannot run
            dist.setup(t.timeout_s, "train.timeout_s")  # backend, timeout, group checked; adopted below
            accelerator = Accelerator(
                cpu=dist.use_cpu(),
                mixed_precision=precision,
                log_with=None if tracker == "none" else tracker,
                project_config=ProjectConfiguration(
                    project_dir=str(self.out_dir), logging_dir=str(self.out_dir / "logs")
                ),
            )
        self.acc = accelerator
        self.device = accelerator.device
        self.scaler = grad_scaler if grad_scaler is not None else accelerator.scaler
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = t.tf32
            torch.backends.cudnn.allow_tf32 = t.tf32

        # ---- batch geometry
        self.local_batch, self.micro_batch = batch_geometry(
            t.global_batch_size, accelerator.num_processes, t.micro_batch_size
        )

        # ---- data (errors here happen before anything is written)
        self.dataset, self.normalizer = build_dataset_for(cfg)
        self.loader = build_loader(
            data_config(cfg),
            self.dataset,
            t.global_batch_size,
            accelerator.num_processes,
            accelerator.process_index,
            device=self.device,
        )
        self.vae = None
        d = exp.data
        if d.kind == "images" and d.vae is not None:
            from vca_gen.data.vae import load_vae

            self.vae = load_vae(d.vae, subfolder=d.vae_subfolder, device=self.device)
        names = class_names(cfg) or [str(c) for c in (getattr(self.dataset, "classes", None) or [])] or None
        self.decoder_spec = decoder_spec(cfg, self.normalizer, names)
        self.decoder = Decoder(self.decoder_spec, device=self.device)
        if self.vae is not None:
            self.decoder._vae = self.vae  # the encoder's VAE decodes the grids too (no second load)

        # ---- model, objective, EMA, optimizer
        torch.manual_seed(t.seed)  # identical initial weights on every process
        self.model = build_model(cfg)
        self.objective = build_objective_for(cfg)
        self.objective.check_model(self.model)
        self.init_report: MatchReport | None = None
        check_batch_shape(self.dataset, cfg, self.vae is not None)
        disable_internal_label_dropout(self.model)
        self.model.to(self.device).train()
        self.ema = EMA(self.model, t.ema_decay).to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.torch_optimizer = torch.optim.AdamW(
            self.params,
            lr=t.lr,
            betas=(t.betas[0], t.betas[1]),
            eps=t.eps,
            weight_decay=t.weight_decay,
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
            self.resumed_from = resume.agree_on_resume(self)
            if self.resumed_from is not None:
                checkpointing.load(self, self.resumed_from)
            elif exp.model.init_from:
                checkpointing.init_from(self, exp.model.init_from)
            self.fid = InLoopFID(exp, self.device) if t.fid.every else None

            self.ddp_model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
            self.forward = torch.compile(self.ddp_model) if t.compile else self.ddp_model
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ the seams
    def close(self) -> None:
        """Release the run lock (main process); removes an output dir this run created and left empty."""
        resume.release(self)

    def save(self) -> Path | None:
        """Checkpoint the current step (main process writes; all processes must call)."""
        return checkpointing.save(self)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """One global batch on this process's share: forward/backward, then the optimizer update
        unless the loss or gradient is not finite. Returns ``loss`` and ``grad_norm`` as device
        tensors (read them only when logging), ``lr``, ``skipped`` (0/1), ``applied`` and ``stop``
        (a stop signal reached some process: every process sees the same value). Several processes:
        the gradient all-reduce running past ``train.timeout_s``, or losing a peer, is one clear
        :class:`~vca_gen.utils.dist.DistributedError`."""
        if self.acc.num_processes == 1:
            return step.train_step(self, x, y)
        with dist.bounded(
            f"gradient all-reduce of training step {self.step + 1}",
            self.acc.process_index,
            self.acc.num_processes,
            only_backend=True,
            then=f"The last checkpoint in {self.ckpt_root} is intact: re-run the same command to continue from it",
        ):
            return step.train_step(self, x, y)

    def sample_grid(self) -> Path | None:
        return periodic.sample_grid(self)

    def in_loop_fid(self) -> float | None:
        return periodic.in_loop_fid(self)

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Train until ``train.max_steps`` applied updates, or until a stop signal; returns a summary
        (final step, counters, last logged scalars, ``stopped_by``: the signal name or None)."""
        try:
            own = installed_stop_request() is None  # train.py installed them; direct callers get ours
            if own:
                self.stop = install_stop_handlers()
            try:
                return loop.run_loop(self)
            finally:
                if own:
                    restore_stop_handlers(self.stop)
        finally:
            self.close()


def train(cfg: DictConfig, accelerator=None, faults: Faults | None = None) -> dict[str, Any]:
    """Build a :class:`Trainer` for ``cfg`` and run it (``faults``: injected by tests)."""
    return Trainer(cfg, accelerator, faults=faults).run()


__all__ = ["Trainer", "train", "TrainingError", "NonFiniteLossError", "EXIT_PREEMPTED", "STOP_SIGNALS"]
