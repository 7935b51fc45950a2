"""One interface over both objectives: config forms, guidance wiring, NFE, null label, training."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from vca_gen.objectives import DiffusionConfig, FlowConfig, ObjectiveConfig, build_objective


# ----------------------------------------------------------------------------------------------
# config forms
# ----------------------------------------------------------------------------------------------
def test_build_from_dataclass_dictconfig_and_dict():
    cfg = ObjectiveConfig(kind="flow", flow=FlowConfig(path="gvp", prediction="noise", sampler="heun", sample_steps=7))
    structured = OmegaConf.merge(
        OmegaConf.structured(ObjectiveConfig),
        {"kind": "flow", "flow": {"path": "gvp", "prediction": "noise", "sampler": "heun", "sample_steps": 7}},
    )
    for c in (cfg, structured, dataclasses.asdict(cfg)):
        obj = build_objective(c)
        assert (obj.kind, obj.path.name, obj.transport.prediction) == ("flow", "gvp", "noise")
        assert (obj.default_sampler, obj.default_steps) == ("heun", 7)
    d = build_objective(
        OmegaConf.structured(ObjectiveConfig(diffusion=DiffusionConfig(sample_steps="ddim25", sampler="ddim")))
    )
    assert (d.kind, d.default_sampler, d.default_steps) == ("diffusion", "ddim", "ddim25")
    assert build_objective({"kind": "flow"}).default_sampler == "sde"
    assert build_objective({"kind": "flow"}).default_steps == 250


def test_bad_configs():
    with pytest.raises(ValueError, match="accepted: diffusion, flow"):
        build_objective({"kind": "score"})
    with pytest.raises(ValueError, match="unknown ObjectiveConfig keys \\['flows'\\]"):
        build_objective({"kind": "flow", "flows": {}})
    with pytest.raises(ValueError, match="accepted: ddpm, ddim, dpm-solver\\+\\+"):
        build_objective({"diffusion": {"sampler": "plms"}})
    with pytest.raises(ValueError, match="accepted: sde, ode, euler, heun"):
        build_objective({"kind": "flow", "flow": {"sampler": "dpm"}})
    with pytest.raises(ValueError, match=">= 2"):
        build_objective({"kind": "flow", "flow": {"sample_steps": 0}})
    with pytest.raises(TypeError, match="ObjectiveConfig, DictConfig or dict"):
        build_objective(42)


# ----------------------------------------------------------------------------------------------
# guidance at objective level
# ----------------------------------------------------------------------------------------------
NULL = 5


class ToyModel(torch.nn.Module):
    """Per-channel model: output channel c depends only on input channel c, t and the label."""

    num_classes = NULL

    def __init__(self, channels: int = 4, learn_sigma: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = channels, channels * (2 if learn_sigma else 1)
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append((x.shape[0], y.clone()))
        tt = (t.float() / 1000 if t.max() > 1 else t.float()).view(-1, 1, 1, 1)
        scale = (1.0 + 0.3 * y.float()).view(-1, 1, 1, 1)
        out = 0.5 * x * scale * (1 - 0.5 * tt) + 0.1 * y.float().view(-1, 1, 1, 1)
        return torch.cat([out, torch.tanh(out)], 1) if self.out_channels > self.in_channels else out


def _manual_guided(model, scale, g):
    """Guidance written out in the test: uncond + s·(cond − uncond) on the first g channels."""

    def fn(x, t, y):
        cond, unc = model(x, t, y), model(x, t, torch.full_like(y, NULL))
        out = cond.clone()
        out[:, :g] = unc[:, :g] + scale * (cond[:, :g] - unc[:, :g])
        return out

    return fn


CASES = [
    ({"kind": "diffusion"}, "ddim", "ddim10", True),
    ({"kind": "diffusion"}, "dpm-solver++", 5, False),
    ({"kind": "diffusion"}, "ddpm", "10", True),
    ({"kind": "flow"}, "euler", 6, False),
    ({"kind": "flow"}, "ode", None, False),
    ({"kind": "flow", "flow": {"prediction": "score"}}, "sde", 8, True),
]


@pytest.mark.parametrize("cfg,sampler,steps,learn_sigma", CASES)
def test_cfg_scale_one_is_the_plain_conditional_sampler(cfg, sampler, steps, learn_sigma):
    obj = build_objective(cfg)
    model = ToyModel(4, learn_sigma)
    x, y = torch.randn(3, 4, 2, 2), torch.tensor([0, 2, 4])
    a = obj.sample(model, x, y, sampler=sampler, steps=steps, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert all(b == 3 and torch.equal(lab, y) for b, lab in model.calls)  # no doubled batch, no null label
    assert a.nfe == len(model.calls)
    b = obj.sample(
        lambda x_, t, y_: model(x_, t, y_),
        x,
        y,
        sampler=sampler,
        steps=steps,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(a.x, b.x)


@pytest.mark.parametrize("cfg,sampler,steps,learn_sigma", CASES)
def test_guidance_matches_manual_formula_and_channel_4_stays_unguided(cfg, sampler, steps, learn_sigma):
    obj = build_objective(cfg)
    model = ToyModel(4, learn_sigma)
    x, y = torch.randn(3, 4, 2, 2), torch.tensor([0, 2, 4])

    def run(fn, **kw):
        return obj.sample(fn, x, y, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0), **kw)

    n_calls = len(model.calls)
    guided = run(model, cfg_scale=4.0)  # null label from model.num_classes
    assert all(b == 6 for b, _ in model.calls[n_calls:])  # cond + uncond in one doubled batch
    assert guided.nfe == len(model.calls) - n_calls  # one evaluation per doubled call
    torch.testing.assert_close(guided.x, run(_manual_guided(model, 4.0, 4)).x, rtol=1e-5, atol=1e-5)

    dit_style = run(model, cfg_scale=4.0, guide_channels=3, null_label=NULL)
    torch.testing.assert_close(dit_style.x, run(_manual_guided(model, 4.0, 3)).x, rtol=1e-5, atol=1e-5)
    unguided = run(model)
    # channels are independent in ToyModel: channel 4 of the 3-channel run is the unguided channel 4
    # (the adaptive ODE solver picks its steps from all channels together: equal up to its tolerance)
    tol = dict(rtol=1e-3, atol=1e-3) if sampler == "ode" else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dit_style.x[:, 3], unguided.x[:, 3], **tol)
    torch.testing.assert_close(dit_style.x[:, :3], guided.x[:, :3], **tol)
    assert not torch.allclose(guided.x[:, 3], unguided.x[:, 3])


def test_null_label_must_be_known_for_guidance():
    obj = build_objective(None)
    x, y = torch.randn(2, 4, 2, 2), torch.zeros(2, dtype=torch.long)
    bare = lambda x_, t, y_: torch.zeros_like(x_)  # noqa: E731
    with pytest.raises(ValueError, match="null_label"):
        obj.sample(bare, x, y, steps="3", cfg_scale=2.0)
    assert obj.sample(bare, x, y, steps="3", cfg_scale=2.0, null_label=7).nfe == 3
    with pytest.raises(ValueError, match="labels"):
        obj.sample(bare, x, torch.zeros(3, dtype=torch.long), steps="3")


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
@pytest.mark.parametrize("scale", [-0.5, float("nan"), float("inf")])
def test_cfg_scale_must_be_finite_and_non_negative(kind, scale):
    obj = build_objective({"kind": kind})
    with pytest.raises(ValueError, match=r"cfg_scale=.* is not valid; accepted: a finite number >= 0"):
        obj.check_sample_args(cfg_scale=scale, null_label=5)
    assert obj.check_sample_args(cfg_scale=0.0, null_label=5)  # unconditional sampling is allowed


@pytest.mark.parametrize(
    "sampler, options, needle",
    [
        ("sde", {"diffusion_norm": 0}, "diffusion_norm=0.0 is not valid; accepted: a number > 0"),
        ("sde", {"diffusion_norm": "x"}, "diffusion_norm='x' is not valid; accepted: a number"),
        ("ode", {"atol": -1e-6}, "atol=-1e-06 is not valid; accepted: a number > 0"),
        ("ode", {"rtol": 0}, "rtol=0.0 is not valid; accepted: a number > 0"),
        ("ode", {"ode_method": "rk4"}, "ode_method='rk4' is not valid; accepted: dopri5"),
    ],
)
def test_flow_sampler_options_are_checked_before_the_first_step(sampler, options, needle):
    """sample.py passes --sampler-option values straight to the sampler: each is checked there."""
    obj = build_objective({"kind": "flow"})
    with pytest.raises(ValueError) as e:
        obj.check_sample_args(sampler=sampler, steps=10, options=options)
    assert needle in str(e.value)
    good = {"sde": {"diffusion_norm": 2.0}, "ode": {"atol": 1e-5, "rtol": 1e-4, "ode_method": "dopri5"}}[sampler]
    assert obj.check_sample_args(sampler=sampler, steps=10, options=good) == sampler


def test_check_model_uses_channel_attributes():
    build_objective(None).check_model(ToyModel(4, True))
    build_objective({"kind": "flow"}).check_model(ToyModel(4, True))
    bad = ToyModel(4)
    bad.out_channels = 6
    for kind in ("diffusion", "flow"):
        with pytest.raises(ValueError, match="accepted: 4 .*or 8"):
            build_objective({"kind": kind}).check_model(bad)
    with pytest.raises(TypeError, match="in_channels/out_channels"):
        build_objective(None).check_model(object())


# ----------------------------------------------------------------------------------------------
# a tiny DiT learns under every objective variant
# ----------------------------------------------------------------------------------------------
VARIANTS = [({"kind": "diffusion"}, True), ({"kind": "diffusion"}, False)] + [
    ({"kind": "flow", "flow": {"path": p, "prediction": q}}, q == "velocity")
    for p in ("linear", "gvp", "vp")
    for q in ("velocity", "score", "noise")
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "cfg,learn_sigma",
    VARIANTS,
    ids=lambda v: str(v) if isinstance(v, bool) else "-".join([v["kind"]] + list(v.get("flow", {}).values())),
)
def test_tiny_dit_loss_decreases(cfg, learn_sigma):
    models = pytest.importorskip("vca_gen.models")
    torch.manual_seed(0)
    model = models.create_model(
        "DiT-S/2",
        depth=2,
        hidden_size=64,
        num_heads=2,
        input_size=8,
        in_channels=2,
        num_classes=4,
        learn_sigma=learn_sigma,
    )
    obj = build_objective(cfg)
    obj.check_model(model)
    patterns = torch.rand(4, 2, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8

    def batch(n, g):
        y = torch.randint(0, 4, (n,), generator=g)
        return (patterns[y] + 0.1 * torch.randn(n, 2, 8, 8, generator=g)).clamp(-1, 1), y

    xe, ye = batch(128, torch.Generator().manual_seed(2))

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return obj.training_losses(model, xe, ye, generator=torch.Generator().manual_seed(3))["loss"].mean().item()

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)
    model.train()
    for _ in range(100):
        x, y = batch(16, g)
        loss = obj.training_losses(model, x, y, generator=g)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("cfg,sampler,steps,learn_sigma", CASES)
def test_low_precision_model_output_keeps_sampler_state_in_fp32(cfg, sampler, steps, learn_sigma):
    """Under CUDA bf16 autocast the model returns bf16; the sampler state must stay fp32."""
    obj = build_objective(cfg)
    model = ToyModel(4, learn_sigma)
    x, y = torch.randn(3, 4, 2, 2), torch.tensor([0, 2, 4])
    bf16 = obj.sample(
        lambda a, t, c: model(a, t, c).bfloat16(),
        x,
        y,
        sampler=sampler,
        steps=steps,
        generator=torch.Generator().manual_seed(0),
    )
    ref = obj.sample(model, x, y, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
    assert bf16.x.dtype == torch.float32
    torch.testing.assert_close(bf16.x, ref.x, rtol=0.05, atol=0.05)
    out = obj.training_losses(lambda a, t, c: model(a, t, c).bfloat16(), x, y)
    assert out["loss"].dtype == torch.float32


@pytest.mark.parametrize(
    "cfg", [{"kind": "diffusion"}, {"kind": "flow"}, {"kind": "flow", "flow": {"path": "vp", "prediction": "noise"}}]
)
def test_training_loss_of_a_sample_depends_only_on_its_generator(cfg):
    from vca_gen.utils.rng import per_sample_generators

    obj = build_objective(cfg)
    model = ToyModel(4, learn_sigma=cfg["kind"] == "diffusion")
    x, y = torch.rand(4, 4, 2, 2) * 2 - 1, torch.tensor([0, 1, 2, 3])
    full = obj.training_losses(model, x, y, generator=per_sample_generators([5, 6, 7, 8]))["loss"]
    part = obj.training_losses(model, x[1:3], y[1:3], generator=per_sample_generators([6, 7]))["loss"]
    torch.testing.assert_close(full[1:3], part)
    assert full.shape == (4,)
