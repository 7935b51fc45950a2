#!/usr/bin/env python
"""Regenerate the tables of README.md and docs/*.md that would otherwise copy code.

A generated block sits between two HTML comments::

    <!-- generated: NAME -->
    ...
    <!-- end generated: NAME -->

and is rewritten from the code itself: the command-line options from each CLI's argparse parser,
the config keys and defaults from the experiment schema, the attention kinds and their options, the
samplers and metrics from their registries, the shipped experiment and sweep files, the test
files, and each sweep's committed ``docs/results/NAME/results.json`` (``results:NAME``: the final
checkpoint; ``results-by-step:NAME``: every scored checkpoint). ``python scripts/gen_docs.py``
rewrites every block (``make docs``); ``--check`` rewrites nothing and exits 1 naming each stale block
(``tests/test_docs.py`` runs it, so a change to a CLI option, a default, a sampler, a metric or a test
without regenerating fails the suite).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import re
import sys
import tokenize
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BLOCK_RE = re.compile(
    r"(<!-- generated: (?P<name>[\w.:-]+) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)", re.DOTALL
)
DOC_FILES = ("README.md", "docs/*.md", "docs/results/README.md")


# ----------------------------------------------------------------------------- helpers
def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(head: list[str], rows: list[list[Any]], align: list[str] | None = None) -> str:
    align = align or ["---"] * len(head)
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _fmt_default(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, (list, tuple, dict)):
        return f"`{value!r}`"
    return f"`{value}`"


# ----------------------------------------------------------------------------- CLI options
def _parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    from vca_gen.data.extract import build_parser as extract_parser
    from vca_gen.metrics.cli import build_parser as fid_parser
    from vca_gen.sample.cli import build_parser as sample_parser
    from vca_gen.sweep.cli import build_parser as sweep_parser
    from vca_gen.train.cli import build_parser as train_parser

    return {
        "train.py": train_parser,
        "sample.py": sample_parser,
        "evaluate_fid.py": fid_parser,
        "extract_latents.py": extract_parser,
        "sweep.py": sweep_parser,
    }


def _option_rows(parser: argparse.ArgumentParser) -> list[list[str]]:
    rows = []
    for a in parser._actions:  # argparse keeps no public list of its actions
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(f"`{s}`" for s in a.option_strings) if a.option_strings else f"`{a.metavar or a.dest}`"
        if a.option_strings and a.nargs != 0:
            name = name[:-1] + f" {a.metavar or a.dest.upper()}`" if isinstance(a.metavar, (str, type(None))) else name
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            default = "off" if isinstance(a, argparse._StoreTrueAction) else "on"
        elif a.default is argparse.SUPPRESS or (not a.option_strings and a.default is None):
            default = "required" if a.required or not a.option_strings else "–"
        else:
            default = "required" if a.required else _fmt_default(a.default)
        text = (a.help or "").replace("%(default)s", str(a.default))
        if a.choices and "{" not in text:
            text += f" (one of: {', '.join(map(str, a.choices))})"
        rows.append([name, default, text.strip()])
    return rows


def cli_table(tool: str) -> str:
    parser = _parsers()[tool]()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return table(["option", "default", "meaning"], _option_rows(parser))
    out = []
    for name, sub in subs[0].choices.items():
        out.append(f"`{tool} {name}`: {sub.description or ''}".rstrip() + "\n\n")
        out.append(table(["option", "default", "meaning"], _option_rows(sub)) + "\n")
    return "".join(out).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------- config keys
def _field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field line of a dataclass's source."""
    import inspect

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    field_re = re.compile(r"^\s+(\w+)\s*:")
    last_line_name: dict[int, str] = {}
    for i, line in enumerate(src.splitlines(), 1):
        m = field_re.match(line)
        if m:
            last_line_name[i] = m.group(1)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT and tok.start[0] in last_line_name:
            out[last_line_name[tok.start[0]]] = tok.string.lstrip("#").strip()
    return out


def _type_name(t: Any) -> str:
    s = str(t).replace("typing.", "")
    s = re.sub(r"<class '(\w+)'>", r"\1", s)
    return s.replace("NoneType", "None")


