"""``results_dir/results.json``, ``report.md`` and the PNGs (metric vs step, final metric with intervals)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vca_gen.utils.io import atomic_open, atomic_write_json, atomic_write_text, make_dir


def _f(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def _label(metric: str) -> str:
    """A field's report label (:mod:`vca_gen.metrics.registry`)."""
    from vca_gen.metrics import registry

    return registry.lookup_field(metric).label


def _spec(metric: str) -> str:
    from vca_gen.metrics import registry

    return registry.lookup_field(metric).fmt


def _direction(metric: str) -> str:
    from vca_gen.metrics import registry

    better = registry.lookup_field(metric).lower_is_better
    return "" if better is None else " (lower is better)" if better else " (higher is better)"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    try:
        with atomic_open(path, "wb", what="the report figure") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return path


def plot_curves(res: dict[str, Any], metric: str, path: Path) -> Path | None:
    """Metric vs training step per variant: the mean over seeds and a min–max band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    drawn = False
    for v, e in res["variants"].items():
        pts = [(int(s), d) for s, d in e["metrics"][metric]["by_step"].items() if d["n"]]
        if not pts:
            continue
        pts.sort()
        xs = [s for s, _ in pts]
        ax.plot(xs, [d["mean"] for _, d in pts], marker="o", label=f"{v} (n={max(d['n'] for _, d in pts)})")
        ax.fill_between(xs, [d["min"] for _, d in pts], [d["max"] for _, d in pts], alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(
        xlabel="training step",
        ylabel=_label(metric) + _direction(metric),
        title=f"{_label(metric)} vs step (mean, min–max band)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _comparison_rows(res: dict[str, Any], metric: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (c["name"], c["metrics"][metric]["final"])
        for c in res.get("comparisons", [])
        if c["metrics"][metric]["final"]["n"]
    ]


def plot_bars(res: dict[str, Any], metric: str, path: Path) -> Path | None:
    """Final-checkpoint metric per variant: mean with its 95% interval; reference numbers as markers.
    With named comparisons, a second panel shows each paired difference with its 95% interval."""
    plt = _plt()
    names = [v for v, e in res["variants"].items() if e["metrics"][metric]["final"]["n"]]
    if not names:
        return None
    comps = _comparison_rows(res, metric)
    width = max(4.0, 0.9 * len(names) + 2)
    if comps:
        fig, (ax, ax2) = plt.subplots(
            1,
            2,
            figsize=(width + max(4.0, 0.9 * len(comps) + 2), 3.8),
            gridspec_kw={"width_ratios": [len(names) + 1, len(comps) + 1]},
        )
    else:
        fig, ax = plt.subplots(figsize=(width, 3.8))
    means = [res["variants"][v]["metrics"][metric]["final"]["mean"] for v in names]
    lo, hi = [], []
    for v, m in zip(names, means):
        ci = res["variants"][v]["metrics"][metric]["final"]["ci"]
        lo.append(m - ci[0] if ci else 0.0)
        hi.append(ci[1] - m if ci else 0.0)
    ax.bar(range(len(names)), means, yerr=[lo, hi], capsize=4, color="tab:blue", alpha=0.75, label="measured (95% CI)")
    refs = [(i, res["variants"][v]["reference"].get(metric)) for i, v in enumerate(names)]
    refs = [(i, r) for i, r in refs if r is not None]
    if refs:
        ax.scatter([i for i, _ in refs], [r for _, r in refs], marker="D", color="tab:red", zorder=3, label="reference")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(ylabel=_label(metric) + _direction(metric), title=f"{_label(metric)} at the final checkpoint")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    if comps:
        ds = [d["mean"] for _, d in comps]
        err = [
            [m - d["ci"][0] if d["ci"] else 0.0 for m, (_, d) in zip(ds, comps)],
            [d["ci"][1] - m if d["ci"] else 0.0 for m, (_, d) in zip(ds, comps)],
        ]
        colors = ["tab:gray" if d["contains_zero"] in (True, None) else "tab:green" for _, d in comps]
        ax2.bar(range(len(comps)), ds, yerr=err, capsize=4, color=colors, alpha=0.8)
        ax2.axhline(0.0, color="black", lw=0.8)
        ax2.set_xticks(range(len(comps)), [n for n, _ in comps], rotation=30, ha="right")
        ax2.set(ylabel=f"Δ {_label(metric)} (paired)", title="comparisons (95% CI; green: excludes 0)")
        ax2.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _protocol_lines(res: dict[str, Any]) -> list[str]:
    p = res["protocol"]
    ref = p["reference"]
    ref_txt = (
        f"`{ref}`"
        if isinstance(ref, str)
        else f"{ref['num_images']} {'class-balanced ' if ref['balanced'] else ''}images of `{ref['source']}` "
        f"({ref['mode']} mode), computed once for the sweep"
    )
    sampler = p["sampler"] or "the objective's FID protocol (DiT: DDPM 250, SiT: SDE 250)"
    return [
        f"- checkpoints scored: {', '.join(str(c) for c in p['checkpoints'])} ({'EMA' if p['ema'] else 'live'} "
        f"weights)",
        f"- sampler: {sampler}; steps: {p['steps'] or 'default'}; guidance scale {p['cfg_scale']}"
        + (f" inside t in {p['cfg_interval']}" if p.get("cfg_interval") else "")
        + (f"; options {p['options']}" if p["options"] else ""),
        f"- {p['num_samples']} samples per checkpoint (sample i: label i mod classes, seed {p['seed']} + i)",
        f"- reference: {ref_txt}; feature mode {p['mode'] or 'the reference’s'}",
        f"- metrics: {', '.join(res['metrics'])}; protocol hash `{(p['protocol_hash'] or '')[:12]}`",
        _threads_line(res),
        _platform_line(res),
    ] + (
        [f"- cells reused from the committed results of: {', '.join(f'`{r}`' for r in res['reused'])} (not copied)"]
        if res.get("reused")
        else []
    )


def _threads_line(res: dict[str, Any]) -> str:
    t = res.get("threads") or {"counts": [], "unrecorded": 0}
    counts, unrec = t["counts"], t["unrecorded"]
    if counts:
        txt = (
            f"- torch threads: the cells trained, sampled and scored with {' and '.join(map(str, counts))} "
            f"thread{'s' if counts != [1] else ''} per process; CPU results reproduce bit for bit only at that count"
        )
        if len(counts) > 1:
            txt += " (the cells differ: see results.json)"
    else:
        txt = "- torch threads: not recorded"
    if unrec and counts:
        txt += f"; {unrec} cell(s) finished before thread counts were recorded"
    return txt


def _platform_line(res: dict[str, Any]) -> str:
    p = res.get("platforms") or {"kinds": [], "unrecorded": res.get("cells_done", 0)}
    kinds, unrec = p["kinds"], p["unrecorded"]
    txt = f"- platform: {'; '.join(kinds)}" if kinds else "- platform: not recorded"
    if unrec and kinds:
        txt += f" ({unrec} cell(s) finished before the platform was recorded)"
    return txt + "; bit-for-bit reproduction also needs the same CPU kind and torch build"


def write_report(res: dict[str, Any], results_dir: Path) -> Path:
    """``results.json``, the PNGs and ``report.md`` in ``results_dir``."""
    make_dir(results_dir, "the sweep's results")
    atomic_write_json(results_dir / "results.json", res, indent=2, what="the sweep's results")
    pngs = []
    for m in res["metrics"]:
        for fn, name in ((plot_bars, f"{m}_final.png"), (plot_curves, f"{m}_vs_step.png")):
            p = fn(res, m, results_dir / name)
            if p is not None:
                pngs.append(p.name)
    seeds = res["seeds"]
    ns = sorted({e["metrics"]["fid"]["final"]["n"] for e in res["variants"].values()})
    n_txt = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    lines = [
        f"# Sweep `{res['sweep']}`",
        "",
        f"Sweep file `{res['file']}`; {res['cells_done']} of {res['cells_total']} cells done; "
        f"{n_txt} seed(s) per variant (planned: {len(seeds)}, seeds {', '.join(map(str, seeds))}). "
        f"Intervals are {int(res['confidence'] * 100)}% Student-t intervals over seeds (n − 1 degrees of freedom; "
        f"none for n = 1); Δ is the paired per-seed difference to the baseline `{res['baseline']}` "
        f"(negative = lower {_label('fid')})"
        + (", or to the variant's own baseline where the table names one" if res.get("baselines") else "")
        + ".",
        "",
        "## Protocol",
        "",
        *_protocol_lines(res),
        "",
    ]
    if any(e["final_step"] != next(iter(res["variants"].values()))["final_step"] for e in res["variants"].values()):
        lines += ["Note: the variants train for different numbers of steps.", ""]
    for m in res["metrics"]:
        sp = _spec(m)
        lines += [
            f"## {_label(m)} at the final checkpoint{_direction(m)}",
            "",
            "| variant | reference | mean ± std | 95% CI | n | Δ vs baseline | 95% CI of Δ | note |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for v, e in res["variants"].items():
            f = e["metrics"][m]["final"]
            d = e["paired"].get(m)
            ci = f"[{_f(f['ci'][0], sp)}, {_f(f['ci'][1], sp)}]" if f["ci"] else "–"
            mean = f"{_f(f['mean'], sp)} ± {_f(f['std'], sp)}" if f["std"] is not None else _f(f["mean"], sp)
            if v == e["baseline"]:
                dtxt, dci, note = "(baseline)", "", ""
            elif d and d["n"]:
                dtxt = f"{_f(d['mean'], sp)} (vs {e['baseline']})"
                dci = f"[{_f(d['ci'][0], sp)}, {_f(d['ci'][1], sp)}]" if d["ci"] else "–"
                note = (
                    "interval contains 0: no difference shown"
                    if d["contains_zero"]
                    else "interval excludes 0"
                    if d["contains_zero"] is False
                    else f"n = {d['n']}: no interval"
                )
            else:
                dtxt, dci, note = "–", "–", "no common seeds"
            ref = e["reference"].get(m)
            lines.append(f"| {v} | {_f(ref, sp)} | {mean} | {ci} | {f['n']} | {dtxt} | {dci} | {note} |")
        lines.append("")
    if res.get("comparisons"):
        for m in res["metrics"]:
            sp = _spec(m)
            lines += [
                f"## Comparisons ({_label(m)}, paired over shared seeds)",
                "",
                "| comparison | checkpoint | Δ mean ± std | 95% CI of Δ | n | note |",
                "| --- | --- | ---: | ---: | ---: | --- |",
            ]
            for c in res["comparisons"]:
                rows = [("final", c["metrics"][m]["final"])]
                rows += [
                    (f"step {s}", d) for s, d in sorted(c["metrics"][m]["by_step"].items(), key=lambda kv: int(kv[0]))
                ]
                seen_final = False
                for label, d in rows:
                    if label == "final":
                        seen_final = True
                    elif seen_final and len(rows) == 2:
                        continue  # one shared step: the final row says it all
                    if not d["n"]:
                        lines.append(f"| {c['name']} | {label} | – | – | 0 | no common seeds done |")
                        continue
                    mean = f"{_f(d['mean'], sp)} ± {_f(d['std'], sp)}" if d["std"] is not None else _f(d["mean"], sp)
                    ci = f"[{_f(d['ci'][0], sp)}, {_f(d['ci'][1], sp)}]" if d["ci"] else "–"
                    note = (
                        "interval contains 0: no difference shown"
                        if d["contains_zero"]
                        else "interval excludes 0"
                        if d["contains_zero"] is False
                        else f"n = {d['n']}: no interval"
                    )
                    lines.append(f"| {c['name']} | {label} | {mean} | {ci} | {d['n']} | {note} |")
            lines.append("")
    lines += [
        "## FID by checkpoint (mean over seeds)",
        "",
        "| variant | " + " | ".join(f"step {s}" for s in next(iter(res["variants"].values()))["steps"]) + " |",
        "| --- |" + " ---: |" * len(next(iter(res["variants"].values()))["steps"]),
    ]
    for v, e in res["variants"].items():
        cells = [
            f"{_f(d['mean'])} (n={d['n']})"
            for _, d in sorted(e["metrics"]["fid"]["by_step"].items(), key=lambda kv: int(kv[0]))
        ]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Time per cell (minutes, mean over done cells)",
        "",
        "| variant | training | sampling | scoring | device |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for v, e in res["variants"].items():
        mins = e["minutes"]
        devices = sorted({c["device"] for c in e["cells"].values() if c.get("device")})
        lines.append(
            f"| {v} | {_f(mins['train_minutes']['mean'], '.1f')} | {_f(mins['sample_minutes']['mean'], '.1f')}"
            f" | {_f(mins['score_minutes']['mean'], '.1f')} | {', '.join(devices) or '–'} |"
        )
    lines.append("")
    if res["incomplete"]:
        lines += [f"## Incomplete cells ({len(res['incomplete'])})", "", "Not in the statistics above:", ""]
        for c in res["incomplete"]:
            fail = c.get("failure")
            why = (
                f" — {fail.get('stage')} exited {fail.get('exit_code')}: `{(fail.get('stderr_tail') or [''])[-1]}`"
                if fail
                else ""
            )
            lines.append(f"- `{c['cell']}`: {c['state']}{why}")
        lines.append("")
    if res.get("reference_note"):
        lines += ["## About the reference numbers", "", res["reference_note"].strip(), ""]
    lines += [f"![{p}]({p})" for p in pngs]
    path = results_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n", what="the sweep report")
    return path


__all__ = ["write_report", "plot_curves", "plot_bars"]
