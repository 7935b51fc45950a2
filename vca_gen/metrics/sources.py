"""Image sources streamed as uint8 (B, H, W, 3) batches: ``.npz`` sample batches, image folders,
in-memory arrays / iterables of batches, and the Animal-MNIST data set.

Nothing here converts a whole set to float: an ``.npz`` is read from its zip member a batch at a
time (compressed or not), folders are decoded by DataLoader workers.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from vca_gen.data.images import UnreadableImageError
from vca_gen.metrics.errors import DatasetNotFound, InputFormatError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DATASETS = ("animal_mnist",)


def as_uint8_images(images, where: str = "images"):
    """Validate one batch: uint8 (B, H, W, 3) ndarray (gray (B,H,W) / (B,H,W,1) replicated) or a
    list of (H, W[, C]) uint8 arrays (returned as a list of (H, W, 3))."""
    if isinstance(images, (list, tuple)):
        return [as_uint8_images(np.asarray(im)[None], f"{where}[{i}]")[0] for i, im in enumerate(images)]
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise InputFormatError(
            f"{where}: dtype {arr.dtype}, expected uint8 images in [0, 255] "
            f"(convert float images with ((x + 1) * 127.5).round().clip(0, 255))"
        )
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or min(arr.shape[1:3], default=0) < 1:
        raise InputFormatError(
            f"{where}: shape {arr.shape}, expected (N, H, W, 3) uint8 (NHWC; "
            f"grayscale (N, H, W) or (N, H, W, 1) is replicated to 3 channels)"
        )
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


class ImageSource:
    """Base class: ``len()`` (or None), ``resolution`` ((H, W) or None), ``batches(batch_size)``."""

    description = "images"
    resolution: tuple[int, int] | None = None

    def __len__(self) -> int:
        raise TypeError("length unknown")

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[np.ndarray]:
        raise NotImplementedError


class ArraySource(ImageSource):
    """In-memory uint8 array (N, H, W[, C]) (numpy or torch)."""

    def __init__(self, images, description: str = "array"):
        self.images = as_uint8_images(images, description)
        self.description = description
        self.resolution = tuple(self.images.shape[1:3])

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[np.ndarray]:
        for i in range(0, len(self.images), batch_size):
            yield self.images[i : i + batch_size]


class IterableSource(ImageSource):
    """An iterable of uint8 batches (e.g. straight from a sampler); re-batched to ``batch_size``."""

    def __init__(self, iterable: Iterable, description: str = "iterable"):
        self.iterable, self.description = iterable, description

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[np.ndarray]:
        pending: list[np.ndarray] = []
        count = 0
        for i, b in enumerate(self.iterable):
            b = as_uint8_images(b, f"{self.description} batch {i}")
            self.resolution = self.resolution or tuple(b.shape[1:3])
            pending.append(b)
            count += len(b)
            while count >= batch_size:
                cat = np.concatenate(pending)
                yield cat[:batch_size]
                pending, count = [cat[batch_size:]], count - batch_size
        if count:
            yield np.concatenate(pending)


class NpzSource(ImageSource):
    """ADM-style sample batch: ``.npz`` whose ``arr_0`` is uint8 (N, H, W, 3) (or gray (N,H,W[,1]))."""

    def __init__(self, path: str | os.PathLike, key: str = "arr_0"):
        self.path, self.key = Path(path), key
        self.description = str(self.path)
        try:
            with zipfile.ZipFile(self.path) as zf:
                names = [n[:-4] if n.endswith(".npy") else n for n in zf.namelist()]
                if key not in names:
                    raise InputFormatError(
                        f"{path}: no `{key}` array (found keys {names}); an ADM sample "
                        f"batch must hold `{key}` = uint8 (N, H, W, 3)"
                    )
                with zf.open(key + ".npy") as f:
                    shape, fortran, dtype = _read_npy_header(f, f"{path}:{key}")
        except zipfile.BadZipFile as e:
            raise InputFormatError(f"{path}: not a valid .npz file ({e})") from e
        if dtype != np.uint8:
            raise InputFormatError(f"{path}: `{key}` has dtype {dtype}, expected uint8 images in [0, 255]")
        if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3))) or 0 in shape[1:]:
            raise InputFormatError(
                f"{path}: `{key}` has shape {shape}, expected (N, H, W, 3) (or grayscale (N, H, W) / (N, H, W, 1))"
            )
        if fortran:
            raise InputFormatError(f"{path}: `{key}` is stored in Fortran order; save a C-contiguous array")
        self.shape = shape
        self.resolution = tuple(shape[1:3])

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[np.ndarray]:
        per_image = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as zf, zf.open(self.key + ".npy") as f:
            _read_npy_header(f, self.description)
            for start in range(0, self.shape[0], batch_size):
                n = min(batch_size, self.shape[0] - start)
                buf = f.read(n * per_image)
                if len(buf) != n * per_image:
                    raise InputFormatError(f"{self.path}: `{self.key}` is truncated at image {start}")
                yield as_uint8_images(
                    np.frombuffer(buf, np.uint8).reshape((n,) + tuple(self.shape[1:])), self.description
                )


def _read_npy_header(f, where: str):
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        return np.lib.format.read_array_header_2_0(f)
    except ValueError as e:
        raise InputFormatError(f"{where}: not a readable .npy array ({e})") from e


def _read_rgb(path) -> np.ndarray:
    """(H, W, 3) uint8 of one image file; :class:`UnreadableImageError` when PIL cannot open or decode it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:  # PIL: UnidentifiedImageError, truncated data; or no permission to read the file
        raise UnreadableImageError(
            f"{path}: cannot read this image ({e}); fix, convert or remove the file "
            f"(accepted: files PIL can decode, extensions {', '.join(IMAGE_EXTENSIONS)})"
        ) from e


