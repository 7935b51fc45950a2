"""Shared builders for the training / resume / distributed tests (no tests here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from vca_gen.experiment import schema as C

REPO = Path(__file__).resolve().parent.parent
HOOKED = Path(__file__).resolve().parent / "hooked_cli.py"  # runs a command with injected faults


def make_images(root: Path, per_class: int = 4) -> Path:
    from test_data_common import make_image_folder

    return make_image_folder(root, per_class=per_class)


def tiny_dict(out: Path, data: dict[str, Any] | None = None, **train: Any) -> dict[str, Any]:
    """A ~50k-parameter VCA DiT on pixel data; ``train`` entries override the train section."""
    return {
        "name": "tiny",
        "model": {
            "name": "DiT-S/4",
            "depth": 2,
            "hidden_size": 32,
            "num_heads": 2,
            "num_classes": 10,
            "attention": "vca",
            "attention_options": {"num_contrast_tokens": 4},
        },
        "objective": {"kind": "diffusion", "diffusion": {"sample_steps": "3"}},
        "data": data or {"kind": "animal_mnist", "image_size": 32, "vae": None, "num_workers": 0, "split": "a"},
        "train": {
            "global_batch_size": 4,
            "max_steps": 6,
            "lr": 1e-3,
            "warmup_steps": 2,
            "grad_clip": 1.0,
            "ema_decay": 0.9,
            "log_every": 2,
            "ckpt_every": 3,
            "grid": {"every": 0},
            "keep_last": 0,
            "output_dir": str(out),
            **train,
        },
        "logging": {"tracker": "none"},
    }


def image_data(images: Path, **kw: Any) -> dict[str, Any]:
    return {"kind": "images", "path": str(images), "image_size": 16, "vae": None, "num_workers": 0, **kw}


def write_yaml(path: Path, d: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(d))
    return path


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    GradientState._reset_state()


def run(d: dict[str, Any]) -> dict[str, Any]:
    """Train in this process from a config dict."""
    from vca_gen.train.trainer import train

    reset_accelerate()
    return train(C.config_from_dict(d))


def ckpt_tensors(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """model / ema / optimizer tensors of a checkpoint dir, flattened for comparison."""
    out = {"model": load_file(path / "model.safetensors"), "ema": load_file(path / "ema.safetensors")}
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    out["optimizer"] = {f"{i}.{k}": v for i, st in opt["state"].items() for k, v in st.items()}
    return out


def assert_identical(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> None:
    for part in ("model", "ema", "optimizer"):
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}:{k} differs"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_direct(
    cfg: Path, num_processes: int, env: dict[str, str] | None = None, *overrides: str, faults: list[str] | None = None
) -> list:
    """Start ``train.py`` as ``num_processes`` CPU (gloo) processes wired by environment variables
    (RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT), as ``srun`` starts one task per
    GPU: no launcher in between, so each process's exit status and signals are its own. ``faults``:
    options of ``tests/hooked_cli.py`` (e.g. ``["--step-sleep", "0.4"]``), through which train.py
    then runs. Returns the ``subprocess.Popen`` objects, rank order (stdout/stderr piped, text)."""
    import os
    import subprocess
    import sys

    port = str(free_port())
    procs = []
    for rank in range(num_processes):
        e = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        if num_processes > 1:
            e.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(num_processes),
                LOCAL_WORLD_SIZE=str(num_processes),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    *([str(HOOKED), *faults] if faults else []),
                    "train.py",
                    "--config",
                    str(cfg),
                    *overrides,
                ],
                cwd=REPO,
                env=e,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def wait_all(procs: list, timeout: float = 600) -> list:
    """``[(returncode, stdout, stderr)]`` once every process has exited."""
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, *o) for p, o in zip(procs, outs)]
