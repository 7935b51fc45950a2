"""``sample.py``: class-conditional batch sampling for FID (``accelerate launch sample.py ...``).

Writes ``OUT/shard_XXXXX.npz`` as shards finish, ``OUT/sampling.json`` (the run's settings),
then ``OUT/samples.npz`` (``arr_0`` uint8 (N, H, W, 3), ``arr_1`` labels), ``OUT/grid.png`` and,
with ``--save-png``, ``OUT/png/XXXXXX.png``. Re-running the same command resumes a killed run.

Options are checked (types and ranges: :mod:`vca_gen.utils.cli_types`; then :func:`check_args`) before
anything is loaded or written. A stop signal while the script is still starting (importing torch)
exits 75 with nothing written (:mod:`vca_gen.utils.signals`, installed by ``sample.py`` first).

Exit status: 0 done; 2 bad input (options, checkpoint, settings, ``--out`` locked by another sampling run or
holding another run, processes that do not see the same ``--out``); 75 (EX_TEMPFAIL) stopped by
SIGTERM / SIGUSR1 / Ctrl-C after finishing and writing the current shard: re-run the same command
to continue (the result is byte-identical to an uninterrupted run).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import cli_boundary
from ..experiment.checkpoint import _find_weights_dir
from ..objectives import registry
from ..utils import cli_types as T
from ..utils import dist
from ..utils.faults import Faults
from ..utils.io import refuse_input_as_output
from .engine import EXIT_PREEMPTED, RunSpec, StopRequest, run_sampling
from .manifest import checkpoint_hash
from .model import check_sampler_args, configure_tf32, load, loaded_image_maker, parse_steps, resolve_precision
from .plan import SamplingError

CFG_INTERVAL_HELP = (
    "guide only the model evaluations at times t with LO <= t <= HI (both included), in the objective's "
    "own time: flow t in [0, 1] (0 = noise, 1 = data; REPA's --guidance-high H is 1-H 1, LightningDiT's "
    "cfg_interval_start S is S 1); diffusion timestep t in [0, T-1] as the model receives it (0 = data "
    "end). Outside, one plain conditional pass (no unconditional half). Needs --cfg-scale other than 1. "
    "Default: guidance at every evaluation"
)

EPILOG = """\
defaults are the papers' FID protocols: DiT (diffusion) = ancestral DDPM respaced to 250 steps;
SiT (flow) = SDE Euler-Maruyama, 250 steps, diffusion form "sigma", last step "Mean" of 0.04;
no guidance (--cfg-scale 1.0). Sample i has label i % num_classes and draws all its randomness
from a generator seeded SEED + i, so the output does not depend on the number of processes
(and, up to float reassociation, not on --batch-size). --precision auto (default) is bf16 autocast
with TF32 on CUDA and fp32 on CPU; use --precision fp32 for exact fp32 protocol runs.
exit status: 0 done; 2 bad input or --out locked by another run; 75 stopped by SIGTERM/SIGUSR1/Ctrl-C
after writing the current shard (re-run the same command to continue).
examples:
  accelerate launch sample.py --ckpt runs/x/checkpoints/step_00400000 --num-samples 50000 --out samples/x
  python sample.py --ckpt export/ --sampler ode --num-samples 1000 --out s --sampler-option atol=1e-5
  python sample.py --ckpt export/ --cfg-scale 1.8 --cfg-interval 0.3 1 --num-samples 1000 --out g
