"""Latent extraction: complete store, moments vs a direct encode, resume after a kill, errors, multi-process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from test_data_common import CLASSES, make_image_folder, make_tiny_vae, tiny_setup  # noqa: F401 (fixture)
from vca_gen.data.extract import extract, main
from vca_gen.data.images import center_crop_arr

REPO = Path(__file__).resolve().parent.parent


def _files(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.iterdir())}


def test_store_is_complete_and_moments_equal_direct_encode(tiny_setup):
    from diffusers import AutoencoderKL

    images, vae_dir, store = tiny_setup
    m = json.loads((store / "manifest.json").read_text())
    assert m["count"] == m["num_source_images"] == 12 and m["classes"] == list(CLASSES)
    assert m["image_size"] == 32 and m["latent_shape"] == [4, 16, 16] and m["vae"]["id"] == str(vae_dir)
    assert m["normalization"] == {"kind": "scale", "scale_factor": 0.18215} and m["skipped"] == []
    assert [(s["file"], s["start"], s["end"], s["count"]) for s in m["shards"]] == [
        ("shard_00000.safetensors", 0, 5, 5),
        ("shard_00001.safetensors", 5, 10, 5),
        ("shard_00002.safetensors", 10, 12, 2),
    ]
    for s in m["shards"]:
        data = (store / s["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
    assert not list(store.glob("*.tmp"))
    shards = [load_file(store / s["file"]) for s in m["shards"]]
    mean = torch.cat([t["mean"] for t in shards])  # (12, 2, 4, 16, 16)
    std = torch.cat([t["std"] for t in shards])
    assert mean.shape == std.shape == (12, 2, 4, 16, 16)
    assert torch.equal(torch.cat([t["indices"] for t in shards]), torch.arange(12))
    assert torch.equal(torch.cat([t["labels"] for t in shards]), torch.arange(3).repeat_interleave(4))

    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    files = sorted(images.glob("*/*.png"))
    arrs = [center_crop_arr(Image.open(f).convert("RGB"), 32) for f in files]
    x = torch.from_numpy(np.stack(arrs).astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)  # (12, 3, 32, 32)
    for copy, img in enumerate((x, x.flip(-1))):
        with torch.no_grad():
            post = vae.encode(img).latent_dist
        torch.testing.assert_close(mean[:, copy], post.mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(std[:, copy], post.std, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(mean[:, 0], mean[:, 1])  # the flip copy is a different encoding
    # per-channel statistics of posterior samples over both copies
    ref_mean = mean.double().mean(dim=(0, 1, 3, 4))
    ref_var = (mean.double() ** 2 + std.double() ** 2).mean(dim=(0, 1, 3, 4)) - ref_mean**2
    np.testing.assert_allclose(m["latent_stats"]["mean"], ref_mean.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m["latent_stats"]["std"], ref_var.sqrt().numpy(), rtol=1e-9)


def test_resume_after_interrupted_run_is_byte_identical(tiny_setup, tmp_path):
    images, vae_dir, store = tiny_setup
    want = _files(store)
    broken = tmp_path / "store"
    shutil.copytree(store, broken)
    (broken / "manifest.json").unlink()  # killed before the manifest
    (broken / "shard_00001.safetensors").unlink()  # shard never renamed into place
    (broken / "shard_00001.safetensors.tmp").write_bytes(b"half-written")  # ... its partial temp file
    data = bytearray((broken / "shard_00002.safetensors").read_bytes())
    data[-7] ^= 0xFF
    (broken / "shard_00002.safetensors").write_bytes(bytes(data))  # corrupt (torn) shard
    t0 = (broken / "shard_00000.safetensors").stat().st_mtime_ns
    extract(str(images), str(broken), vae=str(vae_dir), image_size=32, batch_size=4, shard_size=5, num_workers=0)
    assert _files(broken) == want
    assert (broken / "shard_00000.safetensors").stat().st_mtime_ns == t0  # complete shard verified and kept
    with pytest.raises(SystemExit, match=r"different options:\n  image_size: store has 32, now 64"):
        extract(str(images), str(broken), vae=str(vae_dir), image_size=64, batch_size=4, shard_size=5, num_workers=0)


def test_cli_errors(tmp_path, tiny_setup, capsys):
    images, vae_dir, _ = tiny_setup
    out = tmp_path / "out"
    assert main(["--images", str(tmp_path / "missing"), "--out", str(out), "--vae", str(vae_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
    (tmp_path / "empty").mkdir()
    assert main(["--images", str(tmp_path / "empty"), "--out", str(out), "--vae", str(vae_dir)]) == 2
    assert "no class sub-folders" in capsys.readouterr().err
    assert main(["--images", str(images), "--out", str(out), "--vae", str(tmp_path / "novae")]) == 2
    assert "is not an existing folder" in capsys.readouterr().err
    assert main(["--images", str(images), "--out", str(out), "--vae", str(vae_dir), "--image-size", "33"]) == 2
    assert "not divisible by the VAE down-sampling factor 2" in capsys.readouterr().err
    assert main(["--images", str(images), "--out", str(out), "--vae", str(vae_dir), "--scale-factor", "0"]) == 2
    assert "--scale-factor must be > 0, got 0.0" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):  # argparse: mutually exclusive normalisations
        main(["--images", str(images), "--out", str(out), "--scale-factor", "1", "--per-channel-stats"])


def test_unreadable_images_stop_or_are_skipped(tmp_path, tiny_setup, capsys):
    _, vae_dir, _ = tiny_setup
    images = make_image_folder(tmp_path / "images", per_class=2)
    (images / "bee" / "01.png").write_bytes(b"not a png")
    args = ["--images", str(images), "--vae", str(vae_dir), "--image-size", "32", "--num-workers", "0"]
    assert main(args + ["--out", str(tmp_path / "s1")]) == 2
    assert "cannot read image" in capsys.readouterr().err and not (tmp_path / "s1" / "manifest.json").exists()
    assert main(args + ["--out", str(tmp_path / "s2"), "--skip-unreadable", "--per-channel-stats"]) == 0
    m = json.loads((tmp_path / "s2" / "manifest.json").read_text())
    assert m["count"] == 5 and m["num_source_images"] == 6
    assert m["skipped"] == [{"index": 3, "path": "bee/01.png"}]
    assert load_file(tmp_path / "s2" / "shard_00000.safetensors")["indices"].tolist() == [0, 1, 2, 4, 5]
    assert m["normalization"]["kind"] == "per_channel" and m["normalization"]["std"] == m["latent_stats"]["std"]


def _cli(store: Path, images: Path, vae: Path) -> list[str]:
    return [
        "-m",
        "vca_gen.data.extract",
        "--images",
        str(images),
        "--out",
        str(store),
        "--vae",
        str(vae),
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--shard-size",
        "1",
        "--num-workers",
        "0",
    ]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _extract_one_thread(images: Path, vae: Path, out: Path) -> None:
    """In-process run with the subprocesses' settings (1 thread: CPU conv results depend on threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract(str(images), str(out), vae=str(vae), image_size=32, batch_size=2, shard_size=1, num_workers=0)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_store(tiny_setup, tmp_path_factory) -> Path:
    images, vae_dir, _ = tiny_setup
    ref = tmp_path_factory.mktemp("ref") / "store"
    _extract_one_thread(images, vae_dir, ref)
    return ref


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_byte_identical(tmp_path, tiny_setup, reference_store):
    images, vae_dir, _ = tiny_setup
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, *_cli(killed, images, vae_dir)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while len(list(killed.glob("shard_*.json"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "extraction finished before it could be killed"
    assert not (killed / "manifest.json").exists()
    assert 3 <= len(list(killed.glob("shard_*.json"))) < 12
    _extract_one_thread(images, vae_dir, killed)  # resume
    assert _files(killed) == _files(reference_store)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_accelerate_extraction_equals_single_process(tmp_path, tiny_setup, reference_store):
    images, vae_dir, _ = tiny_setup
    multi = tmp_path / "multi"
    # rank 1 (6 of the 12 shards) sleeps 2 s before each: 12 s past rank 0, process-group timeout 6 s;
    # the main process waits for its shards through the files, with no collective
    env = dict(_env(), ACCELERATE_USE_CPU="1")
    slow = [str(REPO / "tests" / "hooked_cli.py"), "--shard-sleep", "1:2", str(REPO / "extract_latents.py")]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
    ]
    t0 = time.monotonic()
    r = subprocess.run(
        [*launch, *slow, *_cli(multi, images, vae_dir)[2:], "--timeout-s", "6"],  # [2:]: not "-m MODULE"
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.monotonic() - t0 > 12
    assert r.stdout.count("latent store") == 1  # only the main process reports (2 ranks, not 2 x rank 0)
    assert _files(multi) == _files(reference_store)  # rank 0 wrote even shards, rank 1 odd ones


def test_store_locked_by_another_extraction_exits_2_and_stale_lock_is_taken_over(tmp_path, tiny_setup, capsys):
    from vca_gen.utils.lock import RunLock, StaleLockWarning

    images, vae_dir, store = tiny_setup
    out = tmp_path / "store"
    args = [
        "--images",
        str(images),
        "--out",
        str(out),
        "--vae",
        str(vae_dir),
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--shard-size",
        "5",
        "--num-workers",
        "0",
    ]
    with RunLock(out, "extract", command="extract_latents.py (the other one)"):
        assert main(args) == 2
    err = capsys.readouterr().err
    assert f"run directory {out} is locked by pid {os.getpid()} on host" in err and "(extract)" in err
    assert "the other one" in err and not list(out.glob("shard_*")) and not (out / ".lock").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "purpose": "extract", "started_unix": time.time()})
    )
    with pytest.warns(StaleLockWarning, match=f"process {dead.pid} on this host is not running"):
        assert main(args) == 0
    assert not (out / ".lock").exists()
    assert {n: b for n, b in _files(out).items() if n.startswith("shard_")} == {
        n: b for n, b in _files(store).items() if n.startswith("shard_")
    }


