"""Animal-MNIST: the offline demo data set (``animal-mnist==0.4``, MIT).

Facts checked on the shipped files (``animal_data_version_3.gz`` / ``animal_label_version_3.gz``,
gzip'd pickles of numpy arrays):

* images: uint8 (10000, 28, 28), full range 0..255; **white silhouettes on a black background**
  (border pixels are ~0, object pixels up to 255), MNIST polarity;
* labels: int64 0..9, 1000 per class, stored sorted by class; label ``k`` is the ``k``-th name of
  ``Bear, Bird, Cat, Cow, Dog, Elephant, Giraffe, Horse, Sheep, Zebra`` (checked by eye on a grid).

Items: x float32 (1, S, S) in [-1, 1] (background -1), the 28x28 image zero-padded (background) to
``image_size`` (default 32: 2 px on each side); y int64. Optional random horizontal flip from the
per-item generator (constraint B of :mod:`vca_gen.data.sampler`).

``split``: ``"all"`` (10000), or the deterministic, class-balanced halves ``"a"`` / ``"b"`` (500 per
class each, disjoint; fixed permutation, independent of ``seed``) — e.g. for a real-vs-real FID check.

The pickles are read with :class:`SafeNumpyUnpickler`, which admits only numpy's array
reconstruction globals; anything else is an error.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vca_gen.data.sampler import item_generator, split_key
from vca_gen.utils.assets import assets_dir

CLASSES = ("Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra")
DATA_FILE, LABEL_FILE = "animal_data_version_3.gz", "animal_label_version_3.gz"
SPLITS = ("all", "a", "b")
_SPLIT_SEED = 20240601  # fixed: the halves never change
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class SafeNumpyUnpickler(pickle.Unpickler):
    """Unpickler that only reconstructs numpy arrays (no arbitrary code execution)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed")
        mod = "numpy._core.multiarray" if module.endswith("multiarray") else module
        try:
            return getattr(__import__(mod, fromlist=[name]), name)
        except ImportError:  # numpy < 2
            return getattr(__import__("numpy.core.multiarray", fromlist=[name]), name)


def load_numpy_pickle(path: str | os.PathLike) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        obj = SafeNumpyUnpickler(f).load()
    if not isinstance(obj, np.ndarray):
        raise ValueError(f"{path}: expected a pickled numpy array, got {type(obj).__name__}")
    return obj


def default_root() -> Path:
    """``<assets>/animal_mnist`` (see :func:`vca_gen.utils.assets.assets_dir`)."""
    return assets_dir() / "animal_mnist"


def load_arrays(root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validated (images uint8 (10000, 28, 28), labels int64 (10000,))."""
    root = Path(root) if root is not None else default_root()
    for f in (DATA_FILE, LABEL_FILE):
        if not (root / f).is_file():
            raise FileNotFoundError(
                f"Animal-MNIST file {root / f} is missing: run `make assets` or "
                f"`python scripts/fetch_assets.py animal_mnist` (or set VCA_GEN_ASSETS)"
            )
    images, labels = load_numpy_pickle(root / DATA_FILE), load_numpy_pickle(root / LABEL_FILE)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{root / DATA_FILE}: expected uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    labels = labels.astype(np.int64).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise ValueError(f"{root / LABEL_FILE}: labels outside 0..{len(CLASSES) - 1}")
    return images, labels


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of ``split``: all, or a class-balanced half ("a" / "b") fixed forever."""
    if split not in SPLITS:
        raise ValueError(f"Animal-MNIST split {split!r} is not valid; accepted: {list(SPLITS)}")
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(_SPLIT_SEED)
    picked = []
    for c in range(len(CLASSES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        half = len(idx) // 2
        picked.append(idx[:half] if split == "a" else idx[half : 2 * half])
    return np.sort(np.concatenate(picked))


class AnimalMNIST(Dataset):
    """Animal-MNIST as ``(x (1, S, S) float32 in [-1, 1], y int64)``."""

    classes = list(CLASSES)

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "all",
        image_size: int = 32,
        random_flip: bool = False,
        seed: int = 0,
    ):
        if int(image_size) < 28:
            raise ValueError(f"image_size={image_size}: Animal-MNIST images are 28x28, need image_size >= 28")
        images, labels = load_arrays(root)
        keep = split_indices(labels, split)
        lo = (int(image_size) - 28) // 2
        hi = int(image_size) - 28 - lo
        # background is 0 (black): pad with it -> -1 after scaling.
        padded = np.pad(images[keep], ((0, 0), (lo, hi), (lo, hi)), constant_values=0)  # (N, S, S)
        self.images = torch.from_numpy(np.ascontiguousarray(padded))
        self.labels = torch.from_numpy(labels[keep])
        self.source_indices = keep
        self.split, self.image_size, self.random_flip, self.seed = split, int(image_size), random_flip, int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = split_key(key)
        epoch = self.epoch if epoch is None else epoch
        x = self.images[index].float().div(127.5).sub(1.0).unsqueeze(0)  # (1, S, S)
        if self.random_flip and torch.rand((), generator=item_generator(self.seed, epoch, index)) < 0.5:
            x = x.flip(-1)
        return x, self.labels[index].clone()
