"""Animal-MNIST: safe loading, shape/range/polarity/padding, classes and balance, splits."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from vca_gen.data.animal_mnist import AnimalMNIST, load_numpy_pickle


class _TestUnpickler(pickle.Unpickler):  # independent of the module's loader
    def find_class(self, module, name):
        assert name in ("_reconstruct", "ndarray", "dtype"), (module, name)
        return super().find_class(module, name)


@pytest.fixture(scope="module")
def raw(animal_mnist_dir):
    with gzip.open(animal_mnist_dir / "animal_data_version_3.gz") as f:
        images = _TestUnpickler(f).load()
    with gzip.open(animal_mnist_dir / "animal_label_version_3.gz") as f:
        labels = _TestUnpickler(f).load()
    return images, labels


def test_shape_range_padding_classes_balance(animal_mnist_dir, raw):
    images, labels = raw
    ds = AnimalMNIST(animal_mnist_dir)
    assert len(ds) == 10000
    assert ds.classes == ["Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra"]
    assert torch.equal(torch.bincount(ds.labels, minlength=10), torch.full((10,), 1000))
    for i in (0, 4321, 9999):
        x, y = ds[i]
        assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert y.item() == int(labels[i])
        torch.testing.assert_close(
            x[0, 2:30, 2:30], torch.from_numpy(images[i].astype(np.float32)) / 127.5 - 1, rtol=0, atol=1e-6
        )
        border = torch.cat([x[0, :2].flatten(), x[0, 30:].flatten(), x[0, :, :2].flatten(), x[0, :, 30:].flatten()])
        assert torch.all(border == -1)  # padded with the (black) background value
    allx = ds.images.float()
    assert allx.min() == 0 and allx.max() == 255  # full uint8 range before scaling
    # polarity: white objects on black background -> the 28x28 border is dark, the centre bright
    assert images[:, 0, :].mean() < 10 and images[:, 10:18, 10:18].mean() > 150


def test_splits_are_disjoint_balanced_halves(animal_mnist_dir):
    a, b = AnimalMNIST(animal_mnist_dir, split="a"), AnimalMNIST(animal_mnist_dir, split="b")
    assert len(a) == len(b) == 5000
    assert set(a.source_indices.tolist()).isdisjoint(b.source_indices.tolist())
    assert torch.equal(torch.bincount(a.labels), torch.full((10,), 500))
    assert torch.equal(torch.bincount(b.labels), torch.full((10,), 500))
    assert torch.equal(AnimalMNIST(animal_mnist_dir, split="a", seed=9).labels, a.labels)  # fixed forever
    with pytest.raises(ValueError, match=r"split 'c' is not valid; accepted: \['all', 'a', 'b'\]"):
        AnimalMNIST(animal_mnist_dir, split="c")


def test_malicious_pickle_is_refused_and_missing_asset_is_explained(tmp_path):
    evil = tmp_path / "evil.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump(os.system, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle global posix.system"):
        load_numpy_pickle(evil)
    with pytest.raises(FileNotFoundError, match=r"make assets.*fetch_assets\.py animal_mnist"):
        AnimalMNIST(tmp_path)
