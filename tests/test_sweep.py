"""sweep.py: validation before anything runs, the shipped sweep files, statistics, and a micro sweep end to
end through submitit's LocalExecutor (kill mid-training and resume, a failing cell, committed results)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from vca_gen.sweep import cli
from vca_gen.sweep.plan import StageHooks, validate
from vca_gen.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "vca_gen" / "configs" / "sweeps"

TINY = {
    "model.depth": 1,
    "model.hidden_size": 32,
    "model.num_heads": 2,
    "model.attention_options.num_contrast_tokens": 4,
    "train.global_batch_size": 8,
    "train.max_steps": 4,
    "train.ckpt_every": 2,
    "train.warmup_steps": 0,
    "train.grid.every": 0,
    "train.log_every": 1,
    "logging.tracker": "none",
}


def micro(tmp_path: Path, **changes) -> dict:
    spec = {
        "name": "micro",
        "base": str(REPO / "configs" / "demo.yaml"),
        "overrides": dict(TINY),
        "variants": {"mhsa": {"model.attention": "mhsa"}, "vca": {"model.attention": "vca"}},
        "baseline": "mhsa",
        "seeds": [0, 1],
        "evaluate": {
            "checkpoints": ["final"],
            "sampler": "euler",
            "steps": "2",
            "num_samples": 10,
            "batch_size": 10,
            "shard_size": 10,
            "reference": {"source": "dataset:animal_mnist:a", "num_images": 20, "mode": "clean"},
        },
        "execution": {"backend": "submitit", "submitit_cluster": "local", "parallel": 2, "slurm": {"timeout_min": 30}},
        "references": {"mhsa": 67.2, "vca": 62.3},
        "output_dir": str(tmp_path / "out"),
        "results_dir": str(tmp_path / "results"),
    }
    spec.update(changes)
    return spec


def write(tmp_path: Path, spec: dict, name: str = "micro.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def run_cli(args, capsys, hooks=None):
    rc = cli.main([str(a) for a in args], hooks=hooks)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(tmp_path, capsys, spec_or_text, *needles):
    path = tmp_path / "micro.yaml"
    if isinstance(spec_or_text, str):
        path.write_text(spec_or_text)
    else:
        write(tmp_path, spec_or_text)
    rc, out, err = run_cli(["run", path], capsys)
    assert rc == 2, (out, err)
    assert err.startswith("sweep.py: error: ") and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "results").exists()  # nothing ran or was created


# ----------------------------------------------------------------------------- validation (point 4)
def test_unknown_override_key_names_the_variant(tmp_path, capsys):
    s = micro(tmp_path)
    s["variants"]["vca"] = {"model.attention": "vca", "model.atention_options.stages": "stage1"}
    assert_refused(tmp_path, capsys, s, "variant 'vca'", "atention_options")


def test_duplicate_variant_names(tmp_path, capsys):
    text = yaml.safe_dump(micro(tmp_path), sort_keys=False).replace(
        "  vca:\n", "  vca:\n    model.attention: vca\n  mhsa:\n", 1
    )
    assert yaml.safe_load(text)["variants"]  # plain safe_load would silently merge them
    assert_refused(tmp_path, capsys, text, "'mhsa' appears twice")


@pytest.mark.parametrize("seeds, needle", [([], "seeds is required"), ([0, 1, 0], "more than once")])
def test_seeds_missing_or_duplicate(tmp_path, capsys, seeds, needle):
    assert_refused(tmp_path, capsys, micro(tmp_path, seeds=seeds), needle)


def test_baseline_not_a_variant(tmp_path, capsys):
    assert_refused(tmp_path, capsys, micro(tmp_path, baseline="mhsaa"), "baseline='mhsaa' is not a variant")


def test_sampler_the_objective_rejects(tmp_path, capsys):
    s = micro(tmp_path)
    s["evaluate"].update(sampler="ddim", steps="ddim10")  # demo.yaml is a flow (SiT) experiment
    assert_refused(tmp_path, capsys, s, "ddim", "flow objective")


def _stats_file(path: Path, mode: str, resolution: int) -> Path:
    meta = {
        "format": "vca-gen-fid-stats",
        "version": 1,
        "mode": mode,
        "resolution": [resolution, resolution],
        "extractor": "x",
        "extractor_sha256": None,
        "count": 20,
        "source": "test",
    }
    np.savez(path, mu=np.zeros(8), sigma=np.eye(8), vca_gen_meta=np.array(json.dumps(meta)))
    return path


@pytest.mark.parametrize(
    "mode, res, needle",
    [("legacy_tensorflow", 32, "holds legacy_tensorflow statistics"), ("clean", 64, "64x64 images")],
)
def test_reference_of_wrong_mode_or_resolution(tmp_path, capsys, mode, res, needle):
    s = micro(tmp_path)
    s["evaluate"].update(reference=str(_stats_file(tmp_path / "ref.npz", mode, res)), mode="clean")
    assert_refused(tmp_path, capsys, s, needle)


def test_checkpoint_that_will_not_exist_and_bad_only(tmp_path, capsys):
    s = micro(tmp_path)
    s["evaluate"]["checkpoints"] = [3, "final"]
    assert_refused(tmp_path, capsys, s, "checkpoints 3 will not exist")
    write(tmp_path, micro(tmp_path))
    rc, _, err = run_cli(["run", tmp_path / "micro.yaml", "--only", "nope"], capsys)
    assert rc == 2 and "--only nope" in err and not (tmp_path / "out").exists()


def test_dry_run_lists_every_cell_stage_and_command_and_runs_nothing(tmp_path, capsys):
    s = micro(tmp_path)
    s["evaluate"]["checkpoints"] = [2, "final"]
    rc, out, err = run_cli(["run", write(tmp_path, s), "--dry-run"], capsys)
    assert rc == 0, err
    for cell in ("mhsa__seed0", "mhsa__seed1", "vca__seed0", "vca__seed1"):
        assert f"[{cell}]" in out
    assert out.count("train.py --config") == 4 and out.count("sample.py --ckpt") == 8
    assert out.count("evaluate_fid.py") == 8 and "train.seed=1 data.seed=1" in out
    assert "train.milestone_every=2" in out and "step_00000002" in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("name", sorted(p.name for p in SWEEPS.glob("*.yaml")))
def test_shipped_sweep_files_validate(name):
    sweep = load_sweep(SWEEPS / name)
    v = validate(sweep, allow_missing_reference=True)
    assert len(v.cells) == len(sweep.variants) * len(sweep.seeds)
    if name.startswith("paper_"):
        assert sweep.execution.backend == "submitit" and sweep.execution.processes == 8
        assert sweep.execution.slurm["gpus_per_node"] == 8 and sweep.seeds == [0]
        assert all(c.max_steps == 400_000 for c in v.cells) and set(sweep.references) == set(sweep.variants)
    else:
        assert sweep.seeds == [0, 1, 2] and sweep.execution.backend == "local"
        assert str(sweep.results_dir).endswith(f"docs/results/{sweep.name}")


def test_dit_s4_vca_uses_n16_at_256_and_n64_at_512():
    from vca_gen.experiment.schema import load_config

    assert load_config(REPO / "configs" / "dit_s4_vca.yaml").model.attention_options.num_contrast_tokens == 16
    assert load_config(REPO / "configs" / "dit_s4_vca_512.yaml").model.attention_options.num_contrast_tokens == 64


# ----------------------------------------------------------------------------- statistics
def independent_stats(values):
    from scipy import stats

    a = np.asarray(values, float)
    n = len(a)
    mean, std = a.mean(), a.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return mean, std, (mean - half, mean + half)


def check_results(results_dir: Path, variants, baseline, seeds):
    res = json.loads((results_dir / "results.json").read_text())
    cells = {
        (v, s): json.loads((results_dir / "cells" / f"{v}__seed{s}.json").read_text()) for v in variants for s in seeds
    }
    fid = {k: r["metrics"][str(r["max_steps"])]["fid"] for k, r in cells.items()}
    for v in variants:
        mean, std, ci = independent_stats([fid[v, s] for s in seeds])
        got = res["variants"][v]["metrics"]["fid"]["final"]
        assert got["n"] == len(seeds)
        assert got["mean"] == pytest.approx(mean, rel=1e-12) and got["std"] == pytest.approx(std, rel=1e-12)
        assert got["ci"] == pytest.approx(list(ci), rel=1e-12)
        if v != baseline:
            d_mean, d_std, d_ci = independent_stats([fid[v, s] - fid[baseline, s] for s in seeds])
            d = res["variants"][v]["paired"]["fid"]
            assert d["mean"] == pytest.approx(d_mean, rel=1e-9) and d["ci"] == pytest.approx(list(d_ci), rel=1e-9)
            assert d["contains_zero"] == (d_ci[0] <= 0 <= d_ci[1])
    return res


def test_aggregate_and_report_from_result_files(tmp_path, capsys):
    """Synthetic committed results (hashes of the real plans): report = an independent computation."""
    s = micro(tmp_path, seeds=[0, 1, 2])
    s["evaluate"]["checkpoints"] = [2, "final"]
    path = write(tmp_path, s)
    plans = validate(load_sweep(path)).cells
    rng = np.random.default_rng(0)
    for p in plans[:-1]:  # the last cell (vca, seed 2) is left incomplete
        rec = {
            "variant": p.variant,
            "seed": p.seed,
            "experiment_hash": p.experiment_hash,
            "protocol_hash": p.protocol_hash,
            "max_steps": p.max_steps,
            "steps": p.steps,
            "metrics": {
                str(st): {"fid": float(rng.uniform(50, 60)) - (3 if p.variant == "vca" else 0)} for st in p.steps
            },
            "train_minutes": 1.0,
            "sample_minutes": 0.5,
            "score_minutes": 0.25,
        }
        Path(p.result_file).parent.mkdir(parents=True, exist_ok=True)
        Path(p.result_file).write_text(json.dumps(rec))
    rc, out, err = run_cli(["report", path], capsys)
    assert rc == 0, err
    res = check_results(tmp_path / "results", ["mhsa"], "mhsa", [0, 1, 2])
    check_results(tmp_path / "results", ["vca"], "vca", [0, 1])
    assert res["variants"]["vca"]["paired"]["fid"]["seeds"] == [0, 1]
    assert [c["cell"] for c in res["incomplete"]] == ["vca__seed2"]
    report = (tmp_path / "results" / "report.md").read_text()
    assert "vca__seed2" in report and "67.20" in report and "n = 2–3" in report
    for png in ("fid_final.png", "fid_vs_step.png"):
        assert (tmp_path / "results" / png).stat().st_size > 1000


# ----------------------------------------------------------------------------- end to end
def _wait_for(pred, timeout, what, proc=None):
    t0 = time.time()
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) before {what}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _starts(cell_dir: Path, stage: str) -> int:
    return sum(
        1
        for ln in (cell_dir / "stages.jsonl").read_text().splitlines()
        if json.loads(ln)["stage"] == stage and json.loads(ln)["event"] == "start"
    )


@pytest.mark.slow
def test_micro_sweep_end_to_end_through_submitit_local(
    tmp_path, capsys, monkeypatch, inception_weights, animal_mnist_dir
):
    pytest.importorskip("submitit")
    monkeypatch.setenv("VCA_GEN_INCEPTION", str(inception_weights))
    monkeypatch.setenv("VCA_GEN_ASSETS", str(animal_mnist_dir.parent))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = write(tmp_path, micro(tmp_path))
    out_dir, results = tmp_path / "out", tmp_path / "results"

    # 1. kill the whole sweep (its process group: the submitit job and train.py) mid-training of a cell;
    # the sweep runs through the test launcher, so its train.py does too: checkpoint writes pause 3 s
    hooked = [str(REPO / "tests" / "hooked_cli.py"), "--save-pause", "3"]
    proc = subprocess.Popen(
        [sys.executable, *hooked, str(REPO / "sweep.py"), "run", str(path), "--only", "mhsa", "--seeds", "0"],
        env=dict(os.environ),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = lambda: list(out_dir.glob("cells/mhsa__seed0/exp-*/train/checkpoints"))  # noqa: E731
    try:
        _wait_for(
            lambda: (
                ckpts()
                and (ckpts()[0] / "step_00000004.tmp").exists()
                and (ckpts()[0] / "step_00000002" / "COMPLETE").exists()
            ),
            240,
            "the step-4 save",
            proc,
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    cell0 = ckpts()[0].parent.parent
    step2 = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (ckpts()[0] / "step_00000002").iterdir()}
    assert not (results / "cells" / "mhsa__seed0.json").exists() and _starts(cell0, "train") == 1

    # 2. re-run everything: the killed cell resumes training from step 2; one cell is made to fail at scoring
    rc, out, err = run_cli(["run", path], capsys, hooks=StageHooks(fail=("vca__seed1:score@4",)))
    assert rc == 1, (out, err)
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (ckpts()[0] / "step_00000002").iterdir()} == step2
    assert _starts(cell0, "train") == 2 and "resumed from" in (cell0 / "logs" / "train.stdout").read_text()
    assert "step_00000002" in (cell0 / "logs" / "train.stdout").read_text().split("resumed from")[1].splitlines()[0]
    cell3 = next(out_dir.glob("cells/vca__seed1/exp-*"))
    failure = json.loads((cell3 / "failure.json").read_text())
    assert (failure["stage"], failure["exit_code"]) == ("score@4", 9) and "forced failure" in failure["stderr_tail"][-1]
    done = sorted(p.name for p in (results / "cells").glob("*.json"))
    assert done == ["mhsa__seed0.json", "mhsa__seed1.json", "vca__seed0.json"]
    report = (results / "report.md").read_text()
    assert "Incomplete cells (1)" in report and "vca__seed1" in report and "exited 9" in report
    rc, out, _ = run_cli(["status", path], capsys)
    assert rc == 0 and "failed at score@4 (exit 9)" in out and "forced failure" in out
    assert out.count("done (committed result)") == 3

    # 3. again without the hook: only the failed stage runs; finished cells are not touched
    before = {n: (results / "cells" / n).stat().st_mtime_ns for n in done}
    rc, out, err = run_cli(["run", path], capsys)
    assert rc == 0, (out, err)
    assert {n: (results / "cells" / n).stat().st_mtime_ns for n in done} == before
    assert (_starts(cell3, "train"), _starts(cell3, "sample@4"), _starts(cell3, "score@4")) == (1, 1, 2)
    assert not (cell3 / "failure.json").exists()
    res = check_results(results, ["mhsa", "vca"], "mhsa", [0, 1])
    assert res["cells_done"] == 4 and not res["incomplete"]
    rec = json.loads((results / "cells" / "vca__seed1.json").read_text())
    assert rec["variant"] == "vca" and rec["seed"] == 1 and "train.seed=1" in rec["overrides"]
    assert len(rec["experiment_hash"]) == 64 and rec["train_minutes"] > 0 and rec["metrics"]["4"]["n"] == 10

    # 4. a fresh machine: the committed result files are the sweep's state; a changed hash is reported
    shutil.rmtree(out_dir)
    rc, out, _ = run_cli(["status", path], capsys)
    assert out.count("done (committed result)") == 4
    rc, out, _ = run_cli(["run", path], capsys)
    assert rc == 0 and out.count("done (committed result)") == 4 and not (out_dir / "cells").exists()
    tampered = dict(rec, protocol_hash="0" * 64)
    (results / "cells" / "vca__seed1.json").write_text(json.dumps(tampered))
    rc, out, _ = run_cli(["run", path], capsys)
    assert rc == 1 and "stale committed result (protocol changed" in out and "not recomputed" in out
    assert json.loads((results / "cells" / "vca__seed1.json").read_text()) == tampered
    rc, out, _ = run_cli(["status", path], capsys)
    assert "stale committed result" in out


def test_an_attempt_killed_without_notice_is_counted_in_the_cell_time(tmp_path):
    """A stage whose sweep died (SIGKILL: no end event) is closed on the next attempt with the
    seconds from its start to the last write to its logs, and the cell time includes them."""
    from types import SimpleNamespace

    from vca_gen.sweep.cells import Stage, read_events, run_stage, stage_minutes

    cell = tmp_path / "cell"
    (cell / "logs").mkdir(parents=True)
    started = time.mktime(time.strptime("2026-01-02T03:04:05", "%Y-%m-%dT%H:%M:%S"))
    (cell / "stages.jsonl").write_text(
        json.dumps({"time": "2026-01-02T03:04:05", "stage": "train", "kind": "train", "event": "start"}) + "\n"
    )
    for name, offset in (("train.stdout", 30), ("train.stderr", 123)):  # the last log write: 123 s in
        (cell / "logs" / name).write_text("progress\n")
        os.utime(cell / "logs" / name, (started + offset, started + offset))
    stage = Stage("train", "train", None, [sys.executable, "-c", "pass"], str(cell / "train.json"))
    assert run_stage(SimpleNamespace(cell_dir=str(cell), key="k", variant="v", seed=0), stage) == 0
    events = read_events(cell)
    assert [e["event"] for e in events] == ["start", "interrupted", "start", "done"]
    assert events[1]["seconds"] == 123.0
    assert stage_minutes(events, "train") == pytest.approx((123.0 + events[3]["seconds"]) / 60)


def test_stage_hooks_are_a_parameter_of_the_plan(tmp_path):
    """Test hooks reach the stages through the plan (StageHooks), not the environment: every stage's
    script runs through the launcher (also under accelerate launch), and a named stage fails with 9."""
    from types import SimpleNamespace

    from vca_gen.sweep.cells import run_stage, stages

    s = micro(tmp_path)
    hooks = StageHooks(launcher=("/t/hooked_cli.py", "--save-pause", "3"), fail=("vca__seed1:score@4",))
    plain = validate(load_sweep(write(tmp_path, s))).cells[0]
    hooked = validate(load_sweep(write(tmp_path, s)), hooks=hooks).cells[0]
    assert plain.hooks == StageHooks() and hooked.hooks == hooks
    for a, b in zip(stages(plain), stages(hooked), strict=True):
        assert a.argv[0] == b.argv[0] == sys.executable and b.argv[1:4] == ["/t/hooked_cli.py", "--save-pause", "3"]
        assert b.argv[4:] == a.argv[1:]  # the script and its arguments, unchanged
    s["execution"] = {**s["execution"], "processes": 2}
    multi = validate(load_sweep(write(tmp_path, s)), hooks=hooks).cells[0]
    train = stages(multi)[0].argv
    i = train.index("/t/hooked_cli.py")
    assert "accelerate.commands.launch" in train[:i] and train[i + 3].endswith("train.py")

    cell = tmp_path / "cell"
    cell.mkdir()
    plan = SimpleNamespace(cell_dir=str(cell), key="vca__seed1", variant="vca", seed=1, hooks=hooks)
    stage = stages(hooked)[2]
    assert stage.name == "score@4"
    assert run_stage(plan, stage) == 9
    failure = json.loads((cell / "failure.json").read_text())
    assert failure["exit_code"] == 9 and "forced failure" in failure["stderr_tail"][-1]
