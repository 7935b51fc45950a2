"""The demo report: loss curve and FID-vs-step plots, and ``report.md``.

* :func:`read_scalars` reads a scalar series (e.g. ``train/loss``) from the TensorBoard event files
  the training loop writes through accelerate's tracker;
* :func:`plot_series` draws a line plot to PNG (matplotlib, Agg backend);
* :func:`write_report` writes the markdown report that links the plots and the sample grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vca_gen.utils.io import atomic_open, atomic_write_text


def read_scalars(log_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) pairs of ``tag`` from every TensorBoard event file under ``log_dir``, by step.

    A step logged twice (e.g. after a resume) keeps the last value written.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for f in sorted(Path(log_dir).rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            for e in acc.Scalars(tag):
                values[int(e.step)] = float(e.value)
    return sorted(values.items())


def _atomic_png(fig, path: Path) -> Path:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_series(
    path: str | Path,
    series: dict[str, Sequence[tuple[float, float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    logy: bool = False,
    hlines: dict[str, float] | None = None,
) -> Path:
    """Line plot of named (x, y) series (markers when a series is short) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, pts in series.items():
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(pts) <= 12 else None, label=name)
    for name, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", color="gray", label=name)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    try:
        return _atomic_png(fig, path)
    finally:
        plt.close(fig)


def _fmt(v, spec=".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def write_report(path: str | Path, r: dict) -> Path:
    """Write the markdown report from the demo's result dict ``r`` (see :mod:`vca_gen.apps.demo`)."""
    path = Path(path)
    rows = "\n".join(
        f"| {e['step']} | {_fmt(e['fid'])} | {e['n']} | {_fmt(e['sampling_seconds'], '.0f')} |" for e in r["evals"]
    )
    trained, untrained = r["evals"][-1], r["evals"][0]
    lines = [
        f"# vca-gen demo report{' (quick smoke run)' if r.get('quick') else ''}",
        "",
        f"Model: `{r['model']}` with **{r['attention']}** attention ({r['params_m']:.2f} M parameters), "
        f"objective `{r['objective']}`, trained {r['train_steps']} steps on Animal-MNIST (32x32, 10 classes, "
        f"global batch {r['batch_size']}) in {r['train_minutes']:.1f} min on {r['device']}.",
        "",
        "## FID",
        "",
        f"| | FID (clean, {r['n_gen']} samples vs {r['n_ref']} real) |",
        "| --- | --- |",
        f"| trained (step {trained['step']}, EMA) | **{_fmt(trained['fid'])}** |",
        f"| untrained (step {untrained['step']}, initial weights) | {_fmt(untrained['fid'])} |",
        f"| real held-out images ({r['n_real']}, floor at this sample size) | {_fmt(r.get('fid_real'))} |",
        "",
        f"Protocol: {r['n_gen']} samples per checkpoint ({r['n_gen'] // r['num_classes']} per class, labels "
        f"`i % {r['num_classes']}`, sample i seeded `{r['seed']} + i`), sampler **{r['sampler']}** with "
        f"{r['sample_steps']} steps ({_fmt(r['nfe'], 'g')} model evaluations per image), no guidance, EMA weights; "
        f"reference statistics from {r['n_ref']} real images (class-balanced, split a), clean-fid `clean` mode, "
        f"TF-Inception pool3 (sha256 `{r['weights_sha256'][:16]}…`). The sampler is the fast deterministic "
        f"one of the demo config, not the SiT FID protocol (SDE, 250 steps), to keep CPU sampling to minutes; "
        f"FID at {r['n_gen']} samples is biased upwards and only comparable at equal sample counts.",
        "",
        "| step | FID | samples | sampling s |",
        "| --- | --- | --- | --- |",
        rows,
        "",
        "![FID vs step](fid_vs_step.png)",
        "",
        "## Training loss",
        "",
        "![loss](loss.png)" if r.get("loss_png") else "(no loss values were logged)",
        "",
        f"## Samples (step {trained['step']}, EMA, one row per class)",
        "",
        "![samples](grid.png)",
        "",
        "## Files",
        "",
        f"- training run: `{r['train_dir']}` (checkpoints, TensorBoard logs)",
        f"- samples: `{r['samples_dir']}/step_*/samples.npz` (`arr_0` uint8 (N, 32, 32, 3))",
        f"- reference statistics: `{r['ref_path']}`",
        f"- all numbers: `{r['json_path']}`",
        f"- total time: {r['total_minutes']:.1f} min",
        "",
    ]
    atomic_write_text(path, "\n".join(lines))
    return path
