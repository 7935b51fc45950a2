"""``evaluate_fid.py``: FID / sFID / KID / precision-recall of a sample set, or ``--make-ref``.

Prints a human summary, then exactly one JSON line (the last line of stdout). Errors: a message
on stderr and exit code 2; nothing is written under a final name unless the run succeeds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from vca_gen.metrics.errors import MetricsError
from vca_gen.metrics.inception import MODES, InceptionFeatureExtractor, default_device


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="evaluate_fid.py", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("samples", metavar="SAMPLES",
                    help="images: .npz with arr_0 uint8 (N,H,W,3), an image folder, or dataset:animal_mnist[:all|a|b[:SIZE]]")
    ap.add_argument("--ref", help="reference: our statistics .npz, an ADM reference batch (mu, sigma[, mu_s, "
                    "sigma_s, arr_0]), or another image set (.npz arr_0 / folder / dataset:animal_mnist)")
    ap.add_argument("--make-ref", metavar="OUT", help="instead of scoring, write the statistics of SAMPLES to OUT (.npz)")
    ap.add_argument("--mode", choices=MODES, default=None,
                    help="feature mode; default: the reference's (ADM batches: legacy_tensorflow), else clean")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--num-workers", type=int, default=None,
                    help="DataLoader workers decoding image folders (default: min(2, CPUs))")
    ap.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all usable cores)")
    ap.add_argument("--inception", metavar="PATH", default=None,
                    help="Inception TorchScript file (else $VCA_GEN_INCEPTION, clean-fid's temp-folder file, "
                    "<assets>/inception/default_1.pt)")
    ap.add_argument("--kid", action="store_true", help="also compute KID")
    ap.add_argument("--kid-subsets", type=int, default=100)
    ap.add_argument("--kid-subset-size", type=int, default=1000)
    ap.add_argument("--pr", action="store_true", help="also compute precision/recall (k-NN manifolds)")
    ap.add_argument("--pr-k", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="seed of KID subsets and of stored feature subsets")
    ap.add_argument("--max-images", type=int, default=None, help="use only the first N images of SAMPLES")
    ap.add_argument("--ref-features", type=int, default=10000,
                    help="with --make-ref: store a random subset of this many pool3 features (KID/PR); 0 = none")
    ap.add_argument("--dataset-split", choices=("all", "a", "b"), default="all",
                    help="split of dataset:animal_mnist when the spec does not name one")
    ap.add_argument("--dataset-size", type=int, default=32,
                    help="dataset:animal_mnist images zero-padded to this size (the demo trains at 32)")
    ap.add_argument("--json-out", metavar="FILE", help="also write the JSON result to FILE (atomically)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def _check_args(ap, a) -> None:
    if (a.ref is None) == (a.make_ref is None):
        ap.error("give exactly one of --ref REF (score SAMPLES) or --make-ref OUT (write statistics)")
    for name in ("batch_size", "kid_subsets", "kid_subset_size", "pr_k"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.kid_subset_size < 2:
        ap.error("--kid-subset-size must be >= 2")
    if a.make_ref and (a.kid or a.pr):
        ap.error("--kid / --pr score samples; they do not apply to --make-ref")
    if a.threads is not None and a.threads < 1:
        ap.error("--threads must be >= 1")


def _write_text_atomic(path: str, text: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt(v, spec=".4f"):
    return "n/a" if v is None else format(v, spec)


def run(a) -> dict:
    from vca_gen.metrics.evaluation import evaluate, reference_mode
    from vca_gen.metrics.sources import open_source
    from vca_gen.metrics.statistics import check_same_mode, compute_statistics, load_reference, save_statistics

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(a.threads or cpus)
    workers = min(2, cpus) if a.num_workers is None else a.num_workers
    device = torch.device(a.device) if a.device else default_device()
    progress = not a.no_progress
    # validate every input before the (slow) Inception load
    ds_opts = {"split": a.dataset_split, "image_size": a.dataset_size}
    is_ds = str(a.samples).startswith("dataset:") or (a.samples == "animal_mnist" and not Path(a.samples).exists())
    samples = open_source(a.samples, max_images=a.max_images, **(ds_opts if is_ds else {}))
    if a.make_ref:
        mode = a.mode or "clean"
        fx = InceptionFeatureExtractor(mode=mode, device=device, weights=a.inception)
        stats = compute_statistics(samples, fx, mode, a.batch_size, workers, keep_features=a.ref_features > 0,
                                   progress=progress)
        out = save_statistics(stats, a.make_ref, max_features=a.ref_features, seed=a.seed)
        result = {"made_ref": str(out), "n": stats.count, "mode": mode, "resolution": stats.resolution,
                  "source": stats.source, "spatial": stats.mu_s is not None,
                  "features_stored": min(a.ref_features, stats.count), "weights": str(fx.weights_path),
                  "weights_sha256": fx.weights_sha256}
        print(f"wrote {out}: {stats.count} images from {stats.source}, mode {mode}, "
              f"resolution {stats.resolution}, {result['features_stored']} features stored")
    else:
        ref = a.ref
        ref_mode = reference_mode(ref)  # validates a statistics file; None for image sets
        if ref_mode is None:
            ref_is_ds = str(ref).startswith("dataset:") or (ref == "animal_mnist" and not Path(ref).exists())
            ref = open_source(ref, **(ds_opts if ref_is_ds else {}))
        elif a.mode is not None and a.mode != ref_mode:
            check_same_mode(a.mode, load_reference(ref))  # raises, naming both modes
        mode = a.mode or ref_mode or "clean"
        fx = InceptionFeatureExtractor(mode=mode, device=device, weights=a.inception)
        result = evaluate(samples, ref, mode=mode, extractor=fx, kid=a.kid, pr=a.pr, batch_size=a.batch_size,
                          num_workers=workers, progress=progress, kid_subsets=a.kid_subsets,
                          kid_subset_size=a.kid_subset_size, pr_k=a.pr_k, seed=a.seed)
        print(f"samples   : {result['samples']} ({result['n']} images, {result['resolution']})")
        print(f"reference : {result['reference']} ({result['reference_kind']})")
        print(f"mode      : {result['mode']}")
        print(f"FID       : {_fmt(result['fid'])}")
        print(f"sFID      : {_fmt(result['sfid'])}")
        if a.kid:
            print(f"KID       : {_fmt(result['kid'], '.6f')} ± {_fmt(result['kid_std'], '.6f')}")
        if a.pr:
            print(f"precision : {_fmt(result['precision'])}   recall: {_fmt(result['recall'])}")
        for k, v in result["notes"].items():
            print(f"note      : {k}: {v}")
    print(f"weights   : {fx.weights_path} sha256 {fx.weights_sha256}")
    line = json.dumps(result, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    if a.json_out:
        _write_text_atomic(a.json_out, line + "\n")
    print(line, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    _check_args(ap, a)
    try:
        run(a)
    except MetricsError as e:
        print(f"evaluate_fid.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # missing Animal-MNIST files, unreadable images (PIL), unwritable outputs
        print(f"evaluate_fid.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
