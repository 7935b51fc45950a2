"""``python -m vca_gen.apps.demo --quick``: the whole demo pipeline end to end on a tiny model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, animal_mnist_dir, inception_weights):
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "vca_gen.apps.demo", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert [e["step"] for e in res["evals"]] == [0, 10, 20]
    fids = {e["step"]: e["fid"] for e in res["evals"]}
    assert all(math.isfinite(f) and f > 0 for f in fids.values()) and math.isfinite(res["fid_real"])
    # the checkpoints really differ: 20 steps already move samples from noise towards the data
    assert fids[20] < fids[0]
    assert res["n_gen"] == 10 and res["nfe"] == 4 and res["sampler"] == "euler"
    for f in ("report.md", "grid.png", "loss.png", "fid_vs_step.png"):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text()
    assert "quick smoke run" in report and f"{fids[20]:.2f}" in report and f"{fids[0]:.2f}" in report
    # re-running reuses every finished stage (no retraining, no resampling)
    r2 = subprocess.run(
        [sys.executable, "-m", "vca_gen.apps.demo", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "sampling 10 images" in r2.stdout and "wrote" not in r2.stderr
    assert json.loads((out / "results.json").read_text())["evals"] == res["evals"]
