"""In-loop FID is a small-N version of ``sample.py`` + ``evaluate_fid.py``: same images, same
features, same number (one generation path, one feature path)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from test_training_common import reset_accelerate, tiny_dict
from vca_gen.experiment import schema as C

N, SEED, BATCH = 20, 3, 10


@pytest.mark.slow
def test_in_loop_fid_equals_sample_py_plus_evaluate_fid(tmp_path, inception_weights, monkeypatch, capsys):
    from vca_gen.metrics import InceptionFeatureExtractor, compute_statistics, save_statistics
    from vca_gen.metrics.cli import main as evaluate_main
    from vca_gen.sample.cli import main as sample_main
    from vca_gen.train.trainer import Trainer

    monkeypatch.setenv("VCA_GEN_INCEPTION", str(inception_weights))
    fx = InceptionFeatureExtractor(mode="clean", weights=inception_weights)
    ref = tmp_path / "ref.npz"
    rng = np.random.default_rng(0)
    save_statistics(compute_statistics(rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), fx), ref)

    fid = {
        "every": 1,
        "num_samples": N,
        "ref": str(ref),
        "seed": SEED,
        "batch_size": BATCH,
        "sampler": "ddim",
        "steps": "ddim3",
    }
    reset_accelerate()
    cfg = C.config_from_dict(tiny_dict(tmp_path / "run", max_steps=1, ckpt_every=1, fid=fid))
    trainer = Trainer(cfg)
    logged = {}
    monkeypatch.setattr(trainer.acc, "log", lambda values, step=None: logged.update(values))
    trainer.run()
    in_loop = logged["eval/fid"]
    assert math.isfinite(in_loop) and in_loop > 0

    reset_accelerate()
    out = tmp_path / "samples"
    assert (
        sample_main(
            [
                "--ckpt",
                str(tmp_path / "run"),
                "--out",
                str(out),
                "--num-samples",
                str(N),
                "--seed",
                str(SEED),
                "--batch-size",
                str(BATCH),
                "--sampler",
                "ddim",
                "--steps",
                "ddim3",
                "--shard-size",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        evaluate_main(
            [
                str(out / "samples.npz"),
                "--ref",
                str(ref),
                "--batch-size",
                str(BATCH),
                "--inception",
                str(inception_weights),
                "--no-progress",
            ]
        )
        == 0
    )
    offline = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fid"]
    assert abs(in_loop - offline) < 1e-6, (in_loop, offline)


def test_in_loop_fid_batches_are_dealt_round_robin():
    """Every sample index is evaluated by exactly one process, in evaluate_fid.py's batches."""
    from vca_gen.train.evaluation import InLoopFID

    fid = InLoopFID.__new__(InLoopFID)
    fid.exp = C.config_from_dict(
        tiny_dict(__import__("pathlib").Path("/nonexistent"), fid={"num_samples": 50, "batch_size": 8})
    )
    for world in (1, 2, 3, 7):
        parts = [fid.batches(r, world) for r in range(world)]
        flat = sorted(i for p in parts for b in p for i in b)
        assert flat == list(range(50))
        starts = sorted(b[0] for p in parts for b in p)
        assert starts == list(range(0, 50, 8))  # the same batch boundaries whatever the process count


@pytest.mark.slow
def test_in_loop_fid_two_processes_equal_one(tmp_path, inception_weights):
    """Every process samples and embeds its share; the gathered FID equals the 1-process value."""
    import os

    from test_training_common import launch_direct, wait_all, write_yaml

    ref = tmp_path / "ref.npz"
    from vca_gen.metrics import InceptionFeatureExtractor, compute_statistics, save_statistics

    fx = InceptionFeatureExtractor(mode="clean", weights=inception_weights)
    rng = np.random.default_rng(1)
    save_statistics(compute_statistics(rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), fx), ref)
    fid = {
        "every": 1,
        "num_samples": 30,
        "ref": str(ref),
        "seed": 5,
        "batch_size": 10,
        "sampler": "ddim",
        "steps": "ddim3",
    }
    values = {}
    for n in (1, 2):
        # a vanishing learning rate: the 1- and 2-process weights agree far below what FID can see,
        # so any difference would come from how the evaluation is shared out
        d = tiny_dict(tmp_path / f"run{n}", max_steps=1, ckpt_every=0, lr=1e-12, warmup_steps=0, fid=fid)
        procs = launch_direct(
            write_yaml(tmp_path / f"c{n}.yaml", d),
            n,
            {"VCA_GEN_INCEPTION": str(inception_weights), **os.environ.copy()},
        )
        outs = wait_all(procs)
        assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
        lines = (tmp_path / f"run{n}" / "fid.jsonl").read_text().splitlines()
        assert len(lines) == 1  # written once, by the main process
        values[n] = json.loads(lines[0])["fid"]
    assert math.isfinite(values[1]) and abs(values[1] - values[2]) < 1e-6, values


