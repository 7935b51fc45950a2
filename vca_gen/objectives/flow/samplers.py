"""Integrators for the transport (all receive a counting, already-guided ``model_fn``) and their
registry entries (:mod:`vca_gen.objectives.registry`, at the end of this file).

Time runs from t0 (≈0, noise) to t1 (≈1, data).

* ``ode``: adaptive torchdiffeq solver (default dopri5, atol/rtol) on dx/dt = v(x, t).
  NFE is whatever the solver needs; adaptive steps are chosen on the whole batch.
* ``euler`` / ``heun``: fixed steps on the grid ``linspace(t0, t1, steps + 1)``
  (NFE = steps, resp. 2·steps).
* ``sde``: Euler–Maruyama on the grid ``linspace(t0, t1, steps)`` as SiT (steps − 1 stochastic
  steps), then a last step at t1: "mean" x + f(x)·h, "tweedie" x̂₁ = (x − σ x̂₀)/α, "euler"
  x + v·h, or "none" (NFE = steps − 1 + [last step]).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from vca_gen.objectives.flow.sde import DIFFUSION_FORMS, LAST_STEPS, check_last_step, diffusion_coefficient
from vca_gen.objectives.flow.transport import Transport
from vca_gen.objectives.registry import (
    SampleCall,
    Sampler,
    SamplerOption,
    integer_steps,
    number,
    one_of,
    register,
)
from vca_gen.utils.rng import GeneratorSpec, randn_like

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
check_ode_method = one_of(ADAPTIVE_METHODS)  # (key, value, resolved) -> value


class _Model:
    """Turns a raw ``model_fn`` into velocity / score evaluations at a scalar time."""

    def __init__(self, transport: Transport, model_fn: Callable, labels: torch.Tensor, channels: int):
        self.tr, self.fn, self.y, self.c = transport, model_fn, labels, channels

    def pred(self, x: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prediction channels at time ``t``: a Python float, or a 0-dim tensor (the adaptive
        solver's time, kept on the device: no device→host read per evaluation)."""
        if isinstance(t, torch.Tensor):
            tb = t.to(device=x.device, dtype=x.dtype).reshape(1).expand(x.shape[0]).contiguous()
        else:
            tb = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
        out = self.fn(x, tb, self.y)
        if out.shape[1] not in (self.c, 2 * self.c):
            raise ValueError(
                f"flow objective: model outputs {out.shape[1]} channels for {self.c} input channels; "
                f"accepted: {self.c} or {2 * self.c} (second half ignored)"
            )
        return out[:, : self.c].to(x.dtype), tb  # bf16 under autocast → the sampler's dtype

    def velocity(self, x, t):
        p, tb = self.pred(x, t)
        return self.tr.path.velocity_from(p, x, tb, self.tr.prediction)


def _progress(pairs: list, progress: bool):
    if progress:
        from tqdm.auto import tqdm

        return tqdm(pairs)
    return pairs


def _grid(t0: float, t1: float, n: int, progress: bool):
    """(t_a, t_b) pairs of ``linspace(t0, t1, n)`` as Python floats (built on the host, once)."""
    ts = torch.linspace(t0, t1, n, dtype=torch.float64).tolist()
    return _progress(list(zip(ts[:-1], ts[1:])), progress)


def euler_sample(m: _Model, x: torch.Tensor, t0: float, t1: float, steps: int, progress=False) -> torch.Tensor:
    for ta, tb in _grid(t0, t1, steps + 1, progress):
        x = x + (tb - ta) * m.velocity(x, ta)
    return x


def heun_sample(m: _Model, x: torch.Tensor, t0: float, t1: float, steps: int, progress=False) -> torch.Tensor:
    """Heun's second-order method (explicit trapezoid)."""
    for ta, tb in _grid(t0, t1, steps + 1, progress):
        h = tb - ta
        d0 = m.velocity(x, ta)
        x_pred = x + h * d0
        x = x + 0.5 * h * (d0 + m.velocity(x_pred, tb))
    return x


def ode_sample(
    m: _Model, x: torch.Tensor, t0: float, t1: float, method: str = "dopri5", atol: float = 1e-6, rtol: float = 1e-3
) -> torch.Tensor:
    from torchdiffeq import odeint  # ``method``: checked once, by the "ode" entry's option check

    ts = torch.tensor([t0, t1], device=x.device, dtype=x.dtype)
    # step_t makes the adaptive solver land on t1 instead of stepping past it and interpolating, so
    # the model is never queried outside [t0, t1] (t > 1 is undefined, e.g. σ_t is NaN on VP).
    options = {"step_t": ts[1:]}
    return odeint(lambda t, z: m.velocity(z, t), x, ts, method=method, atol=atol, rtol=rtol, options=options)[-1]


