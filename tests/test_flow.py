"""Flow (SiT transport): exact conversions, SiT's coefficients, analytic-Gaussian samplers, losses, errors.

The test writes α_t, σ_t and their derivatives for each path itself, and from them the exact
velocity / score / noise of Gaussian data N(MU, diag SD²) under x_t = α x₁ + σ x₀.
"""

from __future__ import annotations

import math

import pytest
import torch

from vca_gen.objectives import build_objective
from vca_gen.objectives.flow import diffusion_coefficient, make_path
from vca_gen.utils.rng import per_sample_generators

MU = torch.tensor([0.5, -0.4, 0.0, 0.8, 0.3, -0.2, 0.6, -0.6]).view(1, 2, 2, 2)
SD = torch.tensor([0.5, 1.0, 0.8, 0.6, 0.7, 0.6, 1.0, 0.9]).view(1, 2, 2, 2)
N = 4096
PI = math.pi


def coeffs(path: str, t: torch.Tensor):
    """(α, α', σ, σ') written out independently of vca_gen.objectives.flow.path."""
    if path == "linear":
        return t, torch.ones_like(t), 1 - t, -torch.ones_like(t)
    if path == "gvp":
        return (
            torch.sin(PI * t / 2),
            PI / 2 * torch.cos(PI * t / 2),
            torch.cos(PI * t / 2),
            -PI / 2 * torch.sin(PI * t / 2),
        )
    s = 1 - t  # VP: β(s) = 0.1 + 19.9 s, α = exp(-∫₀ˢ β/2)
    a = torch.exp(-0.25 * s**2 * 19.9 - 0.05 * s)
    da = a * (0.5 * s * 19.9 + 0.05)
    sig = torch.sqrt(1 - a**2)
    return a, da, sig, -a * da / sig


def analytic_model(path: str, prediction: str):
    def model(x, t, y):
        assert t.min() >= 0 and t.max() <= 1, "model queried outside [0, 1]"
        tt = t.double().view(-1, 1, 1, 1)
        a, da, s, ds = coeffs(path, tt)
        xd, mu, sd = x.double(), MU.double(), SD.double()
        var = a**2 * sd**2 + s**2
        x1 = mu + a * sd**2 / var * (xd - a * mu)  # E[x₁ | x_t]
        x0 = s / var * (xd - a * mu)  # E[x₀ | x_t]
        out = {"velocity": da * x1 + ds * x0, "score": -(xd - a * mu) / var, "noise": x0}[prediction]
        return out.to(x.dtype)

    return model


def _flow(**kw):
    return build_objective({"kind": "flow", "flow": kw})


def _check_moments(x):
    assert torch.isfinite(x).all()
    mean_err = (x.mean(0) - MU[0]).abs().max().item()
    std_err = (x.std(0) / SD[0] - 1).abs().max().item()
    assert mean_err < 0.05 and std_err < 0.05, (mean_err, std_err)