class _Unreadable(str):
    """The message of an image a DataLoader worker could not read (raised in the main process, so
    the user sees one line rather than the worker's re-raised traceback text)."""


class _FolderDataset(torch.utils.data.Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            return _read_rgb(self.files[i])  # (H, W, 3) uint8
        except UnreadableImageError as e:
            return _Unreadable(str(e))


class FolderSource(ImageSource):
    """All images under a folder (recursive, sorted), decoded to RGB by DataLoader workers."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.description = str(self.path)
        self.files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise InputFormatError(f"{path}: no images found (accepted extensions: {', '.join(IMAGE_EXTENSIONS)})")
        self.resolution = tuple(_read_rgb(self.files[0]).shape[:2])

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[np.ndarray]:
        loader = torch.utils.data.DataLoader(
            _FolderDataset(self.files), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
        )
        for batch in loader:
            if isinstance(batch, _Unreadable):
                raise UnreadableImageError(str(batch))
            yield batch


def _collate(items):
    """Stack same-size images into (B, H, W, 3); keep a list when sizes differ; the first unreadable
    image's message instead, if any."""
    bad = [im for im in items if isinstance(im, _Unreadable)]
    if bad:
        return bad[0]
    return np.stack(items) if len({im.shape for im in items}) == 1 else list(items)


class AnimalMNISTSource(ArraySource):
    """Real Animal-MNIST images (uint8, gray -> RGB), zero-padded (background) to ``image_size``
    like :class:`vca_gen.data.AnimalMNIST` does for training; ``split`` all / a / b."""

    def __init__(self, split: str = "all", image_size: int = 32, root=None):
        from vca_gen.data.animal_mnist import load_arrays, split_indices

        try:
            images, labels = load_arrays(root)
        except FileNotFoundError as e:  # its message names the missing file and how to fetch it
            raise DatasetNotFound(str(e)) from e
        if image_size < 28:
            raise InputFormatError(f"animal_mnist image_size={image_size}: must be >= 28")
        lo = (image_size - 28) // 2
        hi = image_size - 28 - lo
        imgs = np.pad(images[split_indices(labels, split)], ((0, 0), (lo, hi), (lo, hi)))  # (N, S, S)
        super().__init__(imgs, f"dataset:animal_mnist(split={split}, size={image_size})")


def open_source(spec, max_images: int | None = None, **dataset_options) -> ImageSource:
    """Turn a path (``.npz`` / folder), ``dataset:<name>``, an array or an iterable into a source."""
    if isinstance(spec, ImageSource):
        src = spec
    elif isinstance(spec, (np.ndarray, torch.Tensor)):
        src = ArraySource(spec)
    elif isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        name = s[len("dataset:") :] if s.startswith("dataset:") else s
        if s.startswith("dataset:") or (name in DATASETS and not Path(s).exists()):
            src = _dataset_source(name, dataset_options)
        elif Path(s).is_dir():
            src = FolderSource(s)
        elif Path(s).is_file():
            src = NpzSource(s)
        else:
            raise InputFormatError(
                f"{s}: no such file or folder (expected an .npz with `arr_0`, an image "
                f"folder, or dataset:{'|'.join(DATASETS)})"
            )
    elif isinstance(spec, Iterable):
        src = IterableSource(spec)
    else:
        raise InputFormatError(
            f"cannot read images from {type(spec).__name__}; pass an .npz path, a folder, "
            f"a uint8 array or an iterable of uint8 batches"
        )
    return src if max_images is None else LimitedSource(src, max_images)


def _dataset_source(spec: str, options: dict) -> ImageSource:
    """``animal_mnist[:split[:size]]``; parts given in the spec override ``options``."""
    name, *parts = spec.split(":")
    if name != "animal_mnist" or len(parts) > 2:
        raise InputFormatError(f"unknown dataset {spec!r}; accepted: dataset:animal_mnist[:all|a|b[:SIZE]]")
    opts = dict(options)
    if parts:
        opts["split"] = parts[0]
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise InputFormatError(f"dataset {spec!r}: size {parts[1]!r} is not an integer")
        opts["image_size"] = int(parts[1])
    if opts.get("split", "all") not in ("all", "a", "b"):
        raise InputFormatError(f"dataset {spec!r}: split {opts['split']!r} is not one of all, a, b")
    return AnimalMNISTSource(**opts)


class LimitedSource(ImageSource):
    """The first ``n`` images of another source."""

    def __init__(self, inner: ImageSource, n: int):
        if n < 1:
            raise InputFormatError(f"max_images={n}: must be >= 1")
        self.inner, self.n = inner, int(n)
        self.description = f"{inner.description}[:{n}]"
        self.resolution = inner.resolution

    def __len__(self) -> int:
        try:
            return min(self.n, len(self.inner))
        except TypeError:
            return self.n

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[np.ndarray]:
        left = self.n
        for b in self.inner.batches(batch_size, num_workers):
            if left <= 0:
                break
            yield b[:left]
            left -= len(b)


def balanced_animal_mnist(split: str, n: int) -> ArraySource:
    """The first ``n / 10`` images of each class of Animal-MNIST ``split`` (32 px), as a source: the
    class-balanced real set the demo and the toy sweeps use for reference statistics and floors."""
    from vca_gen.data.animal_mnist import CLASSES, load_arrays, split_indices

    k = n // len(CLASSES)
    if k < 1 or n % len(CLASSES):
        raise InputFormatError(f"real image count {n} is not valid; accepted: a positive multiple of {len(CLASSES)}")
    _, labels = load_arrays()
    y = labels[split_indices(labels, split)]
    pos = np.sort(np.concatenate([np.flatnonzero(y == c)[:k] for c in range(len(CLASSES))]))
    src = AnimalMNISTSource(split=split, image_size=32)
    return ArraySource(src.images[pos], f"animal_mnist(split={split}, {k}/class, 32px)")
