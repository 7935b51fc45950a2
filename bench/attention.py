"""Attention benchmark: one layer (C=384, 6 heads, VCA n=64) forward+backward time and peak memory
versus the token count N, for VCA, MHSA and DIFF; then a DiT-S/2 training step with each attention.

    .venv/bin/python bench/attention.py            # full run (~15-30 min on 2 busy cores)
    .venv/bin/python bench/attention.py --quick    # smoke run (~1 min), writes attention_quick.*

How things are measured
- Time: wall clock of ``layer(x).sum().backward()`` for x (1, N, C) on a square sqrt(N) grid,
  after warm-up, the median of ``--repeats`` runs (3 when one run exceeds 20 s), in a fresh
  subprocess per N that times the kinds round-robin (so background load hits them alike), with
  ``--threads`` torch threads (default 1: on a shared 2-core machine two OpenMP threads spin
  against other processes and time becomes erratic; one thread gives stable, comparable numbers).
- Peak memory: the kernel's resident-set high-water mark. The worker runs with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors go back to the OS, resets the mark
  (``/proc/self/clear_refs`` = 5) before one forward+backward of each kind, and reports
  ``VmHWM − VmRSS(before)``: real bytes touched by activations, workspaces and gradients.
- Saved activations: bytes of the tensors autograd saves for backward (``saved_tensors_hooks``,
  parameters excluded, storages counted once) — deterministic, independent of the allocator.
- Model step: DiT-S/2, 32x32 latent (256 tokens), batch ``--batch``; forward, MSE loss, backward,
  AdamW step. Kinds run round-robin in one process so background load hits them alike; median.
The machine is shared with other jobs, so the load average is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
C, HEADS, N_CONTRAST = 384, 6, 64
KINDS = ("vca", "mhsa", "diff")
SLOW_RUN_S = 20.0


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(kinds: list, n_tokens: int, repeats: int, threads: int) -> list:
    """Runs in a subprocess: time and memory of one attention layer per kind at ``n_tokens``.

    Kinds are timed round-robin (vca, mhsa, diff, vca, ...) so load from other processes
    affects them alike.
    """
    import torch

    from vca_gen.models import build_attention

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    side = math.isqrt(n_tokens)
    x = torch.randn(1, n_tokens, C, requires_grad=True)
    layers, results = {}, {}
    for kind in kinds:
        opts = {"num_contrast_tokens": N_CONTRAST} if kind == "vca" else {}
        layers[kind] = build_attention(kind, C, HEADS, (side, side), 3, **opts)
        # warm-up of one-time initialisation (thread pool, kernels) on a small layer of the same kind
        small = build_attention(kind, C, HEADS, (16, 16), 3, **opts)
        small(torch.randn(1, 256, C, requires_grad=True)).sum().backward()

    def step(layer):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()

    for kind, layer in layers.items():
        # peak resident memory of one forward+backward (this run also warms up the timed shape)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss0 = _status_kb("VmRSS")
        step(layer)
        peak_kb = _status_kb("VmHWM") - rss0
        # bytes saved for backward (activations only)
        param_ptrs = {p.untyped_storage().data_ptr() for p in layer.parameters()}
        saved = {}

        def pack(t, param_ptrs=param_ptrs, saved=saved):  # (bound now: the hook runs in this iteration)
            st = t.untyped_storage()
            if st.data_ptr() not in param_ptrs:
                saved[st.data_ptr()] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = layer(x)
        del out
        results[kind] = {
            "kind": kind,
            "tokens": n_tokens,
            "times_s": [],
            "peak_mb": peak_kb / 1024,
            "saved_mb": sum(saved.values()) / 2**20,
        }

    rounds = 0
    while rounds < repeats:
        for kind, layer in layers.items():
            t0 = time.perf_counter()
            step(layer)
            results[kind]["times_s"].append(time.perf_counter() - t0)
        rounds += 1
        if rounds == 1 and max(r["times_s"][0] for r in results.values()) > SLOW_RUN_S:
            repeats = min(repeats, 3)  # quadratic kinds at 16K tokens: 3 runs are enough for a median
    for r in results.values():
        r["median_s"] = statistics.median(r["times_s"])
    return list(results.values())


def run_layers(kinds: list, n_tokens: int, repeats: int, threads: int) -> list:
    env = dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_="65536",
        OMP_NUM_THREADS=str(threads),
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        str(n_tokens),
        *kinds,
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"worker N={n_tokens} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_model_step(batch: int, repeats: int, threads: int) -> list:
    import torch

    from vca_gen.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(batch, 4, 32, 32)
    t = torch.randint(0, 1000, (batch,)).float()
    y = torch.randint(0, 1000, (batch,))
    setups = {}
    for kind in KINDS:
        model = create_model("DiT-S/2", attention=kind).train()
        setups[kind] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    times = {k: [] for k in KINDS}
    for r in range(repeats + 1):  # round 0 is warm-up
        for kind, (model, opt) in setups.items():
            t0 = time.perf_counter()
            loss = (model(x, t, y)[:, :4] - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if r:
                times[kind].append(time.perf_counter() - t0)
    return [
        {"kind": k, "batch": batch, "tokens": 256, "times_s": v, "median_s": statistics.median(v)}
        for k, v in times.items()
    ]


def checks(layer: list, model: list) -> dict:
    t = {(r["kind"], r["tokens"]): r for r in layer}
    out = {}

    def ratio(a, b, key="median_s"):
        return t[a][key] / t[b][key] if a in t and b in t else None

    r = ratio(("vca", 16384), ("vca", 4096))
    if r is not None:
        out["vca_time_16384_over_4096"] = {"value": r, "target": "<= 4.8", "pass": r <= 4.8}
    m = ratio(("vca", 16384), ("vca", 4096), "peak_mb")
    if m is not None:
        out["vca_peak_mem_16384_over_4096"] = {"value": m, "target": "<= 4.8 (linear: 4)", "pass": m <= 4.8}
    for n_tok, target in ((4096, 3.0), (16384, 8.0)):
        r = ratio(("mhsa", n_tok), ("vca", n_tok))
        if r is not None:
            out[f"mhsa_over_vca_time_{n_tok}"] = {"value": r, "target": f">= {target}", "pass": r >= target}
    ms = {r["kind"]: r["median_s"] for r in model}
    if "vca" in ms and "mhsa" in ms:
        r = ms["vca"] / ms["mhsa"]
        out["dit_s2_step_vca_over_mhsa"] = {"value": r, "target": "<= 1.15", "pass": r <= 1.15}
    return out


def table(layer: list, model: list, chk: dict) -> str:
    lines = [
        "| attention | N | fwd+bwd (s) | peak mem (MB) | saved activations (MB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(layer, key=lambda r: (KINDS.index(r["kind"]), r["tokens"])):
        lines.append(
            f"| {r['kind']} | {r['tokens']} | {r['median_s']:.4f} | {r['peak_mb']:.1f} | {r['saved_mb']:.1f} |"
        )
    if model:
        lines += [
            "",
            f"| attention | DiT-S/2 train step (s), batch {int(model[0]['batch'])}, 256 tokens | vs mhsa |",
            "| --- | ---: | ---: |",
        ]
        base = next((r["median_s"] for r in model if r["kind"] == "mhsa"), None)
        for r in model:
            rel = f"{r['median_s'] / base:.3f}" if base else "-"
            lines.append(f"| {r['kind']} | {r['median_s']:.3f} | {rel} |")
    if chk:
        lines += ["", "| check | value | target | pass |", "| --- | ---: | --- | --- |"]
        for k, v in chk.items():
            lines.append(f"| {k} | {v['value']:.3f} | {v['target']} | {'yes' if v['pass'] else 'NO'} |")
    return "\n".join(lines)


def plot(layer: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind in KINDS:
        rows = sorted((r for r in layer if r["kind"] == kind), key=lambda r: r["tokens"])
        if not rows:
            continue
        ns = [r["tokens"] for r in rows]
        (line,) = axes[0].plot(ns, [r["median_s"] for r in rows], "o-", label=kind)
        axes[1].plot(
            ns, [max(r["peak_mb"], 1e-3) for r in rows], "o-", color=line.get_color(), label=f"{kind} peak RSS"
        )
        axes[1].plot(
            ns, [r["saved_mb"] for r in rows], "x--", color=line.get_color(), alpha=0.6, label=f"{kind} saved act."
        )
    for ax, ylabel in zip(axes, ("forward+backward time (s)", "memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens N")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"one attention layer, C={C}, {HEADS} heads, VCA n={N_CONTRAST}, batch 1, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: N in {256, 1024}, 1 repeat, batch 1")
    p.add_argument("--tokens", type=int, nargs="+", default=None, help="token counts (perfect squares)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--repeats", type=int, default=None, help="timed runs per point (median), default 5 (quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see module docstring)")
    p.add_argument("--batch", type=int, default=None, help="DiT-S/2 step batch size (default 8, quick 1)")
    p.add_argument("--no-model", action="store_true", help="skip the DiT-S/2 training-step benchmark")
    p.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--worker", nargs="+", metavar="N KIND", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    if args.worker:
        print(json.dumps(worker(args.worker[1:], int(args.worker[0]), repeats, args.threads)))
        return 0
    tokens = args.tokens or ([256, 1024] if args.quick else [256, 1024, 4096, 16384])
    bad = [n for n in tokens if math.isqrt(n) ** 2 != n]
    if bad:
        p.error(f"--tokens must be perfect squares (square grids), got {bad}")
    batch = args.batch or (1 if args.quick else 8)
    load_start = os.getloadavg()
    layer = []
    for n_tok in tokens:
        for r in run_layers(args.kinds, n_tok, repeats, args.threads):
            layer.append(r)
            print(
                f"{r['kind']:>5} N={n_tok:>6}: {r['median_s']:.4f} s  peak {r['peak_mb']:.1f} MB  "
                f"saved {r['saved_mb']:.1f} MB",
                flush=True,
            )
    model = [] if args.no_model else run_model_step(batch, max(repeats, 2) if not args.quick else 1, args.threads)
    chk = checks(layer, model)
    result = {
        "config": {
            "C": C,
            "heads": HEADS,
            "num_contrast_tokens": N_CONTRAST,
            "tokens": tokens,
            "repeats": repeats,
            "threads": args.threads,
            "model_batch": batch,
            "quick": args.quick,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": __import__("torch").__version__,
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "layer": layer,
        "model_step": model,
        "checks": chk,
    }
    md = table(layer, model, chk)
    print("\n" + md)
    stem = "attention_quick" if args.quick else "attention"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (args.out_dir / f"{stem}.md").write_text(md + "\n")
    plot(layer, args.out_dir / f"{stem}.png")
    print(f"\nwrote {args.out_dir / stem}.{{json,md,png}}  (load average {load_start} -> {os.getloadavg()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
