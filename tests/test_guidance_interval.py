"""Guidance interval (``cfg_interval=(LO, HI)``): guide only the evaluations at LO <= t <= HI.

* against hand-written loops (flow Euler, diffusion DDIM) with a model whose conditional and
  unconditional outputs are closed forms: which evaluations were guided and the final samples;
* every registered sampler of both objectives: a doubled (cond + uncond) batch exactly at the
  evaluations inside the interval, ``nfe`` / ``guided`` counts; the full interval equals plain CFG and
  an interval no evaluation falls in equals no guidance, bit for bit;
* the ends are inclusive and compared in the time's dtype; a batch with times on both sides;
* bad intervals: one clear error naming what is accepted (objective, CLI before anything is
  written, experiment config, sweep file); ``sampling.json`` pins the interval on resume; the
  sweep protocol hash without an interval is the one from before the interval existed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from test_sample_cli import make_export
from vca_gen.objectives import build_objective
from vca_gen.objectives.registry import entries
from vca_gen.sample.cli import main
from vca_gen.utils.guidance import GuidedModelFn

NULL = 5  # the null label of the toy model (num_classes)
SCALE = 2.5


class ClosedForm:
    """out(x, t, y) = a_y · x + b(t): a_y = 0.3 + 0.1 y for a class y, 0.2 for the null label;
    b(t) = sin(t / s). Records (time, batch size) of every call."""

    num_classes = NULL

    def __init__(self, out_channels: int | None = None, time_scale: float = 1.0):
        self.calls: list[tuple[float, int]] = []
        self.out_channels, self.s = out_channels, time_scale

    @staticmethod
    def a(y: torch.Tensor) -> torch.Tensor:
        return torch.where(y == NULL, torch.full_like(y, 0.2, dtype=torch.float64), 0.3 + 0.1 * y.double())

    def __call__(self, x, t, y):
        self.calls.append((float(t[0]), x.shape[0]))
        b = torch.sin(t.double() / self.s).to(x.dtype)  # diffusion times are float32 integers: exact in float64
        out = self.a(y).to(x.dtype).view(-1, 1, 1, 1) * x + b.view(-1, 1, 1, 1)
        if self.out_channels and self.out_channels > x.shape[1]:  # learned-variance half: 0
            out = torch.cat([out, torch.zeros_like(out)], 1)
        return out


def _noise(dtype=torch.float64):
    return torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)


LABELS = torch.tensor([0, 2, 4])


# ----------------------------------------------------------------------------- against hand-written loops
def test_flow_euler_against_a_hand_written_loop():
    obj = build_objective({"kind": "flow", "flow": {"sampler": "euler", "sample_steps": 8}})
    lo, hi = 0.25, 0.625
    model = ClosedForm()
    out = obj.sample(model, _noise(), LABELS, cfg_scale=SCALE, cfg_interval=(lo, hi), null_label=NULL)
    # by hand: x ← x + h·v, v = u + s(c − u) where lo <= t <= hi, else the conditional c
    x = _noise()
    a_c = (0.3 + 0.1 * LABELS.double()).view(-1, 1, 1, 1)
    expect_guided = []
    for k in range(8):
        t, h = k / 8, 1 / 8
        c, u = a_c * x + math.sin(t), 0.2 * x + math.sin(t)
        inside = lo <= t <= hi
        expect_guided.append(inside)
        x = x + h * ((u + SCALE * (c - u)) if inside else c)
    assert [b == 6 for _, b in model.calls] == expect_guided  # 2B = 6 exactly at the guided steps
    assert expect_guided == [False, False, True, True, True, True, False, False]
    assert (out.nfe, out.guided) == (8, 4)
    torch.testing.assert_close(out.x, x, rtol=0, atol=1e-12)


def test_diffusion_ddim_against_a_hand_written_loop():
    T = 40
    obj = build_objective(
        {"kind": "diffusion", "diffusion": {"num_timesteps": T, "sampler": "ddim", "sample_steps": "ddim8"}}
    )
    lo, hi = 10, 25  # model timesteps, both ends included
    model = ClosedForm(time_scale=7.0)
    out = obj.sample(model, _noise(), LABELS, cfg_scale=SCALE, cfg_interval=(lo, hi), null_label=NULL, eta=0.0)
    # by hand: linear betas, kept timesteps 0, 5, ..., 35 (ddim8: stride 5), deterministic DDIM
    betas = np.linspace(1e-4, 0.02, T)
    abar = np.cumprod(1 - betas)
    kept = list(range(0, T, 5))
    x = _noise()
    a_c = (0.3 + 0.1 * LABELS.double()).view(-1, 1, 1, 1)
    expect = []
    for j in range(len(kept) - 1, -1, -1):
        t = kept[j]
        ab, ab_prev = abar[t], (abar[kept[j - 1]] if j > 0 else 1.0)
        c, u = a_c * x + math.sin(t / 7.0), 0.2 * x + math.sin(t / 7.0)
        inside = lo <= t <= hi
        expect.append((float(t), 6 if inside else 3))
        eps = (u + SCALE * (c - u)) if inside else c
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    assert model.calls == expect  # guided at timesteps 25, 20, 15, 10 only (the ends 10 and 25 included)
    assert (out.nfe, out.guided) == (8, 4)
    torch.testing.assert_close(out.x, x, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- every sampler
def _cases():
    """(objective config, sampler, steps, options) for every built-in entry, at few steps."""
    steps = {"ddpm": "6", "ddim": "ddim5", "dpm-solver++": "5", "sde": 6, "ode": None, "euler": 5, "heun": 4}
    flow = {"kind": "flow", "flow": {"path": "linear", "prediction": "velocity"}}
    diff = {"kind": "diffusion", "diffusion": {"num_timesteps": 50, "sample_steps": "50"}}
    out = []
    for e in entries():
        if e.name not in steps:
            continue  # a sampler another test registers
        opts = {"atol": 1e-3, "rtol": 1e-3} if e.name == "ode" else {}
        out.append(pytest.param(flow if e.kind == "flow" else diff, e.name, steps[e.name], opts, id=e.name))
    return out


def _run(cfg, sampler, steps, opts, **kw):
    obj = build_objective(cfg)
    model = ClosedForm(out_channels=4 if sampler == "ddpm" else None, time_scale=1.0 if cfg["kind"] == "flow" else 9.0)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    out = obj.sample(
        model, _noise(), LABELS, sampler=sampler, steps=steps, generator=gens, null_label=NULL, **opts, **kw
    )
    return obj, model, out


@pytest.mark.parametrize("cfg, sampler, steps, opts", _cases())
def test_every_sampler_guides_exactly_inside_the_interval(cfg, sampler, steps, opts):
    obj, _, plain = _run(cfg, sampler, steps, opts, cfg_scale=SCALE)
    t_hi = obj.guidance_time[1]
    lo, hi = (0.3 * t_hi, 0.7 * t_hi)
    _, model, out = _run(cfg, sampler, steps, opts, cfg_scale=SCALE, cfg_interval=(lo, hi))
    times = [(t, b) for t, b in model.calls]
    assert len(times) == out.nfe and out.nfe > 2
    for t, b in times:  # float64 noise: the times are float64, as lo and hi
        assert b == (6 if lo <= t <= hi else 3), (t, b)
    assert out.guided == sum(b == 6 for _, b in times)
    assert 0 < out.guided < out.nfe  # this interval splits every sampler's evaluations
    assert not torch.equal(out.x, plain.x)

    # the full interval is plain CFG, bit for bit (same evaluations, all guided)
    _, _, full = _run(cfg, sampler, steps, opts, cfg_scale=SCALE, cfg_interval=obj.guidance_time)
    assert torch.equal(full.x, plain.x) and (full.nfe, full.guided) == (plain.nfe, plain.nfe)
    assert plain.guided == plain.nfe

    # an interval no evaluation falls in is no guidance at all, bit for bit (no unconditional half)
    none_lo = 0.4132 * t_hi if cfg["kind"] == "flow" else 20.25
    _, model, empty = _run(cfg, sampler, steps, opts, cfg_scale=SCALE, cfg_interval=(none_lo, none_lo + 1e-4 * t_hi))
    _, _, unguided = _run(cfg, sampler, steps, opts)
    assert all(b == 3 for _, b in model.calls)
    assert torch.equal(empty.x, unguided.x) and (empty.nfe, empty.guided) == (unguided.nfe, 0)


def test_ends_are_inclusive_in_the_time_dtype():
    """Euler over 10 steps visits t = k/10; in float32, 0.7 (the grid's float64 0.7000000000000001)
    and the interval's 0.7 round to the same number, so [0.7, 0.7] guides exactly that evaluation."""
    obj = build_objective({"kind": "flow", "flow": {"sampler": "euler", "sample_steps": 10}})
    for dtype in (torch.float32, torch.float64):
        model = ClosedForm()
        out = obj.sample(model, _noise(dtype), LABELS, cfg_scale=SCALE, cfg_interval=(0.7, 0.7), null_label=NULL)
        assert out.guided == 1 and [round(t, 6) for t, b in model.calls if b == 6] == [0.7]
        model = ClosedForm()
        out = obj.sample(model, _noise(dtype), LABELS, cfg_scale=SCALE, cfg_interval=(0.0, 0.2), null_label=NULL)
        assert out.guided == 3  # t = 0, 0.1, 0.2


def test_a_batch_with_times_on_both_sides():
    """Per-sample times (no built-in sampler makes them): guided inside, conditional outside."""
    model = ClosedForm()
    fn = GuidedModelFn(model, SCALE, NULL, pred_channels=2, interval=(0.2, 0.5))
    x, t = _noise(), torch.tensor([0.1, 0.3, 0.5], dtype=torch.float64)
    out = fn(x, t, LABELS)
    a_c = (0.3 + 0.1 * LABELS.double()).view(-1, 1, 1, 1)
    c = a_c * x + torch.sin(t).view(-1, 1, 1, 1)
    u = 0.2 * x + torch.sin(t).view(-1, 1, 1, 1)
    expect = torch.stack([c[0], (u + SCALE * (c - u))[1], (u + SCALE * (c - u))[2]])
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-12)
    assert (fn.nfe, fn.guided) == (1, 1)


