"""Official DiT / SiT checkpoints: safe reading, mismatch diagnosis, partial init, official experiment."""

from __future__ import annotations

import argparse
import pathlib
import re

import pytest
import torch

from vca_gen.errors import ConfigError, UserError
from vca_gen.experiment.official import official_experiment, protocol_description
from vca_gen.models import (
    OfficialCheckpointError,
    create_model,
    diagnose_mismatch,
    explain_mismatch,
    infer_architecture,
    infer_learn_sigma,
    infer_num_classes,
    load_matching,
    load_official_checkpoint,
    read_checkpoint_file,
)
from vca_gen.objectives import build_objective

try:  # the factory moved from schema.py to build.py
    from vca_gen.experiment.build import build_model
except ImportError:  # pragma: no cover
    from vca_gen.experiment.schema import build_model

TINY = dict(input_size=8, depth=2, hidden_size=64, num_heads=4, num_classes=10)
CAUSES = (
    "hidden size",
    "depth",
    "patch size",
    "input channels",
    "image size",
    "learn_sigma",
    "num_classes",
    "attention",
)


def tiny(attention="mhsa", name="DiT-S/2", **kw):
    opts = {**TINY, **kw}
    if attention == "vca":
        opts.setdefault("num_contrast_tokens", 4)
    return create_model(name, attention=attention, **opts)


def random_state(model) -> dict:
    """The model's state dict with every tensor moved off its init (so copies are recognisable)."""
    return {k: v + torch.randn_like(v) for k, v in model.state_dict().items()}


def meta_state(name, **kw) -> dict:
    with torch.device("meta"):
        return create_model(name, **kw).state_dict()


def causes_in(msg: str) -> set:
    return {c for c in CAUSES if f"{c}:" in msg}


def xl_official_shapes(p=2, C=1152, depth=28, in_ch=4, num_classes=1000, input_size=32):
    """Key -> shape of the released DiT-XL/2 (and SiT-XL/2) state dict, from the published layer list."""
    n, out = (input_size // p) ** 2, 2 * in_ch
    shapes = {
        "pos_embed": (1, n, C),
        "x_embedder.proj.weight": (C, in_ch, p, p),
        "x_embedder.proj.bias": (C,),
        "t_embedder.mlp.0.weight": (C, 256),
        "t_embedder.mlp.0.bias": (C,),
        "t_embedder.mlp.2.weight": (C, C),
        "t_embedder.mlp.2.bias": (C,),
        "y_embedder.embedding_table.weight": (num_classes + 1, C),
        "final_layer.linear.weight": (p * p * out, C),
        "final_layer.linear.bias": (p * p * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * C, C),
        "final_layer.adaLN_modulation.1.bias": (2 * C,),
    }
    for i in range(depth):
        for name, shape in (
            ("attn.qkv.weight", (3 * C, C)),
            ("attn.qkv.bias", (3 * C,)),
            ("attn.proj.weight", (C, C)),
            ("attn.proj.bias", (C,)),
            ("mlp.fc1.weight", (4 * C, C)),
            ("mlp.fc1.bias", (4 * C,)),
            ("mlp.fc2.weight", (C, 4 * C)),
            ("mlp.fc2.bias", (C,)),
            ("adaLN_modulation.1.weight", (6 * C, C)),
            ("adaLN_modulation.1.bias", (6 * C,)),
        ):
            shapes[f"blocks.{i}.{name}"] = shape
    return shapes


# ----------------------------------------------------------------------------- reading files
def test_plain_state_dict_roundtrip(tmp_path):
    sd = random_state(tiny())
    path = tmp_path / "DiT-tiny.pt"
    torch.save(sd, path)
    got, info = read_checkpoint_file(path)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert (info.entry, info.args, info.prefix, info.available) == ("state_dict", None, (), ())
    assert info.num_tensors == len(sd) and info.num_params == sum(v.numel() for v in sd.values())
    model = tiny()
    load_official_checkpoint(model, path)  # strict: official names load unchanged
    assert torch.equal(model.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])


