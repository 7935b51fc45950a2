"""Latent-extraction throughput (images/s) of the SD VAE encoder on this machine, table + JSON.

    python bench/extraction.py [--quick] [--batch 4] [--reps 3] [--out bench/results/extraction.json]

``extract_latents.py`` encodes every image and its horizontal flip with the Stable Diffusion VAE
(``stabilityai/sd-vae-ft-ema``/``-mse``: 4 down blocks of 128/256/512/512 channels, 2 layers each,
4 latent channels) through ``vca_gen.data.vae.encode_moments``. The real weights cannot be fetched
here, so the benchmark builds that architecture with random weights — the same compute. It times
``encode_moments`` on a batch of images and of their flips (median of ``--reps`` after a warm-up)
and reports images/s (an image counts once, its flip included) and the process CPU utilisation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vca_gen.data.vae import encode_moments  # noqa: E402

SD_VAE = dict(  # the published sd-vae-ft-* config.json values
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 px images, 1 rep (a smoke run)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", type=int, default=256, help="image size (px)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "extraction.json"))
    args = ap.parse_args(argv)
    size, reps = (64, 1) if args.quick else (args.size, args.reps)

    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**SD_VAE, sample_size=size).eval()  # type: ignore[arg-type]
    x = torch.rand(args.batch, 3, size, size) * 2 - 1  # [-1, 1], as the extractor feeds it
    both = torch.cat([x, torch.flip(x, dims=[3])])  # (2B, 3, H, W): images and their flips
    with torch.no_grad():
        encode_moments(vae, both)  # warm-up
        times, cpu = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            encode_moments(vae, both)
            times.append(time.perf_counter() - t0)
            cpu.append((time.process_time() - c0) / times[-1])
    t = statistics.median(times)
    result = {
        "device": f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "image_size": size,
        "batch": args.batch,
        "seconds_per_batch": t,
        "images_per_s": args.batch / t,
        "cpu_utilisation": statistics.median(cpu),
        "weights": "random (sd-vae-ft architecture; same compute as the real weights)",
    }
    print("| image size | batch | s / batch (image + flip) | images/s | CPU utilisation | load |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {size} | {args.batch} | {t:.2f} | {result['images_per_s']:.3f} | {result['cpu_utilisation']:.2f}"
        f" | {result['load_average']:.1f} |"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
