"""Sweep comparisons beyond one baseline, reuse of another sweep's committed cells, per-variant seeds,
and the thread count each cell records (CPU results reproduce exactly only at the same count)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from test_sweep import assert_refused, independent_stats, micro, run_cli, write
from vca_gen.sweep.plan import validate
from vca_gen.sweep.spec import SweepError, load_sweep


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "comparisons, needles",
    [
        (["vca - mhsaa"], ["'vca - mhsaa'", "['mhsaa'] not variant(s)", "accepted: mhsa, vca"]),
        (["vca-mhsa"], ["'vca-mhsa' is not valid", "' - '"]),
        (["vca - vca"], ["compares a variant with itself"]),
        (["vca - mhsa", "vca - mhsa"], ["given twice"]),
        ("vca - mhsa", ["comparisons must be a list"]),
    ],
)
def test_bad_comparisons_are_refused_before_any_cell_runs(tmp_path, capsys, comparisons, needles):
    assert_refused(tmp_path, capsys, micro(tmp_path, comparisons=comparisons), *needles)


def test_comparison_of_variants_that_share_no_seed_is_refused(tmp_path, capsys):
    s = micro(tmp_path, comparisons=["vca - mhsa"])
    s["variants"]["vca"] = {"model.attention": "vca", "seeds": [5, 6]}
    assert_refused(tmp_path, capsys, s, "share no seed", "vca (seeds [5, 6])", "mhsa (seeds [0, 1])")


def test_bad_variant_seeds_and_reuse_are_refused(tmp_path, capsys):
    s = micro(tmp_path)
    s["variants"]["vca"] = {"model.attention": "vca", "seeds": [1, 1]}
    assert_refused(tmp_path, capsys, s, "variants.vca.seeds=[1, 1]", "more than once")
    assert_refused(tmp_path, capsys, micro(tmp_path, reuse=["nope.yaml"]), "reuse: 'nope.yaml': no such sweep file")
    assert_refused(tmp_path, capsys, micro(tmp_path, reuse=["micro.yaml"]), "is this sweep file itself")
    s = micro(tmp_path)
    s["execution"]["threads"] = 0
    assert_refused(tmp_path, capsys, s, "execution.threads=0", "an integer >= 1")


def test_per_variant_seeds_plan_only_those_cells(tmp_path):
    s = micro(tmp_path, seeds=[0, 1, 2], comparisons=["vca - mhsa"])
    s["variants"]["vca"] = {"model.attention": "vca", "seeds": [1, 2]}
    plans = validate(load_sweep(write(tmp_path, s))).cells
    assert sorted(p.key for p in plans) == ["mhsa__seed0", "mhsa__seed1", "mhsa__seed2", "vca__seed1", "vca__seed2"]


# ----------------------------------------------------------------------------- statistics
def fake_results(plans, rng, shift):
    for p in plans:
        rec = {
            "variant": p.variant,
            "seed": p.seed,
            "experiment_hash": p.experiment_hash,
            "protocol_hash": p.protocol_hash,
            "max_steps": p.max_steps,
            "steps": p.steps,
            "metrics": {str(st): {"fid": float(rng.uniform(50, 60)) + shift.get(p.variant, 0.0)} for st in p.steps},
            "train_minutes": 1.0,
            "sample_minutes": 0.5,
            "score_minutes": 0.25,
            "threads": {"train": 1, "sample": 1, "score": 1},
            **({"cpu": "Some CPU (AVX2)", "torch": "2.14.1"} if p.seed else {}),  # seed 0: an older record
        }
        Path(p.result_file).parent.mkdir(parents=True, exist_ok=True)
        Path(p.result_file).write_text(json.dumps(rec))


def three_variants(tmp_path, **changes):
    s = micro(tmp_path, seeds=[0, 1, 2], **changes)
    s["variants"]["mhsa-dw"] = {"model.attention": "mhsa", "model.attention_options.dwconv": True}
    s["evaluate"]["checkpoints"] = [2, "final"]
    return s


def test_named_comparisons_equal_an_independent_computation(tmp_path, capsys):
    s = three_variants(tmp_path, comparisons=["vca - mhsa-dw", "mhsa-dw - mhsa"])
    path = write(tmp_path, s)
    plans = validate(load_sweep(path)).cells
    fake_results(plans, np.random.default_rng(1), {"vca": -5.0, "mhsa-dw": -2.0})
    rc, out, err = run_cli(["report", path], capsys)
    assert rc == 0, err
    res = json.loads((tmp_path / "results" / "results.json").read_text())
    cells = {p.key: json.loads(Path(p.result_file).read_text()) for p in plans}
    assert [c["name"] for c in res["comparisons"]] == ["vca - mhsa-dw", "mhsa-dw - mhsa"]
    for c in res["comparisons"]:
        for step in ("2", "4"):
            diffs = [
                cells[f"{c['a']}__seed{k}"]["metrics"][step]["fid"]
                - cells[f"{c['b']}__seed{k}"]["metrics"][step]["fid"]
                for k in (0, 1, 2)
            ]
            mean, std, ci = independent_stats(diffs)
            got = c["metrics"]["fid"]["by_step"][step]
            assert got["n"] == 3 and got["seeds"] == [0, 1, 2]
            assert got["mean"] == pytest.approx(mean, rel=1e-9) and got["std"] == pytest.approx(std, rel=1e-9)
            assert got["ci"] == pytest.approx(list(ci), rel=1e-9)
            assert got["contains_zero"] == (ci[0] <= 0 <= ci[1])
        assert c["metrics"]["fid"]["final"] == c["metrics"]["fid"]["by_step"]["4"]
    report = (tmp_path / "results" / "report.md").read_text()
    assert "## Comparisons (FID, paired over shared seeds)" in report
    assert "| vca - mhsa-dw | final |" in report and "| mhsa-dw - mhsa | step 2 |" in report
    assert "trained, sampled and scored with 1 thread per process" in report
    assert res["threads"] == {"counts": [1], "unrecorded": 0}
    assert res["platforms"] == {"kinds": ["Some CPU (AVX2), torch 2.14.1"], "unrecorded": 3}  # 3 variants' seed 0
    assert "- platform: Some CPU (AVX2), torch 2.14.1 (3 cell(s) finished before the platform was recorded)" in report


def test_a_sweep_reuses_another_sweeps_committed_cells_without_copying(tmp_path, capsys):
    first = micro(tmp_path, seeds=[0, 1, 2], name="first")
    first["evaluate"]["checkpoints"] = [2, "final"]
    first_path = write(tmp_path, first, "first.yaml")
    first_plans = validate(load_sweep(first_path)).cells
    fake_results(first_plans, np.random.default_rng(2), {"vca": -4.0})

    second = three_variants(tmp_path, name="second", reuse=["first.yaml"], comparisons=["vca - mhsa-dw"])
    second["results_dir"] = str(tmp_path / "results2")
    second["output_dir"] = str(tmp_path / "out2")
    path = write(tmp_path, second, "second.yaml")
    plans = {p.key: p for p in validate(load_sweep(path)).cells}
    for k in ("mhsa__seed0", "vca__seed2"):
        assert plans[k].reused_from == "first" and Path(plans[k].result_file).parent == tmp_path / "results" / "cells"
    assert plans["mhsa-dw__seed0"].reused_from is None
    rc, out, err = run_cli(["status", path], capsys)
    assert rc == 0 and "6 of 9 cell(s) done" in out, out
    fake_results([p for p in plans.values() if p.variant == "mhsa-dw"], np.random.default_rng(3), {})
    rc, out, err = run_cli(["report", path], capsys)
    assert rc == 0, err
    res = json.loads((tmp_path / "results2" / "results.json").read_text())
    assert res["cells_done"] == 9 and res["reused"] == ["first"]
    first_fid = json.loads((tmp_path / "results" / "cells" / "vca__seed1.json").read_text())["metrics"]["4"]["fid"]
    assert res["variants"]["vca"]["metrics"]["fid"]["final"]["values"]["1"] == first_fid
    assert sorted(f.name for f in (tmp_path / "results2" / "cells").glob("*.json")) == [
        f"mhsa-dw__seed{k}.json" for k in (0, 1, 2)
    ]  # nothing copied
    assert "cells reused from the committed results of: `first`" in (tmp_path / "results2" / "report.md").read_text()
    # a run finds every reused cell done and starts nothing
    rc, out, err = run_cli(["run", path, "--no-report"], capsys)
    assert rc == 0 and "9 of 9 cell(s) done" in out and not (tmp_path / "out2").exists(), (out, err)
    # the reused sweep changed its protocol: the cells are no longer reused
    first["evaluate"]["seed"] = 7
    write(tmp_path, first, "first.yaml")
    second["evaluate"]["seed"] = 7
    write(tmp_path, second, "second.yaml")
    assert all(p.reused_from is None for p in validate(load_sweep(path)).cells)


def test_load_sweep_rejects_reuse_of_a_broken_file(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: [\n")
    s = micro(tmp_path, reuse=["broken.yaml"])
    with pytest.raises(SweepError, match="reuse: .*broken.yaml"):
        validate(load_sweep(write(tmp_path, s)))


# ----------------------------------------------------------------------------- threads
@pytest.mark.slow
def test_a_tiny_cell_rerun_at_the_same_thread_count_reproduces_exactly(
    tmp_path, capsys, monkeypatch, inception_weights, animal_mnist_dir
):
    """Each cell records its torch thread count; re-running it from nothing at that count gives the
    same FID bit for bit (and the same final weights)."""
    from safetensors.torch import load_file

    monkeypatch.setenv("VCA_GEN_INCEPTION", str(inception_weights))
    monkeypatch.setenv("VCA_GEN_ASSETS", str(animal_mnist_dir.parent))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    records, weights = [], []
    for attempt in (1, 2):
        s = micro(tmp_path, seeds=[0], name=f"t{attempt}")
        s["variants"] = {"vca": {"model.attention": "vca"}}
        s["baseline"] = "vca"
        s["references"] = {}
        s["execution"] = {"backend": "local", "threads": 1}
        s["output_dir"] = str(tmp_path / f"out{attempt}")
        s["results_dir"] = str(tmp_path / f"results{attempt}")
        path = write(tmp_path, s, f"t{attempt}.yaml")
        rc, out, err = run_cli(["run", path], capsys)
        assert rc == 0, (out, err)
        records.append(json.loads((tmp_path / f"results{attempt}" / "cells" / "vca__seed0.json").read_text()))
        (ckpt,) = (tmp_path / f"out{attempt}").glob("cells/vca__seed0/exp-*/train/checkpoints/step_00000004")
        weights.append(load_file(str(ckpt / "ema.safetensors")))
        events = (ckpt.parents[2] / "stages.jsonl").read_text().splitlines()
        assert all(json.loads(e).get("threads") == 1 for e in events if json.loads(e)["event"] == "start")
    assert records[0]["threads"] == records[1]["threads"] == {"train": 1, "sample": 1, "score": 1}
    assert records[0]["experiment_hash"] == records[1]["experiment_hash"]
    assert records[0]["metrics"]["4"]["fid"] == records[1]["metrics"]["4"]["fid"]
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])
    assert os.environ.get("OMP_NUM_THREADS") is None  # the sweep pinned only its stages' environment
    assert "1 thread per process" in (tmp_path / "results2" / "report.md").read_text()
    # and where they ran: the CPU kind torch's kernels were picked for, and the torch build
    import torch

    assert records[0]["cpu"] == records[1]["cpu"] and records[0]["torch"] == records[1]["torch"] == torch.__version__
    assert records[0]["cpu"].endswith(f"({torch.backends.cpu.get_cpu_capability()})")
    assert (
        f"- platform: {records[0]['cpu']}, torch {torch.__version__};"
        in (tmp_path / "results2" / "report.md").read_text()
    )
