"""SiT's transport: a path + a model parameterisation, its training loss and time intervals.

Training (SiT ``Transport.training_losses``): t ~ U[t0, t1], x₀ ~ N(0, I), x_t = α x₁ + σ x₀.

* velocity: ``mean (v̂ − u_t)²`` (loss weights do not apply, as in SiT);
* noise:    ``mean w·(ε̂ − x₀)²``;  score: ``mean w·(σ ŝ + x₀)²``;
  with w = 1 ("none"), (w_SBDM/σ)² ("velocity") or w_SBDM/σ² ("likelihood"), w_SBDM = (α'/α)σ² − σσ'.
"""

from __future__ import annotations

import torch

from vca_gen.objectives.flow.path import PREDICTIONS, Path, expand_t
from vca_gen.utils import rng

LOSS_WEIGHTS = ("none", "velocity", "likelihood")


def default_eps(path: str, prediction: str) -> tuple[float, float]:
    """SiT's (train_eps, sample_eps) defaults: VP 1e-5 / 1e-3; Linear/GVP 1e-3 / 1e-3 for score and
    noise predictions; 0 / 0 for velocity (stable everywhere)."""
    if path == "vp":
        return 1e-5, 1e-3
    if prediction != "velocity":
        return 1e-3, 1e-3
    return 0.0, 0.0


class Transport:
    """``path`` + ``prediction`` + ``loss_weight`` with SiT's endpoint epsilons."""

    def __init__(
        self,
        path: Path,
        prediction: str = "velocity",
        loss_weight: str = "none",
        train_eps: float | None = None,
        sample_eps: float | None = None,
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; accepted: {', '.join(PREDICTIONS)}")
        if loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"unknown loss_weight {loss_weight!r}; accepted: {', '.join(LOSS_WEIGHTS)}")
        d_train, d_sample = default_eps(path.name, prediction)
        self.train_eps = d_train if train_eps is None else float(train_eps)
        self.sample_eps = d_sample if sample_eps is None else float(sample_eps)
        for name, v in (("train_eps", self.train_eps), ("sample_eps", self.sample_eps)):
            if not 0 <= v < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {v}")
        self.path, self.prediction, self.loss_weight = path, prediction, loss_weight

    # -- intervals (SiT's check_interval) ----------------------------------------------------
    def interval(
        self, eval: bool, sde: bool = False, diffusion_form: str = "sbdm", last_step_size: float = 0.0
    ) -> tuple[float, float]:
        """(t0, t1) for training (``eval=False``) or sampling, as SiT's ``check_interval``.

        Sampling with the "sbdm" diffusion on Linear/GVP starts at ``max(eps, 1e-3)``: its
        coefficient (α'/α)σ² is infinite at t = 0 (upstream SiT yields NaN there with eps = 0).
        """
        eps = self.sample_eps if eval else self.train_eps
        t0, t1 = 0.0, 1.0
        end = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        if self.path.name == "vp":
            t1 = end
        elif self.prediction != "velocity" or sde:
            sbdm = sde and diffusion_form == "sbdm"
            t0 = eps if (sbdm or self.prediction != "velocity") else 0.0
            if sbdm:
                t0 = max(t0, 1e-3)
            t1 = end
        return t0, t1

    # -- training loss -----------------------------------------------------------------------
    def training_losses(
        self, model_fn, x1: torch.Tensor, y: torch.Tensor, generator=None, t: torch.Tensor | None = None
    ) -> dict:
        """Per-sample loss (B,) for data ``x1`` (B, C, ...); ``t`` (B,) drawn in the train interval."""
        b, c = x1.shape[:2]
        t0, t1 = self.interval(eval=False)
        if t is None:
            t = rng.rand((b,), generator, device=x1.device, dtype=x1.dtype) * (t1 - t0) + t0
        x0 = rng.randn_like(x1, generator)
        xt, ut = self.path.plan(t, x0, x1)
        out = model_fn(xt, t, y)
        if out.shape[1] not in (c, 2 * c):
            raise ValueError(
                f"flow objective: model outputs {out.shape[1]} channels for {c} input channels; "
                f"accepted: {c} or {2 * c} (second half ignored)"
            )
        if out.shape[0] != b or out.shape[2:] != x1.shape[2:]:
            raise ValueError(f"model output {tuple(out.shape)} does not match input {tuple(x1.shape)}")
        pred = out[:, :c]
        dims = tuple(range(1, x1.dim()))
        if self.prediction == "velocity":
            loss = ((pred - ut) ** 2).mean(dim=dims)
        else:
            tt = expand_t(t, x1)
            sigma = self.path.sigma(tt)[0]
            if self.loss_weight == "velocity":
                w = (self.path.drift_var(tt) / sigma) ** 2
            elif self.loss_weight == "likelihood":
                w = self.path.drift_var(tt) / sigma**2
            else:
                w = torch.ones_like(sigma)
            err = pred - x0 if self.prediction == "noise" else pred * sigma + x0
            loss = (w * err**2).mean(dim=dims)
        return {"loss": loss, "t": t}
