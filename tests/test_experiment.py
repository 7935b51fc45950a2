"""The redesigned experiment config, end to end through train.py.

* every shipped config switches attention kind by one override (and prints only that kind's options);
* every objective / sampler / grid / FID value with a finite set of accepted values or a range fails
  at load, as an override and in a YAML file, with or without --print-config: exit 2, one line
  ``train.py: error: ...`` naming the key, the value and what is accepted, and nothing on disk;
* resume refuses a change of a run-defining setting (seeds, lr), naming it, and accepts max_steps;
* a missing VAE, data path or init_from file is a one-line error with exit 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from test_training_common import REPO, image_data, make_images, reset_accelerate, tiny_dict, write_yaml
from vca_gen.experiment import schema as C
from vca_gen.experiment.build import build_model
from vca_gen.models.attention import attention_options

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
KINDS = ("mhsa", "diff", "vca")
VCA_OPTIONS = set(attention_options("vca"))
SHIPPED = {"diffusion": REPO / "configs/dit_s2_vca.yaml", "flow": REPO / "configs/demo.yaml"}


def _load_train_py():
    from vca_gen.train import cli

    return cli


TRAIN_PY = _load_train_py()


def train_cli(*args: str) -> int:
    reset_accelerate()
    return TRAIN_PY.main(list(args))


def print_config(capsys, *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert train_cli(*args, "--print-config") == 0
    out = capsys.readouterr()
    assert out.err == ""
    return yaml.safe_load(out.out)


# ----------------------------------------------------------------------------- 1. attention kinds
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_switches_attention_kind_by_one_override(path, capsys):
    for kind in KINDS:
        exp = C.load_config(path, [f"model.attention={kind}"])
        model = build_model(exp, device="meta")
        assert exp.model.attention == kind and model.attention == kind
        opts = dict(exp.model.attention_options)
        if kind == "vca":
            assert set(opts) == VCA_OPTIONS
        else:
            assert opts == {}
        printed = print_config(capsys, "--config", str(path), f"model.attention={kind}")
        assert printed["model"]["attention"] == kind
        shown = printed["model"]["attention_options"]
        if kind == "vca":
            assert set(shown) == VCA_OPTIONS and shown == opts
            assert "num_contrast_tokens" in shown and "stage2_softmax" in shown
        else:
            assert shown == {}


def test_vca_options_of_a_config_survive_the_switch_back():
    """A VCA config keeps its own options under model.attention=vca (only defaults fill the rest)."""
    exp = C.load_config(REPO / "configs/dit_s2_vca_stage1.yaml", ["model.attention=vca"])
    assert exp.model.attention_options.stages == "stage1"
    exp = C.load_config(REPO / "configs/demo.yaml", ["model.attention=vca"])
    assert exp.model.attention_options.num_contrast_tokens == 16


def test_print_config_as_a_subprocess():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--config",
            str(REPO / "configs/demo.yaml"),
            "model.attention=mhsa",
            "--print-config",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)
    assert printed["model"]["attention"] == "mhsa" and printed["model"]["attention_options"] == {}
    assert printed["objective"]["kind"] == "flow"


# ----------------------------------------------------------------------------- 2. bad values
def _case(objective: str, overrides: str, *needles: str):
    return pytest.param(objective, overrides.split(), needles, id=f"{objective}:{overrides}")


BAD = [
    # objective.kind and objective.diffusion.*
    _case("diffusion", "objective.kind=foo", "objective.kind='foo'", "accepted: diffusion, flow"),
    _case(
        "diffusion",
        "objective.diffusion.beta_schedule=foo",
        "objective.diffusion.beta_schedule='foo'",
        "accepted: linear, cosine",
    ),
    _case(
        "diffusion",
        "objective.diffusion.fixed_variance=foo",
        "objective.diffusion.fixed_variance='foo'",
        "accepted: large, small",
    ),
    _case(
        "diffusion",
        "objective.diffusion.sampler=foo",
        "objective.diffusion.sampler='foo'",
        "accepted: ddpm, ddim, dpm-solver++",
    ),
    _case(
        "diffusion",
        "objective.diffusion.sample_steps=abc",
        "objective.diffusion.sample_steps='abc'",
        "accepted: a step count, a respacing",
    ),
    _case(
        "diffusion",
        "objective.diffusion.sample_steps=5000",
        "objective.diffusion.sample_steps='5000'",
        "accepted: a step count, a respacing",
    ),
    _case(
        "diffusion",
        "objective.diffusion.sampler=dpm-solver++ objective.diffusion.sample_steps=ddim20",
        "objective.diffusion.sample_steps='ddim20'",
        "an integer in 1..1000 for dpm-solver++",
    ),
    _case(
        "diffusion",
        "objective.diffusion.dpm_solver_order=4",
        "objective.diffusion.dpm_solver_order=4",
        "accepted: 1, 2, 3",
    ),
    _case(
        "diffusion",
        "objective.diffusion.num_timesteps=0",
        "objective.diffusion.num_timesteps=0",
        "accepted: a number > 0",
    ),
    _case(
        "diffusion",
        "objective.diffusion.num_timesteps=abc",
        "'objective.diffusion.num_timesteps'",
        "'abc'",
        "accepted: an integer",
    ),
    _case(
        "diffusion",
        "objective.diffusion.beta_start=0",
        "objective.diffusion.beta_start=0.0",
        "accepted: a number in (0.0, 1.0)",
    ),
    _case(
        "diffusion",
        "objective.diffusion.beta_start=2",
        "objective.diffusion.beta_start=2.0",
        "accepted: a number in (0.0, 1.0)",
    ),
    _case(
        "diffusion",
        "objective.diffusion.beta_end=1e-5",
        "objective.diffusion.beta_end=1e-05",
        "accepted: a number in (0.0001, 1.0]",
    ),
    _case(
        "diffusion", "objective.diffusion.ddim_eta=-1", "objective.diffusion.ddim_eta=-1.0", "accepted: a number >= 0"
    ),
    # objective.flow.*
    _case("flow", "objective.kind=foo", "objective.kind='foo'", "accepted: diffusion, flow"),
    _case("flow", "objective.flow.path=foo", "objective.flow.path='foo'", "accepted: linear, gvp, vp"),
    _case(
        "flow", "objective.flow.prediction=foo", "objective.flow.prediction='foo'", "accepted: velocity, score, noise"
    ),
    _case(
        "flow",
        "objective.flow.loss_weight=foo",
        "objective.flow.loss_weight='foo'",
        "accepted: none, velocity, likelihood",
    ),
    _case("flow", "objective.flow.sampler=foo", "objective.flow.sampler='foo'", "accepted: sde, ode, euler, heun"),
    _case(
        "flow",
        "objective.flow.sampler=sde objective.flow.sample_steps=1",
        "objective.flow.sample_steps=1",
        "accepted: an integer >= 2 for the sde sampler",
    ),
    _case(
        "flow",
        "objective.flow.sampler=euler objective.flow.sample_steps=0",
        "objective.flow.sample_steps=0",
        "accepted: an integer >= 1 for the euler sampler",
    ),
    _case("flow", "objective.flow.sample_steps=abc", "'objective.flow.sample_steps'", "'abc'", "accepted: an integer"),
    _case(
        "flow",
        "objective.flow.diffusion_form=foo",
        "objective.flow.diffusion_form='foo'",
        "accepted: constant, sbdm, sigma, linear, decreasing, increasing-decreasing",
    ),
    _case(
        "flow", "objective.flow.last_step=foo", "objective.flow.last_step='foo'", "accepted: mean, tweedie, euler, none"
    ),
    _case(
        "flow",
        "objective.flow.last_step_size=0",
        "objective.flow.last_step_size=0.0",
        "accepted: a number in (0.0, 1.0)",
    ),
    _case(
        "flow",
        "objective.flow.last_step_size=1.5",
        "objective.flow.last_step_size=1.5",
        "accepted: a number in (0.0, 1.0)",
    ),
    _case("flow", "objective.flow.ode_method=foo", "objective.flow.ode_method='foo'", "accepted: dopri5, dopri8"),
    _case("flow", "objective.flow.atol=0", "objective.flow.atol=0.0", "accepted: a number > 0"),
    _case("flow", "objective.flow.rtol=-1", "objective.flow.rtol=-1.0", "accepted: a number > 0"),
    _case("flow", "objective.flow.train_eps=0.7", "objective.flow.train_eps=0.7", "accepted: a number in [0.0, 0.5)"),
    _case("flow", "objective.flow.train_eps=-0.1", "objective.flow.train_eps=-0.1", "accepted: a number in [0.0, 0.5)"),
    # train.grid / train.fid with the diffusion samplers
    _case("diffusion", "train.grid.sampler=foo", "train.grid.sampler='foo'", "accepted: ddpm, ddim, dpm-solver++"),
    _case(
        "diffusion",
        "train.grid.sampler=ddpm train.grid.steps=abc",
        "train.grid.steps='abc'",
        "expected an int, 'N', 'N1,N2,...' or 'ddimN'",
    ),
    _case("diffusion", "train.grid.sampler=ddpm train.grid.steps=0", "train.grid.steps='0'", "steps must be >= 1"),
    _case(
        "diffusion",
        "train.grid.sampler=dpm-solver++ train.grid.steps=ddim5",
        "train.grid.steps='ddim5'",
        "dpm-solver++ steps must be an integer",
    ),
    _case(
        "diffusion",
        "train.grid.sampler=ddim train.grid.options.foo=1",
        "train.grid.options",
        "['foo']",
        "accepted: ['clip_denoised', 'eta']",
    ),
    _case(
        "diffusion",
        "train.grid.sampler=ddim train.grid.options.eta=-1",
        "train.grid.options.eta=-1",
        "accepted: a number >= 0",
    ),
    _case(
        "diffusion",
        "train.grid.sampler=ddim train.grid.options.eta=abc",
        "train.grid.options.eta='abc'",
        "accepted: a number",
    ),
    _case(
        "diffusion",
        "train.grid.sampler=dpm-solver++ train.grid.options.order=5",
        "train.grid.options.order=5",
        "accepted: 1, 2, 3",
    ),
    _case(
        "diffusion",
        "train.grid.sampler=ddpm train.grid.options.clip_denoised=abc",
        "train.grid.options.clip_denoised='abc'",
        "accepted: true or false",
    ),
    _case("diffusion", "train.grid.cfg_scale=abc", "'train.grid.cfg_scale'", "'abc'", "accepted: a number"),
    _case(
        "diffusion",
        "model.class_dropout_prob=0 train.grid.cfg_scale=2",
        "train.grid.cfg_scale=2.0",
        "accepted here: 1.0",
    ),
    _case("diffusion", "train.fid.sampler=foo", "train.fid.sampler='foo'", "accepted: ddpm, ddim, dpm-solver++"),
    _case(
        "diffusion",
        "train.fid.sampler=ddim train.fid.steps=abc",
        "train.fid.steps='abc'",
        "expected an int, 'N', 'N1,N2,...' or 'ddimN'",
    ),
    _case("diffusion", "train.fid.sampler=ddpm train.fid.steps=0", "train.fid.steps='0'", "steps must be >= 1"),
    _case(
        "diffusion",
        "train.fid.sampler=ddpm train.fid.options.foo=1",
        "train.fid.options",
        "['foo']",
        "accepted: ['clip_denoised']",
    ),
    _case(
        "diffusion",
        "train.fid.sampler=ddim train.fid.options.eta=-1",
        "train.fid.options.eta=-1",
        "accepted: a number >= 0",
    ),
    _case(
        "diffusion",
        "train.fid.sampler=dpm-solver++ train.fid.options.order=0",
        "train.fid.options.order=0",
        "accepted: 1, 2, 3",
    ),
    _case("diffusion", "train.fid.num_samples=0", "train.fid.num_samples=0", "accepted: a number > 0"),
    _case(
        "diffusion",
        "train.fid.num_samples=1001",
        "train.fid.num_samples=1001",
        "accepted: a multiple of model.num_classes",
    ),
    _case("diffusion", "train.fid.cfg_scale=abc", "'train.fid.cfg_scale'", "'abc'", "accepted: a number"),
    _case("diffusion", "train.fid.cfg_scale=-2", "train.fid.cfg_scale=-2.0", "accepted: a finite number >= 0"),
    _case("flow", "train.grid.cfg_scale=nan", "train.grid.cfg_scale=nan", "accepted: a finite number >= 0"),
    _case(
        "diffusion",
        "data.kind=animal_mnist data.vae=stabilityai/sd-vae-ft-ema",
        "data.vae='stabilityai/sd-vae-ft-ema' with data.kind='animal_mnist'",
        "accepted: data.vae=null",
    ),
    _case(
        "diffusion",
        "model.class_dropout_prob=0 train.fid.cfg_scale=1.5",
        "train.fid.cfg_scale=1.5",
        "accepted here: 1.0",
    ),
    # train.grid / train.fid with the flow samplers
    _case("flow", "train.grid.sampler=foo", "train.grid.sampler='foo'", "accepted: sde, ode, euler, heun"),
    _case("flow", "train.grid.sampler=sde train.grid.steps=1", "train.grid.steps='1'", "steps must be >= 2"),
    _case(
        "flow",
        "train.grid.sampler=euler train.grid.steps=abc",
        "train.grid.steps='abc'",
        "flow steps must be an integer",
    ),
    _case(
        "flow",
        "train.grid.sampler=ode train.grid.options.foo=1",
        "train.grid.options",
        "['foo']",
        "accepted: ['atol', 'ode_method', 'rtol']",
    ),
    _case(
        "flow",
        "train.grid.sampler=ode train.grid.options.atol=-1",
        "train.grid.options.atol=-1",
        "accepted: a number > 0",
    ),
    _case(
        "flow",
        "train.grid.sampler=ode train.grid.options.rtol=0",
        "train.grid.options.rtol=0",
        "accepted: a number > 0",
    ),
    _case(
        "flow",
        "train.grid.sampler=ode train.grid.options.atol=abc",
        "train.grid.options.atol='abc'",
        "accepted: a number",
    ),
    _case(
        "flow",
        "train.grid.sampler=ode train.grid.options.ode_method=foo",
        "train.grid.options.ode_method='foo'",
        "accepted: dopri5",
    ),
    _case(
        "flow",
        "train.grid.sampler=sde train.grid.options.diffusion_form=foo",
        "train.grid.options.diffusion_form='foo'",
        "accepted: constant, sbdm, sigma",
    ),
    _case(
        "flow",
        "train.grid.sampler=sde train.grid.options.diffusion_norm=-1",
        "train.grid.options.diffusion_norm=-1",
        "accepted: a number > 0",
    ),
    _case(
        "flow",
        "train.grid.sampler=sde train.grid.options.last_step=foo",
        "train.grid.options.last_step='foo'",
        "accepted: mean, tweedie, euler, none",
    ),
    _case(
        "flow",
        "train.grid.sampler=sde train.grid.options.last_step_size=2",
        "train.grid.options.last_step_size=2",
        "accepted: a number in (0.0, 1.0)",
    ),
    _case("flow", "train.fid.sampler=foo", "train.fid.sampler='foo'", "accepted: sde, ode, euler, heun"),
    _case("flow", "train.fid.sampler=sde train.fid.steps=0", "train.fid.steps='0'", "steps must be >= 2"),
    _case("flow", "train.fid.sampler=euler train.fid.options.eta=0", "train.fid.options", "['eta']", "accepted: []"),
    _case(
        "flow", "train.fid.sampler=ode train.fid.options.atol=-1", "train.fid.options.atol=-1", "accepted: a number > 0"
    ),
    _case(
        "flow",
        "train.fid.sampler=sde train.fid.options.last_step=foo",
        "train.fid.options.last_step='foo'",
        "accepted: mean, tweedie, euler, none",
    ),
    _case("flow", "train.fid.num_samples=0", "train.fid.num_samples=0", "accepted: a number > 0"),
    _case(
        "flow", "train.fid.num_samples=15", "train.fid.num_samples=15", "accepted: a multiple of model.num_classes=10"
    ),
    _case("flow", "train.fid.cfg_scale=abc", "'train.fid.cfg_scale'", "'abc'", "accepted: a number"),
    _case(
        "flow",
        "model.class_dropout_prob=0 train.grid.cfg_scale=1 train.fid.cfg_scale=2",
        "train.fid.cfg_scale=2.0",
        "accepted here: 1.0",
    ),
]


def _nest(overrides: Sequence[str]) -> dict[str, Any]:
    """Dotted ``key=value`` strings → the nested mapping a YAML file would hold (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for o in overrides:
        key, value = o.split("=", 1)
        *parents, leaf = key.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = yaml.safe_load(value)
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _tiny(objective: str, out: Path) -> dict[str, Any]:
    """A config that would train in seconds (Animal-MNIST, pixel space) with the given objective."""
    d = tiny_dict(out, max_steps=1, ckpt_every=1)
    if objective == "flow":
        d["objective"] = {"kind": "flow", "flow": {"sampler": "euler", "sample_steps": 3}}
    return d


def _assert_refused(capsys, args: list[str], needles: Sequence[str]) -> str:
    capsys.readouterr()
    assert train_cli(*args) == 2
    out = capsys.readouterr()
    err = out.err
    assert "Traceback" not in err and "Traceback" not in out.out
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith("train.py: error: "), err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    return err


@pytest.mark.parametrize("print_cfg", [True, False], ids=["print-config", "train"])
@pytest.mark.parametrize("where", ["override", "yaml"])
@pytest.mark.parametrize("objective, overrides, needles", BAD)
def test_bad_value_fails_at_load(objective, overrides, needles, where, print_cfg, tmp_path, capsys):
    out_dir = tmp_path / "run"
    written: list[Path] = []
    if print_cfg:  # a shipped config (its data need not exist for --print-config)
        if where == "override":
            config, extra = SHIPPED[objective], [*overrides, f"train.output_dir={out_dir}"]
        else:
            body = _merge({"_base_": str(SHIPPED[objective]), "train": {"output_dir": str(out_dir)}}, _nest(overrides))
            config, extra = write_yaml(tmp_path / "bad.yaml", body), []
            written.append(config)
    else:  # a tiny run that would train if the value were valid
        base = _tiny(objective, out_dir)
        if where == "override":
            config, extra = write_yaml(tmp_path / "tiny.yaml", base), list(overrides)
        else:
            config, extra = write_yaml(tmp_path / "bad.yaml", _merge(base, _nest(overrides))), []
        written.append(config)
    args = ["--config", str(config), *extra] + (["--print-config"] if print_cfg else [])
    _assert_refused(capsys, args, needles)
    assert not out_dir.exists()
    assert sorted(tmp_path.iterdir()) == sorted(written)


def test_the_valid_neighbours_of_the_bad_values_load():
    """The cases above fail for their value alone: the same keys with good values are accepted."""
    good = {
        "diffusion": [
            "objective.diffusion.sampler=ddim",
            "objective.diffusion.sample_steps=ddim25",
            "train.grid.sampler=ddim",
            "train.grid.options.eta=0.5",
            "train.fid.sampler=dpm-solver++",
            "train.fid.steps=20",
            "train.fid.options.order=3",
            "train.fid.num_samples=2000",
        ],
        "flow": [
            "objective.flow.sampler=ode",
            "objective.flow.sample_steps=0",
            "train.grid.sampler=ode",
            "train.grid.steps=null",
            "train.grid.options.atol=1e-5",
            "train.grid.options.rtol=1e-4",
            "train.fid.sampler=sde",
            "train.fid.options.diffusion_norm=2",
            "train.fid.options.last_step=none",
            "train.fid.num_samples=20",
            "train.fid.cfg_scale=1.5",
        ],
    }
    for objective, overrides in good.items():
        exp = C.load_config(SHIPPED[objective], overrides)
        assert exp.objective.kind == objective


# ----------------------------------------------------------------------------- 3. resume
def test_resume_refuses_seed_and_lr_changes_and_accepts_max_steps(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(run_dir, max_steps=1, ckpt_every=1))
    assert train_cli("--config", str(cfg)) == 0
    assert (run_dir / "checkpoints/step_00000001").is_dir()
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "logs" not in p.parts}
    for change, needle in (
        ("data.seed=5", "data.seed: checkpoint 0 vs now 5"),
        ("train.seed=3", "train.seed: checkpoint 0 vs now 3"),
        ("train.lr=0.002", "train.lr: checkpoint 0.001 vs now 0.002"),
    ):
        err = _assert_refused(
            capsys, ["--config", str(cfg), change, "train.max_steps=2"], ["was saved by a different run", needle]
        )
        assert err.count("checkpoint ") >= 1 and "max_steps" not in err
        assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "logs" not in p.parts} == files
    capsys.readouterr()
    assert train_cli("--config", str(cfg), "train.max_steps=2") == 0
    assert "finished at step 2" in capsys.readouterr().out
    assert (run_dir / "checkpoints/step_00000002").is_dir()