def test_training_checkpoint_takes_ema_by_default_and_model_on_request(tmp_path):
    """DiT's / SiT's train.py layout: {"model", "ema", "opt", "args": argparse.Namespace}."""
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([0, 1])).square().mean().backward()
    opt.step()
    raw = random_state(model)
    ema = {k: v + 10.0 for k, v in raw.items()}
    args = argparse.Namespace(
        model="DiT-S/2",
        image_size=256,
        num_classes=10,
        global_seed=0,
        vae="ema",
        ckpt=None,
        path_type="Linear",
        cfg_scale=4.0,
    )
    path = tmp_path / "0400000.pt"
    torch.save({"model": raw, "ema": ema, "opt": opt.state_dict(), "args": args}, path)

    got, info = read_checkpoint_file(path)
    assert info.entry == "ema" and info.available == ("ema", "model")
    assert all(torch.equal(got[k], ema[k]) for k in ema)
    assert info.args == vars(args) and isinstance(info.args, dict)
    assert set(info.other_keys) == {"args", "opt"} and info.note == ""
    as_dict = {"kind": "official", **info}  # a mapping too
    assert as_dict["entry"] == "ema" and as_dict["args"]["model"] == "DiT-S/2" and dict(info) == info.to_dict()
    got_m, info_m = read_checkpoint_file(path, prefer="model")
    assert info_m.entry == "model" and all(torch.equal(got_m[k], raw[k]) for k in raw)
    with pytest.raises(OfficialCheckpointError, match="prefer"):
        read_checkpoint_file(path, prefer="best")


def test_only_model_entry_falls_back_with_a_note(tmp_path):
    sd = random_state(tiny())
    path = tmp_path / "no_ema.pt"
    torch.save({"model": sd}, path)
    got, info = read_checkpoint_file(path)  # prefer="ema" but there is none
    assert info.entry == "model" and "ema" in info.note and str(path) in info.note
    assert torch.equal(got["pos_embed"], sd["pos_embed"])


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefix_is_stripped(tmp_path, prefix):
    sd = random_state(tiny())
    path = tmp_path / "ddp.pt"
    torch.save({"ema": {prefix + k: v for k, v in sd.items()}, "model": sd}, path)
    got, info = read_checkpoint_file(path)
    assert set(got) == set(sd) and torch.equal(got["x_embedder.proj.weight"], sd["x_embedder.proj.weight"])
    assert "".join(info.prefix) == prefix
    load_official_checkpoint(tiny(), path)


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    sd = random_state(tiny())
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    got, info = read_checkpoint_file(path)
    assert info.entry == "state_dict" and torch.equal(got["pos_embed"], sd["pos_embed"])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OfficialCheckpointError, match=r"cut\.safetensors: truncated or corrupt"):
        read_checkpoint_file(cut)


def test_truncated_empty_missing_and_garbage_files_name_the_file(tmp_path):
    sd = random_state(tiny())
    full = tmp_path / "full.pt"
    torch.save(sd, full)
    data = full.read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "cut_tail.pt": data[:-10],
        "garbage.pt": b"not a checkpoint " * 20,
    }
    legacy = tmp_path / "legacy_full.pt"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    cases["legacy_truncated.pt"] = legacy.read_bytes()[:300]
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(OfficialCheckpointError) as e:
            read_checkpoint_file(p)
        assert str(p) in str(e.value) and re.search(r"truncated or corrupt", str(e.value)), (name, str(e.value))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(OfficialCheckpointError, match=r"empty\.pt.*empty"):
        read_checkpoint_file(empty)
    with pytest.raises(OfficialCheckpointError, match=r"nope\.pt does not exist"):
        read_checkpoint_file(tmp_path / "nope.pt")
    with pytest.raises(OfficialCheckpointError, match="is a directory"):
        read_checkpoint_file(tmp_path)
    assert issubclass(OfficialCheckpointError, UserError)


