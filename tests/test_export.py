"""An export stands alone: a latent model with per-channel normalisation, trained by the real
trainer on a latent store written by the extraction code, exported with ``train.py --export``,
samples to the same bytes as its checkpoint after the run directory and the latent store are gone.

The store's statistics reach the export's ``decoder.json``; they are recomputed here from the
store's shards (posterior samples ``z = mean + std * eps`` over both copies:
E[z] = mean(mean), E[z^2] = mean(mean^2 + std^2)).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from test_data_common import make_image_folder, make_tiny_vae
from test_training_common import reset_accelerate, run, tiny_dict
from vca_gen.sample.cli import main as sample_main


def train_cli(*args: str) -> int:
    from vca_gen.train.cli import main

    reset_accelerate()
    return main(list(args))


def sample(capsys, ckpt: Path, out: Path) -> tuple[dict, bytes, np.ndarray]:
    """sample.py on ``ckpt`` (the experiment's own protocol: DDPM, its 3 steps) → summary, arr_0 bytes, labels."""
    argv = [
        "--ckpt",
        str(ckpt),
        "--out",
        str(out),
        "--num-samples",
        "6",
        "--seed",
        "5",
        "--batch-size",
        "4",
        "--no-progress",
        "--grid-classes",
        "0",
    ]
    assert sample_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with np.load(out / "samples.npz") as z:
        return summary, z["arr_0"].tobytes(), z["arr_1"]


def store_channel_stats(store: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean / std of posterior samples over every stored item and both copies."""
    shards = [load_file(p) for p in sorted(store.glob("shard_*.safetensors"))]
    mean = torch.cat([t["mean"] for t in shards]).double()  # (n, 2, c, h, w)
    std = torch.cat([t["std"] for t in shards]).double()
    m = mean.mean(dim=(0, 1, 3, 4))
    var = (mean**2 + std**2).mean(dim=(0, 1, 3, 4)) - m**2
    return m.numpy(), var.sqrt().numpy()


def test_latent_per_channel_export_samples_alone(tmp_path, capsys):
    from vca_gen.data.extract import extract
    from vca_gen.data.latents import LatentStore

    images = make_image_folder(tmp_path / "images", per_class=2)  # 3 classes x 2 images
    vae = make_tiny_vae(tmp_path / "vae")  # 2x down-sampling, 4 latent channels
    store = tmp_path / "store"
    reset_accelerate()
    extract(str(images), str(store), vae=str(vae), image_size=16, batch_size=4, shard_size=4, num_workers=0)
    ref_mean, ref_std = store_channel_stats(store)
    assert LatentStore(store).latent_shape == (4, 8, 8) and len(list(store.glob("shard_*.safetensors"))) == 2
    assert not np.allclose(ref_mean, 0, atol=1e-3) and not np.allclose(ref_std, 1, atol=1e-3)  # a real normalisation

    run_dir = tmp_path / "run"
    d = tiny_dict(run_dir, max_steps=2, ckpt_every=2, warmup_steps=0, fid={"every": 0, "num_samples": 6})
    d["model"]["num_classes"] = 3
    d["data"] = {
        "kind": "latents",
        "path": str(store),
        "image_size": 16,
        "vae": str(vae),
        "vae_downsample": 2,
        "latent_norm": "per_channel",
        "num_workers": 0,
    }
    assert run(d)["step"] == 2
    ckpt = run_dir / "checkpoints" / "step_00000002"
    export = tmp_path / "export"
    assert train_cli("--export", str(run_dir), str(export)) == 0
    assert sorted(p.name for p in export.iterdir()) == [
        "checksums.json",
        "config.json",
        "decoder.json",
        "model.safetensors",
    ]
    capsys.readouterr()

    # decoder.json: the VAE folder, its factor and the store's per-channel statistics
    spec = json.loads((export / "decoder.json").read_text())
    assert spec == json.loads((ckpt / "decoder.json").read_text())
    assert (spec["vae"], spec["subfolder"], spec["downsample"], spec["image_channels"]) == (str(vae), None, 2, 3)
    norm = spec["normalizer"]
    assert norm["kind"] == "per_channel" and len(norm["mean"]) == len(norm["std"]) == 4
    np.testing.assert_allclose(norm["mean"], ref_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(norm["std"], ref_std, rtol=1e-9)
    stats = LatentStore(store).manifest["latent_stats"]
    assert norm["mean"] == stats["mean"] and norm["std"] == stats["std"]  # the store's own reader, exactly
    # the export holds the checkpoint's EMA weights
    ema, weights = load_file(ckpt / "ema.safetensors"), load_file(export / "model.safetensors")
    assert ema.keys() == weights.keys() and all(torch.equal(ema[k], weights[k]) for k in ema)

    before, a_ckpt, y_ckpt = sample(capsys, run_dir, tmp_path / "s_ckpt")  # the run dir: its latest checkpoint
    shutil.rmtree(run_dir)
    shutil.rmtree(store)
    after, a_export, y_export = sample(capsys, export, tmp_path / "s_export")
    assert a_export == a_ckpt and np.array_equal(y_export, y_ckpt)
    assert np.frombuffer(a_export, np.uint8).reshape(6, 16, 16, 3).std() > 0  # 8x8 latents x 2
    for s in (before, after):
        assert (s["sampler"], s["steps"], s["protocol"]["decoder"]) == ("ddpm", "3", str(vae))
    assert (before["protocol"]["source"], after["protocol"]["source"]) == ("checkpoint", "export")
