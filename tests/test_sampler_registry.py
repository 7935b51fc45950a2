"""The sampler registry: one entry per sampler, read by the objectives, their configs, ``sample.py``
(its ``--help`` and its runs), the experiment validator and the sweeps.

* a sampler registered from inside this test (a trivial deterministic one: one Euler step from the
  noise, scaled by its own option) works through ``sample.py`` (in process) and an experiment's
  ``train.grid.sampler`` / ``objective.flow.sampler`` validation, without touching any other module;
* its option is checked by its own check everywhere (runtime, config, CLI), and once it is
  unregistered every one of those places refuses it again;
* the built-in entries: names, default steps (the papers' protocols) and NFE rules against counted
  model calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_sample_cli import CLASSES, make_export
from vca_gen.errors import ConfigError
from vca_gen.experiment import schema as C
from vca_gen.objectives import build_objective, registry
from vca_gen.objectives.registry import Sampler, SamplerOption, integer_steps, number
from vca_gen.sample.cli import main

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- a sampler added by a test
def _one_step(call):
    """x = noise + scale · v(noise, t = 0): one Euler step over the whole flow time (t = 0 noise, 1 data)."""
    t = torch.zeros(call.noise.shape[0], dtype=call.noise.dtype, device=call.noise.device)
    v = call.model_fn(call.noise, t, call.labels)[:, : call.noise.shape[1]].to(call.noise.dtype)
    return call.noise + call.options["scale"] * v


ONESTEP = Sampler(
    "flow",
    "onestep",
    _one_step,
    default_steps=1,
    parse_steps=integer_steps("onestep", 1),
    steps_help="an integer >= 1 for the onestep sampler (ignored)",
    nfe="1",
    help="a test sampler: one Euler step from the noise",
    options=(SamplerOption("scale", number(), "step scale (> 0)", default=1.0),),
)


@pytest.fixture
def onestep():
    registry.register(ONESTEP)
    try:
        yield ONESTEP
    finally:
        registry.unregister("flow", "onestep")


@pytest.fixture(scope="module")
def flow_export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("ckpt") / "flow", kind="flow")


def _cli(export, out, *extra) -> list[str]:
    run = ["--num-samples", "10", "--shard-size", "10", "--batch-size", "5", "--no-progress", "--grid-classes", "0"]
    return ["--ckpt", str(export), "--out", str(out), *run, *extra]


def test_a_registered_sampler_runs_through_sample_py(onestep, flow_export, tmp_path, capsys):
    # --help lists it with its option (generated from the registry)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps the option help
    assert "flow onestep: a test sampler: one Euler step from the noise" in shown
    assert "option scale: step scale (> 0)" in shown and "onestep: scale" in shown

    out = tmp_path / "s"
    assert main(_cli(flow_export, out, "--sampler", "onestep", "--sampler-option", "scale=0.5")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sampler"] == "onestep" and summary["nfe_per_image"] == 1
    settings = json.loads((out / "sampling.json").read_text())
    assert settings["sampler"] == "onestep" and settings["sampler_options"] == {"scale": 0.5}

    # the images are the hand-computed one step, decoded as sample.py decodes (pixel space: [-1, 1] → uint8)
    from vca_gen.sample.model import load
    from vca_gen.utils import rng

    loaded = load(flow_export)
    n = 10
    gens = rng.per_sample_generators(range(n))
    noise = rng.randn((n, *loaded.latent_shape), gens)
    labels = torch.arange(n) % CLASSES
    with torch.no_grad():
        v = loaded.model(noise, torch.zeros(n), labels)[:, : noise.shape[1]]
        x = noise + 0.5 * v
        expect = ((x.clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with np.load(out / "samples.npz") as z:
        got = z["arr_0"]
    assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1  # batch 5 vs 10: reassociation only

    # its option is checked by its own check, before anything is written
    bad = tmp_path / "bad"
    assert main(_cli(flow_export, bad, "--sampler", "onestep", "--sampler-option", "scale=-2")) == 2
    err = capsys.readouterr().err
    assert "scale=-2.0 is not valid; accepted: a number > 0" in err and err.count("\n") == 1
    assert not bad.exists()
    assert main(_cli(flow_export, bad, "--sampler", "onestep", "--sampler-option", "eta=1")) == 2
    assert "unknown options ['eta'] for sampler 'onestep'; accepted: ['scale']" in capsys.readouterr().err


def test_a_registered_sampler_in_an_experiment(onestep):
    demo = REPO / "configs/demo.yaml"
    exp = C.load_config(demo, ["train.grid.sampler=onestep", "train.grid.options.scale=2", "train.fid.sampler=onestep"])
    assert exp.train.grid.sampler == "onestep"
    exp = C.load_config(demo, ["objective.flow.sampler=onestep", "objective.flow.sample_steps=1"])
    obj = build_objective(exp.objective)
    assert obj.default_sampler == "onestep" and obj.samplers[-1] == "onestep"
    with pytest.raises(ConfigError, match=r"train\.grid\.options\.scale=-1\.0 is not valid; accepted: a number > 0"):
        C.load_config(demo, ["train.grid.sampler=onestep", "train.grid.options.scale=-1"])
    with pytest.raises(ConfigError, match=r"train\.grid\.options: unknown options \['atol'\] for sampler 'onestep'"):
        C.load_config(demo, ["train.grid.sampler=onestep", "train.grid.options.atol=1e-3"])
    with pytest.raises(ConfigError, match=r"objective\.flow\.sample_steps=0 is not valid; accepted: an integer >= 1"):
        C.load_config(demo, ["objective.flow.sampler=onestep", "objective.flow.sample_steps=0"])


def test_an_unregistered_sampler_is_refused_everywhere(flow_export, tmp_path, capsys):
    assert "onestep" not in registry.sampler_names("flow")
    demo = REPO / "configs/demo.yaml"
    with pytest.raises(ConfigError, match="train.grid.sampler='onestep' is not valid; accepted: sde, ode, euler, heun"):
        C.load_config(demo, ["train.grid.sampler=onestep"])
    with pytest.raises(ConfigError, match="objective.flow.sampler='onestep' is not valid; accepted: sde, ode"):
        C.load_config(demo, ["objective.flow.sampler=onestep"])
    assert main(_cli(flow_export, tmp_path / "s", "--sampler", "onestep")) == 2
    assert "unknown flow sampler 'onestep'; accepted: sde, ode, euler, heun" in capsys.readouterr().err


def test_register_refuses_a_taken_name():
    with pytest.raises(ValueError, match="a flow sampler named 'euler' is already registered"):
        registry.register(Sampler("flow", "euler", _one_step, 1, integer_steps("euler", 1), "", "1", ""))


# ----------------------------------------------------------------------------- the built-in entries
def test_built_in_entries_and_their_protocol_defaults():
    got = {(e.kind, e.name): (e.default_steps, e.option_names) for e in registry.entries()}
    assert got == {
        ("diffusion", "ddpm"): ("250", ["clip_denoised"]),  # DiT's FID protocol
        ("diffusion", "ddim"): ("ddim50", ["clip_denoised", "eta"]),
        ("diffusion", "dpm-solver++"): ("20", ["order"]),
        ("flow", "sde"): (250, ["diffusion_form", "diffusion_norm", "last_step", "last_step_size"]),  # SiT's
        ("flow", "ode"): (0, ["atol", "ode_method", "rtol"]),
        ("flow", "euler"): (100, []),
        ("flow", "heun"): (50, []),
    }
    table = registry.markdown_table()
    assert table.count("\n") == 2 + len(got) and "| flow | `heun` | 50 | 2 * steps |" in table


@pytest.mark.parametrize(
    "kind, sampler, steps, options, nfe",
    [
        ("diffusion", "ddpm", "7", {}, 7),  # one per kept step
        ("diffusion", "ddim", "ddim10", {}, 10),
        ("diffusion", "dpm-solver++", "6", {}, 6),
        ("flow", "sde", 6, {}, 6),  # steps - 1 + the last step
        ("flow", "sde", 6, {"last_step": "none"}, 5),
        ("flow", "euler", 5, {}, 5),
        ("flow", "heun", 5, {}, 10),
    ],
)
def test_nfe_rules(kind, sampler, steps, options, nfe):
    calls = []

    def model(x, t, y):
        calls.append(1)
        return torch.zeros_like(x)

    obj = build_objective({"kind": kind})
    out = obj.sample(
        model, torch.randn(2, 4, 2, 2), torch.zeros(2, dtype=torch.long), sampler=sampler, steps=steps, **options
    )
    assert out.nfe == len(calls) == nfe and out.guided == 0


def test_an_option_is_checked_by_one_check_at_every_entry_point():
    """ode_method: the same check (and message) at config, runtime, validator and sweep."""
    flow = build_objective({"kind": "flow"})
    with pytest.raises(ValueError, match=r"^objective\.flow\.ode_method='rk4' is not valid; accepted: dopri5, dopri8"):
        build_objective({"kind": "flow", "flow": {"ode_method": "rk4"}})
    with pytest.raises(ValueError, match=r"^ode_method='rk4' is not valid; accepted: dopri5, dopri8"):
        flow.check_sample_args("ode", None, options={"ode_method": "rk4"})
    needle = r"demo.yaml: train\.fid\.options\.ode_method='rk4' is not valid; accepted: dopri5"
    with pytest.raises(ConfigError, match=needle):
        C.load_config(REPO / "configs/demo.yaml", ["train.fid.sampler=ode", "train.fid.options.ode_method=rk4"])
