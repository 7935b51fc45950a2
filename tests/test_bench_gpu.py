"""bench/gpu.py: the CPU smoke run writes every section with numbers; guards, budget and sync counting."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


gpu = _load()


def _run(args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO)
    )


def _pos(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    proc = _run(["--smoke", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def test_smoke_json_has_every_section_with_numbers(smoke):
    res, stdout = smoke
    assert res["smoke"] is True and res["finished"] is True
    assert res["torch"] == torch.__version__ and "cuda" in res and res["device"].startswith("CPU")
    assert res["budget_exceeded"] is False and res["skipped"] == []
    assert res["elapsed_s"] < 120  # "well under a minute" on an idle machine; generous for shared CPUs
    assert set(res["sections"]) == {"train", "syncs", "sampling", "attention"}

    train = res["sections"]["train"]
    assert train["status"] == "ok"
    keys = {(r["model"], r["attention"], r["mode"]) for r in train["rows"]}
    assert keys == {
        (m, a, mode) for m in ("DiT-S/2", "DiT-XL/2") for a in ("mhsa", "vca") for mode in ("eager", "compile")
    }
    for r in train["rows"]:
        assert r["status"] == "ok", r
        for k in ("images_per_s", "wall_images_per_s", "sec_per_step", "peak_mem_mb", "first_step_s", "final_loss"):
            assert _pos(r[k]), (k, r)
        assert r["peak_mem_over_start_mb"] >= 0 and r["loss_finite"] is True
        assert r["timed_steps"] == 2 and r["depth"] == 2 and r["hidden_size"] == 64
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["sec_per_step"], rel=1e-6)
        assert r["precision"] == "bf16 autocast"
        assert r["syncs"]["syncs_per_step"] == "not applicable (CPU)"
        if r["mode"] == "compile":
            assert r["compile_backend"] == "aot_eager" and r["unique_graphs"] >= 1

    syncs = res["sections"]["syncs"]
    assert syncs["status"] == "not applicable (CPU)"
    assert len(syncs["rows"]) == 8 and all(r["syncs_per_step"] == "not applicable (CPU)" for r in syncs["rows"])

    sampling = res["sections"]["sampling"]
    assert sampling["status"] == "ok" and sampling["extrapolated"] is True
    assert {(r["attention"], r["precision"]) for r in sampling["rows"]} == {
        (a, p) for a in ("mhsa", "vca") for p in ("bf16 autocast", "fp32")
    }
    for r in sampling["rows"]:
        assert r["status"] == "ok" and r["model"] == "DiT-XL/2" and r["sampler"] == "ddpm" and r["steps"] == 250
        assert r["extrapolated"] is True and r["timed_steps"] == 2
        assert _pos(r["images_per_s"]) and _pos(r["sec_per_step"])
        assert r["images_per_s"] == pytest.approx(r["batch"] / (250 * r["sec_per_step"]), rel=1e-6)
        assert r["sec_per_batch_extrapolated"] == pytest.approx(250 * r["sec_per_step"], rel=1e-6)
        assert "250" in r["note"] and r["syncs_per_step"] == "not applicable (CPU)"

    att = res["sections"]["attention"]
    assert att["status"] == "ok"
    assert {(r["kind"], r["tokens"]) for r in att["rows"]} == {(k, n) for k in ("mhsa", "vca") for n in (64, 256)}
    for r in att["rows"]:
        assert _pos(r["fwd_bwd_s"]) and _pos(r["peak_mem_mb"]) and r["peak_mem_over_start_mb"] >= 0
    for k in ("mhsa_over_vca_time_64", "mhsa_over_vca_time_256", "vca_time_256_over_64"):
        assert _pos(att["ratios"][k]), att["ratios"]

    assert "| model | attention | mode |" in stdout and "| attention | N |" in stdout and "DDPM-250" in stdout


def test_zero_budget_skips_every_unit_and_says_so(tmp_path):
    out = tmp_path / "g.json"
    proc = _run(["--smoke", "--budget-s", "0", "--out", str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["budget_exceeded"] is True and res["finished"] is True
    assert len(res["skipped"]) == 8 + 4 + 4
    for name in ("train", "sampling", "attention"):
        sec = res["sections"][name]
        assert sec["status"] == "skipped" and sec["rows"]
        assert all(r["status"] == "skipped" and "budget" in r["reason"] for r in sec["rows"])
    assert all(r["syncs_per_step"] == "not applicable (CPU)" for r in res["sections"]["syncs"]["rows"])


def test_budget_refusal():
    # counted from now, not from when the module was imported (a long test session passes 100 s)
    b = gpu.Budget(100.0, t0=time.perf_counter())
    assert b.refusal(10.0) is None
    assert "needs about 1000" in b.refusal(1000.0)
    b.t0 -= 200  # pretend 200 s have passed
    assert "exceeded" in b.refusal(0.0)


def _smoke_settings(*extra):
    return gpu.make_settings(gpu.parse_args(["--smoke", *extra]))


class _FakeSyncCache(gpu.ModelCache):
    """Models that raise two sync warnings and one unrelated warning per forward."""

    def get(self, spec, attention):
        model = super().get(spec, attention)

        def hook(module, args):
            warnings.warn(gpu.SYNC_MESSAGE + " (fake, from the test)")
            warnings.warn(gpu.SYNC_MESSAGE + " (fake, from the test)")
            warnings.warn("some other warning")

        model.register_forward_pre_hook(hook)
        return model


@pytest.mark.filterwarnings("ignore:called a synchronizing", "ignore:some other warning")
def test_sync_counting_counts_one_training_step():
    s = _smoke_settings()
    s.sync_steps = 3
    row = gpu.train_once(s, _FakeSyncCache(s), s.train_models[0], "vca", "eager", 2, count_syncs=True)
    sy = row["syncs"]
    assert sy["status"] == "ok" and sy["counted_steps"] == 3
    assert sy["syncs_per_step"] == 2.0  # one forward per training step, two syncs each; others ignored
    assert len(sy["sites"]) == 2 and sum(sy["sites"].values()) == 6  # two warning lines, three steps
    assert all("test_bench_gpu.py:" in site and n == 3 for site, n in sy["sites"].items())


@pytest.mark.filterwarnings("ignore:called a synchronizing", "ignore:some other warning")
def test_sync_counting_counts_one_sampling_step():
    s = _smoke_settings()
    row = gpu.sample_row(s, _FakeSyncCache(s), "mhsa", "fp32", count_syncs=True)
    assert row["syncs_per_step"] == 2  # exactly one sampler step (one model call) under the debug mode
    assert row["timed_steps"] == s.sample_steps and _pos(row["images_per_s"])


def test_capture_syncs_filters_messages():
    with gpu.capture_syncs() as log:
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation (Triggered internally at x.cpp:1.)")
        warnings.warn("unrelated")
    assert log.count() == 3 and log.count(since=2) == 1 and sum(log.sites().values()) == 3


def test_oom_halves_the_batch_and_other_errors_are_recorded(monkeypatch):
    s = _smoke_settings()
    calls = []

    def fake(s_, cache, spec, attention, mode, batch):
        calls.append(batch)
        if batch > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"model": spec.name, "batch": batch, "images_per_s": 1.0}

    monkeypatch.setattr(gpu, "train_once", fake)
    row = gpu.train_row(s, None, gpu.ModelSpec("DiT-S/2", 4), "mhsa", "eager")
    assert calls == [4, 2, 1]
    assert row["status"] == "ok" and row["batch"] == 1 and row["requested_batch"] == 4
    assert [r["batch"] for r in row["oom_retries"]] == [4, 2]

    def broken(*a, **k):
        raise RuntimeError("compile failed: something")

    monkeypatch.setattr(gpu, "train_once", broken)
    row = gpu.train_row(s, None, gpu.ModelSpec("DiT-S/2", 4), "vca", "compile")
    assert row["status"] == "error" and "compile failed" in row["error"] and row["oom"] is False
    assert row["oom_retries"] == [] and row["mode"] == "compile" and "Traceback" in row["traceback_tail"]


def test_a_failing_unit_is_recorded_and_the_rest_continues(tmp_path, monkeypatch):
    real = gpu.attention_row

    def flaky(s, kind, tokens):
        if kind == "vca":
            raise RuntimeError("CUDA out of memory (pretend)")
        return real(s, kind, tokens)

    monkeypatch.setattr(gpu, "attention_row", flaky)
    out = tmp_path / "g.json"
    assert gpu.main(["--smoke", "--sections", "attention", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    att = res["sections"]["attention"]
    assert att["status"] == "partial"
    by = {(r["kind"], r["tokens"]): r for r in att["rows"]}
    assert len(by) == 4
    for n in (64, 256):
        assert by[("vca", n)]["status"] == "error" and by[("vca", n)]["oom"] is True
        assert "pretend" in by[("vca", n)]["error"]
        assert by[("mhsa", n)]["status"] == "ok" and _pos(by[("mhsa", n)]["fwd_bwd_s"])
    assert res["sections"]["train"]["status"] == "skipped" and res["sections"]["train"]["rows"] == []
    assert att["ratios"] == {
        "mhsa_time_256_over_64": pytest.approx(by[("mhsa", 256)]["fwd_bwd_s"] / by[("mhsa", 64)]["fwd_bwd_s"])
    }
