"""``evaluate_fid.py``: FID and the other registered metrics of a sample set, or ``--make-ref``.

The metrics, their switches (``--kid``, ``--pr``: aliases adding them to ``--metrics``), their
parameters (``--<metric>-<param>``) and their JSON fields come from :mod:`vca_gen.metrics.registry`;
``--metrics`` defaults to FID and sFID. An unknown name is a one-line error listing the accepted ones.

Prints a human summary, then exactly one JSON line (the last line of stdout). Errors (through
:func:`vca_gen.errors.cli_boundary`): ``evaluate_fid.py: error: <message>`` on one line of stderr
and exit code 2; nothing is written under a final name unless the run succeeds.

Every option's type and range (seeds in [0, 2**63), counts, a ``--device`` this machine has, an existing
``--inception`` file: :mod:`vca_gen.utils.cli_types`), the inputs SAMPLES / ``--ref`` and the metric
selection are checked before anything is loaded. Outputs (``--make-ref OUT``, ``--json-out FILE``) are
checked before the slow Inception pass: one
that is the same file as an input (SAMPLES, ``--ref``) or as the other output is always refused;
an existing ``--make-ref`` file is refused unless ``--overwrite``; a folder that cannot be created
is an error. Every file is written with :mod:`vca_gen.utils.io` (atomic, mode per umask).
Metrics computed from fewer images than their definition assumes carry a note (``notes``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from vca_gen.errors import cli_boundary
from vca_gen.metrics import registry
from vca_gen.metrics.inception import MODES, InceptionFeatureExtractor, default_device
from vca_gen.utils import cli_types as T
from vca_gen.utils.io import (
    atomic_write_text,
    check_output_path,
    make_parent_dir,
    refuse_input_as_output,
    refuse_overwrite,
)

TOOL = "evaluate_fid.py"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=TOOL, description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument(
        "samples",
        metavar="SAMPLES",
        help="images: .npz with arr_0 uint8 (N,H,W,3), an image folder, or dataset:animal_mnist[:all|a|b[:SIZE]]",
    )
    ap.add_argument(
        "--ref",
        help="reference: our statistics .npz, an ADM reference batch (mu, sigma[, mu_s, "
        "sigma_s, arr_0]), or another image set (.npz arr_0 / folder / dataset:animal_mnist)",
    )
    ap.add_argument(
        "--make-ref",
        metavar="OUT",
        type=T.output_path,
        help="instead of scoring, write the statistics of SAMPLES to OUT (.npz)",
    )
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="with --make-ref: replace an existing OUT (an OUT that is an input is always refused)",
    )
    ap.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="feature mode; default: the reference's (ADM batches: legacy_tensorflow), else clean",
    )
    ap.add_argument("--batch-size", type=T.positive_int, default=50)
    ap.add_argument(
        "--num-workers",
        type=T.non_negative_int,
        default=None,
        help="DataLoader workers decoding image folders (default: min(2, CPUs))",
    )
    ap.add_argument(
        "--device",
        default=None,
        type=T.device,
        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)",
    )
    ap.add_argument(
        "--threads", type=T.positive_int, default=None, help="torch CPU threads (default: all usable cores)"
    )
    ap.add_argument(
        "--inception",
        metavar="PATH",
        default=None,
        type=T.existing_file,
        help="Inception TorchScript file (else $VCA_GEN_INCEPTION, clean-fid's temp-folder file, "
        "<assets>/inception/default_1.pt)",
    )
    _add_metric_args(ap)
    ap.add_argument("--seed", type=T.seed, default=0, help="seed of KID subsets and of stored feature subsets")
    ap.add_argument("--max-images", type=T.positive_int, default=None, help="use only the first N images of SAMPLES")
    ap.add_argument(
        "--ref-features",
        type=T.non_negative_int,
        default=10000,
        help="with --make-ref: store a random subset of this many pool3 features (for "
        + ", ".join(registry.needing(registry.names(), "features"))
        + "); 0 = none",
    )
    ap.add_argument(
        "--dataset-split",
        choices=("all", "a", "b"),
        default="all",
        help="split of dataset:animal_mnist when the spec does not name one",
    )
    ap.add_argument(
        "--dataset-size",
        type=T.positive_int,
        default=32,
        help="dataset:animal_mnist images zero-padded to this size (the demo trains at 32)",
    )
    ap.add_argument(
        "--json-out", metavar="FILE", type=T.output_path, help="also write the JSON result to FILE (atomically)"
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def _add_metric_args(ap: argparse.ArgumentParser) -> None:
    """``--metrics``, each entry's switch (``--kid``, ``--pr``) and parameters (``--<metric>-<param>``),
    all from :mod:`vca_gen.metrics.registry`."""
    ap.add_argument(
        "--metrics",
        default=argparse.SUPPRESS,  # absent: the registry's defaults
        metavar="LIST",
        help="comma-separated metrics to compute, of: "
        + "; ".join(f"{m.name} ({m.help})" for m in registry.all_metrics())
        + f" (default: {','.join(registry.default_names())})",
    )
    for m in registry.all_metrics():
        if m.flag:
            ap.add_argument(
                m.flag, action="store_true", dest=_flag_dest(m), help=f"also compute {m.name} (adds it to --metrics)"
            )
        for p in m.params:
            ap.add_argument(
                p.flag(m.name),
                type=int,  # its minimum: registry.resolve_params, before the Inception pass
                default=None,  # absent: the entry's default (``p.default``)
                dest=_param_dest(m, p),
                metavar=p.name.upper(),
                help=p.help,
            )


def _flag_dest(m: registry.Metric) -> str:
    return f"metric_flag__{m.name}"


def _param_dest(m: registry.Metric, p: registry.Param) -> str:
    return f"metric_param__{m.name}__{p.name}"


def _selected_flags(a) -> list[str]:
    return [m.name for m in registry.all_metrics() if m.flag and getattr(a, _flag_dest(m), False)]


def _check_args(ap, a) -> None:
    if (a.ref is None) == (a.make_ref is None):
        ap.error("give exactly one of --ref REF (score SAMPLES) or --make-ref OUT (write statistics)")
    if a.make_ref and (hasattr(a, "metrics") or _selected_flags(a)):
        flags = ["--metrics"] * hasattr(a, "metrics") + [registry.get(n).flag or n for n in _selected_flags(a)]
        ap.error(f"{' / '.join(flags)} score samples; they do not apply to --make-ref")
    if a.overwrite and not a.make_ref:
        ap.error("--overwrite applies to --make-ref OUT only")
    if a.make_ref is None and a.ref_features != ap.get_default("ref_features"):
        ap.error("--ref-features applies to --make-ref OUT only")
    for m in registry.all_metrics():  # a parameter of an unselected metric is allowed (ignored) when scoring
        for p in m.params:
            if a.make_ref and getattr(a, _param_dest(m, p)) is not None:
                ap.error(f"{p.flag(m.name)} scores samples; it does not apply to --make-ref")


def metric_selection(a) -> tuple[list[str], dict[str, dict[str, int]]]:
    """(names, params) of ``--metrics`` plus the entries' switches; raises ``MetricSelectionError`` (one line)."""
    given = getattr(a, "metrics", None)
    names = registry.default_names() if given is None else registry.parse_names(given, "--metrics")
    names = registry.ordered([*names, *_selected_flags(a)])
    params = {
        m.name: {p.name: v for p in m.params if (v := getattr(a, _param_dest(m, p))) is not None}
        for m in registry.all_metrics()
        if m.name in names
    }
    return names, registry.resolve_params(names, params)


