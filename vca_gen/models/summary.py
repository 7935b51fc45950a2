"""Parameter count and multiply-accumulates (MACs) per image of named models.

MACs are what DiT's paper calls "Gflops": every multiply-accumulate of the linear layers,
convolutions and attention matmuls, counted by ``torch.utils.flop_counter`` on the meta
device (no memory is allocated, so XL models are instant) and halved (it counts 2 flops per MAC).
Attention is counted as the implementation computes it: VCA's joint Stage II is one SDPA over
2n tokens (8nNC per block instead of the 7nNC of an explicit (S⁺ − λS⁻)V̂); DIFF's fused SDPA
runs once per half of the 2d value (4N²C instead of 2N²C, as DIFF's flash code). Parameter
counts include the fixed ``pos_embed`` (as DiT's training script reports).

    python -m vca_gen.models.summary DiT-S/2 --attention vca
    python -m vca_gen.models.summary --all --attention all --json
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vca_gen.models.attention import ATTENTION_KINDS
from vca_gen.models.registry import PATCH_SIZES, create_model


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: torch.nn.Module) -> int:
    """MACs of one forward pass for one image, counted on the model's own device (meta is fine)."""
    dev = next(model.parameters()).device
    net: Any = model  # a DiT: input_hw / in_channels are plain attributes
    H, W = net.input_hw
    x = torch.zeros(1, net.in_channels, H, W, device=dev)
    t = torch.zeros(1, device=dev)
    y = torch.zeros(1, dtype=torch.long, device=dev)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x, t, y)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def summarize(
    name: str, attention: str = "mhsa", input_size: int | tuple[int, int] = 32, **kwargs: Any
) -> dict[str, Any]:
    """Build ``name`` on the meta device and return its parameter and MAC counts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. more contrast tokens than a /8 grid has rows
        with torch.device("meta"):
            model = create_model(name, attention=attention, input_size=input_size, **kwargs)
    params, trainable = count_params(model)
    macs = count_macs(model)
    gh, gw = model.grid_size
    return {
        "name": name,
        "attention": attention,
        "input_size": model.input_size,
        "tokens": gh * gw,
        "options": {**model.attention_options},
        "params": params,
        "trainable_params": trainable,
        "macs": macs,
        "gmacs": macs / 1e9,
    }


def _parse_opts(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--opt expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'model':<10} {'attention':<9} {'input':>7} {'tokens':>6} {'params (M)':>11} {'GMACs':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<10} {r['attention']:<9} {str(r['input_size']):>7} {r['tokens']:>6} "
            f"{r['params'] / 1e6:>11.2f} {r['gmacs']:>9.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vca_gen.models.summary", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="model names, e.g. DiT-S/2 (see --all)")
    p.add_argument("--all", action="store_true", help="every DiT size S/B/L/XL x patch 2/4/8")
    p.add_argument("--attention", default="mhsa", choices=[*ATTENTION_KINDS, "all"])
    p.add_argument("--input-size", type=int, default=32, help="latent size (32 = 256 px through the SD VAE)")
    p.add_argument("--in-channels", type=int, default=4)
    p.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="attention option, e.g. --opt num_contrast_tokens=16 (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    names = list(args.names)
    if args.all:
        names += [f"DiT-{s}/{q}" for s in ("S", "B", "L", "XL") for q in PATCH_SIZES]
    if not names:
        p.error("give at least one model name or --all")
    kinds = list(ATTENTION_KINDS) if args.attention == "all" else [args.attention]
    opts = _parse_opts(args.opt)
    try:
        rows = [
            summarize(
                n,
                k,
                args.input_size,
                in_channels=args.in_channels,
                **(opts if k == "vca" or args.attention != "all" else {}),
            )
            for n in names
            for k in kinds
        ]
    except ValueError as e:  # a model name / size / option the registry rejects
        print(f"python -m vca_gen.models.summary: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