def _run(obj, model, sampler, steps=None, seed=1, **opts):
    noise = torch.randn(N, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    return obj.sample(
        model,
        noise,
        torch.zeros(N, dtype=torch.long),
        sampler=sampler,
        steps=steps,
        generator=torch.Generator().manual_seed(seed),
        **opts,
    )


# ----------------------------------------------------------------------------------------------
# exact algebra
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["linear", "gvp", "vp"])
def test_conversions_between_velocity_score_noise_are_exact(path):
    p = make_path(path)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(64, 3, 2, 2, generator=g, dtype=torch.float64)
    x0 = torch.randn(64, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.98 + 0.01
    a, da, s, ds = (c.view(-1, 1, 1, 1) for c in coeffs(path, t))
    x = a * x1 + s * x0
    preds = {"velocity": da * x1 + ds * x0, "score": -x0 / s, "noise": x0}
    xt, ut = p.plan(t, x0, x1)
    torch.testing.assert_close(xt, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ut, preds["velocity"], rtol=1e-12, atol=1e-12)
    for src in preds:
        for dst in preds:
            torch.testing.assert_close(p.convert(preds[src], x, t, src, dst), preds[dst], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(p.data_from(preds[src], x, t, src), x1, rtol=1e-9, atol=1e-9)


def test_velocity_to_noise_is_defined_at_pure_noise():
    for path in ("linear", "gvp"):
        p, x = make_path(path), torch.randn(4, 1, 2, 2, dtype=torch.float64)
        t = torch.zeros(4, dtype=torch.float64)
        v = coeffs(path, t)[3].view(-1, 1, 1, 1) * x + coeffs(path, t)[1].view(-1, 1, 1, 1) * 0.3  # any x̂₁ = 0.3
        torch.testing.assert_close(p.noise_from(v, x, t, "velocity"), x)


def test_sbdm_coefficient_and_diffusion_forms():
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    # VP: (α'/α)σ² − σσ' = β(t)/2 with β(t) = 0.1 + (1 − t)·19.9
    torch.testing.assert_close(make_path("vp").drift_var(t), (0.1 + (1 - t) * 19.9) / 2)
    torch.testing.assert_close(make_path("linear").drift_var(t), (1 - t) / t)  # (1−t)²/t + (1−t)
    torch.testing.assert_close(make_path("gvp").drift_var(t), PI / 2 / torch.tan(PI * t / 2))
    p, n = make_path("linear"), 0.7
    want = {
        "constant": torch.full_like(t, n),
        "sbdm": n * (1 - t) / t,
        "sigma": n * (1 - t),
        "linear": n * (1 - t),
        "decreasing": 0.25 * (n * torch.cos(PI * t) + 1) ** 2,
        "increasing-decreasing": n * torch.sin(PI * t) ** 2,
    }
    for form, w in want.items():
        torch.testing.assert_close(diffusion_coefficient(p, t, form, n), w)


def test_sit_endpoint_epsilons_and_intervals():
    tr = _flow().transport  # linear velocity: stable everywhere
    assert (tr.train_eps, tr.sample_eps) == (0.0, 0.0)
    assert tr.interval(eval=False) == (0.0, 1.0) and tr.interval(eval=True) == (0.0, 1.0)
    assert tr.interval(eval=True, sde=True, diffusion_form="sigma", last_step_size=0.04) == (0.0, 0.96)
    tr = _flow(prediction="score").transport
    assert (tr.train_eps, tr.sample_eps) == (1e-3, 1e-3)
    assert tr.interval(eval=False) == (1e-3, 1 - 1e-3)
    tr = _flow(path="vp").transport
    assert (tr.train_eps, tr.sample_eps) == (1e-5, 1e-3)
    assert tr.interval(eval=False) == (0.0, 1 - 1e-5) and tr.interval(eval=True) == (0.0, 1 - 1e-3)
    assert tr.interval(eval=True, sde=True, last_step_size=0.04) == (0.0, 0.96)
    assert _flow(train_eps=0.01, sample_eps=0.02, prediction="noise").transport.interval(eval=True) == (0.02, 0.98)


# ----------------------------------------------------------------------------------------------
# samplers on analytic Gaussian data
# ----------------------------------------------------------------------------------------------
SAMPLER_CASES = [
    ("ode", None, {}, None),
    ("ode", None, {"ode_method": "bosh3", "rtol": 1e-4}, None),
    ("euler", 100, {}, 100),
    ("heun", 50, {}, 100),
    ("sde", 250, {}, 250),  # SiT's protocol: sigma, Mean 0.04
    ("sde", 250, {"last_step": "tweedie"}, 250),
    ("sde", 250, {"last_step": "euler"}, 250),
    ("sde", 250, {"last_step": "none"}, 249),
    ("sde", 250, {"last_step": "mean", "last_step_size": 0.02}, 250),
    ("sde", 250, {"diffusion_form": "linear"}, 250),
    ("sde", 250, {"diffusion_form": "decreasing"}, 250),
    ("sde", 250, {"diffusion_form": "increasing-decreasing"}, 250),
    # w(1) = 1 / (α'/α)σ²: a deterministic "mean" last step over-contracts there, so end with Tweedie
    ("sde", 250, {"diffusion_form": "constant", "last_step": "tweedie"}, 250),
    ("sde", 250, {"diffusion_form": "sbdm", "last_step": "tweedie"}, 250),
    ("sde", 250, {"diffusion_form": "sigma", "diffusion_norm": 2.0}, 250),
]


@pytest.mark.parametrize("sampler,steps,opts,nfe", SAMPLER_CASES)
def test_linear_velocity_samplers_reproduce_gaussian(sampler, steps, opts, nfe):
    calls = []
    model = analytic_model("linear", "velocity")
    out = _run(_flow(), lambda x, t, y: calls.append(1) or model(x, t, y), sampler, steps, **opts)
    assert out.nfe == len(calls) and (nfe is None or out.nfe == nfe)
    _check_moments(out.x)


@pytest.mark.parametrize("path", ["linear", "gvp", "vp"])
@pytest.mark.parametrize("prediction", ["velocity", "score", "noise"])
def test_every_path_and_prediction_reproduces_gaussian(path, prediction):
    obj = _flow(path=path, prediction=prediction)
    model = analytic_model(path, prediction)
    _check_moments(_run(obj, model, "ode").x)
    # VP's σ at t = 0.96 is 0.14 (Linear: 0.04), so the SiT default 0.04 last step leaves ~4% std bias
    # on σ_data = 0.5; the SDE itself is checked with a shorter last step.
    opts = {"last_step_size": 0.01} if path == "vp" else {}
    _check_moments(_run(obj, model, "sde", 250, **opts).x)


@pytest.mark.parametrize("opts", [{}, {"diffusion_form": "sbdm", "last_step": "tweedie"}, {"last_step": "none"}])
def test_sde_per_sample_generators_make_samples_batch_independent(opts):
    obj = _flow(prediction="score")
    model = analytic_model("linear", "score")
    seeds = [3, 1, 4, 5]
    noise = torch.randn(4, 2, 2, 2, generator=torch.Generator().manual_seed(5))
    y = torch.zeros(4, dtype=torch.long)
    full = obj.sample(model, noise, y, steps=30, generator=per_sample_generators(seeds), **opts).x
    part = obj.sample(model, noise[[1, 2]], y[:2], steps=30, generator=per_sample_generators(seeds[1:3]), **opts).x
    torch.testing.assert_close(full[[1, 2]], part, rtol=1e-5, atol=1e-6)
    other = obj.sample(model, noise, y, steps=30, generator=per_sample_generators([7, 8, 9, 10]), **opts).x
    assert not torch.allclose(full, other)


# ----------------------------------------------------------------------------------------------
# training loss
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["linear", "vp"])
@pytest.mark.parametrize(
    "prediction,weight",
    [
        ("velocity", "none"),
        ("velocity", "likelihood"),
        ("score", "none"),
        ("score", "velocity"),
        ("noise", "likelihood"),
        ("noise", "none"),
    ],
)
def test_training_loss_matches_sit_formula(path, prediction, weight):
    obj = _flow(path=path, prediction=prediction, loss_weight=weight)
    x1 = torch.randn(5, 2, 2, 2, dtype=torch.float64)
    pred = torch.randn(5, 4, 2, 2, dtype=torch.float64)  # 2C output: second half ignored
    seen = {}

    def model(x, t, y):
        seen["x"], seen["t"] = x, t
        return pred

    out = obj.training_losses(model, x1, torch.zeros(5, dtype=torch.long), generator=per_sample_generators(range(5)))
    g = per_sample_generators(range(5))
    t = torch.stack([torch.rand((), generator=gi, dtype=torch.float64) for gi in g])
    x0 = torch.stack([torch.randn((2, 2, 2), generator=gi, dtype=torch.float64) for gi in g])
    # SiT's training interval: VP [0, 1 − 1e-5]; Linear velocity [0, 1]; Linear score/noise [1e-3, 1 − 1e-3]
    t0, t1 = (0.0, 1 - 1e-5) if path == "vp" else (0.0, 1.0) if prediction == "velocity" else (1e-3, 1 - 1e-3)
    t = t * (t1 - t0) + t0
    a, da, s, ds = (c.view(-1, 1, 1, 1) for c in coeffs(path, t))
    torch.testing.assert_close(seen["t"], t)
    torch.testing.assert_close(seen["x"], a * x1 + s * x0)
    p = pred[:, :2]
    if prediction == "velocity":
        want = ((p - (da * x1 + ds * x0)) ** 2).mean((1, 2, 3))
    else:
        wsb = da / a * s**2 - s * ds
        w = {"none": torch.ones_like(s), "velocity": (wsb / s) ** 2, "likelihood": wsb / s**2}[weight]
        err = p - x0 if prediction == "noise" else p * s + x0
        want = (w * err**2).mean((1, 2, 3))
    torch.testing.assert_close(out["loss"], want)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
def test_bad_input_errors():
    obj = _flow()
    model = analytic_model("linear", "velocity")
    x, y = torch.randn(2, 2, 2, 2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="accepted: linear, gvp, vp"):
        _flow(path="cosine")
    with pytest.raises(ValueError, match="accepted: velocity, score, noise"):
        _flow(prediction="x0")
    with pytest.raises(ValueError, match="accepted: none, velocity, likelihood"):
        _flow(loss_weight="snr")
    with pytest.raises(ValueError, match="accepted: sde, ode, euler, heun"):
        obj.sample(model, x, y, sampler="ddpm")
    with pytest.raises(ValueError, match="accepted: constant, sbdm, sigma, linear, decreasing, increasing-decreasing"):
        obj.sample(model, x, y, diffusion_form="inccreasing-decreasing")
    with pytest.raises(ValueError, match="accepted: constant, sbdm"):
        _flow(diffusion_form="cosine")
    with pytest.raises(ValueError, match="accepted: mean, tweedie, euler, none"):
        obj.sample(model, x, y, last_step="heun")
    with pytest.raises(ValueError, match=">= 1"):
        obj.sample(model, x, y, sampler="euler", steps=0)
    with pytest.raises(ValueError, match=">= 2"):
        obj.sample(model, x, y, sampler="sde", steps=1)
    with pytest.raises(ValueError, match="accepted: dopri5"):
        obj.sample(model, x, y, sampler="ode", ode_method="rk45")
    with pytest.raises(ValueError, match="accepted: dopri5"):
        _flow(ode_method="euler")
    with pytest.raises(ValueError, match="accepted: \\['atol', 'ode_method', 'rtol'\\]"):
        obj.sample(model, x, y, sampler="ode", last_step="mean")
    with pytest.raises(ValueError, match="accepted: 2 or 4"):
        obj.check_channels(2, 3)
    with pytest.raises(ValueError, match="accepted: 2 or 4"):
        obj.sample(lambda a, t, c: torch.zeros(2, 6, 2, 2), x, y, sampler="euler", steps=2)
    with pytest.raises(ValueError, match="accepted: 2 or 4"):
        obj.training_losses(lambda a, t, c: torch.zeros(2, 1, 2, 2), x, y)
    with pytest.raises(ValueError, match="unknown FlowConfig keys \\['stepz'\\]"):
        build_objective({"kind": "flow", "flow": {"stepz": 3}})