def _is_dataset(spec) -> bool:
    return str(spec).startswith("dataset:") or (spec == "animal_mnist" and not Path(spec).exists())


def _outputs(a) -> dict:
    return {"--make-ref": a.make_ref, "--json-out": a.json_out}


def _refuse_outputs_that_are_inputs(a) -> None:
    """Always refused, with or without --overwrite (checked first: the clearest message)."""
    refuse_input_as_output(
        _outputs(a),
        {
            "SAMPLES": None if _is_dataset(a.samples) else a.samples,
            "--ref": None if a.ref is None or _is_dataset(a.ref) else a.ref,
        },
    )


def _check_inputs(a) -> None:
    """SAMPLES and --ref exist (a ``dataset:`` spec is checked when opened): one line naming the option."""
    from vca_gen.metrics.sources import InputFormatError

    for flag, path in (("SAMPLES", a.samples), ("--ref", a.ref)):
        if path is not None and not _is_dataset(path) and not Path(path).exists():
            raise InputFormatError(
                f"{flag} {path}: no such file or folder (accepted: an .npz, an image folder or dataset:animal_mnist)"
            )


def _check_outputs(a) -> None:
    """After the inputs are validated, before the slow work: existing --make-ref, uncreatable folders."""
    if a.make_ref:
        refuse_overwrite(a.make_ref, a.overwrite, "--make-ref")
    for flag, path in _outputs(a).items():
        if path is not None:
            check_output_path(path, flag)