"""


def _epilog() -> str:
    """The epilog with the registered samplers (read from the registry when the parser is built)."""
    lines = ["samplers (--sampler NAME; --steps default; model evaluations per image; --sampler-option KEYs):"]
    return EPILOG + "\n".join(lines + registry.help_lines()) + "\n"


def _sampler_names() -> str:
    return "; ".join(f"{k}: {'|'.join(registry.sampler_names(k))}" for k in ("diffusion", "flow"))


def parse_value(text: str):
    """``--sampler-option`` value: int, float, true/false, none, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(items: Sequence[str]) -> dict:
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SamplingError(f"--sampler-option {item!r}: expected KEY=VALUE, e.g. eta=0.5 or last_step=tweedie")
        opts[key.strip()] = parse_value(value)
    return opts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sample.py",
        description=__doc__.split("\n\n")[0],
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ckpt",
        required=True,
        type=T.existing_path,
        help="export dir, training checkpoint step_XXXXXXXX/, run dir (latest), "
        "or an official DiT/SiT .pt file (with --model)",
    )
    p.add_argument(
        "--model",
        default=None,
        type=_model_name,
        help="with an official .pt file: its model, e.g. DiT-XL/2 or SiT-XL/2 "
        "(the family sets the paper protocol: DiT DDPM 250, SiT SDE 250)",
    )
    p.add_argument(
        "--image-size",
        type=T.int_choice(256, 512),
        default=256,
        choices=(256, 512),
        help="with --model: the image resolution of the official file (256)",
    )
    p.add_argument("--num-classes", type=T.positive_int, default=1000, help="with --model: classes of the file (1000)")
    p.add_argument(
        "--out",
        required=True,
        type=T.output_path,
        help="output directory (created; resumed when it holds the same run)",
    )
    p.add_argument(
        "--num-samples", type=T.positive_int, default=50_000, help="N, a multiple of the number of classes (50000)"
    )
    p.add_argument("--seed", type=T.seed, default=0, help="base seed: sample i uses seed + i (0)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per process per forward batch (32)")
    p.add_argument(
        "--shard-size", type=T.positive_int, default=256, help="samples per shard file, the unit of resume (256)"
    )
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the live weights of a training checkpoint")
    p.add_argument("--sampler", default=None, type=T.nonempty, help=f"{_sampler_names()} (see the list below)")
    p.add_argument(
        "--steps", default=None, type=T.nonempty, help="steps or respacing string (ddpm: 250, ddim: ddim50, ...)"
    )
    p.add_argument(
        "--cfg-scale", type=T.finite_float, default=1.0, help="classifier-free guidance scale; 1.0 = none (1.0)"
    )
    p.add_argument("--cfg-interval", type=float, nargs=2, metavar=("LO", "HI"), default=None, help=CFG_INTERVAL_HELP)
    p.add_argument(
        "--guide-channels",
        type=T.positive_int,
        default=None,
        help="guide only the first K prediction channels (3 = DiT's paper setting); default all",
    )
    p.add_argument(
        "--sampler-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_sampler_option,
        help="extra sampler option, repeatable; accepted keys per sampler: "
        + "; ".join(f"{e.name}: {', '.join(e.option_names) or 'none'}" for e in registry.entries()),
    )
    p.add_argument(
        "--vae",
        default=None,
        type=T.nonempty,
        help="decoder hub id or folder, overriding the checkpoint's decoder "
        "(official files default to stabilityai/sd-vae-ft-mse, as DiT reports)",
    )
    p.add_argument("--vae-batch-size", type=T.positive_int, default=16, help="images per VAE decode call (16)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="model precision: auto = bf16 autocast with TF32 on CUDA, fp32 on CPU; fp32 = exact fp32 "
        "(TF32 off); bf16 = bf16 autocast (auto)",
    )
    p.add_argument("--save-png", action="store_true", help="also write OUT/png/XXXXXX.png")
    p.add_argument(
        "--grid-classes", type=T.non_negative_int, default=10, help="classes (rows) in OUT/grid.png; 0 = no grid (10)"
    )
    p.add_argument("--grid-per-class", type=T.non_negative_int, default=10, help="samples per row of the grid (10)")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run with other settings in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument(
        "--timeout-s",
        type=T.timeout_s,
        default=dist.DEFAULT_TIMEOUT_S,
        help="process-group timeout (s) of the (short) start-up collectives; waiting for the other "
        "processes' shards at the end is not bounded by it (1800)",
    )
    return p