def config_rows(cls: type, prefix: str) -> list[list[str]]:
    rows: list[list[str]] = []
    hints = typing.get_type_hints(cls)
    notes = _field_comments(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        t = hints.get(f.name)
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            rows += config_rows(t, key)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        run = f.metadata.get("run_defining") if f.metadata else None
        flag = "" if run is None else (" (run-defining)" if run else "")
        rows.append([f"`{key}`", _type_name(t), _fmt_default(default), notes.get(f.name, "") + flag])
    return rows


def config_table(section: str) -> str:
    from vca_gen.experiment.schema import ExperimentConfig

    hints = typing.get_type_hints(ExperimentConfig)
    cls = hints[section]
    return table(["key", "type", "default", "meaning"], config_rows(cls, section))


# ----------------------------------------------------------------------------- models, attention
def attention_table() -> str:
    from vca_gen.models.attention import ATTENTION_KINDS, attention_options

    rows = []
    for kind in ATTENTION_KINDS:
        opts = attention_options(kind)
        rows.append([f"`{kind}`", ", ".join(f"`{k}={v!r}`" for k, v in opts.items()) or "–"])
    return table(["kind", "options (defaults)"], rows)


def models_table() -> str:
    from vca_gen.models.registry import FAMILIES, PATCH_SIZES, SIZES

    rows = [[f"`{s}`", d, h, n, ", ".join(f"/{p}" for p in PATCH_SIZES)] for s, (d, h, n) in SIZES.items()]
    return f"Families: {', '.join(FAMILIES)} (same shapes).\n\n" + table(
        ["size", "depth", "hidden", "heads", "patches"], rows, ["---", "---:", "---:", "---:", "---"]
    )


def experiments_table() -> str:
    from vca_gen.experiment.schema import load_config

    rows = []
    for path in sorted((REPO / "vca_gen" / "configs").glob("*.yaml")):
        cfg = load_config(path)
        m, d = cfg.model, cfg.data
        opts = dict(m.attention_options)
        att = m.attention + (f", n = {opts['num_contrast_tokens']}" if "num_contrast_tokens" in opts else "")
        arch = f"{m.name}" + (f", {m.depth} × {m.hidden_size}" if m.depth or m.hidden_size else "")
        data = f"{d.kind} {d.image_size} px" + ("" if d.vae else ", pixel space")
        rows.append([f"`{path.name}`", arch, att, cfg.objective.kind, data, cfg.train.max_steps])
    return table(
        ["file", "model", "attention", "objective", "data", "steps"], rows, ["---", "---", "---", "---", "---", "---:"]
    )


def sweeps_table() -> str:
    from vca_gen.sweep.spec import load_sweep

    rows = []
    for path in sorted((REPO / "vca_gen" / "configs" / "sweeps").glob("*.yaml")):
        s = load_sweep(path)
        cells = sum(len(s.seeds_of(v)) for v in s.variants)
        res = s.results_dir.relative_to(REPO) if s.results_dir.is_relative_to(REPO) else s.results_dir
        rows.append(
            [
                f"`{path.name}`",
                ", ".join(s.variants),
                cells,
                ", ".join(c.name for c in s.comparisons) or "–",
                ", ".join(p.name for p in s.reuse) or "–",
                f"`{res}`",
            ]
        )
    return table(["sweep file", "variants", "cells", "comparisons", "reuses", "results"], rows)


# ----------------------------------------------------------------------------- registries
def samplers_table() -> str:
    from vca_gen.objectives.registry import markdown_table

    return markdown_table()


def metrics_table() -> str:
    from vca_gen.metrics.registry import all_metrics

    rows = []
    for m in all_metrics():
        needs = [w for w in ("ref_stats", "spatial", "features") if getattr(m.needs, w)]
        params = ", ".join(f"`{p.flag(m.name)}` ({p.default})" for p in m.params) or "–"
        how = "default" if m.default else (f"`{m.flag}`" if m.flag else "by name")
        fields = ", ".join(f"`{f.key}`" for f in m.fields)
        rows.append([f"`{m.name}`", m.help, fields, ", ".join(needs) or "–", params, how])
    return table(["metric", "what", "JSON fields", "needs", "parameters", "selected"], rows)


# ----------------------------------------------------------------------------- results (from results.json)
def _ci(ci: Any) -> str:
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "–"


def _provenance(res: dict[str, Any], name: str) -> str:
    """The line under a results table: cells done, the torch thread counts they ran with, the file."""
    t = res.get("threads") or {}
    threads = ", ".join(map(str, t.get("counts") or [])) or "not recorded"
    if t.get("unrecorded"):
        threads += f" ({t['unrecorded']} cells from before the count was recorded)"
    return (
        f"\n{res.get('cells_done')} of {res.get('cells_total')} cells; torch threads per process: {threads}; "
        f"from `docs/results/{name}/results.json`.\n"
    )


def results_table(name: str) -> str:
    """Final FID per variant and the sweep's paired comparisons, read from its committed results.json."""
    import json

    path = REPO / "docs" / "results" / name / "results.json"
    res = json.loads(path.read_text())
    rows = []
    for variant, v in res["variants"].items():
        fid = v.get("metrics", {}).get("fid", {}).get("final")
        if not fid or fid.get("mean") is None:
            rows.append([f"`{variant}`", "not run yet", 0, "–"])
            continue
        spread = f" ± {fid['std']:.1f}" if fid.get("std") is not None else ""
        rows.append([f"`{variant}`", f"{fid['mean']:.1f}{spread}", fid["n"], _ci(fid.get("ci"))])
    out = table(["variant", "FID (mean ± std)", "seeds", "95% CI"], rows, ["---", "---:", "---:", "---:"])
    comps = []
    for c in res.get("comparisons") or []:
        d = c.get("metrics", {}).get("fid", {}).get("final")
        if not d or d.get("mean") is None:
            comps.append([c["name"], "no shared seed run yet", 0, "–"])
            continue
        comps.append([c["name"], f"{d['mean']:+.1f}", d["n"], _ci(d.get("ci"))])
    if comps:
        out += "\n" + table(
            ["paired difference (same seeds)", "Δ FID", "seeds", "95% CI of Δ"], comps, ["---", "---:", "---:", "---:"]
        )
    return out + _provenance(res, name)


def results_by_step_table(name: str) -> str:
    """FID per variant and the sweep's paired comparisons at every scored checkpoint (a horizon sweep:
    does a gap persist, grow or close?), read from its committed results.json."""
    import json

    res = json.loads((REPO / "docs" / "results" / name / "results.json").read_text())
    steps = sorted({int(s) for v in res["variants"].values() for s in v["metrics"]["fid"]["by_step"]})
    heads, align = [f"step {s:,}" for s in steps], ["---:"] * len(steps)

    def cell(d: dict[str, Any] | None, paired: bool) -> str:
        if not d or not d.get("n"):
            return "–"
        mean = f"{d['mean']:+.1f}" if paired else f"{d['mean']:.1f}"
        if paired:
            spread = f" {_ci(d.get('ci'))}" if d.get("ci") else ""
        else:
            spread = f" ± {d['std']:.1f}" if d.get("std") is not None else ""
        return f"{mean}{spread} ({d['n']})"

    rows = [
        [f"`{v}`", *(cell(e["metrics"]["fid"]["by_step"].get(str(s)), False) for s in steps)]
        for v, e in res["variants"].items()
    ]
    out = table(["FID, mean ± std (seeds)", *heads], rows, ["---", *align])
    comps = [
        [c["name"], *(cell(c["metrics"]["fid"]["by_step"].get(str(s)), True) for s in steps)]
        for c in res.get("comparisons") or []
    ]
    if comps:
        out += "\n" + table(["paired Δ FID, 95% CI (seeds)", *heads], comps, ["---", *align])
    return out + _provenance(res, name)


# ----------------------------------------------------------------------------- tests
def tests_table() -> str:
    rows, total = [], 0
    for path in sorted((REPO / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        n = sum(1 for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"))
        slow = path.read_text().count("@pytest.mark.slow")
        doc = (ast.get_docstring(tree) or "").split("\n\n")[0].replace("\n", " ")
        total += n
        rows.append([f"[`{path.name}`](../tests/{path.name})", n, slow, doc])
    return (
        table(["file", "test functions", "marked slow", "what it covers"], rows, ["---", "---:", "---:", "---"])
        + f"\n{total} test functions in {len(rows)} files (parametrised cases are collected separately: "
        f"`make test` prints the collected count).\n"
    )


# ----------------------------------------------------------------------------- registry
def generators() -> dict[str, Callable[[], str]]:
    gens: dict[str, Callable[[], str]] = {
        "attention": attention_table,
        "models": models_table,
        "experiments": experiments_table,
        "sweeps": sweeps_table,
        "tests": tests_table,
        "samplers": samplers_table,
        "metrics": metrics_table,
    }
    for path in sorted((REPO / "docs" / "results").glob("*/results.json")):
        gens[f"results:{path.parent.name}"] = lambda name=path.parent.name: results_table(name)
        gens[f"results-by-step:{path.parent.name}"] = lambda name=path.parent.name: results_by_step_table(name)
    for tool in ("train.py", "sample.py", "evaluate_fid.py", "extract_latents.py", "sweep.py"):
        gens[f"cli:{tool}"] = lambda tool=tool: cli_table(tool)
    for section in ("model", "objective", "data", "train", "logging"):
        gens[f"config:{section}"] = lambda section=section: config_table(section)
    return gens


def doc_files() -> list[Path]:
    out: list[Path] = []
    for pattern in DOC_FILES:
        out += sorted(REPO.glob(pattern))
    return out


def regenerate(text: str, gens: dict[str, Callable[[], str]], where: str) -> str:
    def repl(m: re.Match) -> str:
        name = m.group("name")
        if name not in gens:
            raise SystemExit(f"{where}: unknown generated block {name!r}; known: {', '.join(sorted(gens))}")
        return m.group(1) + gens[name]() + m.group(4)

    return BLOCK_RE.sub(repl, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale file")
    args = ap.parse_args(argv)
    gens = generators()
    stale = []
    for path in doc_files():
        text = path.read_text()
        new = regenerate(text, gens, str(path.relative_to(REPO)))
        if new != text:
            stale.append(str(path.relative_to(REPO)))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"stale generated blocks in: {', '.join(stale)} (run: python scripts/gen_docs.py)", file=sys.stderr)
        return 1
    if not args.check:
        print(f"regenerated: {', '.join(stale) or 'nothing changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
