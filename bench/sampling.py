"""Sampling and FID-feature throughput on this machine (images/s), table + JSON.

    python bench/sampling.py [--quick] [--demo-ckpt runs/demo/train] [--out bench/results/sampling.json]

Sampling: for DiT-S/2 / SiT-S/2 at 32x32x4 latents (no VAE decode) and the demo model (32x32x1
pixels), every sampler of the objective at its default steps. Running 250-step samplers on a CPU
for many images takes hours, so the cost is measured in two honest parts and extrapolated:
``t_forward`` = wall time of one model forward at the benchmark batch size (median of a few, after a
warm-up), and the sampler itself run end to end on the same batch with a stand-in model (counts
the model evaluations, NFE, and times the sampler's own arithmetic, ``t_overhead``). Then
``images/s = batch / (NFE * t_forward + t_overhead)``. The adaptive ODE (dopri5) NFE depends on
the model; it is counted with the stand-in (a smooth contraction), so that row is indicative only
(and note that the flow ODE sampler passes every output-grid time to dopri5 as a forced step, so
its NFE grows with ``steps``).
Feature extraction: ``features_lib.feature_throughput`` (clean mode, 32 px inputs), with
CPU utilisation = process CPU time / wall time (2.0 = both cores busy).
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

from vca_gen.objectives.registry import get_sampler  # noqa: E402
from vca_gen.utils import rng  # noqa: E402


def time_forward(model, batch: int, shape, reps: int) -> float:
    x = torch.randn(batch, *shape)
    t = torch.rand(batch) * 999
    y = torch.arange(batch) % int(model.num_classes)
    times = []
    with torch.no_grad():
        model(x, t, y)  # warm-up
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x, t, y)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sampler_cost(objective, sampler: str, batch: int, shape, num_classes: int, out_channels: int, model=None):
    """(NFE, seconds) of the sampler on ``batch`` images; a stand-in model unless ``model`` is given."""

    def stand_in(x, t, y):  # cheap, smooth, non-trivial dynamics (a contraction towards 0)
        extra = x.new_zeros(x.shape[0], out_channels - x.shape[1], *x.shape[2:])
        return torch.cat([-0.5 * x, extra], dim=1)

    fn = stand_in if model is None else model
    gens = rng.per_sample_generators(range(batch))
    noise = rng.randn((batch, *shape), gens)
    labels = torch.arange(batch) % num_classes
    t0 = time.perf_counter()
    out = objective.sample(fn, noise, labels, sampler=sampler, generator=gens, null_label=num_classes)
    return int(out.nfe), time.perf_counter() - t0


def bench_model(name: str, model, objective, batch: int, reps: int) -> list[dict]:
    shape = (int(model.in_channels), int(model.input_size), int(model.input_size))
    t_fwd = time_forward(model, batch, shape, reps)
    rows = []
    for s in objective.samplers:
        nfe, overhead = sampler_cost(objective, s, batch, shape, int(model.num_classes), int(model.out_channels))
        note = "adaptive dopri5: NFE of the stand-in dynamics, indicative only" if s == "ode" else ""
        per_batch = nfe * t_fwd + overhead
        rows.append(
            {
                "model": name,
                "sampler": s,
                "default_steps": _steps(objective, s),
                "nfe": nfe,
                "batch": batch,
                "t_forward_s": round(t_fwd, 4),
                "t_overhead_s": round(overhead, 4),
                "images_per_s": batch / per_batch,
                "seconds_per_image": per_batch / batch,
                "note": note,
                "model_params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            }
        )
        print(f"  {name:10s} {s:13s} NFE {nfe:4d}  {batch / per_batch:9.3f} img/s", flush=True)
    return rows


def _steps(objective, sampler):
    if sampler == "ode":
        return "adaptive"
    if sampler == objective.default_sampler:
        return str(objective.default_steps)
    return str(get_sampler(objective.kind, sampler).default_steps)


def demo_model(ckpt_dir):
    """The demo model: trained EMA weights from ``ckpt_dir`` when present, else its initial weights."""
    from vca_gen.experiment.schema import build_model, load_config

    if ckpt_dir and Path(ckpt_dir).exists():
        from vca_gen.experiment.checkpoint import load_for_sampling

        try:
            model, cfg, _, _ = load_for_sampling(ckpt_dir)
            return model, cfg, f"trained ({ckpt_dir})"
        except Exception as e:  # noqa: BLE001 - fall back, and say so in the output
            print(f"  (cannot load {ckpt_dir}: {e}; using initial weights)")
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg, "initial weights"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and images")
    ap.add_argument("--demo-ckpt", default=str(ROOT / "runs" / "demo" / "train"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampling.json"))
    a = ap.parse_args(argv)
    from vca_gen.experiment.schema import build_model, config_from_dict
    from vca_gen.sample.model import protocol_objective

    reps = 2 if a.quick else 3
    rows = []
    print("sampling throughput (extrapolated from one forward + the sampler with a stand-in model):")
    for kind, prefix in (("diffusion", "DiT"), ("flow", "SiT")):
        cfg = config_from_dict(
            {
                "name": "bench",
                "model": {"name": f"{prefix}-S/2", "learn_sigma": kind == "diffusion"},
                "objective": {"kind": kind},
                "data": {"kind": "latents", "path": "unused", "image_size": 256},
            }
        )
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        rows += bench_model(f"{prefix}-S/2", model, protocol_objective(cfg.objective), 4 if a.quick else 8, reps)
    model, dcfg, which = demo_model(a.demo_ckpt)
    rows += bench_model("demo", model, protocol_objective(dcfg.objective), 32 if a.quick else 64, reps)

    from features_lib import feature_throughput

    n = 16 if a.quick else 48
    feat = feature_throughput(n=n, batch_size=16, mode="clean", image_size=32)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print("\n| model | sampler | default steps | NFE/image | batch | forward s | img/s | s/image | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['sampler']} | {r['default_steps']} | {r['nfe']} | {r['batch']} | "
            f"{r['t_forward_s']:.3f} | {r['images_per_s']:.4f} | {r['seconds_per_image']:.1f} | {r['note']} |"
        )
    print(
        f"\nFID features (clean, 32 px -> 299, CPU, {feat['threads']} threads): {feat['images_per_s']:.2f} img/s, "
        f"CPU utilisation {feat['cpu_utilisation']:.2f} of {feat['cpus']} cores (load average {load})"
    )
    result = {
        "sampling": rows,
        "features": feat,
        "demo_weights": which,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1m": load,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
