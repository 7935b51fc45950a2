"""Checkpoint I/O: atomic layout, pruning, RNG round trip, safe loading, mismatch errors, export."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from vca_gen.experiment import build as B
from vca_gen.experiment import checkpoint as ckpt
from vca_gen.experiment import schema as C

REPO = Path(__file__).resolve().parent.parent


def tiny_cfg(tmp_path: Path, **model):
    m = {
        "name": "DiT-S/4",
        "depth": 2,
        "hidden_size": 64,
        "num_heads": 2,
        "num_classes": 10,
        "attention": "vca",
        "attention_options": {"num_contrast_tokens": 4},
        **model,
    }
    return C.config_from_dict(
        {
            "name": "tiny",
            "model": m,
            "data": {"kind": "animal_mnist", "image_size": 32, "vae": None, "num_workers": 0},
            "train": {"output_dir": str(tmp_path / "run")},
        }
    )


def write_ckpt(root: Path, step: int, model, cfg, opt=None) -> Path:
    opt = opt or torch.optim.AdamW(model.parameters(), lr=1e-3)
    return ckpt.save_checkpoint(
        root,
        step,
        model_state=model.state_dict(),
        ema_state=model.state_dict(),
        optimizer_state=opt.state_dict(),
        rng_states=[ckpt.capture_rng_state()],
        state={"step": step, "data": {"epoch": 0, "batch": step}},
        config_yaml=C.to_yaml(cfg),
    )


@pytest.fixture(scope="module")
def cfg_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ck")
    cfg = tiny_cfg(tmp)
    torch.manual_seed(0)
    return cfg, B.build_model(cfg)


def test_layout_and_safe_loading(tmp_path, cfg_model):
    cfg, model = cfg_model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 32, 32), torch.rand(2), torch.tensor([1, 2])).square().mean().backward()
    opt.step()
    path = write_ckpt(tmp_path, 12, model, cfg, opt)
    assert path.name == "step_00000012"
    assert {p.name for p in path.iterdir()} == {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.pt",
        "rng.pt",
        "state.json",
        "config.yaml",
        "checksums.json",
        "COMPLETE",
    }
    recorded = ckpt.read_checksums(path)
    assert set(recorded) == {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.pt",
        "rng.pt",
        "state.json",
        "config.yaml",
    }
    assert recorded["model.safetensors"]["size"] == (path / "model.safetensors").stat().st_size
    ckpt.verify_checkpoint(path)  # intact
    extra = ckpt.load_training_state(path)  # weights_only=True throughout
    assert extra["state"]["step"] == 12
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(extra["optimizer"])
    for a, b in zip(opt.state.values(), fresh.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    assert C.config_from_yaml_text(extra["config_yaml"]).model.name == "DiT-S/4"


def test_rng_state_round_trip():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    saved = ckpt.capture_rng_state()
    expect = (torch.rand(3), np.random.randn(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    ckpt.restore_rng_state(saved)
    got = (torch.rand(3), np.random.randn(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]


def test_incomplete_and_tmp_dirs_are_ignored_and_pruning_keeps_milestones(tmp_path, cfg_model):
    cfg, model = cfg_model
    for s in (100, 200, 300, 400, 500):
        write_ckpt(tmp_path, s, model, cfg)
    (tmp_path / "step_00000600.tmp").mkdir()  # killed mid-write
    (tmp_path / "step_00000700").mkdir()  # no COMPLETE marker
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [100, 200, 300, 400, 500]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000500"
    assert ckpt.resolve_resume("auto", tmp_path).name == "step_00000500"
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.resolve_resume(str(tmp_path / "step_00000700"), tmp_path)
    ckpt.prune_checkpoints(tmp_path, keep_last=2, milestone_every=200)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [200, 400, 500]
    assert not (tmp_path / "step_00000600.tmp").exists()


def test_resave_same_step_replaces_atomically(tmp_path, cfg_model):
    cfg, model = cfg_model
    write_ckpt(tmp_path, 5, model, cfg)
    path = write_ckpt(tmp_path, 5, model, cfg)
    assert ckpt.list_checkpoints(tmp_path) == [(5, path)] and not list(tmp_path.glob("*.old"))


def test_checkpoint_from_a_different_model_names_the_mismatch(tmp_path, cfg_model):
    cfg, model = cfg_model
    path = write_ckpt(tmp_path, 1, model, cfg)
    other = B.build_model(tiny_cfg(tmp_path, attention="mhsa", attention_options={}, learn_sigma=False))
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_state_into(other, ckpt.load_tensors(path / "model.safetensors"), "ckpt")
    msg = str(e.value)
    assert "unexpected keys" in msg and "blocks.0.attn." in msg
    assert "shape mismatches" in msg and "final_layer.linear.weight" in msg


def train_cli(*argv) -> int:
    from vca_gen.train.cli import main

    return main(list(argv))


def test_export_and_load_for_sampling(tmp_path, cfg_model, capsys):
    cfg, model = cfg_model
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = ckpt.save_checkpoint(
        tmp_path / "run" / "checkpoints",
        3,
        model_state=model.state_dict(),
        ema_state=ema,
        optimizer_state={},
        rng_states=[ckpt.capture_rng_state()],
        state={"step": 3},
        config_yaml=C.to_yaml(cfg),
    )
    m_ema, cfg2, spec, _ = ckpt.load_for_sampling(path)
    m_live, *_ = ckpt.load_for_sampling(path, use_ema=False)
    m_run, *_ = ckpt.load_for_sampling(tmp_path / "run")  # run dir → latest checkpoint
    assert spec is None  # saved without a decoder description (as older versions did)
    w = "final_layer.linear.bias"
    assert torch.equal(m_ema.state_dict()[w], ema[w]) and torch.equal(m_live.state_dict()[w], model.state_dict()[w])
    assert torch.equal(m_run.state_dict()[w], ema[w]) and not m_ema.training
    assert cfg2.model.attention == "vca"

    out = tmp_path / "export"
    assert train_cli("--export", str(tmp_path / "run"), str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "checksums.json",
        "config.json",
        "decoder.json",
        "model.safetensors",
    ]
    assert json.loads((out / "config.json").read_text())["model"]["name"] == "DiT-S/4"
    m_exp, cfg3, spec3, _ = ckpt.load_for_sampling(out)
    assert spec3 is not None and spec3.vae is None  # pixel space: nothing to decode
    assert torch.equal(m_exp.state_dict()[w], ema[w]) and C.to_container(cfg3) == C.to_container(cfg)
    # the export is loadable by create_model directly
    from safetensors.torch import load_file

    from vca_gen.models import create_model

    fresh = create_model(cfg3.model.name, **B.model_kwargs(cfg3.model))
    fresh.load_state_dict(load_file(out / "model.safetensors"))
    # refusing to overwrite: non-zero exit, export untouched
    before = (out / "model.safetensors").read_bytes()
    assert train_cli("--export", str(path), str(out)) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before


def test_load_for_sampling_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_for_sampling(tmp_path / "missing")
    (tmp_path / "step_00000001").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.load_for_sampling(tmp_path / "step_00000001")
    with pytest.raises(ckpt.CheckpointError, match="neither an export"):
        ckpt.load_for_sampling(tmp_path)


def _truncate(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def test_damaged_checkpoint_is_named_and_resume_falls_back(tmp_path, cfg_model):
    """A file damaged under its COMPLETE marker: verification names it; resume=auto (verify=True)
    warns and takes the newest intact checkpoint; an explicit damaged checkpoint is refused."""
    cfg, model = cfg_model
    for s in (1, 2, 3):
        write_ckpt(tmp_path, s, model, cfg)
    _truncate(tmp_path / "step_00000003/model.safetensors")
    with pytest.raises(ckpt.CheckpointDamagedError, match="step_00000003/model.safetensors has .* bytes") as e:
        ckpt.verify_checkpoint(tmp_path / "step_00000003")
    assert e.value.damaged == tmp_path / "step_00000003/model.safetensors"
    (tmp_path / "step_00000002/optimizer.pt").write_bytes(
        b"x" * (tmp_path / "step_00000002/optimizer.pt").stat().st_size
    )
    with pytest.warns(ckpt.CheckpointWarning) as warned:
        assert ckpt.resolve_resume("auto", tmp_path, verify=True).name == "step_00000001"
    msgs = [str(w.message) for w in warned]
    assert any("step_00000003/model.safetensors" in m for m in msgs)
    assert any("step_00000002/optimizer.pt does not match its recorded sha256" in m for m in msgs)
    assert ckpt.resolve_resume("auto", tmp_path).name == "step_00000003"  # unverified listing is unchanged
    with pytest.raises(ckpt.CheckpointDamagedError, match="model.safetensors"):
        ckpt.resolve_resume(str(tmp_path / "step_00000003"), tmp_path, verify=True)
    _truncate(tmp_path / "step_00000001/ema.safetensors")
    with pytest.warns(ckpt.CheckpointWarning), pytest.raises(ckpt.CheckpointError, match="every checkpoint"):
        ckpt.resolve_resume("auto", tmp_path, verify=True)


def test_load_for_sampling_and_export_name_the_damaged_file(tmp_path, cfg_model, capsys):
    cfg, model = cfg_model
    root = tmp_path / "run" / "checkpoints"
    path = write_ckpt(root, 4, model, cfg)
    ckpt.load_for_sampling(path)  # intact: loads
    _truncate(path / "ema.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="step_00000004/ema.safetensors"):
        ckpt.load_for_sampling(tmp_path / "run")
    ckpt.load_for_sampling(path, use_ema=False)  # only the files it reads are checked
    assert train_cli("--export", str(path), str(tmp_path / "export")) == 2
    err = capsys.readouterr().err
    assert "ema.safetensors" in err and "damaged" in err and not (tmp_path / "export").exists()
    # a truncated file without a checksum record is still a one-line error, not a traceback
    (path / ckpt.CHECKSUMS).unlink()
    with pytest.raises(ckpt.CheckpointError, match="ema.safetensors: truncated or corrupt"):
        ckpt.load_for_sampling(path)


def test_readable_problem_checks_what_another_process_verified(tmp_path, cfg_model):
    cfg, model = cfg_model
    path = write_ckpt(tmp_path, 1, model, cfg)
    recorded = ckpt.read_checksums(path)
    assert ckpt.readable_problem(path, recorded) is None
    assert "does not exist here" in ckpt.readable_problem(path, recorded, hidden=("model.safetensors",))
    assert "does not exist here" in ckpt.readable_problem(tmp_path / "step_00000009", recorded)
    assert "differs" in ckpt.readable_problem(path, {**recorded, "x": {"sha256": "0", "size": 1}})