# ----------------------------------------------------------------------------- 4. missing files
def test_missing_init_from_is_refused_at_load(tmp_path, capsys):
    out_dir = tmp_path / "run"
    for extra in ([], ["--print-config"]):
        _assert_refused(
            capsys,
            [
                "--config",
                str(REPO / "configs/demo.yaml"),
                "model.init_from=/nonexistent",
                f"train.output_dir={out_dir}",
                *extra,
            ],
            ["model.init_from='/nonexistent' does not exist", "accepted: an official DiT/SiT .pt"],
        )
    assert not out_dir.exists() and list(tmp_path.iterdir()) == []


def test_missing_vae_is_a_one_line_error(tmp_path, capsys):
    images = make_images(tmp_path / "images")
    # a path, so never looked up on the hub: VAELoadError
    data = image_data(images, image_size=16, vae=str(tmp_path / "no_vae"), vae_downsample=2)
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path / "run", data=data, max_steps=1, ckpt_every=1))
    _assert_refused(capsys, ["--config", str(cfg)], ["VAE folder", "no_vae", "is not an existing folder"])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "kind, needle", [("images", "image folder"), ("latents", "latent store"), ("animal_mnist", "Animal-MNIST file")]
)
def test_missing_data_path_is_a_one_line_error(kind, needle, tmp_path, capsys):
    d = tiny_dict(tmp_path / "run", max_steps=1, ckpt_every=1)
    d["data"] = {
        "kind": kind,
        "path": str(tmp_path / "no_data"),
        "image_size": 32,
        "num_workers": 0,
        "vae": None if kind != "latents" else "stabilityai/sd-vae-ft-ema",
    }
    cfg = write_yaml(tmp_path / "c.yaml", d)
    _assert_refused(capsys, ["--config", str(cfg)], [f"data (kind={kind}, path=", needle, "no_data"])
    assert not (tmp_path / "run").exists()


def test_a_dataset_smaller_than_one_global_batch_is_refused_before_training(tmp_path, capsys):
    from PIL import Image

    for i in range(3):  # 3 images, global batch 4
        (tmp_path / "data" / "cls").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(tmp_path / "data" / "cls" / f"{i}.png")
    d = tiny_dict(tmp_path / "run", max_steps=1, ckpt_every=1)
    d["data"] = {"kind": "images", "path": str(tmp_path / "data"), "image_size": 32, "num_workers": 0, "vae": None}
    assert d["train"]["global_batch_size"] == 4
    cfg = write_yaml(tmp_path / "c.yaml", d)
    _assert_refused(
        capsys,
        ["--config", str(cfg)],
        [
            "has 3 items, fewer than one global batch (train.global_batch_size=4",
            "accepted: train.global_batch_size <= 3",
        ],
    )
    assert not (tmp_path / "run").exists()