def run(a) -> dict:
    from vca_gen.metrics.evaluation import evaluate, reference_mode
    from vca_gen.metrics.sources import open_source
    from vca_gen.metrics.statistics import check_same_mode, compute_statistics, load_reference, save_statistics

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(a.threads or cpus)
    workers = min(2, cpus) if a.num_workers is None else a.num_workers
    device = torch.device(a.device) if a.device else default_device()
    progress = not a.no_progress
    # validate every input and output before the (slow) Inception load
    names, params = metric_selection(a)
    _check_inputs(a)
    _refuse_outputs_that_are_inputs(a)
    ds_opts = {"split": a.dataset_split, "image_size": a.dataset_size}
    is_ds = _is_dataset(a.samples)
    samples = open_source(a.samples, max_images=a.max_images, **(ds_opts if is_ds else {}))
    if a.make_ref:
        _check_outputs(a)
        mode = a.mode or "clean"
        fx = InceptionFeatureExtractor(mode=mode, device=device, weights=a.inception)
        stats = compute_statistics(
            samples, fx, mode, a.batch_size, workers, keep_features=a.ref_features > 0, progress=progress
        )
        out = save_statistics(stats, a.make_ref, max_features=a.ref_features, seed=a.seed)
        notes = []
        assert stats.count is not None  # computed statistics are counted
        if stats.count < len(stats.mu):
            notes.append(
                f"reference: statistics of {stats.count} images, fewer than the {len(stats.mu)} feature "
                f"dimensions: the covariance is rank-deficient, so FIDs against this reference are "
                f"biased upward and comparable only with FIDs against references of as many images"
            )
        result = {
            "made_ref": str(out),
            "n": stats.count,
            "mode": mode,
            "resolution": stats.resolution,
            "source": stats.source,
            "spatial": stats.mu_s is not None,
            "features_stored": min(a.ref_features, stats.count),
            "weights": str(fx.weights_path),
            "weights_sha256": fx.weights_sha256,
            "notes": notes,
        }
        print(
            f"wrote {out}: {stats.count} images from {stats.source}, mode {mode}, "
            f"resolution {stats.resolution}, {result['features_stored']} features stored"
        )
        for note in notes:
            print(f"note      : {note}")
    else:
        ref = a.ref
        ref_mode = reference_mode(ref)  # validates a statistics file; None for image sets
        if ref_mode is None:
            ref = open_source(ref, **(ds_opts if _is_dataset(ref) else {}))
        elif a.mode is not None and a.mode != ref_mode:
            check_same_mode(a.mode, load_reference(ref))  # raises, naming both modes
        _check_outputs(a)
        mode = a.mode or ref_mode or "clean"
        fx = InceptionFeatureExtractor(mode=mode, device=device, weights=a.inception)
        result = evaluate(
            samples,
            ref,
            mode=mode,
            extractor=fx,
            metrics=names,
            params=params,
            batch_size=a.batch_size,
            num_workers=workers,
            progress=progress,
            seed=a.seed,
        )
        print(f"samples   : {result['samples']} ({result['n']} images, {result['resolution']})")
        print(f"reference : {result['reference']} ({result['reference_kind']})")
        print(f"mode      : {result['mode']}")
        for name in names:
            print(registry.get(name).summary_line(result))
        for note in result["notes"]:
            print(f"note      : {note}")
    print(f"weights   : {fx.weights_path} sha256 {fx.weights_sha256}")
    line = json.dumps(result, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    if a.json_out:
        make_parent_dir(a.json_out, "--json-out")
        atomic_write_text(a.json_out, line + "\n")
    print(line, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    _check_args(ap, a)

    def work() -> None:
        run(a)

    return cli_boundary(TOOL, work)


if __name__ == "__main__":
    sys.exit(main())
