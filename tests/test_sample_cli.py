"""``sample.py`` end to end with a tiny random DiT export: process-count independence (1 vs 2 gloo
processes), resume after a real SIGKILL, batch-size invariance, balanced labels, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vca_gen.sample.cli import main

REPO = Path(__file__).resolve().parent.parent
CLASSES = 5
# one setting for every run that is compared byte for byte
RUN = ["--num-samples", "40", "--steps", "20", "--shard-size", "8", "--seed", "3", "--no-progress"]


def make_export(path: Path, kind: str = "diffusion", depth: int = 2, seed: int = 0) -> Path:
    """A tiny VCA model with random (not adaLN-zero) weights, saved as an export directory."""
    from safetensors.torch import save_file

    from vca_gen.experiment import build as B
    from vca_gen.experiment import schema as C

    cfg = C.config_from_dict(
        {
            "name": "tiny",
            "objective": {"kind": kind},
            "data": {"kind": "images", "path": "<no training data>", "image_size": 32, "vae": None},
            "model": {
                "name": "DiT-S/4",
                "depth": depth,
                "hidden_size": 32,
                "num_heads": 2,
                "num_classes": CLASSES,
                "learn_sigma": kind == "diffusion",
                "attention": "vca",
                "attention_options": {"num_contrast_tokens": 4},
            },
        }
    )
    model = B.build_model(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(C.to_container(cfg)))
    return path


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("ckpt") / "export")


def env1() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"}


def sample_cmd(export, out, *extra) -> list[str]:
    return [sys.executable, str(REPO / "sample.py"), "--ckpt", str(export), "--out", str(out), *RUN, *extra]


def arr(out: Path):
    with np.load(out / "samples.npz") as z:
        return z["arr_0"], z["arr_1"]


@pytest.fixture(scope="module")
def reference(export, tmp_path_factory) -> Path:
    """One uninterrupted single-process run with batch size 8."""
    out = tmp_path_factory.mktemp("ref") / "s"
    subprocess.run(sample_cmd(export, out, "--batch-size", "8"), check=True, env=env1(), cwd=REPO, timeout=300)
    return out


def test_output_format_and_balanced_labels(reference):
    a, y = arr(reference)
    assert a.dtype == np.uint8 and a.shape == (40, 32, 32, 3)
    assert y.tolist() == [i % CLASSES for i in range(40)]
    assert a.std() > 10  # real, varied images (not a constant)
    assert len({a[i].tobytes() for i in range(40)}) == 40
    man = json.loads((reference / "sampling.json").read_text())
    assert man["sampler"] == "ddpm" and man["steps"] == "20" and man["cfg_scale"] == 1.0 and man["seed"] == 3
    assert (reference / "grid.png").is_file()


@pytest.mark.slow
def test_two_processes_byte_identical(export, reference, tmp_path):
    out = tmp_path / "s2"
    cmd = [
        str(REPO / ".venv" / "bin" / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *sample_cmd(export, out, "--batch-size", "8")[1:],
    ]
    r = subprocess.run(cmd, env=env1(), cwd=REPO, timeout=400, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["processes"] == 2 and 0 < summary["generated_by_main"] < 40  # the work was split
    a2, y2 = arr(out)
    a1, y1 = arr(reference)
    assert np.array_equal(a1, a2) and np.array_equal(y1, y2)


@pytest.mark.slow
def test_sigkill_then_resume_gives_same_bytes(export, reference, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        sample_cmd(export, out, "--batch-size", "8"),
        env=env1(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not (out / "shard_00000.npz").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    shards = sorted(out.glob("shard_*.npz"))
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= len(shards) < 5 and not (out / "samples.npz").exists()
    r = subprocess.run(
        sample_cmd(export, out, "--batch-size", "8"), env=env1(), cwd=REPO, timeout=300, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["resumed_shards"] == len(shards)
    assert np.array_equal(arr(out)[0], arr(reference)[0])
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_batch_sizes_7_and_16_agree_up_to_reassociation(export, tmp_path):
    imgs = []
    for bs in ("7", "16"):
        assert main(["--ckpt", str(export), "--out", str(tmp_path / bs), *RUN, "--batch-size", bs]) == 0
        imgs.append(arr(tmp_path / bs)[0].astype(int))
    diff = np.abs(imgs[0] - imgs[1])
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


# ---------------------------------------------------------------------------------- bad input
def run_err(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    return capsys.readouterr().err


def test_missing_checkpoint(capsys, tmp_path):
    err = run_err(capsys, "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert "--ckpt" in err and "does not exist" in err and not (tmp_path / "o" / "samples.npz").exists()


def test_mismatched_checkpoint(capsys, export, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes())
    cfg = json.loads((export / "config.json").read_text())
    cfg["model"]["depth"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    err = run_err(capsys, "--ckpt", str(bad), "--out", str(tmp_path / "o"))
    assert "does not fit this model" in err and "missing keys" in err
    assert not (tmp_path / "o" / "samples.npz").exists()


@pytest.mark.parametrize("n,msg", [("3", "fewer than the model's 5 classes"), ("12", "use 10 or 15")])
def test_sample_count_must_balance_classes(capsys, export, tmp_path, n, msg):
    err = run_err(capsys, "--ckpt", str(export), "--out", str(tmp_path / "o"), "--num-samples", n)
    assert msg in err and not (tmp_path / "o" / "samples.npz").exists()


@pytest.mark.parametrize(
    "extra,msg",
    [
        (["--sampler", "euler"], "unknown diffusion sampler 'euler'; accepted: ddpm, ddim, dpm-solver++"),
        (["--sampler-option", "eta=0.5"], "unknown options ['eta'] for sampler 'ddpm'"),
        (["--sampler-option", "eta"], "expected KEY=VALUE"),
        (["--vae", "stabilityai/sd-vae-ft-mse"], "pixel space"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--cfg-scale", "-1"], "cfg_scale=-1.0 is not valid; accepted: a finite number >= 0"),
    ],
)
def test_bad_sampler_settings_write_nothing(capsys, export, tmp_path, extra, msg):
    err = run_err(capsys, "--ckpt", str(export), "--out", str(tmp_path / "o"), "--num-samples", "5", *extra)
    assert msg in err
    assert not list((tmp_path / "o").glob("*.npz"))  # neither shards nor samples.npz


def test_settings_mismatch_on_resume(capsys, export, tmp_path):
    out = tmp_path / "o"
    assert main(["--ckpt", str(export), "--out", str(out), "--num-samples", "10", "--steps", "2", "--no-progress"]) == 0
    before = (out / "samples.npz").read_bytes()
    err = run_err(capsys, "--ckpt", str(export), "--out", str(out), "--num-samples", "10", "--steps", "3")
    assert "different settings" in err and "steps: '2' (existing) vs '3' (this run)" in err and "--overwrite" in err
    assert (out / "samples.npz").read_bytes() == before
    assert (
        main(
            [
                "--ckpt",
                str(export),
                "--out",
                str(out),
                "--num-samples",
                "10",
                "--steps",
                "3",
                "--overwrite",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (out / "samples.npz").read_bytes() != before


# ---------------------------------------------------------------------------------- scale-ready
@pytest.mark.slow
def test_sigterm_exits_75_then_rerun_gives_same_bytes(export, reference, tmp_path):
    out = tmp_path / "stopped"
    slow = [str(REPO / "tests" / "hooked_cli.py"), "--shard-sleep", "0:0.7"]  # the signal lands mid-way
    cmd = sample_cmd(export, out, "--batch-size", "8")
    proc = subprocess.Popen(
        [cmd[0], *slow, *cmd[1:]],
        env=env1(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not (out / "shard_00000.npz").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    assert "received SIGTERM: finishing the current shard" in err and "stopped by SIGTERM" in err
    assert "Traceback" not in err
    shards = sorted(out.glob("shard_*.npz"))
    assert 1 <= len(shards) < 5 and not (out / "samples.npz").exists() and not (out / ".lock").exists()
    r = subprocess.run(
        sample_cmd(export, out, "--batch-size", "8"), env=env1(), cwd=REPO, timeout=300, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["resumed_shards"] == len(shards)
    assert np.array_equal(arr(out)[0], arr(reference)[0])


TINY = ["--num-samples", "5", "--steps", "2", "--shard-size", "5", "--no-progress", "--grid-classes", "0"]


def test_out_locked_by_another_sampling_exits_2_naming_it(capsys, export, tmp_path):
    from vca_gen.utils.lock import RunLock

    out = tmp_path / "o"
    with RunLock(out, "sample", command="sample.py --out o (the other one)"):
        err = run_err(capsys, "--ckpt", str(export), "--out", str(out), *TINY)
    assert f"run directory {out} is locked by pid {os.getpid()} on host" in err and "(sample)" in err
    assert "the other one" in err and not list(out.glob("*.npz")) and not (out / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(capsys, export, tmp_path):
    import socket

    out = tmp_path / "o"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(
        json.dumps(
            {
                "pid": dead.pid,
                "host": socket.gethostname(),
                "purpose": "sample",
                "started_unix": time.time(),
                "command": "sample.py (killed)",
            }
        )
    )
    with pytest.warns(UserWarning, match=f"taking over the lock .* process {dead.pid} on this host is not running"):
        assert main(["--ckpt", str(export), "--out", str(out), *TINY]) == 0
    assert (out / "samples.npz").is_file() and not (out / ".lock").exists()


def test_precision_auto_resolves_and_is_recorded(export, tmp_path, capsys):
    assert main(["--ckpt", str(export), "--out", str(tmp_path / "a"), *TINY]) == 0  # auto on CPU -> fp32
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["precision"] == "fp32"
    assert json.loads((tmp_path / "a" / "sampling.json").read_text())["precision"] == "fp32"
    assert main(["--ckpt", str(export), "--out", str(tmp_path / "b"), *TINY, "--precision", "bf16"]) == 0
    assert json.loads((tmp_path / "b" / "sampling.json").read_text())["precision"] == "bf16"
    # an explicit fp32 run is the same computation as auto on CPU: it resumes it (nothing regenerated)
    assert main(["--ckpt", str(export), "--out", str(tmp_path / "a"), *TINY, "--precision", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["generated_by_main"] == 0


def test_frozen_model_keeps_autocast_weight_cache(export):
    """Under no_grad + autocast, a loaded model's weights are cast to bf16 once per autocast region,
    not once per call (autocast caches only leaf tensors that require grad, outside inference mode)."""
    from torch.profiler import ProfilerActivity, profile

    from vca_gen.sample.model import autocast, load

    loaded = load(export)
    model = loaded.model
    assert not model.training and all(p.requires_grad for p in model.parameters())
    x = torch.randn(2, *loaded.latent_shape)
    t, y = torch.tensor([3.0, 7.0]), torch.tensor([0, 1])

    def casts():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x, t, y)
        return sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")

    with torch.no_grad(), autocast(torch.device("cpu"), "bf16"):
        first, second = casts(), casts()
    n_weights = sum(1 for p in model.parameters() if p.ndim >= 2)
    assert first - second >= n_weights // 2, (first, second, n_weights)  # the weights were not cast again
