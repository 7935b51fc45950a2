"""``pip install .`` into a fresh virtualenv, then the demo from a directory outside the checkout:
configs ship in the package and assets are found without the checkout's layout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_pip_install_then_quick_demo_from_elsewhere(tmp_path, inception_weights, animal_mnist_dir):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # the heavy dependencies (torch, diffusers, ...) come from this environment, on sys.path after the new
    # venv's own site-packages (a path line in a .pth: this environment's editable install is not activated)
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(REPO)], check=True, env=env, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.check_output(
        [str(py), "-c", "import vca_gen; print(vca_gen.__file__)"], text=True, cwd=elsewhere, env=env
    ).strip()
    assert Path(where).resolve().is_relative_to(site.resolve()), where  # the installed copy, not the checkout
    env.update(
        VCA_GEN_ASSETS=str(animal_mnist_dir.parent), VCA_GEN_INCEPTION=str(inception_weights), OMP_NUM_THREADS="2"
    )
    r = subprocess.run(
        [str(py), "-m", "vca_gen.demo", "--quick", "--out", "demo"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = (elsewhere / "demo" / "report.md").read_text()
    assert "FID" in report
