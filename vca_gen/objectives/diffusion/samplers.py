"""Samplers for :class:`GaussianDiffusion` (all receive a counting, already-guided ``model_fn``) and
their registry entries (:mod:`vca_gen.objectives.registry`, at the end of this file).

* ``ddpm``: ancestral sampling p(x_{t-1}|x_t) over a (respaced) chain — DiT's FID protocol.
* ``ddim``: DDIM with stochasticity η (η = 0 deterministic, η = 1 ≈ DDPM with fixed-small σ).
* ``dpm-solver++``: multistep DPM-Solver++ (order 1–3) through diffusers'
  ``DPMSolverMultistepScheduler`` configured with the same β; the model is called at diffusers'
  "linspace" timesteps (original indices 0..T-1).

Fresh noise at every stochastic step comes from :mod:`vca_gen.utils.rng`, so with per-sample
generators sample i depends only on generator i.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vca_gen.objectives.diffusion.gaussian import GaussianDiffusion, resolve_variance
from vca_gen.objectives.diffusion.respace import space_timesteps
from vca_gen.objectives.registry import SampleCall, Sampler, SamplerOption, boolean, number, one_of, register
from vca_gen.utils.rng import GeneratorSpec, randn_like


def _steps(n: int, progress: bool):
    it = range(n - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        return tqdm(it, total=n)
    return it


def _predict(
    diffusion: GaussianDiffusion,
    model_fn: Callable,
    x: torch.Tensor,
    i: int,
    labels: torch.Tensor,
    fixed_variance: str,
    clip_denoised: bool,
):
    """One model call at respaced step ``i``: the step's timestep tensor (B,) and p(x_{t-1} | x_t)."""
    t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
    model_out = model_fn(x, diffusion.model_time(t), labels)
    variance = resolve_variance(x.shape[1], model_out.shape[1], fixed_variance)
    return t, diffusion.p_mean_variance(model_out, x, t, variance, clip_denoised)