class _Touch:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_arbitrary_objects_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "args": _Touch(marker)}, path)
    with pytest.raises(
        OfficialCheckpointError, match=r"evil\.pt contains a pickled Python object \(\S+\).*arbitrary code"
    ):
        read_checkpoint_file(path)
    assert not marker.exists()
    path2 = tmp_path / "config_obj.pt"
    torch.save({"ema": {"w": torch.zeros(1)}, "args": _Config()}, path2)  # e.g. a config object beside the weights
    with pytest.raises(
        OfficialCheckpointError, match=r"config_obj\.pt contains a pickled Python object \(\S*_Config\)"
    ):
        read_checkpoint_file(path2)


class _Config:
    lr = 1e-4


def test_not_a_state_dict_and_non_tensor_values(tmp_path):
    def save(obj, name):
        p = tmp_path / name
        torch.save(obj, p)
        return p

    with pytest.raises(OfficialCheckpointError, match=r"list\.pt is not a state dict: it holds a list"):
        read_checkpoint_file(save([torch.zeros(1)], "list.pt"))
    with pytest.raises(OfficialCheckpointError, match=r"meta\.pt is not a state dict: no tensors.*'epoch'"):
        read_checkpoint_file(save({"epoch": 3, "lr": 1e-4}, "meta.pt"))
    with pytest.raises(OfficialCheckpointError, match=r"mixed\.pt holds non-tensor values.*'step' \(int\)"):
        read_checkpoint_file(save({"pos_embed": torch.zeros(1, 4, 8), "step": 7}, "mixed.pt"))
    with pytest.raises(OfficialCheckpointError, match=r"entry 'ema'.*non-tensor.*'blocks\.0\.x' \(str\)"):
        read_checkpoint_file(save({"ema": {"pos_embed": torch.zeros(1), "blocks.0.x": "a"}}, "bad_ema.pt"))
    with pytest.raises(OfficialCheckpointError, match=r"entry 'ema' is a Tensor"):
        read_checkpoint_file(save({"ema": torch.zeros(3)}, "ema_tensor.pt"))
    with pytest.raises(OfficialCheckpointError, match="empty state dict"):
        read_checkpoint_file(save({}, "nothing.pt"))


# ----------------------------------------------------------------------------- diagnosis
XL = dict(name="DiT-XL/2")