@pytest.mark.slow
def test_in_loop_density_coverage_equal_sample_py_plus_evaluate_fid(tmp_path, inception_weights, monkeypatch, capsys):
    """``train.fid.metrics: [fid, density, coverage]`` is logged and recorded in fid.jsonl; scored against
    a reference made from ``sample.py``'s own samples of that checkpoint, in-loop evaluation gives the
    closed form (density 1, coverage 1: the same images, so bit-identical features) and exactly what
    ``evaluate_fid.py --metrics fid,density,coverage`` gives."""
    from vca_gen.metrics.cli import main as evaluate_main
    from vca_gen.sample.cli import main as sample_main
    from vca_gen.train.evaluation import InLoopFID
    from vca_gen.train.trainer import Trainer

    monkeypatch.setenv("VCA_GEN_INCEPTION", str(inception_weights))
    inception = ["--inception", str(inception_weights), "--batch-size", str(BATCH), "--no-progress"]
    noise = tmp_path / "noise.npz"
    np.savez(noise, arr_0=np.random.default_rng(2).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8))
    ref0 = tmp_path / "ref0.npz"  # 24 noise images, all their features stored (density/coverage need them)
    assert evaluate_main([str(noise), "--make-ref", str(ref0), *inception]) == 0
    metrics = ["fid", "density", "coverage"]
    fid = {"every": 1, "num_samples": N, "ref": str(ref0), "seed": SEED, "batch_size": BATCH, "metrics": metrics}
    fid.update(sampler="ddim", steps="ddim3")
    reset_accelerate()
    trainer = Trainer(C.config_from_dict(tiny_dict(tmp_path / "run", max_steps=1, ckpt_every=1, fid=fid)))
    logged = {}
    monkeypatch.setattr(trainer.acc, "log", lambda values, step=None: logged.update(values))
    trainer.run()
    (line,) = [json.loads(ln) for ln in (tmp_path / "run" / "fid.jsonl").read_text().splitlines()]
    assert {f"eval/{m}" for m in metrics} <= set(logged) and all(line[m] == logged[f"eval/{m}"] for m in metrics)
    assert line["fid"] > 0 and 0.0 <= line["coverage"] <= 1.0 and line["density"] >= 0.0

    reset_accelerate()
    out = tmp_path / "samples"
    argv = ["--ckpt", str(tmp_path / "run"), "--out", str(out), "--num-samples", str(N), "--seed", str(SEED)]
    argv += ["--batch-size", str(BATCH), "--sampler", "ddim", "--steps", "ddim3", "--no-progress"]
    assert sample_main(argv) == 0
    ref1 = tmp_path / "ref1.npz"  # the checkpoint's own samples as the reference
    assert evaluate_main([str(out / "samples.npz"), "--make-ref", str(ref1), *inception]) == 0
    capsys.readouterr()
    argv = [str(out / "samples.npz"), "--ref", str(ref1), "--metrics", ",".join(metrics), *inception]
    assert evaluate_main(argv) == 0
    offline = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    fid["ref"] = str(ref1)  # the trainer's evaluation, on the trained EMA model, against that reference
    in_loop = InLoopFID(C.config_from_dict(tiny_dict(tmp_path / "run", max_steps=1, fid=fid)), trainer.device)
    values = in_loop.score([in_loop.features(trainer.ema.model, trainer.objective, trainer.decoder)], (32, 32))
    print(f"\nin-loop vs noise {line}\nin-loop vs own samples {values}")
    assert (values["density"], values["coverage"]) == (1.0, 1.0) == (offline["density"], offline["coverage"])
    assert abs(values["fid"] - offline["fid"]) < 1e-6 and abs(values["fid"]) < 1e-3, (values, offline)
