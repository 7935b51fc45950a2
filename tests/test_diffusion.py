"""Diffusion objective: respacing rule, VLB closed forms, analytic-Gaussian sampler checks, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vca_gen.objectives import DiffusionConfig, ObjectiveConfig, build_objective
from vca_gen.objectives.diffusion import GaussianDiffusion, beta_schedule, space_timesteps
from vca_gen.utils.rng import per_sample_generators

# data N(MU, diag SD^2) on (2, 2, 2) "images"
MU = torch.tensor([0.5, -0.4, 0.0, 0.8, 0.3, -0.2, 0.6, -0.6]).view(1, 2, 2, 2)
SD = torch.tensor([0.5, 1.0, 0.8, 0.6, 0.7, 0.6, 1.0, 0.9]).view(1, 2, 2, 2)
N = 4096


# ----------------------------------------------------------------------------------------------
# respacing: an independent re-derivation of improved-DDPM's space_timesteps
# ----------------------------------------------------------------------------------------------
def _reference_spacing(T: int, spec: str) -> list[int]:
    if spec.startswith("ddim"):
        n = int(spec[4:])
        stride = next(s for s in range(1, T) if math.ceil(T / s) == n)
        return [k * stride for k in range(n)]
    counts = [int(c) for c in spec.split(",")]
    bounds, start = [], 0
    for i in range(len(counts)):  # section sizes: first T % len sections one longer
        size = T // len(counts) + (i < T % len(counts))
        bounds.append((start, size))
        start += size
    out = set()
    for (start, size), count in zip(bounds, counts):
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        acc = 0.0
        for _ in range(count):
            out.add(start + int(round(acc)))  # Python's round (half to even), like upstream
            acc = acc + stride
    return sorted(out)


@pytest.mark.parametrize("spec", ["250", "100", "50", "25", "ddim50", "ddim25", "10,10,10", "7,3"])
def test_space_timesteps_matches_improved_ddpm_rule(spec):
    got = space_timesteps(1000, spec)
    assert got == _reference_spacing(1000, spec)
    if not spec.startswith("ddim") and "," not in spec:
        assert len(got) == int(spec) and got[0] == 0 and got[-1] == 999


def test_known_spacings():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    assert space_timesteps(100, "3") == [0, 50, 99]  # stride 49.5 → round(49.5) = 50 (Python rounding)
    assert space_timesteps(1000, 250) == space_timesteps(1000, "250")


def test_respaced_chain_keeps_alphas_cumprod_and_maps_to_original_indices():
    base = GaussianDiffusion(beta_schedule("linear", 1000))
    keep = space_timesteps(1000, "50")
    chain = base.respaced(keep)
    np.testing.assert_allclose(chain.alphas_cumprod, base.alphas_cumprod[keep], rtol=1e-12)
    assert chain.model_time(torch.arange(50)).tolist() == [float(k) for k in keep]


def test_beta_schedules():
    b = beta_schedule("linear", 1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02) and len(b) == 1000
    c = beta_schedule("cosine", 1000)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    ab = np.cumprod(1 - c)
    np.testing.assert_allclose(ab[:900], [f((i + 1) / 1000) / f(0) for i in range(900)], rtol=1e-9)
    assert c.max() <= 0.999


# ----------------------------------------------------------------------------------------------
# VLB term vs float64 closed forms
# ----------------------------------------------------------------------------------------------
def _phi_tanh(x):  # improved-DDPM's CDF approximation, in float64
    return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def test_vb_term_equals_closed_form_kl_and_decoder_nll():
    T = 1000
    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    log_post_clipped = np.log(np.append(post_var[1], post_var[1:]))

    g = torch.Generator().manual_seed(1)
    B, shape = 6, (6, 2, 3, 3)
    x0 = torch.randint(0, 256, shape, generator=g).double() / 127.5 - 1  # on the 8-bit grid
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    out = torch.randn((B, 4, 3, 3), generator=g, dtype=torch.float64)
    out[:, 2:] = out[:, 2:].tanh()  # v in [-1, 1]
    t = torch.tensor([0, 0, 1, 17, 500, 999])
    d = GaussianDiffusion(betas)
    xt = d.q_sample(x0, t, eps)
    got = d.vb_terms_bpd(out, x0, xt, t, "learned_range").numpy()

    X0, E, OUT, XT = x0.numpy(), out[:, :2].numpy(), out.numpy(), xt.numpy()
    for i, ti in enumerate(t.tolist()):
        a, ap, be = ab[ti], ab_prev[ti], betas[ti]
        x0_hat = (XT[i] - np.sqrt(1 - a) * E[i]) / np.sqrt(a)
        c1, c2 = be * np.sqrt(ap) / (1 - a), (1 - ap) * np.sqrt(1 - be) / (1 - a)
        mean_p = c1 * x0_hat + c2 * XT[i]
        frac = (OUT[i, 2:] + 1) / 2
        logvar_p = frac * np.log(be) + (1 - frac) * log_post_clipped[ti]
        if ti == 0:
            # discretized Gaussian decoder: P(bin of x0), bins of width 2/255, open at ±1
            s = np.exp(0.5 * logvar_p)
            hi = np.where(X0[i] > 0.999, 1.0, _phi_tanh((X0[i] + 1 / 255 - mean_p) / s))
            lo = np.where(X0[i] < -0.999, 0.0, _phi_tanh((X0[i] - 1 / 255 - mean_p) / s))
            want = -np.log(np.maximum(hi - lo, 1e-12)).mean() / np.log(2)
        else:
            mean_q = c1 * X0[i] + c2 * XT[i]
            var_q = post_var[ti]
            kl = 0.5 * (
                logvar_p - np.log(var_q) + var_q / np.exp(logvar_p) + (mean_q - mean_p) ** 2 / np.exp(logvar_p) - 1
            )
            want = kl.mean() / np.log(2)
        assert got[i] == pytest.approx(want, rel=1e-9, abs=1e-12), (ti, got[i], want)


def test_hybrid_loss_mse_and_detached_mean():
    obj = build_objective({"kind": "diffusion"})
    x = torch.rand(3, 2, 4, 4) * 2 - 1
    w = torch.zeros(1, requires_grad=True)
    w2 = torch.full((1,), 0.1, requires_grad=True)

    def model(xt, t, y):  # ε output depends on w, v output on w2
        return torch.cat([xt * w, (xt * w2).tanh()], 1)

    g = torch.Generator().manual_seed(0)
    out = obj.training_losses(model, x, torch.zeros(3, dtype=torch.long), generator=g)
    assert out["loss"].shape == (3,)
    # recompute the MSE from the same draws
    g = torch.Generator().manual_seed(0)
    t = (torch.rand(3, generator=g) * 1000).long()
    noise = torch.randn(x.shape, generator=g)
    assert torch.equal(out["t"], t)
    torch.testing.assert_close(out["mse"], noise.pow(2).mean((1, 2, 3)))
    torch.testing.assert_close(out["loss"], out["mse"] + out["vb"])
    # the vb term must not push the ε prediction: gradient of vb w.r.t. w is zero
    gw, gw2 = torch.autograd.grad(out["vb"].sum(), [w, w2], retain_graph=True, allow_unused=True)
    assert gw is None or gw.abs().item() == 0.0
    assert gw2.abs().item() > 0  # ... but trains the variance
    (gm,) = torch.autograd.grad(out["mse"].sum(), w)
    assert gm.abs().item() > 0


# ----------------------------------------------------------------------------------------------
# samplers on analytic Gaussian data
# ----------------------------------------------------------------------------------------------
def _analytic_eps(learned: bool):
    """Exact E[ε | x_t] for x₀ ~ N(MU, SD²): x_t = √ᾱ x₀ + √(1−ᾱ) ε."""
    ab = torch.tensor(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), dtype=torch.float32)

    def model(x, t, y):
        assert torch.all(t == t.round()) and t.min() >= 0 and t.max() <= 999  # original integer indices
        a = ab[t.long()].view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() / (a * SD**2 + 1 - a) * (x - a.sqrt() * MU)
        return torch.cat([eps, torch.zeros_like(eps)], 1) if learned else eps

    return model


def _check_moments(x):
    assert torch.isfinite(x).all()
    mean_err = (x.mean(0) - MU[0]).abs().max().item()
    std_err = (x.std(0) / SD[0] - 1).abs().max().item()
    assert mean_err < 0.05 and std_err < 0.05, (mean_err, std_err)


@pytest.mark.parametrize(
    "sampler,steps,opts,learned,fixed,nfe",
    [
        ("ddpm", "250", {}, False, "large", 250),
        ("ddpm", "250", {}, False, "small", 250),
        ("ddpm", "250", {}, True, "large", 250),
        ("ddpm", "100,50,25", {}, False, "large", 175),
        ("ddim", "ddim100", {}, False, "large", 100),
        ("ddim", "250", {"eta": 1.0}, False, "large", 250),
        ("dpm-solver++", 50, {}, False, "large", 50),
        ("dpm-solver++", 50, {"order": 3}, True, "large", 50),
    ],
)
def test_samplers_reproduce_gaussian_data(sampler, steps, opts, learned, fixed, nfe):
    obj = build_objective({"kind": "diffusion", "diffusion": {"fixed_variance": fixed}})
    noise = torch.randn(N, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(N, dtype=torch.long)
    out = obj.sample(
        _analytic_eps(learned),
        noise,
        y,
        sampler=sampler,
        steps=steps,
        generator=torch.Generator().manual_seed(1),
        **opts,
    )
    assert out.nfe == nfe
    _check_moments(out.x)


def test_ddim_eta1_equals_ddpm_with_posterior_variance():
    """Two code paths, one process: DDIM at η = 1 is ancestral sampling with σ² = β̃_t."""
    noise = torch.randn(64, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(64, dtype=torch.long)
    obj = build_objective({"diffusion": {"fixed_variance": "small"}})
    a = obj.sample(_analytic_eps(False), noise, y, steps="30", generator=torch.Generator().manual_seed(1)).x
    b = obj.sample(
        _analytic_eps(False), noise, y, sampler="ddim", steps="30", eta=1.0, generator=torch.Generator().manual_seed(1)
    ).x
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler,opts", [("ddpm", {}), ("ddim", {"eta": 0.7})])
def test_per_sample_generators_make_samples_batch_independent(sampler, opts):
    obj = build_objective({"kind": "diffusion"})
    seeds = [11, 12, 13, 14]
    noise = torch.randn(4, 2, 2, 2, generator=torch.Generator().manual_seed(5))
    y = torch.zeros(4, dtype=torch.long)
    model = _analytic_eps(True)
    full = obj.sample(model, noise, y, sampler=sampler, steps="20", generator=per_sample_generators(seeds), **opts).x
    part = obj.sample(
        model,
        noise[[1, 3]],
        y[:2],
        sampler=sampler,
        steps="20",
        generator=per_sample_generators([seeds[1], seeds[3]]),
        **opts,
    ).x
    torch.testing.assert_close(full[[1, 3]], part, rtol=1e-5, atol=1e-6)
    other = obj.sample(
        model, noise, y, sampler=sampler, steps="20", generator=per_sample_generators([1, 2, 3, 4]), **opts
    ).x
    assert not torch.allclose(full, other)  # the stochastic steps do use the generators


def test_default_sampler_is_ddpm_250():
    obj = build_objective(None)
    assert (obj.default_sampler, obj.default_steps) == ("ddpm", "250")
    assert obj.samplers == ("ddpm", "ddim", "dpm-solver++")
    out = obj.sample(_analytic_eps(True), torch.randn(2, 2, 2, 2), torch.zeros(2, dtype=torch.long))
    assert out.nfe == 250


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
def test_bad_input_errors():
    obj = build_objective(None)
    model = _analytic_eps(False)
    x, y = torch.randn(2, 2, 2, 2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="accepted: ddpm, ddim, dpm-solver\\+\\+"):
        obj.sample(model, x, y, sampler="euler")
    with pytest.raises(ValueError, match=">= 1"):
        obj.sample(model, x, y, steps=0)
    with pytest.raises(ValueError, match=">= 1"):
        obj.sample(model, x, y, steps="ddim0")
    with pytest.raises(ValueError, match="1..1000"):
        obj.sample(model, x, y, sampler="dpm-solver++", steps=0)
    with pytest.raises(ValueError, match="integer stride"):
        space_timesteps(1000, "ddim3000")
    with pytest.raises(ValueError, match="cannot divide"):
        space_timesteps(10, "20")
    with pytest.raises(ValueError, match="accepted: \\['clip_denoised', 'eta'\\]"):
        obj.sample(model, x, y, sampler="ddim", order=2)
    with pytest.raises(ValueError, match="accepted: 2 .* or 4"):
        obj.check_channels(2, 3)
    with pytest.raises(ValueError, match="accepted: 2 .* or 4"):
        obj.sample(lambda a, t, c: torch.zeros(2, 3, 2, 2), x, y, steps="5")
    with pytest.raises(ValueError, match="accepted: 2 .* or 4"):
        obj.training_losses(lambda a, t, c: torch.zeros(2, 5, 2, 2), x, y)
    with pytest.raises(ValueError, match="accepted: linear, cosine"):
        build_objective({"kind": "diffusion", "diffusion": {"beta_schedule": "quadratic"}})
    with pytest.raises(ValueError, match="accepted: large, small"):
        build_objective(ObjectiveConfig(diffusion=DiffusionConfig(fixed_variance="medium")))
    with pytest.raises(ValueError, match="accepted: diffusion, flow"):
        build_objective({"kind": "gan"})
