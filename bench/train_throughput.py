#!/usr/bin/env python
"""Training throughput on this machine: images/s of full training steps (forward, backward, AdamW,
EMA) through the real :class:`vca_gen.train.trainer.Trainer`, next to the data loader's items/s for the
same data, to show the loader is never the bottleneck.

Rows: the demo model (``configs/demo.yaml``, Animal-MNIST pixels) and DiT-S/2 with MHSA and VCA
(``configs/dit_s2_{mhsa,vca}.yaml``) on 32x32x4 latents. The latents come from a synthetic latent
store (random 32 px images encoded by a randomly initialised one-block VAE, i.e. the real store
format and reader, 4x32x32 latents) built in a temporary folder.

    python bench/train_throughput.py            # full: more steps, larger DiT batches
    python bench/train_throughput.py --quick    # a minute or two

Writes ``bench/results/train_throughput[_quick].json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_store(root: Path, num_images: int) -> tuple[Path, Path]:
    """A real latent store of ``num_images`` random 32 px images (4x32x32 latents) and its VAE."""
    from diffusers import AutoencoderKL
    from PIL import Image

    from vca_gen.data.extract import extract

    rng = np.random.default_rng(0)
    for i in range(num_images):
        d = root / "images" / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    vae.save_pretrained(root / "vae")
    extract(
        str(root / "images"),
        str(root / "store"),
        vae=str(root / "vae"),
        image_size=32,
        batch_size=64,
        shard_size=256,
        num_workers=0,
    )
    return root / "store", root / "vae"


def measure(config: str, overrides: list[str], steps: int, warmup: int, workers: int) -> dict:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from loader_lib import loader_throughput
    from vca_gen.experiment.schema import load_config
    from vca_gen.train.trainer import Trainer

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    GradientState._reset_state()
    cfg = load_config(REPO / config, overrides)
    tr = Trainer(cfg)
    it = iter(tr.loader)
    batches = [next(it) for _ in range(warmup + steps)]  # data excluded from the training timing
    for b in batches[:warmup]:
        tr.train_step(*b)
    t0 = time.perf_counter()
    for b in batches[warmup:]:
        tr.train_step(*b)
    dt = time.perf_counter() - t0
    B = int(cfg.train.global_batch_size)
    loader = loader_throughput(tr.dataset, B, num_workers=workers, steps=max(steps, 5), warmup=1)
    return {
        "config": config,
        "model": cfg.model.name,
        "attention": cfg.model.attention,
        "hidden_size": tr.model.hidden_size,
        "depth": tr.model.depth,
        "input": f"{cfg.model.in_channels}x{cfg.model.input_size}x{cfg.model.input_size}",
        "params_M": round(sum(p.numel() for p in tr.model.parameters()) / 1e6, 2),
        "batch": B,
        "steps": steps,
        "train_images_per_s": B * steps / dt,
        "sec_per_step": dt / steps,
        "loader_items_per_s": loader["items_per_s"],
        "loader_unit": loader["unit"],
        "loader_workers": workers,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps, small batches")
    ap.add_argument("--workers", type=int, default=0, help="loader worker processes for the loader column")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps, warmup = (2, 1) if args.quick else (4, 1)
    dit_batch = 4 if args.quick else 8
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store, vae = make_store(tmp, 64 if args.quick else 256)
        latent = [
            f"data.path={store}",
            f"data.vae={vae}",
            "data.image_size=32",
            "data.vae_downsample=1",
            "data.num_workers=0",
            "logging.tracker=none",
            f"train.global_batch_size={dit_batch}",
            "train.mixed_precision=no",
        ]
        common = [f"train.output_dir={tmp / 'run'}", "train.resume=none", "logging.tracker=none"]
        rows = [measure("configs/demo.yaml", common, steps, warmup, args.workers)]
        for att in ("mhsa", "vca"):
            rows.append(measure(f"configs/dit_s2_{att}.yaml", latent + common, steps, warmup, args.workers))
    result = {
        "quick": args.quick,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "rows": rows,
        "note": "CPU fp32, one process; loader = loader_lib.loader_throughput on the same dataset",
    }
    out = REPO / "bench" / "results" / f"train_throughput{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("| model | attention | input | params (M) | batch | train images/s | s/step | loader items/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} ({r['hidden_size']}x{r['depth']}) | {r['attention']} | {r['input']} | {r['params_M']} | "
            f"{r['batch']} | {r['train_images_per_s']:.1f} | {r['sec_per_step']:.2f} | "
            f"{r['loader_items_per_s']:.0f} {r['loader_unit']} |"
        )
    slowest = min(r["loader_items_per_s"] / r["train_images_per_s"] for r in rows)
    print(
        f"\nloader / training speed ratio (worst row): {slowest:.0f}x; 1-min load average "
        f"{result['load_average_1min']:.1f} on {os.cpu_count()} CPUs → wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