def test_guide_channels_are_checked_even_when_the_first_evaluation_is_outside():
    obj = build_objective({"kind": "flow"})
    with pytest.raises(ValueError, match="guide_channels must be in 1..4"):
        obj.check_sample_args(cfg_scale=2.0, guide_channels=9, cfg_interval=(0.5, 1.0), null_label=5)


# ----------------------------------------------------------------------------- bad intervals
@pytest.mark.parametrize(
    "kind, interval, scale, needle",
    [
        ("flow", (0.5,), 2.0, "cfg_interval=(0.5,) is not valid; accepted: two numbers LO <= HI in [0, 1]"),
        ("flow", (0.2, float("nan")), 2.0, "accepted: two numbers LO <= HI in [0, 1] (flow time t: 0 = noise"),
        ("flow", ("a", 1), 2.0, "accepted: two numbers"),
        ("flow", (True, 1), 2.0, "accepted: two numbers"),
        ("flow", (0.6, 0.2), 2.0, "cfg_interval=(0.6, 0.2) is not valid"),
        ("flow", (0.2, 1.5), 2.0, "in [0, 1]"),
        ("flow", (-0.1, 0.5), 2.0, "in [0, 1]"),
        ("diffusion", (0, 1000), 2.0, "in [0, 999] (diffusion timestep t as the model receives it"),
        ("flow", (0.2, 0.5), 1.0, "cfg_interval=(0.2, 0.5) is given with cfg_scale=1.0 (no guidance)"),
    ],
)
def test_bad_intervals_name_what_is_accepted(kind, interval, scale, needle):
    obj = build_objective({"kind": kind})
    with pytest.raises(ValueError) as e:
        obj.check_sample_args(cfg_scale=scale, cfg_interval=interval, null_label=5)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert obj.check_sample_args(cfg_scale=2.0, cfg_interval=obj.guidance_time, null_label=5)


