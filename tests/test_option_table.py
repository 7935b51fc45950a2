"""Every option of every CLI, and every experiment config key, fed bad values (issue 17, item 4).

The table below has one row per option of ``train.py``, ``sample.py``, ``evaluate_fid.py``,
``extract_latents.py`` and ``sweep.py`` (every subcommand), enumerated from their argparse parsers,
and one row per key of the experiment schema. Each row lists bad values; each bad value must give:
a non-zero exit, exactly one ``<tool>: error:`` line on stderr that names the option (or key), no
traceback, and nothing written (the output directory / file of the command does not exist).
:func:`test_every_option_has_a_row` fails for an option or key without a row: new options must
join the table. The rows run the CLIs in-process (``main(argv)``; argparse's ``SystemExit`` is the
exit status); a few subprocess rows at the end prove the same of the real scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_data_common import tiny_setup  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"
HUGE = str(2**63)


@dataclasses.dataclass(frozen=True)
class Bad:
    """A bad value of one option: ``argv`` appended to the CLI's base command line (``{t}``: the test's
    temporary folder); ``pos``: it replaces the base's positional argument instead; ``drop``: options
    removed from the base first; ``needle``: what the error line must name (default: the option)."""

    argv: tuple[str, ...]
    needle: str | None = None
    pos: bool = False
    drop: tuple[str, ...] = ()


def bad(*argv: str, needle: str | None = None, pos: bool = False, drop=()) -> Bad:
    return Bad(tuple(argv), needle, pos, tuple(drop))


def flag_value(opt: str) -> Bad:
    """A switch given a value (``--save-png=yes``): refused by argparse, naming it."""
    return bad(f"{opt}=yes")


FREE = "free"  # a row whose option accepts any text: listed (so the table stays complete), nothing to feed


# ----------------------------------------------------------------------------- the CLIs
@dataclasses.dataclass
class Cli:
    prog: str  # the <tool> of "<tool>: error:"
    parser: Callable[[], argparse.ArgumentParser]
    main: Callable[[list[str]], int | None]
    base: Callable[[Path, list[str] | None], list[str]]  # (tmp, positional or None) -> argv
    outputs: Callable[[Path], list[Path]]  # what must not exist afterwards


def _train_parser() -> argparse.ArgumentParser:
    from vca_gen.train.cli import build_parser

    return build_parser()


def _train_main(argv: list[str]):
    from vca_gen.train.cli import main

    return main(argv)


def _sample_parser():
    from vca_gen.sample.cli import build_parser

    return build_parser()


def _sample_main(argv):
    from vca_gen.sample.cli import main

    return main(argv)


def _eval_parser():
    from vca_gen.metrics.cli import build_parser

    return build_parser()


def _eval_main(argv):
    from vca_gen.metrics.cli import main

    return main(argv)


def _extract_parser():
    from vca_gen.data.extract import build_parser

    return build_parser()


def _extract_main(argv):
    from vca_gen.data.extract import main

    return main(argv)


def _sweep_parser():
    from vca_gen.sweep.cli import build_parser

    return build_parser()


def _sweep_main(argv):
    from vca_gen.sweep.cli import main

    return main(argv)


def _images_npz(path: Path, n: int = 10, seed: int = 0) -> Path:
    np.savez(path, arr_0=np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))
    return path


def _make_inputs(t: Path) -> None:
    """The files the base command lines name (cheap; made once per row)."""
    (t / "dir").mkdir(exist_ok=True)
    (t / "afile").write_text("x")
    (t / "images").mkdir(exist_ok=True)
    _images_npz(t / "s.npz", seed=1)
    _images_npz(t / "r.npz", seed=2)
    (t / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (t / "broken.yaml").write_text("train: {lr: [1,\n")
    (t / "base_int.yaml").write_text("_base_: 5\nname: x\n")
    (t / "list.yaml").write_text("- 1\n- 2\n")
    (t / "dup.yaml").write_text("name: a\nname: b\n")
    from test_sweep import micro, write

    spec = micro(t)
    write(t, spec, "sweep.yaml")


_EXPORT: dict[str, Path] = {}


def _export(t: Path) -> Path:
    """A tiny real export (sample.py rows whose checks need the model), made once per session."""
    if "path" not in _EXPORT:
        from test_sample_cli import make_export

        _EXPORT["path"] = make_export(t.parent / "option_table_export" / "export")
    return _EXPORT["path"]


def _sample_base(t, pos):
    ckpt = _export(t)
    return ["--ckpt", str(ckpt), "--out", str(t / "out"), "--num-samples", "10", "--steps", "2"] + [
        "--shard-size",
        "10",
        "--grid-classes",
        "0",
        "--no-progress",
    ]


def _eval_base(t, pos):
    return [*(pos or [str(t / "s.npz")]), "--ref", str(t / "r.npz"), "--json-out", str(t / "o.json")] + [
        "--device",
        "cpu",
        "--no-progress",
    ]


def _extract_base(t, pos):
    return ["--images", str(t / "images"), "--out", str(t / "store"), "--vae", str(t / "novae")]


def _train_base(t, pos):
    return ["--print-config", "--config", str(DEMO), f"train.output_dir={t / 'run'}", *(pos or [])]


def _sweep_base(sub: str):
    def base(t, pos):
        extra = ["--dry-run"] if sub == "run" else []
        return [sub, *(pos or [str(t / "sweep.yaml")]), *extra]

    return base


def _sweep_outputs(t):
    return [t / "out", t / "results"]


CLIS: dict[str, Cli] = {
    "train.py": Cli("train.py", _train_parser, _train_main, _train_base, lambda t: [t / "run", t / "exported"]),
    "sample.py": Cli("sample.py", _sample_parser, _sample_main, _sample_base, lambda t: [t / "out"]),
    "evaluate_fid.py": Cli(
        "evaluate_fid.py", _eval_parser, _eval_main, _eval_base, lambda t: [t / "o.json", t / "made.npz"]
    ),
    "extract_latents.py": Cli(
        "extract_latents.py", _extract_parser, _extract_main, _extract_base, lambda t: [t / "store"]
    ),
    "sweep.py run": Cli("sweep.py", _sweep_parser, _sweep_main, _sweep_base("run"), _sweep_outputs),
    "sweep.py status": Cli("sweep.py", _sweep_parser, _sweep_main, _sweep_base("status"), _sweep_outputs),
    "sweep.py report": Cli("sweep.py", _sweep_parser, _sweep_main, _sweep_base("report"), _sweep_outputs),
}

# ----------------------------------------------------------------------------- the table: CLI options
SWEEP_FILE_ROWS = [
    bad("{t}/missing.yaml", pos=True, needle="{t}/missing.yaml"),
    bad("{t}/dir", pos=True, needle="is a directory"),
    bad("{t}/latin1.yaml", pos=True, needle="not UTF-8"),
    bad("{t}/broken.yaml", pos=True, needle="not valid YAML"),
    bad("{t}/dup.yaml", pos=True, needle="'name' appears twice"),
    bad("{t}/list.yaml", pos=True, needle="mapping"),
    bad("", pos=True, needle="empty"),
]

OPTIONS: dict[str, dict[str, list[Bad] | str]] = {
    "train.py": {
        "--config": [
            bad("--config", "{t}/missing.yaml", needle="{t}/missing.yaml"),
            bad("--config", "{t}/dir", needle="is a directory"),
            bad("--config", "{t}/latin1.yaml", needle="latin1.yaml"),
            bad("--config", "{t}/broken.yaml", needle="broken.yaml"),
            bad("--config", "{t}/base_int.yaml", needle="_base_"),
            bad("--config", "{t}/list.yaml", needle="list.yaml"),
            bad("--config", "{t}/dup.yaml", needle="'name' appears twice"),
        ],
        "--export": [
            bad("--export", "{t}/missing", "{t}/exported", needle="--export"),
        ],
        "--live": [flag_value("--live"), bad("--live", needle="--export")],  # without --export
        "--print-config": [flag_value("--print-config")],
        "overrides": [
            bad("train.lr", needle="train.lr", pos=True),
            bad("train.lr=[1,", needle="train.lr=[1,", pos=True),
            bad("nosuch.key=1", needle="nosuch", pos=True),
        ],
    },
    "sample.py": {
        "--ckpt": [bad("--ckpt", "{t}/missing"), bad("--ckpt", "")],
        "--model": [bad("--model", "DiT-Q/3")],
        "--image-size": [bad("--image-size", "300"), bad("--image-size", "abc")],
        "--num-classes": [bad("--num-classes", "0"), bad("--num-classes", "-3")],
        "--out": [bad("--out", ""), bad("--out", "{t}/afile")],
        "--num-samples": [bad("--num-samples", "0"), bad("--num-samples", "x"), bad("--num-samples", "7")],
        "--seed": [bad("--seed", "-1"), bad("--seed", HUGE), bad("--seed", "1.5")],
        "--batch-size": [bad("--batch-size", "0"), bad("--batch-size", "x")],
        "--shard-size": [bad("--shard-size", "0")],
        "--no-ema": [flag_value("--no-ema")],
        "--sampler": [bad("--sampler", "nosuch", needle="'nosuch'"), bad("--sampler", "")],
        "--steps": [bad("--steps", "0"), bad("--steps", "-5"), bad("--steps", "")],
        "--cfg-scale": [bad("--cfg-scale", "nan"), bad("--cfg-scale", "-1", needle="cfg_scale")],
        "--cfg-interval": [
            bad("--cfg-scale", "2", "--cfg-interval", "0.6", "0.2", needle="cfg_interval"),
            bad("--cfg-interval", "x", "1"),
        ],
        "--guide-channels": [
            bad("--guide-channels", "0"),
            bad("--cfg-scale", "2", "--guide-channels", "99", needle="guide_channels"),
        ],
        "--sampler-option": [
            bad("--sampler-option", "eta"),
            bad("--sampler-option", "nosuch=1", needle="nosuch"),
        ],
        "--vae": [bad("--vae", ""), bad("--vae", "stabilityai/sd-vae-ft-mse", needle="pixel space")],
        "--vae-batch-size": [bad("--vae-batch-size", "0")],
        "--precision": [bad("--precision", "fp16")],
        "--save-png": [flag_value("--save-png")],
        "--grid-classes": [bad("--grid-classes", "-1")],
        "--grid-per-class": [bad("--grid-per-class", "-1")],
        "--overwrite": [flag_value("--overwrite")],
        "--no-progress": [flag_value("--no-progress")],
        "--timeout-s": [bad("--timeout-s", v) for v in ("0", "-1", "nan", "inf", "x")],
    },
    "evaluate_fid.py": {
        "samples": [bad("{t}/missing.npz", pos=True, needle="SAMPLES")],
        "--ref": [bad("--ref", "{t}/missing.npz")],
        "--make-ref": [bad("--make-ref", "{t}/made.npz"), bad("--make-ref", "", drop=("--ref",))],
        "--overwrite": [bad("--overwrite"), flag_value("--overwrite")],
        "--mode": [bad("--mode", "tf")],
        "--batch-size": [bad("--batch-size", "0"), bad("--batch-size", "x")],
        "--num-workers": [bad("--num-workers", "-1")],
        "--device": [bad("--device", v) for v in ("cuda:99", "tpu", "not a device")],
        "--threads": [bad("--threads", "0")],
        "--inception": [bad("--inception", "{t}/missing.pt"), bad("--inception", "{t}/dir")],
        "--metrics": [bad("--metrics", "nosuch"), bad("--metrics", "")],
        "--kid": [flag_value("--kid"), bad("--kid", "--make-ref", "{t}/made.npz", drop=("--ref",))],
        "--kid-subsets": [bad("--kid", "--kid-subsets", "0"), bad("--kid-subsets", "x")],
        "--kid-subset-size": [bad("--kid", "--kid-subset-size", "1")],
        "--pr": [flag_value("--pr")],
        "--pr-k": [bad("--pr", "--pr-k", "0")],
        "--density-k": [bad("--metrics", "density", "--density-k", "0")],
        "--coverage-k": [bad("--metrics", "coverage", "--coverage-k", "-2")],
        "--seed": [bad("--seed", "-1"), bad("--seed", HUGE)],
        "--max-images": [bad("--max-images", "0")],
        "--ref-features": [bad("--ref-features", "-1"), bad("--ref-features", "5")],  # the latter: no --make-ref
        "--dataset-split": [bad("--dataset-split", "c")],
        "--dataset-size": [bad("--dataset-size", "0")],
        "--json-out": [bad("--json-out", ""), bad("--json-out", "{t}/s.npz")],
        "--no-progress": [flag_value("--no-progress")],
    },
    "extract_latents.py": {
        "--images": [bad("--images", "{t}/missing"), bad("--images", "{t}/afile")],
        "--out": [bad("--out", ""), bad("--out", "{t}/afile")],
        "--vae": [bad("--vae", "")],
        "--vae-subfolder": [bad("--vae-subfolder", "")],
        "--image-size": [bad("--image-size", "0"), bad("--image-size", "x")],
        "--batch-size": [bad("--batch-size", "0")],
        "--shard-size": [bad("--shard-size", "0")],
        "--scale-factor": [bad("--scale-factor", v) for v in ("0", "-1", "inf", "nan", "x")],
        "--per-channel-stats": [flag_value("--per-channel-stats"), bad("--per-channel-stats", "--scale-factor", "1")],
        "--num-workers": [bad("--num-workers", "-1")],
        "--dtype": [bad("--dtype", "int8")],
        "--store-dtype": [bad("--store-dtype", "fp16")],
        "--skip-unreadable": [flag_value("--skip-unreadable")],
        "--timeout-s": [bad("--timeout-s", v) for v in ("0", "nan", "-3")],
    },
    "sweep.py run": {
        "file": SWEEP_FILE_ROWS,
        "--only": [bad("--only", ","), bad("--only", "nope"), bad("--only", "a b")],
        "--seeds": [bad("--seeds", "x"), bad("--seeds", "-1"), bad("--seeds", HUGE), bad("--seeds", "7")],
        "--dry-run": [flag_value("--dry-run")],
        "--parallel": [bad("--parallel", "0"), bad("--parallel", "x")],
        "--rerun": [flag_value("--rerun")],
        "--wait": [flag_value("--wait")],
        "--no-report": [flag_value("--no-report")],
    },
    "sweep.py status": {
        "file": SWEEP_FILE_ROWS,
        "--only": [bad("--only", ","), bad("--only", "nope")],
        "--seeds": [bad("--seeds", "-1"), bad("--seeds", "7")],
    },
    "sweep.py report": {"file": SWEEP_FILE_ROWS},
}

# ----------------------------------------------------------------------------- the table: config keys
# Every key of the experiment schema, with values that must be refused (as ``train.py --config demo.yaml
# KEY=VALUE``). FREE: any text is accepted (names, paths resolved later, tracker project names).

CONFIG: dict[str, list[str] | str] = {
    "name": FREE,
    "model.name": ["DiT-Q/3", "123"],
    "model.attention": ["nosuch"],
    "model.attention_options": ["{nosuch: 1}", "5"],
    "model.learn_sigma": ["maybe"],
    "model.class_dropout_prob": ["-0.1", "1.5", "nan"],
    "model.grad_checkpointing": ["maybe"],
    "model.num_classes": ["0", "-1", "abc"],
    # the architecture overrides are checked by the model builder today, in messages without the key
    # ("depth must be >= 1"), and a negative hidden_size / mlp_ratio is a torch traceback
    "model.depth": ["0", "-2", "1.5"],
    "model.hidden_size": ["0", "-4"],
    "model.num_heads": ["0", "3"],  # 128 is not divisible by 3
    "model.mlp_ratio": ["0", "-1", "nan"],
    "model.input_size": ["7"],
    "model.in_channels": ["7"],
    "model.init_from": ["{t}/missing.pt"],
    "objective.kind": ["nosuch"],
    "objective.diffusion.num_timesteps": ["0", "abc"],
    "objective.diffusion.beta_schedule": ["nosuch"],
    "objective.diffusion.beta_start": ["-1", "nan"],
    "objective.diffusion.beta_end": ["2", "nan"],
    "objective.diffusion.fixed_variance": ["nosuch"],
    "objective.diffusion.sampler": ["nosuch"],
    "objective.diffusion.sample_steps": ["0", "nosuch"],
    "objective.diffusion.ddim_eta": ["-1", "nan"],
    "objective.diffusion.dpm_solver_order": ["7", "abc"],
    "objective.diffusion.clip_denoised": ["maybe"],
    "objective.diffusion.rescale_vb": ["maybe"],
    "objective.flow.path": ["nosuch"],
    "objective.flow.prediction": ["nosuch"],
    "objective.flow.loss_weight": ["nosuch"],
    "objective.flow.train_eps": ["-1", "nan"],
    "objective.flow.sample_eps": ["-1", "nan"],
    "objective.flow.vp_beta_min": ["-1", "nan"],
    "objective.flow.vp_beta_max": ["-1", "nan"],
    "objective.flow.sampler": ["nosuch"],
    "objective.flow.sample_steps": ["0", "abc"],
    "objective.flow.diffusion_form": ["nosuch"],
    "objective.flow.diffusion_norm": ["-1", "nan"],
    "objective.flow.last_step": ["nosuch"],
    "objective.flow.last_step_size": ["-1", "nan"],
    "objective.flow.atol": ["0", "-1", "nan"],
    "objective.flow.rtol": ["0", "nan"],
    "objective.flow.ode_method": ["rk4"],
    "data.kind": ["nosuch"],
    "data.path": ["{t}/missing"],
    "data.image_size": ["0", "abc", "20"],
    "data.random_flip": ["maybe"],
    "data.seed": ["-1", HUGE, "abc"],
    "data.num_workers": ["-1", "abc"],
    "data.vae": ["stabilityai/sd-vae-ft-mse"],  # demo is Animal-MNIST: grayscale, pixel space
    "data.vae_subfolder": ["vae"],  # without data.vae
    "data.latent_channels": ["0", "abc"],
    "data.vae_downsample": ["0", "abc"],
    "data.latent_norm": ["nosuch"],
    "data.scale_factor": ["0", "-1", "nan"],
    "data.split": ["nosuch"],
    "data.strict": ["maybe"],
    "data.verify": ["nosuch"],
    "train.global_batch_size": ["0", "-8", "abc"],
    "train.micro_batch_size": ["0", "-1"],
    "train.lr": ["0", "-1", "nan", "abc"],
    "train.weight_decay": ["-1", "nan"],
    "train.betas": ["[0.9]", "[1.5, 0.999]", "abc"],
    "train.eps": ["0", "-1", "nan"],
    "train.warmup_steps": ["-1", "abc"],
    "train.grad_clip": ["-1", "nan"],
    "train.max_steps": ["0", "-1", "abc"],
    "train.ema_decay": ["1.5", "-0.1", "nan"],
    "train.ema_warmup": ["maybe"],
    "train.mixed_precision": ["fp8", "fp16"],  # fp16 on a CPU: refused (issue 17)
    "train.tf32": ["maybe"],
    "train.compile": ["maybe"],
    "train.seed": ["-1", HUGE, "abc"],
    "train.log_every": ["0", "-1"],
    "train.ckpt_every": ["-1", "abc"],
    "train.keep_last": ["-1"],
    "train.milestone_every": ["-1"],
    "train.grid.every": ["-1"],
    "train.grid.num": ["0", "-1"],
    "train.grid.classes": ["[-1]", "[99]", "[a]"],
    "train.grid.nrow": ["-1"],
    "train.grid.seed": ["-1", HUGE],
    "train.grid.sampler": ["nosuch"],
    "train.grid.steps": ["0", "nosuch"],
    "train.grid.cfg_scale": ["-1", "nan"],
    "train.grid.cfg_interval": ["[0.6,0.2]", "[0.5]"],
    "train.grid.options": ["{nosuch: 1}"],
    "train.fid.every": ["-1"],
    "train.fid.num_samples": ["0", "7"],
    "train.fid.ref": ["{t}/missing.npz"],
    "train.fid.seed": ["-1", HUGE],
    "train.fid.sampler": ["nosuch"],
    "train.fid.steps": ["0", "nosuch"],
    "train.fid.cfg_scale": ["-1", "nan"],
    "train.fid.cfg_interval": ["[0.6,0.2]"],
    "train.fid.options": ["{nosuch: 1}"],
    "train.fid.batch_size": ["0", "-1"],
    "train.fid.metrics": ["[nosuch]", "[]"],
    "train.max_nonfinite": ["-1"],
    "train.output_dir": ["{t}/afile"],  # an existing file
    "train.resume": ["{t}/missing"],
    "train.timeout_s": ["0", "-1", "nan", "inf"],
    "logging.tracker": ["nosuch"],
    "logging.project": FREE,
}


def _schema_keys() -> list[str]:
    """Every leaf key of the experiment schema."""
    from vca_gen.experiment.schema import iter_fields

    return [f.key for f in iter_fields()]


# ----------------------------------------------------------------------------- enumerating the parsers
def _options(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction | argparse._SubParsersAction):
            continue
        out.append(max(a.option_strings, key=len) if a.option_strings else a.dest)
    return out


def _parsers() -> dict[str, argparse.ArgumentParser]:
    found = {}
    for name, cli in CLIS.items():
        if name.startswith("sweep.py "):
            continue
        found[name] = cli.parser()
    sweep = _sweep_parser()
    subs = next(a for a in sweep._actions if isinstance(a, argparse._SubParsersAction))
    assert _options(sweep) == [], "sweep.py options outside a subcommand need rows"
    for sub, p in subs.choices.items():
        found[f"sweep.py {sub}"] = p
    return found


def test_every_option_has_a_row():
    """New options must join the table: every option of every parser and every config key has a row,
    and every row names an option that exists."""
    for name, parser in _parsers().items():
        have, want = set(OPTIONS.get(name, {})), set(_options(parser))
        assert not want - have, f"{name}: options without a row in OPTIONS (new options must join the table)"
        assert not have - want, f"{name}: rows for options the parser does not have: {sorted(have - want)}"
        for opt in want:
            assert OPTIONS[name][opt], f"{name} {opt}: a row needs at least one bad value"
    keys = set(_schema_keys())
    assert not keys - set(CONFIG), f"config keys without a row in CONFIG: {sorted(keys - set(CONFIG))}"
    assert not set(CONFIG) - keys, f"rows for keys the schema does not have: {sorted(set(CONFIG) - keys)}"


# ----------------------------------------------------------------------------- running a row
def _fill(text: str, t: Path) -> str:
    return text.replace("{t}", str(t))


def _drop(argv: list[str], drop: tuple[str, ...]) -> list[str]:
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        if a in drop:
            skip = 1  # every dropped option takes one value
            continue
        out.append(a)
    return out


def _run_in_process(cli: Cli, argv: list[str], monkeypatch) -> tuple[int, str]:
    err = io.StringIO()
    monkeypatch.setattr(sys, "argv", [cli.prog])  # argparse's default prog, as when the script runs
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return int(rc or 0), err.getvalue()


def _assert_refused(cli: Cli, t: Path, argv: list[str], needle: str, rc: int, err: str) -> None:
    shown = f"{cli.prog} {' '.join(argv)}\nexit {rc}\n{err}"
    assert rc != 0, f"accepted: {shown}"
    assert "Traceback" not in err, shown
    line = re.compile(rf"^{re.escape(cli.prog)}( \w+)?: error: ")
    lines = [ln for ln in err.splitlines() if line.match(ln)]
    assert len(lines) == 1, f"expected exactly one '{cli.prog}: error:' line: {shown}"
    assert needle in lines[0], f"the error line does not name {needle!r}: {shown}"
    for out in cli.outputs(t):
        assert not out.exists(), f"{out} was written: {shown}"


def _cases():
    for name, rows in OPTIONS.items():
        for opt, values in rows.items():
            if values == FREE:
                continue
            for i, b in enumerate(values):
                assert isinstance(b, Bad)
                yield pytest.param(name, opt, b, id=f"{name}|{opt}|{i}")


@pytest.mark.parametrize("tool, opt, row", list(_cases()))
def test_bad_option_is_one_line_naming_it(tool, opt, row, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    _make_inputs(tmp_path)
    cli = CLIS[tool]
    values = [_fill(a, tmp_path) for a in row.argv]
    argv = cli.base(tmp_path, values if row.pos else None)
    argv = _drop(argv, row.drop) + ([] if row.pos else values)
    rc, err = _run_in_process(cli, argv, monkeypatch)
    needle = _fill(row.needle, tmp_path) if row.needle else (opt if opt.startswith("-") else values[0])
    _assert_refused(cli, tmp_path, argv, needle, rc, err)


def _config_cases():
    for key, values in CONFIG.items():
        if values == FREE:
            continue
        for value in values:
            yield pytest.param(key, value, id=f"{key}={value}")


# where a key only acts with other settings, its row runs with them (a diffusion experiment for the
# diffusion objective's keys: demo.yaml is a flow one; in-loop FID on for its reference)
TOY_DIFFUSION = REPO / "configs" / "toy_diffusion.yaml"
CONTEXT = {"train.fid.ref": ["train.fid.every=250"]}
# keys whose bad values only a real run can see (--print-config prints a shipped experiment on a machine
# without its data); the row runs train.py for real and asserts nothing is written all the same
NEEDS_A_RUN = {"data.path"}


@pytest.mark.parametrize("key, value", list(_config_cases()))
def test_bad_config_value_is_one_line_naming_the_key(key, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _make_inputs(tmp_path)
    cli = CLIS["train.py"]
    argv = cli.base(tmp_path, [*CONTEXT.get(key, []), f"{key}={_fill(value, tmp_path)}"])
    if key.startswith("objective.diffusion."):
        argv[argv.index(str(DEMO))] = str(TOY_DIFFUSION)
    if key in NEEDS_A_RUN:  # checked when the data are loaded, before anything is written; not by --print-config
        argv.remove("--print-config")
    rc, err = _run_in_process(cli, argv, monkeypatch)
    _assert_refused(cli, tmp_path, argv, key, rc, err)


# ----------------------------------------------------------------------------- the real scripts
SUBPROCESS_ROWS = [
    ("train.py", ["--config", "{t}/broken.yaml"], "broken.yaml"),
    ("train.py", ["--config", str(DEMO), "train.seed=abc", "train.output_dir={t}/run"], "train.seed"),
    ("sample.py", ["--ckpt", "{t}/missing", "--out", "{t}/out"], "--ckpt"),
    (
        "evaluate_fid.py",
        ["{t}/s.npz", "--ref", "{t}/r.npz", "--device", "cuda:99", "--json-out", "{t}/o.json"],
        "--device",
    ),
    ("extract_latents.py", ["--images", "{t}/images", "--out", "{t}/store", "--timeout-s", "nan"], "--timeout-s"),
    ("sweep.py", ["run", "{t}/sweep.yaml", "--seeds", "-1"], "--seeds"),
    ("sweep.py", ["run", "{t}/dir"], "is a directory"),
]


@pytest.mark.parametrize("script, args, needle", SUBPROCESS_ROWS, ids=[f"{s}|{a[-1]}" for s, a, _ in SUBPROCESS_ROWS])
def test_real_script_refuses_in_one_line(script, args, needle, tmp_path):
    _make_inputs(tmp_path)
    argv = [_fill(a, tmp_path) for a in args]
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, str(REPO / script), *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    cli = Cli(script, lambda: None, lambda a: None, lambda t, p: [], lambda t: [t / "run", t / "out", t / "store"])
    _assert_refused(cli, tmp_path, argv, needle, r.returncode, r.stderr)
    assert r.returncode == 2, r.stderr


def test_dry_run_into_a_closed_pipe_is_quiet(tmp_path):
    """``sweep.py run --dry-run | head``: the reader leaves; no BrokenPipeError traceback, exit 141."""
    p = subprocess.Popen(
        [sys.executable, str(REPO / "sweep.py"), "run", str(REPO / "configs/sweeps/toy_flow.yaml"), "--dry-run"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader is gone before the first line: every write fails with EPIPE
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141 and err == "", err


def test_yaml_is_read_like_omegaconf(tmp_path):
    """The sweep file's reader is OmegaConf's: 1e-4 is a float (PyYAML's safe_load reads a string)."""
    from vca_gen.sweep.spec import read_yaml_unique

    p = tmp_path / "x.yaml"
    p.write_text("a: 1e-4\nb: '1e-4'\nc: ${a}\n")
    assert yaml.safe_load(p.read_text())["a"] == "1e-4"
    assert read_yaml_unique(p) == {"a": 1e-4, "b": "1e-4", "c": "${a}"}


def test_yaml_errors_are_one_line_naming_the_file_or_override(tmp_path):
    """The shared reader (sweep files now, experiment files once `typed` calls it)."""
    from vca_gen.errors import UserError
    from vca_gen.utils import yaml_files as Y

    _make_inputs(tmp_path)
    cases = {
        "dir": "is a directory; accepted: a YAML file",
        "missing.yaml": "does not exist",
        "latin1.yaml": "not UTF-8 text (byte 0xe9 at offset 9, line 1)",
        "broken.yaml": "not valid YAML:",
        "dup.yaml": "key 'name' appears twice (again at line 2)",
    }
    for name, needle in cases.items():
        with pytest.raises(UserError) as e:
            Y.read_yaml_mapping(tmp_path / name, "config file")
        assert needle in str(e.value) and str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="a config file must be a mapping at the top level, got list"):
        Y.read_yaml_mapping(tmp_path / "list.yaml")
    assert Y.read_yaml_mapping(tmp_path / "base_int.yaml") == {"_base_": 5, "name": "x"}
    for text, needle in [("train.lr", "not of the form key=value"), ("train.lr=[1,", "'train.lr=[1,'")]:
        with pytest.raises(UserError, match=re.escape(needle)) as e:
            Y.parse_overrides(["model.depth=2", text])
        assert "model.depth" not in str(e.value) and "\n" not in str(e.value)
    assert Y.parse_override("train.betas=[0.9, 0.95]") == ("train.betas", [0.9, 0.95])
    assert Y.parse_override("train.lr=2e-4") == ("train.lr", 2e-4)
    assert Y.scalar_round_trips("stage1") and not Y.scalar_round_trips("1e-4") and not Y.scalar_round_trips("10")