@pytest.mark.parametrize(
    "file_kw, model_name, model_kw, expect, fragments",
    [
        # hidden size: an XL file for an S model
        (
            {},
            "DiT-S/2",
            {},
            {"hidden size", "depth"},
            [
                r"'x_embedder\.proj\.weight' is \(1152, 4, 2, 2\) in the file but \(384, 4, 2, 2\) in the model",
                r"XL model.*not S",
                r"'blocks\.27\.\*'.*28 blocks, the model 12",
            ],
        ),
        # patch size: kernel shape
        (
            {"name": "DiT-XL/4"},
            "DiT-XL/2",
            {},
            {"patch size"},
            [r"x_embedder\.proj\.weight' is \(1152, 4, 4, 4\).*\(1152, 4, 2, 2\)", r"kernel is 4x4.*/4 model, not /2"],
        ),
        # image size: 512 px file (64x64 latents) for a 256 px model
        (
            {"input_size": 64},
            "DiT-XL/2",
            {},
            {"image size"},
            [r"'pos_embed' has 1024 tokens.*512 px.*256 in the model.*256 px"],
        ),
        # learn_sigma: 8 output channels in the file, 4 in the model
        (
            {},
            "DiT-XL/2",
            {"learn_sigma": False},
            {"learn_sigma"},
            [
                r"'final_layer\.linear\.weight' has 32 rows in the file = 2\*2\*8.*learn_sigma=True"
                r".*16 rows.*learn_sigma=False"
            ],
        ),
        (
            {"learn_sigma": False},
            "SiT-XL/2",
            {},
            {"learn_sigma"},
            [r"final_layer\.linear\.weight' has 16 rows.*learn_sigma=False.*set learn_sigma=False"],
        ),
        # num_classes: table rows = num_classes + 1
        (
            {},
            "DiT-XL/2",
            {"num_classes": 10},
            {"num_classes"},
            [
                r"'y_embedder\.embedding_table\.weight' has 1001 rows.*num_classes=1000.*11 in the model"
                r".*set num_classes=1000"
            ],
        ),
        # depth alone: an XL file for a 12-block XL-wide model
        ({}, "DiT-XL/2", {"depth": 12}, {"depth"}, [r"'blocks\.27\.\*' is in the file.*28 blocks, the model 12"]),
        (
            {"depth": 4, "hidden_size": 64, "num_heads": 4},
            "DiT-XL/2",
            {"depth": 6, "hidden_size": 64, "num_heads": 4},
            {"depth"},
            [r"'blocks\.5\.\*' is in the model but not in the file.*4 blocks, the model 6"],
        ),
        # attention kind: MHSA weights into a VCA model and back
        (
            {},
            "DiT-XL/2",
            {"attention": "vca", "num_contrast_tokens": 4},
            {"attention"},
            [r"blocks\.\*\.attn\.", r"plain MHSA checkpoint.*init_from"],
        ),
        (
            {"attention": "vca", "num_contrast_tokens": 4},
            "DiT-XL/2",
            {},
            {"attention"},
            [r"file has attention parameters the model lacks \(blocks\.\*\.attn\..*another attention kind than 'mhsa'"],
        ),
        # input channels: a pixel-space file
        (
            {"in_channels": 3, "input_size": 64},
            "DiT-XL/2",
            {"input_size": 64},
            {"input channels"},
            [r"takes 3 input channels, the model 4"],
        ),
        # everything at once
        (
            {},
            "DiT-B/4",
            {"input_size": 64, "learn_sigma": False, "num_classes": 10},
            {"hidden size", "depth", "patch size", "image size", "learn_sigma", "num_classes"},
            [r"not B \(hidden size 768\)"],
        ),
    ],
)
def test_diagnose_names_key_and_cause(file_kw, model_name, model_kw, expect, fragments):
    file_kw = dict(file_kw)
    state = meta_state(file_kw.pop("name", "DiT-XL/2"), **file_kw)
    msg = diagnose_mismatch(
        state, model_name, **{"input_size": 32, "in_channels": 4, "num_classes": 1000, "learn_sigma": True, **model_kw}
    )
    assert msg.startswith(f"checkpoint does not fit model {model_name}")
    assert causes_in(msg) == expect, msg
    for frag in fragments:
        assert re.search(frag, msg), (frag, msg)


def test_diagnose_fits_and_guesses_the_file():
    xl = meta_state("DiT-XL/2")
    assert diagnose_mismatch(xl, "DiT-XL/2", 32, 4, 1000, True) == ""
    assert diagnose_mismatch(xl, "SiT-XL/2", 32, 4, 1000, True) == ""  # same shapes
    msg = diagnose_mismatch(meta_state("DiT-L/4", input_size=64), "SiT-S/2", 32, 4, 1000, True)
    assert "The file looks like SiT-L/4 at 512 px (input_size 64), num_classes=1000, learn_sigma=True" in msg
    assert "an L model (hidden size 1024), not S" in msg
    with pytest.raises(ValueError, match="unknown model name"):
        diagnose_mismatch(xl, "DiT-XXL/2", 32, 4, 1000, True)


def test_diagnose_foreign_layouts():
    msg = diagnose_mismatch(
        {"transformer_blocks.0.attn1.to_q.weight": torch.zeros(2, 2), "pos_embed.proj.weight": torch.zeros(2, 4, 2, 2)},
        "DiT-XL/2",
        32,
        4,
        1000,
        True,
    )
    assert "diffusers" in msg
    msg = diagnose_mismatch({"conv.weight": torch.zeros(1)}, "DiT-XL/2", 32, 4, 1000, True)
    assert "not a DiT/SiT state dict" in msg and "x_embedder.proj.weight" in msg


def test_load_official_checkpoint_raises_with_the_diagnosis(tmp_path):
    sd = random_state(tiny(num_classes=7))
    path = tmp_path / "f.pt"
    torch.save({"ema": sd, "model": sd, "opt": {}, "args": argparse.Namespace(num_classes=7)}, path)
    with pytest.raises(
        OfficialCheckpointError,
        match=r"y_embedder\.embedding_table\.weight.*\(8, 64\).*\(11, 64\)"
        r".*num_classes=7 plus the null class",
    ):
        load_official_checkpoint(tiny(), path)
    assert explain_mismatch(sd, tiny(num_classes=7)) == ""


