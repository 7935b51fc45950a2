"""Official DiT / SiT ``.pt`` files through ``sample.py --ckpt FILE --model NAME``: the paper's
protocol by default (DiT: DDPM 250; SiT: SDE 250, diffusion form sigma, last step mean 0.04), the
``ema`` entry of a ``{"model", "ema", "opt", "args"}`` training dict, and one-line refusals of files
that do not fit ``--model``.

The files are made with ``create_model`` in the official key layout (``x_embedder``,
``t_embedder``, ``y_embedder``, ``pos_embed``, ``blocks.i``, ``final_layer``). ``Ti/8`` is the
smallest registry name ``--model`` accepts: 16 tokens at 256 px, so 250 steps of 2 samples cost a
few seconds on one CPU thread. The decoder is a tiny random ``AutoencoderKL`` with a 2x factor
(not sd-vae's 8x): images are latent side (256 / 8 = 32) x 2 = 64 px.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_data_common import make_tiny_vae
from vca_gen.models import create_model, read_checkpoint_file
from vca_gen.sample.cli import main

DIT, SIT = "DiT-Ti/8", "SiT-Ti/8"
CLASSES = 2
OFFICIAL_TOP = {"x_embedder", "t_embedder", "y_embedder", "pos_embed", "blocks", "final_layer"}


def official_state(
    name: str = DIT, seed: int = 0, input_size: int = 32, num_classes: int = CLASSES, scale: float = 0.02, **kw
) -> dict:
    """A random state dict of ``name`` in the official layout (weights moved off the adaLN-zero init)."""
    torch.manual_seed(seed)
    model = create_model(name, input_size=input_size, num_classes=num_classes, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def training_dict(ema: dict, name: str, seed: int = 7) -> dict:
    """An official-style training checkpoint: live weights differ from the EMA ones."""
    g = torch.Generator().manual_seed(seed)
    live = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in ema.items()}
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=1e-4)
    p.grad = torch.ones(3)
    opt.step()
    args = argparse.Namespace(model=name, image_size=256, num_classes=CLASSES, global_batch_size=256)
    return {"model": live, "ema": ema, "opt": opt.state_dict(), "args": args}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("official")
    dit, sit = official_state(DIT, seed=0), official_state(SIT, seed=1)
    out = {
        "vae": make_tiny_vae(base / "vae"),
        "dit": base / "DiT-Ti-8.pt",
        "dit_train": base / "dit_train.pt",
        "dit_ema_only": base / "dit_ema_only.pt",
        "sit_train": base / "sit_train.pt",
    }
    torch.save(dit, out["dit"])
    train = training_dict(official_state(DIT, seed=2), DIT)
    torch.save(train, out["dit_train"])
    torch.save(train["ema"], out["dit_ema_only"])
    torch.save(training_dict(sit, SIT), out["sit_train"])
    return out


def sample(capsys, files, ckpt, model: str, out: Path, *extra: str):
    """Run sample.py in-process; (summary JSON, sampling.json, arr_0)."""
    argv = [
        "--ckpt",
        str(ckpt),
        "--model",
        model,
        "--num-classes",
        str(CLASSES),
        "--vae",
        str(files["vae"]),
        "--num-samples",
        "2",
        "--out",
        str(out),
        "--no-progress",
        "--grid-classes",
        "0",
        *extra,
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    settings = json.loads((out / "sampling.json").read_text())
    with np.load(out / "samples.npz") as z:
        images = z["arr_0"]
    return summary, settings, images


def test_files_have_the_official_layout(files):
    for key, entry in (("dit", "state_dict"), ("dit_train", "ema"), ("sit_train", "ema")):
        state, info = read_checkpoint_file(files[key])
        assert info.entry == entry
        assert {k.split(".")[0] for k in state} == OFFICIAL_TOP
        assert tuple(state["x_embedder.proj.weight"].shape) == (192, 4, 8, 8)  # Ti hidden 192, patch 8, 4 ch
        assert tuple(state["pos_embed"].shape) == (1, 16, 192)  # (256 / 8 / 8) ** 2 tokens
        assert tuple(state["final_layer.linear.weight"].shape) == (8 * 8 * 8, 192)  # learn_sigma: 2 x 4 channels
        assert tuple(state["y_embedder.embedding_table.weight"].shape) == (CLASSES + 1, 192)  # + null class
        assert "blocks.11.adaLN_modulation.1.weight" in state and "blocks.12.attn.qkv.weight" not in state
    assert set(read_checkpoint_file(files["dit_train"])[1].available) == {"model", "ema"}


def test_dit_file_samples_ddpm_250_by_default(capsys, files, tmp_path):
    summary, settings, images = sample(capsys, files, files["dit"], DIT, tmp_path / "s")
    proto = {
        "family": "DiT",
        "objective": "diffusion",
        "sampler": "ddpm",
        "steps": "250",
        "cfg_scale": 1.0,
        "decoder": str(files["vae"]),
        "weights": "state_dict",
        "source": "official",
    }
    assert summary["protocol"] == proto and settings["protocol"] == proto
    assert (summary["sampler"], summary["steps"], settings["sampler"], settings["steps"]) == (
        "ddpm",
        "250",
        "ddpm",
        "250",
    )
    assert summary["nfe_per_image"] == 250  # 250 respaced DDPM steps were run, not just recorded
    assert settings["vae"] == str(files["vae"]) and settings["model"] == DIT and settings["objective"] == "diffusion"
    # image side = latent side (256 / 8, the official experiment) x the real VAE's factor (2)
    assert images.shape == (2, 64, 64, 3) and settings["image_shape"] == [64, 64, 3]
    assert images.std() > 0


def test_sit_file_samples_sde_250_sigma_mean_004_by_default(capsys, files, tmp_path):
    summary, settings, images = sample(capsys, files, files["sit_train"], SIT, tmp_path / "s")
    proto = {
        "family": "SiT",
        "objective": "flow",
        "sampler": "sde",
        "steps": "250",
        "cfg_scale": 1.0,
        "decoder": str(files["vae"]),
        "weights": "ema",
        "source": "official",
        "diffusion_form": "sigma",
        "last_step": "mean",
        "last_step_size": 0.04,
    }
    assert summary["protocol"] == proto and settings["protocol"] == proto
    assert (settings["sampler"], settings["steps"], settings["objective"]) == ("sde", "250", "flow")
    assert settings["sampler_options"] == {} and settings["model"] == SIT
    assert summary["nfe_per_image"] == 250  # the SDE ran its 250 steps (the last one a mean step)
    assert images.shape == (2, 64, 64, 3) and images.std() > 0


def test_training_dict_samples_its_ema_entry_unless_no_ema(capsys, files, tmp_path):
    ema, s_ema, a_ema = sample(capsys, files, files["dit_train"], DIT, tmp_path / "ema", "--steps", "2")
    assert ema["protocol"]["weights"] == "ema" and s_ema["ema"] is True
    assert (ema["steps"], s_ema["protocol"]["steps"], ema["nfe_per_image"]) == ("2", "2", 2)
    live, s_live, a_live = sample(capsys, files, files["dit_train"], DIT, tmp_path / "live", "--steps", "2", "--no-ema")
    assert live["protocol"]["weights"] == "model" and s_live["ema"] is False
    assert not np.array_equal(a_ema, a_live)
    # the EMA weights alone, as a plain file, give the same bytes as the training dict's default
    _, s_plain, a_plain = sample(capsys, files, files["dit_ema_only"], DIT, tmp_path / "plain", "--steps", "2")
    assert s_plain["protocol"]["weights"] == "state_dict" and np.array_equal(a_plain, a_ema)


def test_learn_sigma_is_read_from_the_file(files, tmp_path):
    from vca_gen.sample.model import load

    path = tmp_path / "fixed_sigma.pt"
    torch.save(official_state(DIT, learn_sigma=False), path)
    loaded = load(path, model_name=DIT, num_classes=CLASSES, vae=str(files["vae"]))
    assert loaded.experiment.model.learn_sigma is False and int(loaded.model.out_channels) == 4
    loaded = load(files["dit"], model_name=DIT, num_classes=CLASSES, vae=str(files["vae"]))
    assert loaded.experiment.model.learn_sigma is True and int(loaded.model.out_channels) == 8


MISMATCHES = {
    # case: (file's create_model name and options, sample.py extra args, fragments of the one-line error)
    "depth": ((DIT, {"depth": 2}), [], ["depth", "blocks."]),
    "hidden size": ((DIT, {"hidden_size": 96, "num_heads": 3}), [], ["hidden size", "x_embedder.proj.weight"]),
    "patch size": (("DiT-Ti/4", {}), [], ["patch size", "x_embedder.proj.weight"]),
    "image size": ((DIT, {"input_size": 64}), [], ["image size", "pos_embed", "512"]),
    "num_classes": ((DIT, {"num_classes": 4}), [], ["num_classes", "y_embedder.embedding_table"]),
    "family size": ((DIT, {}), ["--model", "DiT-S/8"], ["hidden size", "DiT-Ti/8"]),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_file_that_does_not_fit_model_exits_2_with_one_line(capsys, files, tmp_path, case):
    (name, kw), extra, fragments = MISMATCHES[case]
    path = tmp_path / "file.pt"
    torch.save(official_state(name, **kw), path)
    model = extra[1] if extra else DIT
    out = tmp_path / "out"
    argv = [
        "--ckpt",
        str(path),
        "--model",
        model,
        "--num-classes",
        str(CLASSES),
        "--vae",
        str(files["vae"]),
        "--num-samples",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sample.py: error: "), captured.err
    msg = lines[0]
    assert f"does not fit --model {model}" in msg and str(path) in msg
    for f in fragments:
        assert f in msg, (f, msg)
    assert captured.out == "" and not out.exists()
