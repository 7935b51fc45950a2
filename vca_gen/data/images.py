"""ImageNet-style class folders with the ADM centre crop.

Layout: ``root/<class_name>/**/<file>``; classes are the sorted sub-folder names (index = position),
files are found recursively (sorted), extensions ``.jpg .jpeg .png .webp .bmp`` (any case).

Pre-processing (as openai/guided-diffusion and DiT/fast-DiT): convert to RGB (alpha dropped,
grayscale replicated), :func:`center_crop_arr`, optional horizontal flip, scale to [-1, 1].
Items are ``(x, y)``: x float32 (3, S, S), y int64.

Unreadable images (policy): files are *not* opened at construction (1.28M files); a file that fails
to decode at load time is, by default, replaced by the next readable file in listing order
(``index + 1, index + 2, ...``, deterministic), a warning naming it is emitted once per process, and
it is counted in :attr:`ImageFolderDataset.num_unreadable` (shared across DataLoader workers).
``strict=True`` raises :class:`UnreadableImageError` naming the file instead. Latent extraction uses
strict loading by default (``--skip-unreadable`` leaves such files out of the store and lists them).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vca_gen.data.sampler import item_generator, split_key
from vca_gen.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MAX_SUBSTITUTIONS = 32  # consecutive unreadable files tolerated before giving up
COUNTER_SLOTS = 1024  # per-process unreadable counters (DataLoader workers per dataset instance)


class ImageFolderError(UserError, ValueError):
    """An image folder that cannot be used (no class sub-folders, no images)."""


class ImageFolderMissing(UserError, FileNotFoundError):
    """An image folder that does not exist or is not a directory."""


class UnreadableImageError(UserError, RuntimeError):
    """An image file could not be opened or decoded (training data, latent extraction, FID folders)."""


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM centre crop: halve with BOX while the short side >= 2*size, BICUBIC so the short side
    equals ``size``, then crop the centre square. Returns uint8 (size, size, C)."""
    img = pil_image
    while min(img.size) >= 2 * image_size:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.Resampling.BOX)
    scale = image_size / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def to_tensor_pm1(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) in [-1, 1]."""
    return (
        torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1.0)
    )  # copy: PIL arrays are read-only


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB; raise :class:`UnreadableImageError` naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(path, class_index), ...]) of a class-folder tree; clear errors when unusable."""
    root = Path(root)
    accepted = ", ".join(IMAGE_EXTENSIONS)
    if not root.exists():
        raise ImageFolderMissing(
            f"image folder {root} does not exist (expected {root}/<class_name>/<image> with extensions {accepted})"
        )
    if not root.is_dir():
        raise ImageFolderMissing(f"image folder {root} is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ImageFolderError(
            f"image folder {root} has no class sub-folders (expected {root}/<class_name>/<image> "
            f"with extensions {accepted})"
        )
    samples: list[tuple[str, int]] = []
    for ci, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            for f in sorted(filenames):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    samples.append((os.path.join(dirpath, f), ci))
    if not samples:
        raise ImageFolderError(
            f"image folder {root} has class sub-folders {classes[:5]}{'...' if len(classes) > 5 else ''} "
            f"but no image files with extensions {accepted}"
        )
    return classes, samples


class ImageFolderDataset(Dataset):
    """Class-folder images, ADM centre crop to ``image_size``, optional random flip, [-1, 1].

    ``dataset[(epoch, index)]`` (what the sampler yields) or ``dataset[index]`` (uses
    :meth:`set_epoch`'s epoch). The flip is drawn from ``item_generator(seed, epoch, index)``.
    """

    def __init__(
        self, root: str | os.PathLike, image_size: int, random_flip: bool = True, seed: int = 0, strict: bool = False
    ):
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.root, self.image_size = Path(root), int(image_size)
        self.random_flip, self.seed, self.strict = random_flip, int(seed), strict
        self.classes, self.samples = scan_image_folder(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = [c for _, c in self.samples]
        self.epoch = 0
        # one counter slot per process (main = 0, worker i = i + 1) in shared memory: no lock needed,
        # and it pickles into DataLoader workers under both fork and spawn start methods.
        self._unreadable = torch.zeros(COUNTER_SLOTS, dtype=torch.int64).share_memory_()
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def num_unreadable(self) -> int:
        """How many loads hit an unreadable file and were substituted (all workers)."""
        return int(self._unreadable.sum())

    def _note_unreadable(self, err: UnreadableImageError, path: str) -> None:
        info = torch.utils.data.get_worker_info()
        self._unreadable[(0 if info is None else info.id + 1) % COUNTER_SLOTS] += 1
        if path not in self._warned:
            self._warned.add(path)
            warnings.warn(f"{err}; substituting the next readable image (strict=False)", RuntimeWarning, stacklevel=2)

    def load_image(self, index: int) -> tuple[np.ndarray, int]:
        """Centre-cropped uint8 (S, S, 3) and label of ``index`` (after the unreadable policy)."""
        n = len(self.samples)
        if not 0 <= index < n:
            raise IndexError(f"image index {index} out of range for {n} images in {self.root}")
        for k in range(MAX_SUBSTITUTIONS + 1):
            path, label = self.samples[(index + k) % n]
            try:
                return center_crop_arr(load_rgb(path), self.image_size), label
            except UnreadableImageError as e:
                if self.strict:
                    raise
                self._note_unreadable(e, path)
        raise UnreadableImageError(
            f"{MAX_SUBSTITUTIONS + 1} consecutive unreadable images from "
            f"{self.samples[index][0]} on; is {self.root} intact?"
        )

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = split_key(key)
        epoch = self.epoch if epoch is None else epoch
        arr, label = self.load_image(index)  # (S, S, 3) uint8
        if self.random_flip and torch.rand((), generator=item_generator(self.seed, epoch, index)) < 0.5:
            arr = arr[:, ::-1]
        return to_tensor_pm1(arr), torch.tensor(label, dtype=torch.int64)