@pytest.fixture(scope="module")
def flow_export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("ckpt") / "flow", kind="flow")


def _cli(export, out, *extra) -> list[str]:
    run = ["--num-samples", "10", "--steps", "4", "--shard-size", "5", "--batch-size", "5", "--no-progress"]
    return ["--ckpt", str(export), "--out", str(out), "--sampler", "euler", *run, *extra]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--cfg-scale", "2", "--cfg-interval", "0.6", "0.2"], "cfg_interval=[0.6, 0.2] is not valid; accepted: two"),
        (["--cfg-scale", "2", "--cfg-interval", "0", "nan"], "accepted: two numbers LO <= HI in [0, 1]"),
        (["--cfg-interval", "0.2", "0.6"], "cfg_interval=[0.2, 0.6] is given with cfg_scale=1.0 (no guidance)"),
    ],
)
def test_cli_refuses_a_bad_interval_before_writing(flow_export, tmp_path, capsys, extra, needle):
    out = tmp_path / "s"
    capsys.readouterr()
    assert main(_cli(flow_export, out, *extra)) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_interval_nfe_protocol_and_resume_pin(flow_export, tmp_path, capsys):
    out = tmp_path / "s"
    capsys.readouterr()
    assert main(_cli(flow_export, out, "--cfg-scale", "3", "--cfg-interval", "0.25", "0.5")) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out.strip().splitlines()[-1])
    # euler, 4 steps: t = 0, 0.25, 0.5, 0.75 → 2 guided evaluations
    assert summary["nfe_per_image"] == 4 and summary["guided_nfe_per_image"] == 2
    assert summary["cfg_interval"] == [0.25, 0.5] and summary["protocol"]["cfg_interval"] == [0.25, 0.5]
    assert "model evaluations per image: 4 (2 of them inside --cfg-interval" in cap.err
    settings = json.loads((out / "sampling.json").read_text())
    assert settings["cfg_interval"] == [0.25, 0.5]
    # a re-run with another interval (or none) is another run: refused, nothing changed
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra in (["--cfg-interval", "0.25", "0.75"], []):
        assert main(_cli(flow_export, out, "--cfg-scale", "3", *extra)) == 2
        assert "different settings" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # without an interval sampling.json says so, and the protocol has no interval key (as before it existed)
    plain_out = tmp_path / "p"
    assert main(_cli(flow_export, plain_out, "--cfg-scale", "3")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "cfg_interval" not in summary["protocol"] and "guided_nfe_per_image" not in summary
    assert json.loads((plain_out / "sampling.json").read_text())["cfg_interval"] is None
    # the full interval reproduces plain CFG byte for byte
    full = tmp_path / "f"
    assert main(_cli(flow_export, full, "--cfg-scale", "3", "--cfg-interval", "0", "1")) == 0
    with np.load(full / "samples.npz") as a, np.load(plain_out / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])


