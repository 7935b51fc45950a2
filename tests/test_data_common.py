"""Shared builders for the data tests (no tests here): tiny image folders and a tiny random VAE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ("ant", "bee", "cow")


def make_image_folder(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: random RGB PNGs of varying (non-square) sizes around 32 px."""
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 33 + 3 * i, 36 + (i % 2) * 10
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i:02d}.png")
    return root


def make_tiny_vae(path: Path) -> Path:
    """Randomly initialised tiny AutoencoderKL (down-sampling 2, 4 latent channels) saved to ``path``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(1234)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """(image folder, vae folder, complete store) — the store built by an in-process extraction."""
    from vca_gen.data.extract import extract

    base = tmp_path_factory.mktemp("tiny")
    images = make_image_folder(base / "images")
    vae = make_tiny_vae(base / "vae")
    store = base / "store"
    extract(str(images), str(store), vae=str(vae), image_size=32, batch_size=4, shard_size=5, num_workers=0)
    return images, vae, store
