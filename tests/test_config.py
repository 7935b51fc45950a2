"""Experiment configs: every shipped YAML validates and builds; typos and bad values are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vca_gen.experiment import build as B
from vca_gen.experiment import schema as C

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

# The paper's tables (VCA.md): every size x patch x attention x objective at 256 px, the ablations,
# and the 512 px variants.
EXPECTED = {
    f"{fam}_{size}_{att}{res}"
    for fam, size in (("dit", "s4"), ("dit", "s2"), ("dit", "b2"), ("sit", "s2"), ("sit", "b2"))
    for att in ("mhsa", "vca")
    for res in ("", "_512")
} | {
    "dit_s2_diff",
    "dit_s2_vca_stage1",
    "dit_s2_vca_stage2",
    "dit_s2_vca_learned",
    "demo",
    "toy_diffusion",
    "toy_flow_p2",
}


def test_shipped_configs_cover_the_paper_tables():
    assert {p.stem for p in CONFIGS} == EXPECTED


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_validates_and_builds_on_meta(path):
    cfg = C.load_config(path)
    model = B.build_model(cfg, device="meta")
    assert model.name == cfg.model.name and model.attention == cfg.model.attention
    assert next(model.parameters()).device.type == "meta"
    stem = path.stem
    if stem in ("demo", "toy_diffusion", "toy_flow_p2"):
        assert cfg.data.kind == "animal_mnist" and cfg.model.attention == "vca" and model.in_channels == 1
        assert cfg.objective.kind == ("diffusion" if stem == "toy_diffusion" else "flow")
        if stem == "toy_flow_p2":  # the paper's token geometry: 16x16 = 256 tokens pooled to n = 64 (8x8)
            assert model.patch_size == 2 and cfg.model.attention_options.num_contrast_tokens == 64
            assert model.pos_embed.shape[1] == 256
        return
    fam, size = stem.split("_")[:2]
    assert cfg.model.name == f"{fam.replace('dit', 'DiT').replace('sit', 'SiT')}-{size[0].upper()}/{size[1]}"
    assert cfg.objective.kind == ("diffusion" if fam == "dit" else "flow")
    assert cfg.model.input_size == (64 if stem.endswith("_512") else 32) and cfg.model.in_channels == 4
    assert (cfg.train.global_batch_size, cfg.train.lr, cfg.train.ema_decay) == (256, 1e-4, 0.9999)
    opts = dict(cfg.model.attention_options)
    if "stage1" in stem:
        assert opts["stages"] == "stage1"
    elif "stage2" in stem:
        assert opts["stages"] == "stage2"
    elif "learned" in stem:
        assert opts["contrast_tokens"] == "learned"
    elif "_vca" in stem:
        # n = N/4: 64 of the /2 models' 256 tokens at 256 px; DiT-S/4 has 64 tokens at 256 px -> 16
        assert opts == {
            "num_contrast_tokens": 16 if stem == "dit_s4_vca" else 64,
            "stage2_softmax": "joint",
            "dwconv": True,
            "contrast_tokens": "pooled",
            "stages": "both",
        }
    if "diff" in stem:
        assert cfg.model.attention == "diff"


def test_vca_adds_the_papers_parameter_count():
    mhsa = B.build_model(C.load_config(REPO / "configs/dit_s2_mhsa.yaml"), device="meta")
    vca = B.build_model(C.load_config(REPO / "configs/dit_s2_vca.yaml"), device="meta")
    extra = sum(p.numel() for p in vca.parameters()) - sum(p.numel() for p in mhsa.parameters())
    assert 0.6e6 < extra < 0.7e6  # VCA.md: DiT-S/2 with n=64 gains about 0.64M


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.lrr=1", "unknown config key 'train.lrr' (did you mean 'lr'?)"),
        ("trian.lr=1", "unknown config key 'trian'"),
        ("model.attention_options.foo=1", "unknown option(s) ['foo']; accepted per attention kind"),
        ("objective.flow.pathh=gvp", "unknown config key 'objective.flow.pathh'"),
        ("data.kind=imgs", "data.kind='imgs' is not valid"),
        ("train.lr=abc", "invalid value for 'train.lr'"),
        ("train.mixed_precision=bf32", "accepted: auto, no, bf16, fp16"),
        ("model.attention=vcx", "accepted: mhsa, vca, diff"),
        ("model.name=DiT-M/2", "accepted: DiT-Ti/2"),
        ("model.input_size=16", "model.input_size=16 does not match the data"),
        ("train.global_batch_size=0", "train.global_batch_size=0 is not valid; accepted: a number > 0"),
        ("logging.tracker=tensorbord", "accepted: tensorboard"),
        ("train.grid.classes=[1000]", "class indices in [0, 1000)"),
    ],
)
def test_bad_values_are_clear_errors(override, needle):
    with pytest.raises(C.ConfigError) as e:
        C.load_config(REPO / "configs/dit_s2_vca.yaml", [override])
    assert needle in str(e.value)


def test_unknown_key_lists_the_valid_keys(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("_base_: %s\ntrain:\n  warmup: 5\n" % (REPO / "configs/dit_s2_mhsa.yaml"))
    with pytest.raises(C.ConfigError) as e:
        C.load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "'train.warmup'" in msg and "warmup_steps" in msg and "global_batch_size" in msg


def test_overrides_and_base_composition(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model: {name: DiT-S/4, num_classes: 10}\ntrain: {lr: 3.0e-4, betas: [0.8, 0.9]}\n")
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text("_base_: ../base.yaml\nname: child\ndata: {kind: animal_mnist, image_size: 32, vae: null}\n")
    cfg = C.load_config(
        child, ["train.lr=5e-4", "model.attention=vca", "model.attention_options.num_contrast_tokens=4"]
    )
    assert cfg.name == "child" and cfg.model.name == "DiT-S/4" and cfg.model.num_classes == 10
    assert cfg.train.lr == 5e-4 and list(cfg.train.betas) == [0.8, 0.9]
    assert cfg.model.attention_options.num_contrast_tokens == 4
    assert (cfg.model.input_size, cfg.model.in_channels) == (32, 1)
    assert cfg.train.output_dir == "runs/child"  # interpolation resolved


def test_circular_base_and_missing_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("_base_: b.yaml\n")
    b.write_text("_base_: a.yaml\n")
    with pytest.raises(C.ConfigError, match="circular"):
        C.load_config(a)
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load_config(tmp_path / "nope.yaml")
    with pytest.raises(C.ConfigError, match="key=value"):
        C.load_config(REPO / "configs/demo.yaml", ["train.lr"])


def test_resolved_config_round_trips():
    cfg = C.load_config(REPO / "configs/sit_b2_vca_512.yaml", ["train.seed=7"])
    again = C.config_from_yaml_text(C.to_yaml(cfg))
    assert C.to_container(again) == C.to_container(cfg)
    again = C.config_from_dict(C.to_container(cfg))
    assert C.to_container(again) == C.to_container(cfg)


def test_model_kwargs_build_the_configured_model():
    cfg = C.load_config(REPO / "configs/demo.yaml")
    model = B.build_model(cfg)
    assert model.hidden_size == cfg.model.hidden_size and model.depth == cfg.model.depth
    x = torch.zeros(2, 1, 32, 32)
    out = model(x, torch.zeros(2), torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, model.out_channels, 32, 32)