def test_damaged_store_files_on_rerun_exit_2(tiny_setup, tmp_path, capsys):
    """A re-run of extract_latents.py over a store whose files were damaged: a shard record that is not
    UTF-8 / not a mapping is recomputed; a damaged extract_params.json or other pinned options exit 2
    with one line (they used to be a traceback / exit 1)."""
    import shutil

    from vca_gen.data.extract import main

    images, vae_dir, store = tiny_setup
    broken = tmp_path / "store"
    shutil.copytree(store, broken)
    args = ["--images", str(images), "--out", str(broken), "--vae", str(vae_dir), "--image-size", "32"]
    args += ["--batch-size", "4", "--shard-size", "5", "--num-workers", "0"]
    want = (broken / "shard_00000.safetensors").read_bytes()
    (broken / "shard_00000.json").write_bytes(b"\xff\xfe not utf-8")
    (broken / "shard_00001.json").write_text("[1, 2]")
    assert main(args) == 0, capsys.readouterr().err
    assert (broken / "shard_00000.safetensors").read_bytes() == want  # recomputed, identical
    capsys.readouterr()
    assert main([*args, "--image-size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("extract_latents.py: error: ") and len(err.strip().splitlines()) == 1
    assert "different options" in err and "image_size: store has 32, now 64" in err
    (broken / "extract_params.json").write_bytes(b'{"images": ')
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "extract_params.json is damaged" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