def test_infer_helpers():
    sd = tiny().state_dict()
    assert infer_num_classes(sd) == 10
    assert infer_learn_sigma(sd, patch=2, in_channels=4) is True
    assert infer_learn_sigma(tiny(learn_sigma=False).state_dict(), 2, 4) is False
    assert infer_learn_sigma({"module." + k: v for k, v in sd.items()}) is True  # patch / channels read off the file
    assert infer_learn_sigma(sd, patch=4, in_channels=3) is True  # the file's own kernel and channels decide
    with torch.device("meta"):
        assert infer_learn_sigma(create_model("DiT-XL/4").state_dict(), patch=2, in_channels=4) is True
    odd = dict(sd, **{"final_layer.linear.weight": torch.zeros(20, 64)})
    assert infer_learn_sigma(odd) is None
    assert infer_learn_sigma({"final_layer.linear.weight": torch.zeros(32, 64)}, patch=2, in_channels=4) is True
    assert infer_learn_sigma({"pos_embed": torch.zeros(1)}, 2, 4) is None
    with pytest.raises(OfficialCheckpointError, match="y_embedder"):
        infer_num_classes({"pos_embed": torch.zeros(1)})
    arch = infer_architecture(meta_state("DiT-XL/2"))
    assert arch == {
        "hidden_size": 1152,
        "depth": 28,
        "patch_size": 2,
        "in_channels": 4,
        "out_channels": 8,
        "learn_sigma": True,
        "num_classes": 1000,
        "num_tokens": 256,
        "input_size": 32,
        "mlp_hidden": 4608,
        "size": "XL",
        "attention_keys": [],
        "name": "DiT-XL/2",
    }
    assert infer_architecture(meta_state("DiT-S/8", attention="vca", num_contrast_tokens=4))["attention_keys"]


# ----------------------------------------------------------------------------- partial init
def test_load_matching_mhsa_into_vca_keeps_shared_and_leaves_vca_only_at_init():
    src = random_state(tiny())
    torch.manual_seed(1)
    vca = tiny("vca")
    before = {k: v.clone() for k, v in vca.state_dict().items()}
    report = load_matching(vca, {"module." + k: v for k, v in src.items()})
    after = vca.state_dict()
    vca_only = set(after) - set(src)
    assert vca_only and all(re.match(r"blocks\.\d+\.attn\.", k) for k in vca_only)
    assert set(report.loaded) == set(src) and set(report.missing_in_file) == vca_only
    assert report.unexpected_in_file == [] and report.shape_mismatch == []
    for k in src:
        assert torch.equal(after[k], src[k]), k
    for k in vca_only:
        assert torch.equal(after[k], before[k]), k
    text = report.summary()
    assert f"initialised {len(src)} of {len(after)} model tensors" in text
    assert "blocks.*.attn.pos_plus (2)" in text and "left at init" in text
    out = vca(torch.randn(2, 4, 8, 8), torch.tensor([3.0, 500.0]), torch.tensor([1, 2]))
    assert out.shape == (2, 8, 8, 8) and torch.isfinite(out).all()


def test_load_matching_reports_shape_mismatch_and_unexpected(tmp_path):
    src = random_state(tiny(input_size=16, num_classes=5))
    src["extra.weight"] = torch.zeros(3)
    path = tmp_path / "init.pt"
    torch.save({"model": src, "ema": src, "args": argparse.Namespace(model="DiT-S/2")}, path)
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_matching(model, path)
    mism = {k: (a, b) for k, a, b in report.shape_mismatch}
    assert mism == {"pos_embed": ((1, 64, 64), (1, 16, 64)), "y_embedder.embedding_table.weight": ((6, 64), (11, 64))}
    assert report.unexpected_in_file == ["extra.weight"] and report.missing_in_file == []
    after = model.state_dict()
    assert torch.equal(after["pos_embed"], before["pos_embed"])
    assert torch.equal(after["blocks.0.attn.qkv.weight"], src["blocks.0.attn.qkv.weight"])
    text = report.summary()
    assert "pos_embed (1, 64, 64) in the file vs (1, 16, 64)" in text and "extra.weight" in text
    assert report.at_init == ["pos_embed", "y_embedder.embedding_table.weight"]
    exact = load_matching(tiny(), tiny().state_dict())
    assert "fits the model exactly" in exact.summary()