# ----------------------------------------------------------------------------- experiment config, grids, in-loop FID
def test_experiment_grid_and_fid_intervals(tmp_path):
    from vca_gen.errors import ConfigError
    from vca_gen.experiment import schema as C
    from vca_gen.sweep.plan import experiment_hash

    demo = Path(__file__).resolve().parent.parent / "configs/demo.yaml"
    base = C.load_config(demo, [])
    exp = C.load_config(
        demo, ["train.grid.cfg_interval=[0.3,1]", "train.fid.cfg_scale=1.5", "train.fid.cfg_interval=[0,0.5]"]
    )
    assert list(exp.train.grid.cfg_interval) == [0.3, 1.0] and base.train.grid.cfg_interval is None
    # the preview / FID settings are not run-defining: the experiment hash does not move
    assert experiment_hash(C.to_container(exp)) == experiment_hash(C.to_container(base))
    for overrides, needle in (
        (["train.grid.cfg_interval=[0.6,0.2]"], "train.grid.cfg_interval=[0.6, 0.2] is not valid; accepted: two"),
        (["train.grid.cfg_interval=[0.2,1.5]"], "in [0, 1] (flow time t: 0 = noise, 1 = data"),
        (
            ["train.fid.cfg_interval=[0.2,0.5]"],
            "train.fid.cfg_interval=[0.2, 0.5] is given with train.fid.cfg_scale=1.0",
        ),
    ):
        with pytest.raises(ConfigError) as e:
            C.load_config(demo, overrides)
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_grid_and_in_loop_fid_sample_with_the_interval():
    """``train.evaluation._maker`` (grids and in-loop FID) passes the section's interval to the sampler."""
    from vca_gen.data.decoder import Decoder
    from vca_gen.experiment import build as B
    from vca_gen.experiment import schema as C
    from vca_gen.sample.model import generate, image_maker
    from vca_gen.train.evaluation import _maker

    exp = C.config_from_dict(
        {
            "name": "tiny",
            "objective": {"kind": "flow", "flow": {"sampler": "euler", "sample_steps": 4}},
            "data": {"kind": "images", "path": "<none>", "image_size": 16, "vae": None},
            "model": {"name": "DiT-S/4", "depth": 1, "hidden_size": 32, "num_heads": 2, "num_classes": 3},
            "train": {
                "grid": {"cfg_scale": 2.0, "cfg_interval": [0.5, 1.0]},
                "fid": {"cfg_scale": 2.0, "num_samples": 30},
            },
        }
    )
    model, objective = B.build_model(exp).eval(), B.build_objective_for(exp)
    decoder = Decoder(B.decoder_spec(exp))
    shape = (int(exp.model.in_channels), 16, 16)
    seeds, labels = [0, 1, 2], [0, 1, 2]
    grid = _maker(exp, exp.train.grid, model, objective, decoder, "cpu")
    images = generate(grid, labels, seeds, "cpu")
    assert (grid.evaluations, grid.guided) == (4 * 3, 2 * 3)  # t = 0.5, 0.75 of 0, 0.25, 0.5, 0.75
    direct = image_maker(model, objective, decoder, shape, "cpu", cfg_scale=2.0, cfg_interval=(0.5, 1.0))
    assert np.array_equal(images, generate(direct, labels, seeds, "cpu"))
    fid = _maker(exp, exp.train.fid, model, objective, decoder, "cpu")  # no interval: every evaluation guided
    generate(fid, labels, seeds, "cpu")
    assert (fid.evaluations, fid.guided) == (12, 12)


