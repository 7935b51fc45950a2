"""The value depthwise convolution as an option of every attention kind (``dwconv``), end to end:
the experiment resolution (options belong to the kind they were written for), the committed sweep
cells that must keep their experiment hashes, official-layout files and ``model.init_from``.
The layer's numerics against float64 references are in ``test_attention.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from test_training_common import reset_accelerate, tiny_dict
from vca_gen.experiment import schema as C
from vca_gen.experiment.build import build_model
from vca_gen.models import create_model, load_official_checkpoint
from vca_gen.models.summary import count_params

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def opts(cfg) -> dict:
    return dict(cfg.model.attention_options)


# ----------------------------------------------------------------------------- resolution
def test_switching_kind_drops_the_options_of_the_kind_before():
    """demo.yaml is VCA with ``dwconv: true`` from ``_base_/vca.yaml``: switching the kind by override
    gives plain MHSA / DIFF (no conv carried over), exactly as the committed cells were trained."""
    assert opts(C.load_config(CONFIGS / "demo.yaml"))["dwconv"] is True
    for kind in ("mhsa", "diff"):
        cfg = C.load_config(CONFIGS / "demo.yaml", [f"model.attention={kind}"])
        assert opts(cfg) == {}
        model = build_model(cfg, device="meta")
        assert not any(".dwc." in k for k in model.state_dict())


@pytest.mark.parametrize("kind", ["mhsa", "diff"])
def test_explicit_dwconv_is_honoured_on_every_kind(kind):
    """An explicit ``dwconv=true`` stated with (or after) the switch is never dropped."""
    cfg = C.load_config(CONFIGS / "demo.yaml", [f"model.attention={kind}", "model.attention_options.dwconv=true"])
    assert opts(cfg) == {"dwconv": True}
    keys = build_model(cfg, device="meta").state_dict()
    assert {k for k in keys if ".dwc." in k} == {
        f"blocks.{i}.attn.dwc.{w}" for i in range(6) for w in ("weight", "bias")
    }
    # the same from a file whose kind is MHSA (the paper sweeps' mhsa-dw), and in either order
    cfg = C.load_config(CONFIGS / "sit_s2_mhsa.yaml", ["model.attention_options.dwconv=true"])
    assert cfg.model.attention == "mhsa" and opts(cfg) == {"dwconv": True}
    cfg = C.load_config(CONFIGS / "demo.yaml", ["model.attention_options.dwconv=true", f"model.attention={kind}"])
    assert opts(cfg) == {"dwconv": True}


def test_vca_without_dwconv_and_plain_defaults():
    cfg = C.load_config(CONFIGS / "demo.yaml", ["model.attention_options.dwconv=false"])
    assert cfg.model.attention == "vca" and opts(cfg)["dwconv"] is False and opts(cfg)["num_contrast_tokens"] == 16
    assert not any(".dwc." in k for k in build_model(cfg, device="meta").state_dict())
    # an explicit dwconv=false on MHSA is the default: recorded as plain MHSA (same experiment)
    assert opts(C.load_config(CONFIGS / "sit_s2_mhsa.yaml", ["model.attention_options.dwconv=false"])) == {}


def test_a_file_that_switches_kind_over_a_vca_base(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"_base_": str(CONFIGS / "demo.yaml"), "model": {"attention": "mhsa"}}))
    assert opts(C.load_config(child)) == {}
    child.write_text(
        yaml.safe_dump(
            {
                "_base_": str(CONFIGS / "demo.yaml"),
                "model": {"attention": "mhsa", "attention_options": {"dwconv": True}},
            }
        )
    )
    assert opts(C.load_config(child)) == {"dwconv": True}


def test_bad_dwconv_value_is_a_config_error():
    with pytest.raises(C.ConfigError, match="dwconv must be true or false"):
        C.load_config(CONFIGS / "sit_s2_mhsa.yaml", ["model.attention_options.dwconv=maybe"])


@pytest.mark.parametrize("path", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_keeps_its_model(path):
    """MHSA / DIFF files stay plain (no conv), VCA files keep theirs."""
    cfg = C.load_config(CONFIGS / path)
    if cfg.model.attention == "vca":
        assert opts(cfg)["dwconv"] is True
    else:
        assert opts(cfg) == {}


# ----------------------------------------------------------------------------- committed cells
def test_committed_cells_keep_their_experiment_hashes():
    """Every committed cell file of every shipped sweep matches the experiment its sweep file composes
    today (so ``sweep.py run`` reuses them: adding ``dwconv`` to MHSA/DIFF changed no hash)."""
    from vca_gen.sweep.plan import validate
    from vca_gen.sweep.spec import load_sweep

    checked = 0
    for sweep_file in sorted((CONFIGS / "sweeps").glob("*.yaml")):
        sweep = load_sweep(sweep_file)
        cells_dir = REPO / "docs" / "results" / sweep.name / "cells"
        if not cells_dir.is_dir():
            continue
        plans = {c.key: c for c in validate(sweep, allow_missing_reference=True).cells}
        for f in sorted(cells_dir.glob("*.json")):
            rec = json.loads(f.read_text())
            if f.stem not in plans:
                continue
            assert rec["experiment_hash"] == plans[f.stem].experiment_hash, f
            assert rec["protocol_hash"] == plans[f.stem].protocol_hash, f
            checked += 1
    assert checked >= 27


# ----------------------------------------------------------------------------- official files, summary
def test_official_layout_still_loads_strictly_into_mhsa(tmp_path):
    """An official-layout state dict (no dwc keys) loads exactly into the default MHSA model."""
    torch.manual_seed(0)
    src = create_model("DiT-S/4", input_size=16, depth=2, hidden_size=32, num_heads=2)
    path = tmp_path / "DiT-official.pt"
    torch.save({k: v + 1 for k, v in src.state_dict().items()}, path)
    model = create_model("DiT-S/4", input_size=16, depth=2, hidden_size=32, num_heads=2)
    load_official_checkpoint(model, path)  # strict
    assert torch.equal(model.state_dict()["blocks.1.attn.qkv.weight"], src.state_dict()["blocks.1.attn.qkv.weight"] + 1)
    with_conv = create_model("DiT-S/4", input_size=16, depth=2, hidden_size=32, num_heads=2, dwconv=True)
    with pytest.raises(Exception, match="dwc"):
        load_official_checkpoint(with_conv, path)


def test_summary_counts_the_conv():
    kw = dict(input_size=16, depth=3, hidden_size=32, num_heads=2)
    plain, _ = count_params(create_model("DiT-S/4", **kw))
    conv, _ = count_params(create_model("DiT-S/4", dwconv=True, **kw))
    assert conv - plain == 3 * (9 * 32 + 32)


def test_init_from_an_official_mhsa_file_into_mhsa_with_dwconv(tmp_path):
    """``model.init_from`` an official MHSA file: every official tensor is copied, the convs stay at init."""
    from vca_gen.train.trainer import Trainer

    d = tiny_dict(tmp_path / "run", max_steps=1)
    d["model"].update(attention="mhsa", attention_options={"dwconv": True})
    probe = build_model(C.config_from_dict(d))
    official = {k: torch.randn_like(v) for k, v in probe.state_dict().items() if ".dwc." not in k}
    src = tmp_path / "DiT-official.pt"
    torch.save(official, src)
    d["model"]["init_from"] = str(src)
    reset_accelerate()
    trainer = Trainer(C.config_from_dict(d))
    try:
        report = trainer.init_report
        assert report is not None and sorted(report.missing_in_file) == sorted(
            f"blocks.{i}.attn.dwc.{w}" for i in range(2) for w in ("weight", "bias")
        )
        assert report.unexpected_in_file == [] and report.shape_mismatch == []
        state = trainer.model.state_dict()
        for k, v in official.items():
            assert torch.equal(state[k].cpu(), v), k
        assert torch.equal(
            trainer.ema.model.state_dict()["blocks.0.attn.qkv.weight"].cpu(), official["blocks.0.attn.qkv.weight"]
        )
    finally:
        trainer.close()