# ----------------------------------------------------------------------------- official experiment
def test_official_dit_experiment_has_the_dit_protocol():
    exp = official_experiment("DiT-XL/2")
    assert exp.name == "official-DiT-XL-2-256"
    m, d, o = exp.model, exp.data, exp.objective
    assert (m.name, m.attention, m.learn_sigma, m.num_classes, m.input_size, m.in_channels) == (
        "DiT-XL/2",
        "mhsa",
        True,
        1000,
        32,
        4,
    )
    assert (d.kind, d.image_size, d.vae, d.scale_factor, d.latent_norm) == (
        "latents",
        256,
        "stabilityai/sd-vae-ft-mse",
        0.18215,
        "scale",
    )
    assert d.path and "official" in d.path
    assert o.kind == "diffusion"
    assert (
        o.diffusion.num_timesteps,
        o.diffusion.beta_schedule,
        o.diffusion.beta_start,
        o.diffusion.beta_end,
        o.diffusion.sampler,
        str(o.diffusion.sample_steps),
    ) == (1000, "linear", 1e-4, 0.02, "ddpm", "250")
    obj = build_objective(o)
    assert (obj.kind, obj.default_sampler, str(obj.default_steps)) == ("diffusion", "ddpm", "250")
    assert protocol_description(exp) == {
        "family": "DiT",
        "objective": "diffusion",
        "sampler": "ddpm",
        "steps": 250,
        "last_step": None,
        "last_step_size": None,
        "decoder": "stabilityai/sd-vae-ft-mse",
    }


def test_official_sit_experiment_has_the_sit_protocol():
    exp = official_experiment("SiT-XL/2", vae="stabilityai/sd-vae-ft-ema")
    f = exp.objective.flow
    assert exp.objective.kind == "flow" and exp.name == "official-SiT-XL-2-256"
    assert (f.path, f.prediction, f.sampler, f.sample_steps, f.diffusion_form, f.last_step, f.last_step_size) == (
        "linear",
        "velocity",
        "sde",
        250,
        "sigma",
        "mean",
        0.04,
    )
    obj = build_objective(exp.objective)
    assert (obj.kind, obj.default_sampler, obj.default_steps) == ("flow", "sde", 250)
    assert protocol_description(exp) == {
        "family": "SiT",
        "objective": "flow",
        "sampler": "sde",
        "steps": 250,
        "last_step": "mean",
        "last_step_size": 0.04,
        "decoder": "stabilityai/sd-vae-ft-ema",
    }


def test_official_experiment_sizes_and_errors():
    exp = official_experiment("DiT-XL/2", image_size=512, num_classes=10, learn_sigma=False)
    assert (exp.model.input_size, exp.model.num_classes, exp.model.learn_sigma, exp.name) == (
        64,
        10,
        False,
        "official-DiT-XL-2-512",
    )
    with pytest.raises(ConfigError, match="unknown model name"):
        official_experiment("DiT-XXL/2")
    with pytest.raises(ConfigError, match="image_size"):
        official_experiment("DiT-XL/2", image_size=260)
    with pytest.raises(ConfigError, match="not divisible by the patch size"):
        official_experiment("DiT-XL/8", image_size=32)


@pytest.mark.parametrize("name", ["DiT-XL/2", "SiT-XL/2"])
def test_model_of_official_experiment_has_exactly_the_official_keys(name):
    model = build_model(official_experiment(name), device="meta")
    expected = xl_official_shapes()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    fake = {k: torch.empty(s, device="meta") for k, s in expected.items()}
    assert explain_mismatch(fake, model) == ""
    model.load_state_dict(fake, strict=True, assign=True)
    assert diagnose_mismatch(fake, name, 32, 4, 1000, True) == ""