def sde_sample(
    m: _Model,
    x: torch.Tensor,
    t0: float,
    t1: float,
    steps: int,
    diffusion_form: str = "sigma",
    diffusion_norm: float = 1.0,
    last_step: str = "mean",
    last_step_size: float = 0.04,
    generator: GeneratorSpec = None,
    progress=False,
) -> torch.Tensor:
    """Euler–Maruyama x ← x + [v + w s]·dt + √(2 w dt)·z, then the last step."""
    path, pred_kind = m.tr.path, m.tr.prediction
    last_step = check_last_step(last_step)

    grid = _grid(t0, t1, steps, False)
    # w(t) at every drift time (the grid's left ends, then t1), once on the host in float64
    times = torch.tensor([ta for ta, _ in grid] + [t1], dtype=torch.float64)
    ws = diffusion_coefficient(path, times, diffusion_form, diffusion_norm).tolist()

    def drift(x, t, w):
        p, tb = m.pred(x, t)
        return path.velocity_from(p, x, tb, pred_kind) + w * path.score_from(p, x, tb, pred_kind)

    for (ta, tb), w in zip(_progress(grid, progress), ws):
        dt = tb - ta
        f = drift(x, ta, w)
        x = x + f * dt + (2.0 * w * dt) ** 0.5 * randn_like(x, generator)
    if last_step == "mean":
        x = x + drift(x, t1, ws[-1]) * last_step_size
    elif last_step == "tweedie":
        p, tb = m.pred(x, t1)
        x = path.data_from(p, x, tb, pred_kind)
    elif last_step == "euler":
        x = x + m.velocity(x, t1) * last_step_size
    return x


# --------------------------------------------------------------------------------------------
# Registry entries (run(call) adapts a SampleCall to the integrators above)
# --------------------------------------------------------------------------------------------
def _model(call: SampleCall) -> _Model:
    return _Model(call.objective.transport, call.model_fn, call.labels, call.noise.shape[1])


def _run_euler(call: SampleCall) -> torch.Tensor:
    t0, t1 = call.objective.transport.interval(eval=True)
    return euler_sample(_model(call), call.noise, t0, t1, call.steps, call.progress)


def _run_heun(call: SampleCall) -> torch.Tensor:
    t0, t1 = call.objective.transport.interval(eval=True)
    return heun_sample(_model(call), call.noise, t0, t1, call.steps, call.progress)


def _run_ode(call: SampleCall) -> torch.Tensor:
    o = call.options
    t0, t1 = call.objective.transport.interval(eval=True)
    return ode_sample(_model(call), call.noise, t0, t1, o["ode_method"], o["atol"], o["rtol"])


def _run_sde(call: SampleCall) -> torch.Tensor:
    o = call.options
    form, last, size = o["diffusion_form"], o["last_step"], o["last_step_size"]
    t0, t1 = call.objective.transport.interval(eval=True, sde=True, diffusion_form=form, last_step_size=size)
    m = _model(call)
    return sde_sample(
        m, call.noise, t0, t1, call.steps, form, o["diffusion_norm"], last, size, call.generator, call.progress
    )


def _last_step_size(key: str, value: Any, resolved: Mapping[str, Any]) -> float:
    """In (0, 1); not used (0) when the last step is "none"."""
    if resolved.get("last_step") == "none":
        return 0.0
    return number(0.0, 1.0, "()")(key, value, resolved)


_FORMS, _LASTS = ", ".join(DIFFUSION_FORMS), ", ".join(LAST_STEPS)
SDE_OPTIONS = (
    SamplerOption("diffusion_form", one_of(DIFFUSION_FORMS), f"the SDE's w(t): {_FORMS}", "diffusion_form"),
    SamplerOption("diffusion_norm", number(), "scale of w(t) (> 0)", "diffusion_norm"),
    SamplerOption("last_step", one_of(LAST_STEPS, none_as="none"), f"the step to t1: {_LASTS}", "last_step"),
    SamplerOption("last_step_size", _last_step_size, "size of the last step, in (0, 1)", "last_step_size"),
)
ODE_OPTIONS = (
    SamplerOption("atol", number(), "absolute tolerance (> 0)", "atol"),
    SamplerOption("rtol", number(), "relative tolerance (> 0)", "rtol"),
    SamplerOption("ode_method", check_ode_method, "torchdiffeq method: " + ", ".join(ADAPTIVE_METHODS), "ode_method"),
)

for _entry in (
    Sampler(
        "flow",
        "sde",
        _run_sde,
        default_steps=250,
        parse_steps=integer_steps("sde", 2),
        steps_help="an integer >= 2 for the sde sampler",
        nfe="steps - 1, + 1 unless last_step=none",
        help="SiT's Euler-Maruyama SDE (its FID protocol: 250 steps, sigma, last step mean 0.04)",
        options=SDE_OPTIONS,
    ),
    Sampler(
        "flow",
        "ode",
        _run_ode,
        default_steps=0,
        parse_steps=integer_steps("ode", 0),
        steps_help="an integer >= 0 for the ode sampler (ignored: its steps are adaptive)",
        nfe="adaptive (whatever the solver needs)",
        help="adaptive torchdiffeq ODE solver (dopri5 by default) on the probability-flow ODE",
        options=ODE_OPTIONS,
    ),
    Sampler(
        "flow",
        "euler",
        _run_euler,
        default_steps=100,
        parse_steps=integer_steps("euler", 1),
        steps_help="an integer >= 1 for the euler sampler",
        nfe="steps",
        help="fixed-step Euler on the ODE",
    ),
    Sampler(
        "flow",
        "heun",
        _run_heun,
        default_steps=50,
        parse_steps=integer_steps("heun", 1),
        steps_help="an integer >= 1 for the heun sampler",
        nfe="2 * steps",
        help="fixed-step Heun (explicit trapezoid) on the ODE",
    ),
):
    register(_entry)
