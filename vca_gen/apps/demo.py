"""``make demo`` / ``python -m vca_gen.apps.demo``: the whole job on the embedded Animal-MNIST demo.

1. train the demo VCA model (``configs/demo.yaml``) with the training loop, keeping the checkpoints
   at the middle and the end; the untrained model is the initial weights (``torch.manual_seed(
   train.seed)`` then ``build_model``, exactly as the trainer initialises), exported to
   ``OUT/untrained/``;
2. reference statistics of real images (class-balanced subset of Animal-MNIST split "a", clean mode)
   with ``vca_gen.metrics``, and the FID of real held-out images (split "b") as the floor;
3. for each evaluated step (0, middle, final): ``sample.py``'s code path with EMA weights, N
   samples, then FID against the reference;
4. ``OUT/report.md`` with the numbers, the sample grid, the loss curve and FID vs step.

Every stage is resumable: re-running skips finished training, statistics, samples and FIDs.
``--quick`` is a tiny smoke version (a 2-block model, 20 steps, a few dozen images) for tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from vca_gen.metrics.sources import balanced_animal_mnist
from vca_gen.utils.assets import packaged_config

CONFIG = packaged_config("demo.yaml")
QUICK_OVERRIDES = [
    "model.depth=2",
    "model.hidden_size=64",
    "model.num_heads=2",
    "model.attention_options.num_contrast_tokens=4",
    "train.global_batch_size=16",
    "train.warmup_steps=0",
    "train.log_every=2",
    "train.grid.every=0",
    "train.ema_decay=0.9",
]
DEFAULTS = {
    "num_samples": 1000,
    "ref_images": 1000,
    "real_images": 1000,
    "sampler": "euler",
    "sample_steps": "10",
    "batch_size": 125,
}
QUICK = {"steps": 20, "num_samples": 10, "ref_images": 20, "real_images": 10, "sample_steps": "4", "batch_size": 10}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vca_gen.apps.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="output directory (runs/demo)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps (default: train.max_steps of configs/demo.yaml; --quick: 20)",
    )
    p.add_argument("--quick", action="store_true", help="tiny smoke version (a minute or two on CPU)")
    p.add_argument("--num-samples", type=int, default=None, help="samples per evaluated checkpoint (1000)")
    p.add_argument("--sampler", default=None, help="sampler for the demo FIDs (euler)")
    p.add_argument("--sample-steps", default=None, help="sampler steps (10)")
    p.add_argument("--ref-images", type=int, default=None, help="real images for the reference statistics (1000)")
    p.add_argument(
        "--real-images", type=int, default=None, help="held-out real images for the FID floor; 0 = skip (1000)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="sampling batch size (125)")
    p.add_argument("--seed", type=int, default=0, help="sampling base seed (0)")
    p.add_argument(
        "--eval-steps",
        default=None,
        help="comma-separated training steps to sample and score, from 0 (untrained), mid and final "
        "(default: all three)",
    )
    return p


def settings(args) -> dict:
    s = dict(DEFAULTS, **(QUICK if args.quick else {}))
    for k in ("steps", "num_samples", "sampler", "sample_steps", "ref_images", "real_images", "batch_size"):
        if getattr(args, k) is not None:
            s[k] = getattr(args, k)
    return s


# ---------------------------------------------------------------------------------------- training
def demo_config(out: Path, steps: int | None, quick: bool):
    """``configs/demo.yaml`` with the run directory under ``out`` and a checkpoint at mid-training."""
    from vca_gen.experiment.schema import load_config

    base = load_config(CONFIG, QUICK_OVERRIDES if quick else [])
    total = int(steps if steps is not None else base.train.max_steps)
    if total < 1:
        raise ValueError(f"--steps must be >= 1, got {total}")
    mid = total // 2 or total
    overrides = (QUICK_OVERRIDES if quick else []) + [
        f"train.max_steps={total}",
        f"train.ckpt_every={mid}",
        "train.keep_last=0",
        "train.milestone_every=0",
        f"train.output_dir={out / 'train'}",
        "train.resume=auto",
    ]
    return load_config(CONFIG, overrides), sorted({0, total // 2, total})


def export_initial(cfg, path: Path) -> Path:
    """The untrained model: initial weights exactly as the trainer creates them, as an export."""
    from safetensors.torch import save_file

    from vca_gen.experiment.build import build_model, decoder_spec
    from vca_gen.experiment.schema import to_container

    if (path / "model.safetensors").is_file():
        return path
    torch.manual_seed(int(cfg.train.seed))
    model = build_model(cfg)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(to_container(cfg), indent=2))
    decoder_spec(cfg).save(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def train_model(cfg) -> float:
    """Train (or finish training) the demo run; returns the training minutes over all invocations."""
    from vca_gen.train.trainer import train

    record = Path(cfg.train.output_dir) / "demo_train_minutes.json"
    before = json.loads(record.read_text())["minutes"] if record.is_file() else 0.0
    t0 = time.perf_counter()
    train(cfg)
    minutes = before + (time.perf_counter() - t0) / 60
    record.write_text(json.dumps({"minutes": minutes}))
    return minutes


# ---------------------------------------------------------------------------------------- metrics
def reference(out: Path, n: int, fx) -> Path:
    from vca_gen.metrics import compute_statistics, save_statistics

    path = out / f"ref_animal_mnist_a{n}_clean.npz"
    if not path.is_file():
        print(f"[demo] reference statistics of {n} real images -> {path}", flush=True)
        stats = compute_statistics(balanced_animal_mnist("a", n), fx, "clean", batch_size=50, progress=True)
        save_statistics(stats, path, max_features=0)
    return path


def cached_json(path: Path, newer_than: Sequence[Path], compute) -> dict:
    """``compute()`` stored as JSON at ``path``, reused while it is newer than ``newer_than``."""
    if path.is_file() and all(path.stat().st_mtime >= p.stat().st_mtime for p in newer_than if p.exists()):
        return json.loads(path.read_text())
    value = compute()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)
    return value


def sample_and_score(ckpt: Path, out_dir: Path, s: dict, seed: int, ref: Path, fx) -> dict:
    """``sample.py`` on ``ckpt`` (EMA) into ``out_dir``, then FID against ``ref``."""
    from vca_gen.metrics import evaluate
    from vca_gen.sample.cli import build_parser as sample_parser
    from vca_gen.sample.cli import run as sample_run

    def compute():
        argv = [
            "--ckpt",
            str(ckpt),
            "--out",
            str(out_dir),
            "--num-samples",
            str(s["num_samples"]),
            "--sampler",
            s["sampler"],
            "--steps",
            str(s["sample_steps"]),
            "--batch-size",
            str(s["batch_size"]),
            "--shard-size",
            str(s["batch_size"] * 2),
            "--seed",
            str(seed),
        ]
        t0 = time.perf_counter()
        summary = sample_run(sample_parser().parse_args(argv))
        secs = time.perf_counter() - t0
        fid = evaluate(out_dir / "samples.npz", ref, mode="clean", extractor=fx, batch_size=50)
        return {
            "fid": fid["fid"],
            "n": fid["n"],
            "nfe": summary.get("nfe_per_image"),
            "sampling_seconds": secs,
            "samples": str(out_dir / "samples.npz"),
        }

    out_dir.mkdir(parents=True, exist_ok=True)
    return cached_json(out_dir / "eval.json", [ckpt / "ema.safetensors", ckpt / "model.safetensors", ref], compute)


# ---------------------------------------------------------------------------------------- main
def run(args) -> dict:
    from vca_gen.apps.report import plot_series, read_scalars, write_report
    from vca_gen.experiment.checkpoint import step_dir_name
    from vca_gen.metrics import InceptionFeatureExtractor

    t_start = time.perf_counter()
    s = settings(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg, eval_steps = demo_config(out, s.get("steps"), args.quick)
    if args.eval_steps:
        wanted = sorted({int(v) for v in str(args.eval_steps).split(",") if v.strip()})
        if not wanted or not set(wanted) <= set(eval_steps):
            raise ValueError(f"--eval-steps {args.eval_steps}: checkpoints exist for steps {eval_steps} only")
        eval_steps = wanted
    train_dir = Path(cfg.train.output_dir)
    untrained = export_initial(cfg, out / "untrained")
    print(
        f"[demo] training {cfg.model.name} ({cfg.model.attention}) for {cfg.train.max_steps} steps -> {train_dir}",
        flush=True,
    )
    train_minutes = train_model(cfg)
    fx = InceptionFeatureExtractor(mode="clean")
    ref = reference(out, s["ref_images"], fx)
    evals = []
    for step in [eval_steps[-1]] + eval_steps[:-1]:  # the final model first: the headline number
        ckpt = untrained if step == 0 else train_dir / "checkpoints" / step_dir_name(step)
        print(f"[demo] step {step}: sampling {s['num_samples']} images from {ckpt}", flush=True)
        e = sample_and_score(ckpt, out / "samples" / f"step_{step:08d}", s, args.seed, ref, fx)
        evals.append({"step": step, **e})
        print(f"[demo] step {step}: FID {e['fid']:.2f}", flush=True)
    evals.sort(key=lambda e: e["step"])
    real = {"fid": None}
    if s["real_images"]:
        real = cached_json(out / "real_fid.json", [ref], lambda: {"fid": evaluate_real(s["real_images"], ref, fx)})

    loss = read_scalars(train_dir / "logs", "train/loss")
    loss_png = (
        plot_series(out / "loss.png", {"train/loss": loss}, "step", "loss (logged mean)", "training loss", logy=True)
        if loss
        else None
    )
    plot_series(
        out / "fid_vs_step.png",
        {"EMA samples": [(e["step"], e["fid"]) for e in evals]},
        "training step",
        f"FID ({s['num_samples']} samples)",
        "FID vs training step",
        hlines={f"real held-out ({s['real_images']})": real["fid"]} if real["fid"] is not None else None,
    )
    shutil.copyfile(Path(evals[-1]["samples"]).parent / "grid.png", out / "grid.png")
    params = sum(v.numel() for v in _state_dict(untrained).values()) / 1e6
    result = {
        "quick": args.quick,
        "model": cfg.model.name,
        "attention": cfg.model.attention,
        "params_m": params,
        "objective": cfg.objective.kind,
        "train_steps": int(cfg.train.max_steps),
        "batch_size": int(cfg.train.global_batch_size),
        "train_minutes": train_minutes,
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "evals": evals,
        "n_gen": s["num_samples"],
        "n_ref": s["ref_images"],
        "n_real": s["real_images"],
        "fid_real": real["fid"],
        "num_classes": int(cfg.model.num_classes),
        "seed": args.seed,
        "sampler": s["sampler"],
        "sample_steps": s["sample_steps"],
        "nfe": evals[-1]["nfe"],
        "weights_sha256": fx.weights_sha256,
        "train_dir": str(train_dir),
        "samples_dir": str(out / "samples"),
        "ref_path": str(ref),
        "json_path": str(out / "results.json"),
        "loss_png": str(loss_png) if loss_png else None,
        "loss_first_last": [loss[0], loss[-1]] if loss else None,
        "total_minutes": (time.perf_counter() - t_start) / 60,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    write_report(out / "report.md", result)
    return result


def evaluate_real(n: int, ref: Path, fx) -> float:
    from vca_gen.metrics import evaluate

    return evaluate(balanced_animal_mnist("b", n), ref, mode="clean", extractor=fx, batch_size=50)["fid"]


def _state_dict(export_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(export_dir / "model.safetensors"))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vca_gen.experiment.checkpoint import CheckpointError
    from vca_gen.experiment.schema import ConfigError
    from vca_gen.metrics import MetricsError
    from vca_gen.sample.plan import SamplingError

    try:
        r = run(args)
    except (SamplingError, CheckpointError, ConfigError, MetricsError, ValueError, OSError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    trained, untrained = r["evals"][-1], r["evals"][0]
    print(
        f"[demo] FID trained (step {trained['step']}) {trained['fid']:.2f} | untrained {untrained['fid']:.2f} | "
        f"real held-out {r['fid_real'] if r['fid_real'] is None else round(r['fid_real'], 2)}; "
        f"report: {Path(args.out) / 'report.md'}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
