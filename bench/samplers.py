"""Sampler benchmark: model evaluations (NFE) and wall time per image for every sampler.

    .venv/bin/python bench/samplers.py            # full protocol step counts, writes samplers.json
    .venv/bin/python bench/samplers.py --quick    # smoke run (few steps), writes samplers_quick.json

Model: a tiny DiT (depth 4, hidden 128, 4 heads, 4x16x16 latents, patch 2 → 64 tokens, MHSA) on
CPU in fp32, with its zero-initialised output layers re-drawn from N(0, 0.02) so that it predicts
something non-trivial (an untrained adaLN-Zero DiT outputs exactly 0, which makes the adaptive ODE
solver's NFE meaningless). ``--threads`` torch threads (default 1: stable on a shared machine).
Time per image = wall time of one ``objective.sample`` call (after a short warm-up call that
also pays diffusers' import for DPM-Solver++) / batch size (no CFG: with
``cfg_scale != 1`` each evaluation runs a doubled batch). NFE is counted by the objective (calls
of the model function); dopri5's NFE also depends on the model and its tolerances.
The load average is recorded because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vca_gen.models import create_model  # noqa: E402
from vca_gen.objectives import build_objective  # noqa: E402
from vca_gen.utils.rng import per_sample_generators  # noqa: E402

# (objective kind, sampler, steps, options, quick steps)
CASES = [
    ("diffusion", "ddpm", "250", {}, "10"),
    ("diffusion", "ddim", "ddim50", {}, "ddim10"),
    ("diffusion", "ddim", "ddim50", {"eta": 1.0}, "ddim10"),
    ("diffusion", "dpm-solver++", 20, {}, 5),
    ("diffusion", "dpm-solver++", 10, {"order": 3}, 5),
    ("flow", "sde", 250, {}, 10),
    ("flow", "sde", 250, {"diffusion_form": "sbdm", "last_step": "tweedie"}, 10),
    ("flow", "ode", None, {}, None),
    ("flow", "ode", None, {"rtol": 1e-5, "atol": 1e-5}, None),
    ("flow", "euler", 100, {}, 10),
    ("flow", "heun", 50, {}, 5),
]


def tiny_model(learn_sigma: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model(
        "DiT-S/2",
        depth=4,
        hidden_size=128,
        num_heads=4,
        input_size=16,
        in_channels=4,
        num_classes=10,
        learn_sigma=learn_sigma,
    )
    with torch.no_grad():  # undo adaLN-Zero so the prediction is not identically zero
        for name, p in m.named_parameters():
            if p.dim() > 1 and ("adaLN" in name or "final_layer" in name):
                p.normal_(0, 0.02)
    return m.eval()


def run(args) -> list[dict]:
    rows = []
    models = {"diffusion": tiny_model(True), "flow": tiny_model(False)}
    for kind, sampler, steps, opts, quick_steps in CASES:
        steps = quick_steps if args.quick else steps
        obj = build_objective({"kind": kind})
        noise = torch.randn(args.batch, 4, 16, 16, generator=torch.Generator().manual_seed(1))
        labels = torch.arange(args.batch) % 10
        gens = per_sample_generators(range(args.batch))
        warm = {"ode": None, "ddpm": "2", "ddim": "ddim2", "dpm-solver++": 2}.get(sampler, 2)  # imports, allocator
        obj.sample(models[kind], noise[:1], labels[:1], sampler=sampler, steps=warm, **opts)
        t = time.perf_counter()
        out = obj.sample(models[kind], noise, labels, sampler=sampler, steps=steps, generator=gens, **opts)
        wall = time.perf_counter() - t
        opt_s = ", ".join(f"{k}={v}" for k, v in opts.items())
        row = {
            "objective": kind,
            "sampler": sampler,
            "steps": steps,
            "options": opt_s,
            "nfe": out.nfe,
            "seconds_per_image": wall / args.batch,
            "ms_per_eval_per_image": 1000 * wall / args.batch / out.nfe,
            "finite": bool(torch.isfinite(out.x).all()),
        }
        rows.append(row)
        print(
            f"{kind:9s} {sampler:12s} {str(steps):7s} {opt_s:38s} nfe {out.nfe:4d}  "
            f"{row['seconds_per_image']:.3f} s/img",
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| objective | sampler | steps | options | NFE | s / image | ms / eval / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['objective']} | {r['sampler']} | {r['steps'] if r['steps'] is not None else 'adaptive'} | "
            f"{r['options'] or '(defaults)'} | {r['nfe']} | {r['seconds_per_image']:.3f} | "
            f"{r['ms_per_eval_per_image']:.2f} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps, small batch (smoke run)")
    ap.add_argument("--batch", type=int, default=None, help="images per sample call (default 8, quick 2)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    args.batch = args.batch or (2 if args.quick else 8)
    if args.batch < 1 or args.threads < 1:
        ap.error("--batch and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    rows = run(args)
    print()
    print(table(rows))
    out = REPO / "bench" / "results" / ("samplers_quick.json" if args.quick else "samplers.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "batch": args.batch,
        "threads": args.threads,
        "device": "cpu",
        "dtype": "float32",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
        "model": "DiT-S/2 depth 4, hidden 128, 4 heads, 4x16x16, MHSA (output layers re-drawn N(0, 0.02))",
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
