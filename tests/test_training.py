"""Training loop behaviour: accumulation, non-finite handling, outputs, on-the-fly VAE, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from test_training_common import (
    ckpt_tensors,
    image_data,
    make_images,
    reset_accelerate,
    run,
    tiny_dict,
    write_yaml,
)
from vca_gen.experiment import schema as C


def train_cli(*args: str) -> int:
    from vca_gen.train.cli import main

    reset_accelerate()
    return main(list(args))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("img") / "images")


def test_micro_batches_match_the_full_batch(tmp_path, images):
    """Gradient accumulation over 4 micro-batches gives the same update as one batch of 4."""
    flow = {"kind": "flow", "flow": {"sampler": "euler", "sample_steps": 3}}
    da = tiny_dict(tmp_path / "a", data=image_data(images), max_steps=2, ckpt_every=2)
    db = tiny_dict(tmp_path / "b", data=image_data(images), max_steps=2, ckpt_every=2, micro_batch_size=1)
    da["objective"] = db["objective"] = flow  # SiT objective here; DiT's in the resume/distributed tests
    a, b = run(da), run(db)
    ta, tb = (
        ckpt_tensors(tmp_path / "a/checkpoints/step_00000002"),
        ckpt_tensors(tmp_path / "b/checkpoints/step_00000002"),
    )
    for k in ta["model"]:
        torch.testing.assert_close(ta["model"][k], tb["model"][k], rtol=1e-5, atol=1e-6)
    assert a["last"]["loss"] == pytest.approx(b["last"]["loss"], rel=1e-5)


def test_outputs_config_grid_and_tensorboard(tmp_path, images):
    d = tiny_dict(
        tmp_path / "run", data=image_data(images), max_steps=2, ckpt_every=2, grid={"every": 2, "num": 4, "nrow": 2}
    )
    d["logging"] = {"tracker": "tensorboard"}
    summary = run(d)
    out = tmp_path / "run"
    assert C.load_config(out / "config.yaml").model.name == "DiT-S/4"  # resolved, re-loadable
    from PIL import Image

    grid = Image.open(out / "samples/step_00000002.png")
    assert grid.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # 2x2 images of 16 px, padding 2
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for e in events:
        acc = EventAccumulator(str(e))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "train/lr", "train/steps_per_sec", "train/images_per_sec"} <= tags
    assert math.isfinite(summary["last"]["loss"])


def test_non_finite_steps_are_skipped_then_stop(tmp_path, images, monkeypatch):
    """A non-finite batch is consumed but not applied: ``step`` (applied updates, which the LR and
    EMA warm-ups follow) stays, ``counters["batches"]`` (the data position) advances."""
    from vca_gen.train.trainer import NonFiniteLossError, Trainer

    reset_accelerate()
    cfg = C.config_from_dict(
        tiny_dict(tmp_path / "run", data=image_data(images), max_steps=10, ckpt_every=0, max_nonfinite=3)
    )
    tr = Trainer(cfg)
    real = tr.objective.training_losses
    bad_batches = {1, 3, 4, 5}

    def flaky(model_fn, x, y, generator=None):
        out = real(model_fn, x, y, generator=generator)
        return {"loss": out["loss"] * float("nan")} if tr.counters["batches"] in bad_batches else out

    monkeypatch.setattr(tr.objective, "training_losses", flaky)
    it = iter(tr.loader)
    tr.train_step(*next(it))
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in tr.ema.state_dict().items()}
    stats = tr.train_step(*next(it))  # batch 1: NaN → skipped
    assert stats["skipped"] == 1.0 and tr.counters["nonfinite_total"] == 1
    assert tr.step == 1 and tr.counters["batches"] == 2 and tr.counters["optimizer_steps"] == 1
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in tr.ema.state_dict().items())
    stats = tr.train_step(*next(it))  # batch 2 fine: consecutive counter resets; LR of update #2
    assert tr.counters["nonfinite_consecutive"] == 0 and tr.counters["optimizer_steps"] == 2 and tr.step == 2
    assert stats["lr"] == pytest.approx(1e-3)  # warm-up 2: update 1 (0-based) is at full lr
    tr.train_step(*next(it))
    tr.train_step(*next(it))
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss"):
        tr.train_step(*next(it))
    assert tr.counters["nonfinite_total"] == 4 and tr.step == 2 and tr.counters["batches"] == 6
    tr.close()


def test_images_encoded_on_the_fly_with_a_vae(tmp_path, images):
    from test_data_common import make_tiny_vae

    vae = make_tiny_vae(tmp_path / "vae")
    data = image_data(images, image_size=16, vae=str(vae), vae_downsample=2)
    summary = run(tiny_dict(tmp_path / "run", data=data, max_steps=2, ckpt_every=2, grid={"every": 2, "num": 2}))
    cfg = C.load_config(tmp_path / "run/config.yaml")
    assert (cfg.model.in_channels, cfg.model.input_size) == (4, 8)
    assert summary["step"] == 2 and (tmp_path / "run/samples/step_00000002.png").is_file()


# ----------------------------------------------------------------------------- bad input
def test_config_typo_exits_non_zero_and_writes_nothing(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path / "run"))
    assert train_cli("--config", str(cfg), "train.learning_rate=1") == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.learning_rate'" in err and "lr" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_missing_or_empty_data_folder(tmp_path, capsys, case):
    folder = tmp_path / "data"
    if case == "empty":
        folder.mkdir()
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path / "run", data=image_data(folder)))
    assert train_cli("--config", str(cfg)) == 2
    err = capsys.readouterr().err
    assert str(folder) in err
    assert not (tmp_path / "run").exists()


def test_latent_store_not_matching_the_model_config(tmp_path, capsys, images):
    from test_data_common import make_tiny_vae
    from vca_gen.data.extract import extract

    vae = make_tiny_vae(tmp_path / "vae")
    store = tmp_path / "store"
    reset_accelerate()
    extract(str(images), str(store), vae=str(vae), image_size=16, batch_size=4, shard_size=8, num_workers=0)
    data = {
        "kind": "latents",
        "path": str(store),
        "image_size": 32,
        "vae": str(vae),
        "vae_downsample": 2,
        "num_workers": 0,
    }
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path / "run", data=data))
    assert train_cli("--config", str(cfg)) == 2
    err = capsys.readouterr().err
    assert "does not match the config" in err and "store latents are 8x8, model input_size is 16" in err
    assert not (tmp_path / "run").exists()
    # the matching config trains from the store
    data["image_size"] = 16
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path / "run", data=data, max_steps=1, ckpt_every=1))
    assert train_cli("--config", str(cfg)) == 0


def test_checkpoint_from_a_different_model_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(run_dir, max_steps=1, ckpt_every=1))
    assert train_cli("--config", str(cfg)) == 0
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "logs" not in p.parts}
    capsys.readouterr()
    assert train_cli("--config", str(cfg), "model.depth=1", "model.hidden_size=64", "train.max_steps=2") == 2
    err = capsys.readouterr().err
    assert "was saved by a different run" in err and "model.depth: checkpoint 2 vs now 1" in err
    assert "model.hidden_size: checkpoint 32 vs now 64" in err
    assert train_cli("--config", str(cfg), "objective.kind=flow", "train.max_steps=2") == 2
    assert "objective.kind: checkpoint 'diffusion' vs now 'flow'" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "logs" not in p.parts} == files


def test_global_batch_must_divide_micro_batch(tmp_path):
    from vca_gen.experiment.schema import ConfigError

    with pytest.raises(ConfigError, match="micro_batch_size=3 must divide the per-process batch 4"):
        run(tiny_dict(tmp_path / "run", micro_batch_size=3))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_in_loop_fid_is_logged(tmp_path, images, inception_weights, monkeypatch):
    """train.fid.every computes a small-sample FID of EMA samples against reference statistics."""
    import numpy as np

    from vca_gen.metrics import InceptionFeatureExtractor, compute_statistics, save_statistics

    monkeypatch.setenv("VCA_GEN_INCEPTION", str(inception_weights))
    fx = InceptionFeatureExtractor(mode="clean", weights=inception_weights)
    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.npz"
    save_statistics(compute_statistics(rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), fx), ref)
    from vca_gen.train.trainer import Trainer

    reset_accelerate()
    cfg = C.config_from_dict(
        tiny_dict(
            tmp_path / "run",
            data=image_data(images),
            max_steps=1,
            ckpt_every=0,
            fid={"every": 1, "num_samples": 10, "ref": str(ref)},
        )
    )
    tr = Trainer(cfg)
    monkeypatch.setattr("vca_gen.metrics.InceptionFeatureExtractor", lambda mode, device: fx)
    logged = {}
    monkeypatch.setattr(tr.acc, "log", lambda values, step=None: logged.update(values))
    tr.run()
    assert "eval/fid" in logged and math.isfinite(logged["eval/fid"]) and logged["eval/fid"] > 0


def test_ema_warmup_schedule():
    from vca_gen.train.trainer import ema_decay_at, lr_at

    assert ema_decay_at(0, 0.9999, True) == pytest.approx(0.1) and ema_decay_at(0, 0.9999, False) == 0.9999
    assert ema_decay_at(10**6, 0.999, True) == 0.999
    assert lr_at(0, 1e-3, 4) == pytest.approx(2.5e-4) and lr_at(3, 1e-3, 4) == 1e-3 and lr_at(0, 1e-3, 0) == 1e-3


def test_fresh_start_refuses_to_clobber_existing_checkpoints(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path / "run", max_steps=1, ckpt_every=1))
    assert train_cli("--config", str(cfg)) == 0
    before = (tmp_path / "run/checkpoints/step_00000001/model.safetensors").read_bytes()
    assert train_cli("--config", str(cfg), "train.resume=none") == 2
    assert "train.resume=auto to continue" in capsys.readouterr().err
    assert (tmp_path / "run/checkpoints/step_00000001/model.safetensors").read_bytes() == before
