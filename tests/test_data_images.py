"""Image folders: ADM centre crop, class/extension scanning, RGB conversion, errors, unreadable files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vca_gen.data.images import ImageFolderDataset, UnreadableImageError, center_crop_arr
from vca_gen.data.sampler import ItemKey, item_generator


def _reference_crop(img: Image.Image, size: int) -> tuple[np.ndarray, int]:
    """Independent ADM crop: count the BOX halvings first, crop with PIL's box instead of slicing."""
    w, h = img.size
    halvings = 0
    while min(w >> halvings, h >> halvings) >= 2 * size:  # w // 2**k == w >> k
        halvings += 1
    for _ in range(halvings):
        img = img.resize((img.width // 2, img.height // 2), Image.BOX)
    short = min(img.size)
    new = (int(np.floor(img.width * size / short + 0.5)), int(np.floor(img.height * size / short + 0.5)))
    img = img.resize(new, Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size))), halvings


@pytest.mark.parametrize("wh,size,expect_halvings", [((517, 300), 64, 2), ((384, 512), 64, 2), ((50, 41), 32, 0)])
def test_center_crop_matches_independent_implementation(wh, size, expect_halvings):
    rng = np.random.default_rng(0)
    w, h = wh
    # smooth gradient + noise so resampling differences would show
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
    img = Image.fromarray(arr)
    out = center_crop_arr(img, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    ref, halvings = _reference_crop(img, size)
    assert halvings == expect_halvings  # the cases exercise 0 and 2 BOX halvings
    np.testing.assert_array_equal(out, ref)


def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def test_folder_scanning_conversion_range_and_flip(tmp_path):
    rng = np.random.default_rng(1)
    _save(tmp_path / "zebra" / "a.PNG", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    _save(tmp_path / "zebra" / "sub" / "b.jpeg", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    _save(tmp_path / "ant" / "gray.bmp", np.full((36, 36), 200, dtype=np.uint8))  # grayscale
    _save(tmp_path / "ant" / "rgba.webp", rng.integers(0, 256, (36, 36, 4), dtype=np.uint8))  # RGBA
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, 32, random_flip=True, seed=4)
    assert ds.classes == ["ant", "zebra"]
    assert [p.split("/")[-1] for p, _ in ds.samples] == ["gray.bmp", "rgba.webp", "a.PNG", "b.jpeg"]
    assert ds.targets == [0, 0, 1, 1]
    x, y = ds[ItemKey(0, 0)]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64 and y.item() == 0
    assert torch.allclose(x, torch.full_like(x, 200 / 127.5 - 1))  # gray replicated to RGB, scaled to [-1, 1]
    x, _ = ds[ItemKey(0, 1)]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
    # flip decided by the (seed, epoch, index) generator only
    plain = ImageFolderDataset(tmp_path, 32, random_flip=False)
    for epoch in range(6):
        coin = torch.rand((), generator=item_generator(4, epoch, 2)) < 0.5
        want = plain[2][0].flip(-1) if coin else plain[2][0]
        assert torch.equal(ds[ItemKey(epoch, 2)][0], want)
        ds.set_epoch(epoch)
        assert torch.equal(ds[2][0], want)


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*\.jpg, \.jpeg, \.png, \.webp, \.bmp"):
        ImageFolderDataset(tmp_path / "nope", 32)
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path, 32)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match=rf"{tmp_path}.*no image files with extensions \.jpg"):
        ImageFolderDataset(tmp_path, 32)


def test_unreadable_image_policy(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(3):
        _save(tmp_path / "c" / f"{i}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (tmp_path / "c" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # index 1 is corrupt
    ds = ImageFolderDataset(tmp_path, 32, random_flip=False)
    with pytest.warns(RuntimeWarning, match=r"1\.png"):
        x, _ = ds[1]
    assert torch.equal(x, ds[2][0])  # deterministic substitute: the next readable file
    with pytest.raises(IndexError, match="image index 3 out of range for 3 images"):
        ds[3]
    assert ds.num_unreadable == 1
    strict = ImageFolderDataset(tmp_path, 32, strict=True)
    with pytest.raises(UnreadableImageError, match=r"cannot read image .*c/1\.png"):
        strict[1]
    # counted across DataLoader worker processes
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        next(iter(loader))
    assert ds.num_unreadable == 2