def test_non_finite_latents_are_refused_naming_the_images(tmp_path, tiny_setup, capsys, monkeypatch):
    import vca_gen.data.extract as X

    images, vae_dir, _ = tiny_setup
    real = X.encode_moments

    def encode_with_overflow(vae, both):
        mean, std = real(vae, both)
        b = len(both) // 2
        if b == 4:  # the first batch of shard 0 (images 0..3): image 3's flip overflows, image 1's mean is nan
            mean[b + 3, 0, 0, 0] = float("inf")
            mean[1, 2] = float("nan")
        return mean, std

    monkeypatch.setattr(X, "encode_moments", encode_with_overflow)
    out = tmp_path / "store"
    args = [
        "--images",
        str(images),
        "--out",
        str(out),
        "--vae",
        str(vae_dir),
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--shard-size",
        "5",
        "--num-workers",
        "0",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "non-finite latents (inf/nan) for 2 image(s) of shard 0" in err
    assert "index 1 (ant/01.png, original), index 3 (ant/03.png, flipped)" in err and "nothing of shard 0" in err
    assert not (out / "shard_00000.safetensors").exists() and not (out / "shard_00000.json").exists()
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tmp")) and not (out / ".lock").exists()


def test_fp16_vae_with_force_upcast_encodes_in_fp32(tmp_path, tiny_setup):
    from diffusers import AutoencoderKL

    from vca_gen.data.vae import encode_moments, load_vae

    images, vae_dir, store = tiny_setup
    assert AutoencoderKL.load_config(vae_dir)["force_upcast"] is True  # diffusers' default
    out = tmp_path / "fp16"
    m = extract(
        str(images),
        str(out),
        vae=str(vae_dir),
        image_size=32,
        batch_size=4,
        shard_size=5,
        num_workers=0,
        dtype="float16",
    )
    assert m["vae"]["dtype"] == "float16" and m["vae"]["compute_dtype"] == "float32"
    for s in m["shards"]:  # exactly the fp32 encoding
        assert (out / s["file"]).read_bytes() == (store / s["file"]).read_bytes()
    # a VAE that says it is safe in fp16 is run in fp16
    no_upcast = tmp_path / "vae16"
    vae = AutoencoderKL.from_pretrained(vae_dir)
    vae.register_to_config(force_upcast=False)
    vae.save_pretrained(no_upcast)
    assert next(load_vae(str(no_upcast), dtype="float16").parameters()).dtype == torch.float16
    # an fp16 VAE loaded elsewhere is moved to fp32 before encoding when its config forces it
    half = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float16)
    mean, _ = encode_moments(half, torch.zeros(1, 3, 32, 32))
    assert next(half.parameters()).dtype == torch.float32 and mean.dtype == torch.float32
