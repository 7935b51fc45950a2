"""Shared test set-up: deterministic, one torch thread per xdist worker, offline assets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("VCA_GEN_ASSETS", REPO / ".assets"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return ASSETS


@pytest.fixture(scope="session")
def inception_weights() -> Path:
    p = ASSETS / "inception" / "default_1.pt"
    if not p.is_file():
        pytest.fail(f"{p} missing: run `python scripts/fetch_assets.py inception` (make test does)")
    return p


@pytest.fixture(scope="session")
def animal_mnist_dir() -> Path:
    p = ASSETS / "animal_mnist"
    if not (p / "animal_data_version_3.gz").is_file():
        pytest.fail(f"{p} missing: run `python scripts/fetch_assets.py animal_mnist` (make test does)")
    return p