def ddpm_sample(
    diffusion: GaussianDiffusion,
    model_fn: Callable,
    noise: torch.Tensor,
    labels: torch.Tensor,
    fixed_variance: str = "large",
    generator: GeneratorSpec = None,
    clip_denoised: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling from x_K = ``noise`` down to x_0 (K = diffusion.num_timesteps).

    The variance is learned-range for 2·C model outputs, ``fixed_variance`` for C outputs.
    """
    x = noise
    for i in _steps(diffusion.num_timesteps, progress):
        t, out = _predict(diffusion, model_fn, x, i, labels, fixed_variance, clip_denoised)
        x = out["mean"]
        if i > 0:  # no noise at the last step
            x = x + torch.exp(0.5 * out["log_variance"]) * randn_like(x, generator)
    return x


def ddim_sample(
    diffusion: GaussianDiffusion,
    model_fn: Callable,
    noise: torch.Tensor,
    labels: torch.Tensor,
    fixed_variance: str = "large",
    eta: float = 0.0,
    generator: GeneratorSpec = None,
    clip_denoised: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM: x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 − ᾱ_{t-1} − σ²) ε̂ + σ z,
    σ = η √((1 − ᾱ_{t-1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t-1})."""
    if eta < 0:
        raise ValueError(f"ddim_eta must be >= 0, got {eta}")
    x = noise
    for i in _steps(diffusion.num_timesteps, progress):
        t, out = _predict(diffusion, model_fn, x, i, labels, fixed_variance, clip_denoised)
        ab = diffusion.extract("alphas_cumprod", t, x)
        ab_prev = diffusion.extract("alphas_cumprod_prev", t, x)
        sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
        x = out["pred_xstart"] * torch.sqrt(ab_prev) + torch.sqrt((1 - ab_prev - sigma**2).clamp(min=0)) * out["eps"]
        if i > 0 and eta > 0:
            x = x + sigma * randn_like(x, generator)
    return x


def dpm_solver_pp_sample(
    base: GaussianDiffusion,
    model_fn: Callable,
    noise: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    order: int = 2,
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic multistep DPM-Solver++ (data prediction) over the *unrespaced* chain ``base``."""
    from diffusers import DPMSolverMultistepScheduler

    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver_order must be 1, 2 or 3, got {order}")
    if not 1 <= steps <= base.num_timesteps:
        raise ValueError(f"dpm-solver++ steps must be in 1..{base.num_timesteps}, got {steps}")
    sched: Any = DPMSolverMultistepScheduler(  # (diffusers' lazy module hides its methods from mypy)
        num_train_timesteps=base.num_timesteps,
        trained_betas=base.betas.tolist(),
        algorithm_type="dpmsolver++",
        solver_order=order,
        prediction_type="epsilon",
        timestep_spacing="linspace",
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    sched.set_timesteps(steps, device=noise.device)
    x = noise
    c = x.shape[1]
    # model times read back once (not one device sync per step); the scheduler gets its own tensors
    steps_: Any = list(zip(sched.timesteps, sched.timesteps.tolist()))
    if progress:
        from tqdm.auto import tqdm

        steps_ = tqdm(steps_)
    for ts, ts_host in steps_:
        t_model = torch.full((x.shape[0],), float(ts_host), device=x.device)
        eps = model_fn(x, t_model, labels)[:, :c].to(x.dtype)  # diffusers casts its result to eps' dtype
        x = sched.step(eps, ts, x, return_dict=False)[0]
    return x


# --------------------------------------------------------------------------------------------
# Registry entries (run(call) adapts a SampleCall to the samplers above)
# --------------------------------------------------------------------------------------------
def _respacing(steps: Any, cfg: Any) -> list[int]:
    """ddpm / ddim steps: improved-DDPM's respacing ("250", "10,10,10", "ddim50" or an int >= 1)."""
    if isinstance(steps, int) and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return space_timesteps(int(cfg.num_timesteps), steps)


def _dpm_steps(steps: Any, cfg: Any) -> int:
    """dpm-solver++ steps: an integer in 1..T."""
    try:
        n = int(steps)
    except (TypeError, ValueError):
        raise ValueError(f"dpm-solver++ steps must be an integer, got {steps!r}") from None
    if not 1 <= n <= int(cfg.num_timesteps):
        raise ValueError(f"steps must be in 1..{cfg.num_timesteps}, got {steps!r}")
    return n


def _run_ddpm(call: SampleCall) -> torch.Tensor:
    obj = call.objective
    chain = obj.diffusion.respaced(call.steps)
    o = call.options
    return ddpm_sample(
        chain, call.model_fn, call.noise, call.labels, obj.cfg.fixed_variance, call.generator, o["clip_denoised"],
        call.progress,
    )  # fmt: skip


def _run_ddim(call: SampleCall) -> torch.Tensor:
    obj = call.objective
    chain = obj.diffusion.respaced(call.steps)
    o = call.options
    return ddim_sample(
        chain, call.model_fn, call.noise, call.labels, obj.cfg.fixed_variance, o["eta"], call.generator,
        o["clip_denoised"], call.progress,
    )  # fmt: skip


def _run_dpm(call: SampleCall) -> torch.Tensor:
    obj = call.objective
    return dpm_solver_pp_sample(
        obj.diffusion, call.model_fn, call.noise, call.labels, call.steps, call.options["order"], call.progress
    )


CLIP = SamplerOption("clip_denoised", boolean, "true/false: clamp the predicted x_0 to [-1, 1]", "clip_denoised")
RESPACING = "a step count, a respacing such as '10,10,10' or 'ddim50'"

for _entry in (
    Sampler(
        "diffusion",
        "ddpm",
        _run_ddpm,
        default_steps="250",
        parse_steps=_respacing,
        steps_help=RESPACING,
        nfe="one per kept step of the respacing",
        help="ancestral sampling over a respaced chain (DiT's FID protocol: 250 steps)",
        options=(CLIP,),
    ),
    Sampler(
        "diffusion",
        "ddim",
        _run_ddim,
        default_steps="ddim50",
        parse_steps=_respacing,
        steps_help=RESPACING,
        nfe="one per kept step of the respacing",
        help="DDIM with stochasticity eta (0 = deterministic)",
        options=(CLIP, SamplerOption("eta", number(allow_zero=True), "DDIM stochasticity (>= 0)", "ddim_eta")),
    ),
    Sampler(
        "diffusion",
        "dpm-solver++",
        _run_dpm,
        default_steps="20",
        parse_steps=_dpm_steps,
        steps_help="an integer in 1..{num_timesteps} for dpm-solver++",
        nfe="steps",
        help="deterministic multistep DPM-Solver++ (diffusers' scheduler on the same betas)",
        options=(SamplerOption("order", one_of((1, 2, 3)), "solver order: 1, 2, 3", "dpm_solver_order"),),
    ),
):
    register(_entry)
