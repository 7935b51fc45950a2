"""Train DiT / SiT with MHSA, VCA or DIFF attention.

    accelerate launch train.py --config configs/dit_s2_vca.yaml [key=value ...]
    python train.py --config configs/demo.yaml train.max_steps=100 train.output_dir=runs/try
    python train.py --export RUN_OR_CHECKPOINT OUT_DIR      # EMA weights + config.json + decoder.json

Overrides are dotted config keys (``train.lr=2e-4 model.attention=mhsa``). The run directory is
``train.output_dir`` (locked while a training runs in it); ``train.resume=auto`` (default)
continues from its newest intact checkpoint (checksums verified; a damaged one is skipped with a
warning naming the file).

Preemption: SIGTERM, SIGUSR1 or Ctrl-C (SIGINT) finish the current step on every process, write a
checkpoint and exit 75; re-running the same command continues exactly where it stopped (a second
Ctrl-C aborts at once). Multi-node: ``train.timeout_s`` (default 1800) bounds every collective wait.
SLURM recipes (requeue on exit 75): docs/slurm.md.

Exit status: 0 done; 2 bad input (config / data / checkpoint, run directory locked by another
run, processes disagreeing on the checkpoint, a precision the device cannot run, a wait for the
other processes past train.timeout_s); 3 stopped on
non-finite losses; 75 (EX_TEMPFAIL) stopped by a signal with a checkpoint written: re-run
(requeue) the same command to continue.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "train.py"


def build_parser() -> argparse.ArgumentParser:
    """The ``train.py`` argument parser."""
    assert __doc__ is not None
    ap = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    ap.add_argument("--config", help="experiment YAML (see configs/)")
    ap.add_argument(
        "--export",
        nargs=2,
        metavar=("CKPT", "OUT"),
        help="write a stand-alone export (EMA weights, experiment, decoder.json) of a checkpoint or run dir",
    )
    ap.add_argument("--live", action="store_true", help="with --export: the live weights instead of the EMA")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    return ap


def main(argv=None, faults=None) -> int:
    """``train.py`` with ``argv``; ``faults`` (a :class:`vca_gen.utils.faults.Faults`): injected by tests.

    Signals: ``train.py`` installs :func:`vca_gen.utils.signals.install_early_stop_handlers` before
    importing this module (a stop while starting exits 75 with nothing written); the trainer replaces
    them with the loop's (:func:`vca_gen.train.signals.install_stop_handlers`: finish the step,
    checkpoint, exit 75) when its loop starts."""
    ap = build_parser()
    args = ap.parse_args(argv)

    from vca_gen.errors import cli_boundary

    if args.live and not args.export:
        ap.error("--live applies only with --export CKPT OUT (it picks the live weights instead of the EMA)")
    if args.export:
        source = Path(args.export[0])
        if not source.exists():
            ap.error(f"--export: {source} does not exist; accepted: a run directory or a checkpoint directory")
        if Path(args.export[1]).is_file():
            ap.error(f"--export: the output {args.export[1]} is a file; accepted: a directory (created)")

    def work() -> int:
        if args.export:
            from vca_gen.experiment.checkpoint import export

            source, out = args.export
            print(f"exported {'live' if args.live else 'EMA'} weights to {export(source, out, use_ema=not args.live)}")
            return 0
        if not args.config:
            ap.error("--config is required (or --export CKPT OUT)")
        from vca_gen.experiment.schema import load_config, to_yaml
        from vca_gen.train.helpers import check_runnable

        cfg = load_config(args.config, args.overrides)
        check_runnable(cfg)  # this machine: precision, output dir, resume path
        if args.print_config:
            print(to_yaml(cfg))
            return 0
        from vca_gen.train.trainer import EXIT_PREEMPTED, NonFiniteLossError, train

        try:
            summary = train(cfg, faults=faults)
        except NonFiniteLossError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 3
        if summary.get("stopped_by"):
            return EXIT_PREEMPTED  # the trainer printed where the checkpoint is
        if summary["is_main_process"]:
            print(f"finished at step {summary['step']}; run directory {summary['output_dir']}")
        return 0

    from vca_gen.utils import dist

    try:
        return cli_boundary(PROG, work)
    finally:
        dist.close()


__all__ = ["build_parser", "main", "PROG"]