# ----------------------------------------------------------------------------- sweeps
def test_sweep_interval_reaches_sample_py_and_the_protocol_hash(tmp_path, capsys):
    import dataclasses
    import hashlib

    from test_sweep import assert_refused, micro, run_cli, write
    from vca_gen.sweep.plan import protocol_hash, validate
    from vca_gen.sweep.spec import load_sweep

    s = micro(tmp_path)
    s["evaluate"].update(cfg_scale=2.0, cfg_interval=[0.3, 1])
    rc, out, err = run_cli(["run", write(tmp_path, s), "--dry-run"], capsys)
    assert rc == 0, err
    assert out.count("--cfg-scale 2.0") == 4 and out.count("--cfg-interval 0.3 1.0") == 4
    with_interval = validate(load_sweep(write(tmp_path, s)), allow_missing_reference=True)
    s["evaluate"].pop("cfg_interval")
    without = validate(load_sweep(write(tmp_path, s)), allow_missing_reference=True)
    assert with_interval.cells[0].protocol_hash != without.cells[0].protocol_hash
    # without an interval the hash is the one of the Evaluate fields that existed before it
    ev = load_sweep(write(tmp_path, s)).evaluate
    assert ev.cfg_interval is None
    d = {
        k: v
        for k, v in dataclasses.asdict(ev).items()
        if k not in ("batch_size", "shard_size", "reference", "cfg_interval")
    }
    d["reference"] = {"x": 1}
    assert (
        protocol_hash(ev, {"x": 1}) == hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()
    )

    for interval, scale, needle in (
        ([0.6, 0.2], 2.0, "evaluate.cfg_interval=[0.6, 0.2] is not valid; accepted: two numbers LO <= HI in [0, 1]"),
        ("0.3,1", 2.0, "evaluate.cfg_interval='0.3,1' is not valid"),
        ([0.3, 1.0], 1.0, "evaluate.cfg_interval=[0.3, 1.0] is given with evaluate.cfg_scale=1.0"),
    ):
        s["evaluate"].update(cfg_interval=interval, cfg_scale=scale)
        assert_refused(tmp_path, capsys, s, needle, "variant 'mhsa'")


def test_committed_sweep_cells_keep_their_protocol_and_experiment_hashes():
    """The committed toy sweeps' result files still match their cells (nothing would be recomputed)."""
    from vca_gen.sweep.cells import committed_state
    from vca_gen.sweep.plan import validate
    from vca_gen.sweep.spec import load_sweep

    sweeps = Path(__file__).resolve().parent.parent / "vca_gen/configs/sweeps"
    for name in ("toy_flow.yaml", "toy_diffusion.yaml"):
        v = validate(load_sweep(sweeps / name), allow_missing_reference=True)
        states = [committed_state(c) for c in v.cells]
        assert states and all(st == "done" for st in states), (name, states)