def _model_name(text: str) -> str:
    """``--model``: a registered DiT / SiT name."""
    from ..models.registry import parse_model_name

    try:
        parse_model_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _sampler_option(text: str) -> str:
    """``--sampler-option``: ``KEY=VALUE`` (the keys each sampler accepts are checked with the objective)."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. eta=0.5 or last_step=tweedie")
    return text


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Relations between options and the values argparse's types cannot see, before anything is
    loaded or written (``p.error``: ``sample.py: error: ...``, exit 2)."""
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.steps is not None:
        s = str(args.steps).strip()
        if not (s.isdigit() and int(s) >= 1) and not (s[:1].isalpha() and s.isprintable() and " " not in s):
            p.error(
                f"argument --steps: {args.steps!r} is not valid; accepted: a step count >= 1 or a respacing "
                "string such as ddim50"
            )
    if args.model is None:
        given = [
            f for f, v in (("--image-size", args.image_size != 256), ("--num-classes", args.num_classes != 1000)) if v
        ]
        if given:
            p.error(f"argument {given[0]}: applies to an official .pt file only, with --model NAME")


def run(args: argparse.Namespace, faults: Faults | None = None) -> dict:
    """Sample as ``args`` say; returns a summary (main process) or ``{}``; a summary with
    ``stopped_by`` (every process) when a stop signal ended the run early. ``faults``: injected by tests."""
    with StopRequest() as stop:
        return _run(args, stop, faults)


def _run(args: argparse.Namespace, stop: StopRequest, faults: Faults | None) -> dict:
    refuse_input_as_output({"--out": args.out}, {"--ckpt": Path(args.ckpt)})
    state = dist.setup(args.timeout_s, "--timeout-s")
    device = state.device
    precision = resolve_precision(args.precision, device)
    configure_tf32(device, precision)
    steps = parse_steps(args.steps)
    options = parse_options(args.sampler_option)

    def load_all():
        loaded = load(
            args.ckpt,
            use_ema=args.ema,
            device=device,
            vae=args.vae,
            model_name=args.model,
            image_size=args.image_size,
            num_classes=args.num_classes,
        )
        loaded.decoder.batch_size = args.vae_batch_size
        loaded.decoder.check_channels(loaded.latent_shape[0])  # loads (downloads) the VAE now
        return loaded

    loaded, ckpt_sha = dist.main_first(
        state,
        load_all,
        lambda: checkpoint_hash(_weights_dir(args.ckpt)),
        error=SamplingError,
        failure=f"could not load {args.ckpt}",
    )
    interval = None if args.cfg_interval is None else [float(v) for v in args.cfg_interval]
    sampler = check_sampler_args(
        loaded, args.sampler, steps, args.cfg_scale, args.guide_channels, options, cfg_interval=interval
    )
    protocol = protocol_of(loaded, sampler, steps, options, args)
    spec = RunSpec(
        out_dir=Path(args.out),
        num_samples=args.num_samples,
        num_classes=int(loaded.model.num_classes),
        image_shape=loaded.image_shape,
        seed=args.seed,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        settings={
            "ckpt_sha256": ckpt_sha,
            "ema": args.ema,
            "model": getattr(loaded.model, "name", None),
            "objective": loaded.objective.kind,
            "sampler": sampler,
            "steps": str(
                steps
                if steps is not None
                else (loaded.objective.default_steps if sampler == loaded.objective.default_sampler else "default")
            ),
            "sampler_options": options,
            "cfg_scale": args.cfg_scale,
            "cfg_interval": interval,
            "guide_channels": args.guide_channels,
            "vae": loaded.vae_id,
            "precision": precision,
            "device_type": device.type,
            "protocol": protocol,
        },
        info={
            "ckpt_path": str(args.ckpt),
            "world_size": state.num_processes,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": shlex.join(sys.argv),
        },
        overwrite=args.overwrite,
        save_png=args.save_png,
        grid_classes=args.grid_classes,
        grid_per_class=args.grid_per_class,
        class_names=loaded.class_names,
        progress=args.progress,
    )
    make = loaded_image_maker(
        loaded,
        device,
        sampler=sampler,
        steps=steps,
        cfg_scale=args.cfg_scale,
        guide_channels=args.guide_channels,
        options=options,
        precision=precision,
        cfg_interval=interval,
    )
    t0 = time.perf_counter()
    result = run_sampling(make, spec, state=state, stop=stop, faults=faults)
    if result.stopped_by:
        print(
            f"sample.py: stopped by {result.stopped_by} (process {state.process_index} of {state.num_processes}) "
            f"after writing {result.shards_written} shard(s) of {args.out}; re-run the same command to continue "
            f"(exit {EXIT_PREEMPTED})",
            file=sys.stderr,
            flush=True,
        )
        return {"stopped_by": result.stopped_by, "shards_written": result.shards_written}
    if not state.is_main_process:
        return {}
    summary = {
        "samples": str(result.path),
        "num_samples": args.num_samples,
        "sampler": sampler,
        "steps": spec.settings["steps"],
        "cfg_scale": args.cfg_scale,
        "processes": state.num_processes,
        "generated_by_main": result.generated,
        "resumed_shards": result.resumed_shards,
        "nfe_per_image": result.nfe_per_image,
        "seconds": round(time.perf_counter() - t0, 2),
        "precision": precision,
        "protocol": protocol,
    }
    if interval is not None:
        summary["cfg_interval"] = interval
        summary["guided_nfe_per_image"] = make.guided_per_image
    if result.nfe_per_image is not None:
        extra = " (each on a doubled cond+uncond batch)" if args.cfg_scale != 1.0 else ""
        if interval is not None and make.guided_per_image is not None:
            extra = f" ({make.guided_per_image:g} of them inside --cfg-interval, on a doubled cond+uncond batch)"
        print(f"model evaluations per image: {result.nfe_per_image:g}{extra}", file=sys.stderr)
    grid = f" and {Path(args.out) / 'grid.png'}" if args.grid_classes and args.grid_per_class else ""
    print(f"wrote {result.path} ({args.num_samples} images {loaded.image_shape}){grid}", file=sys.stderr)
    print(json.dumps(summary), flush=True)
    return summary


def protocol_of(loaded, sampler: str, steps, options: dict, args) -> dict:
    """The sampling protocol of this run, for the summary and ``sampling.json``."""
    obj = loaded.objective
    cfg = obj.cfg
    resolved_steps = (
        steps if steps is not None else (obj.default_steps if sampler == obj.default_sampler else "default")
    )
    out = {
        "family": "SiT" if obj.kind == "flow" else "DiT",
        "objective": obj.kind,
        "sampler": sampler,
        "steps": str(resolved_steps),
        "cfg_scale": args.cfg_scale,
        "decoder": loaded.vae_id or "none (pixel space)",
        "weights": loaded.source.get("weights") or loaded.source.get("used"),
        "source": loaded.source.get("kind"),
    }
    if args.cfg_interval is not None:  # recorded only when given: protocols without one are unchanged
        out["cfg_interval"] = [float(v) for v in args.cfg_interval]
    if obj.kind == "flow" and sampler == "sde":
        out.update(
            diffusion_form=options.get("diffusion_form", cfg.diffusion_form),
            last_step=options.get("last_step", cfg.last_step),
            last_step_size=options.get("last_step_size", cfg.last_step_size),
        )
    return out


def _weights_dir(ckpt) -> Path:
    """The directory whose weights ``load_for_sampling`` reads (a run dir resolves to its latest checkpoint)."""
    p = Path(ckpt)
    return p if p.is_file() else _find_weights_dir(p)


def main(argv: Sequence[str] | None = None, faults: Faults | None = None) -> int:
    """``sample.py`` with ``argv``; ``faults``: injected by tests."""
    p = build_parser()
    try:
        args = p.parse_args(argv)
        check_args(p, args)
    except SystemExit as e:  # a bad option: one line from argparse; returned like every other bad input
        if e.code in (0, None):  # --help
            raise
        return int(e.code) if isinstance(e.code, int) else 2

    def work() -> int:
        return EXIT_PREEMPTED if run(args, faults).get("stopped_by") else 0

    try:
        return cli_boundary("sample.py", work)
    finally:
        dist.close()
