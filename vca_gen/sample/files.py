"""Sample files: uint8 conversion, atomic shard files, the streamed final ``.npz``, PNGs.

Every file is written through :mod:`vca_gen.utils.io` (``atomic_savez``, ``atomic_path``,
``atomic_open``): under a temporary name ``.<name>.<random>.tmp`` in the same directory, given the
umask's mode (0644 under umask 022), and moved into place with ``os.replace``, so a kill never
leaves a partial file under a final name. The final ``samples.npz``
holds ``arr_0`` uint8 (N, H, W, 3) -- the ADM evaluator's sample-batch format -- and ``arr_1`` the
int64 class labels (as guided-diffusion's sampling script writes them); it is streamed shard by
shard into the zip archive, so 50K images never sit in memory at once.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from numpy.typing import DTypeLike

from vca_gen.utils.io import atomic_open, atomic_path, make_dir
from vca_gen.utils.io import atomic_savez as _atomic_savez

from .plan import SamplingError

SHARD_RE = re.compile(r"^shard_(\d{5,})\.npz$")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, 3); one channel is replicated to three.

    Pixel value ``round((x + 1) * 127.5)`` clipped to 0..255, the inverse of ``u / 127.5 - 1``.
    """
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, H, W), got shape {tuple(x.shape)}")
    u = ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if u.shape[1] == 1:
        u = u.expand(-1, 3, -1, -1)
    return u.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def shard_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / f"shard_{shard:05d}.npz"


def atomic_savez(path: Path, what: str | None = None, **arrays: np.ndarray) -> None:
    """``np.savez`` to ``path`` atomically (see :func:`vca_gen.utils.io.atomic_savez`); a full disk is
    a :class:`~vca_gen.utils.io.WriteFaultError` with exit 75 (a re-run continues from the shards)."""
    _atomic_savez(path, False, what=what, resumable=True, **arrays)


def write_shard(out_dir: Path, shard: int, images: np.ndarray, labels: np.ndarray, indices: range) -> Path:
    """Write one finished shard atomically; returns its final path."""
    path = shard_path(out_dir, shard)
    atomic_savez(
        path,
        what=f"sampling shard {shard}",
        samples=images,
        labels=labels.astype(np.int64),
        indices=np.arange(indices.start, indices.stop, dtype=np.int64),
    )
    return path


def read_shard(path: Path, indices: range, image_shape: tuple[int, int, int] | None = None):
    """Load a shard and check it holds exactly ``indices``; returns (images uint8, labels int64)."""
    try:
        with np.load(path) as z:
            images, labels, idx = z["samples"], z["labels"], z["indices"]
    except Exception as e:  # corrupt zip, missing key, ...
        raise SamplingError(f"shard {path} is unreadable ({e}); delete it to regenerate it") from e
    want = np.arange(indices.start, indices.stop)
    ok = images.dtype == np.uint8 and images.ndim == 4 and images.shape[0] == len(want)
    ok = ok and np.array_equal(idx, want) and labels.shape == (len(want),)
    if image_shape is not None:
        ok = ok and tuple(images.shape[1:]) == tuple(image_shape)
    if not ok:
        raise SamplingError(
            f"shard {path} does not hold samples {indices.start}..{indices.stop - 1} of this run "
            f"(shape {images.shape}, dtype {images.dtype}); delete it to regenerate it"
        )
    return images, labels


def clean_temp_files(out_dir: Path) -> int:
    """Remove temporary files left by a killed run (in ``out_dir`` and ``out_dir/png``); returns how many."""
    n = 0
    for d in (Path(out_dir), Path(out_dir) / "png"):
        for p in d.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
    return n


def _write_npy_header(f, shape: tuple[int, ...], dtype: DTypeLike) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_2_0(f, header)


def stream_npz(
    path: Path, total: int, item_shape: tuple[int, ...], chunks: Iterable[tuple[np.ndarray, np.ndarray]]
) -> None:
    """Write ``path`` with ``arr_0`` uint8 (total, *item_shape) and ``arr_1`` int64 labels (total,).

    ``chunks`` yields (images, labels) in order; the file appears under ``path`` only when complete.
    """
    path = Path(path)
    labels_all = np.empty(total, dtype=np.int64)
    need = total * (int(np.prod(item_shape)) + 8) + 4096  # images, labels, zip and npy headers
    with atomic_path(path, what="the samples file", need=need, resumable=True) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            written = 0
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                _write_npy_header(f, (total, *item_shape), np.uint8)
                for images, labels in chunks:
                    if images.dtype != np.uint8 or tuple(images.shape[1:]) != tuple(item_shape):
                        raise ValueError(
                            f"chunk of shape {images.shape} {images.dtype} does not fit {item_shape} uint8"
                        )
                    if written + len(images) > total:
                        raise ValueError(f"more than {total} images supplied")
                    f.write(np.ascontiguousarray(images).tobytes())
                    labels_all[written : written + len(images)] = labels
                    written += len(images)
            if written != total:
                raise ValueError(f"only {written} of {total} images supplied")
            with zf.open("arr_1.npy", "w") as f:
                np.lib.format.write_array(f, labels_all)


def save_pngs(directory: Path, images: np.ndarray, start: int) -> None:
    """Save images as ``{index:06d}.png`` (atomic per file, mode per umask)."""
    from PIL import Image

    directory = make_dir(directory, "the PNG images (--png)")
    for j, img in enumerate(images):
        final = directory / f"{start + j:06d}.png"
        # 50K files: no per-file fsync
        with atomic_open(final, "wb", durable=False, what="the PNG image", need=img.nbytes, resumable=True) as f:
            Image.fromarray(img).save(f, format="PNG")


def iter_shards(out_dir: Path, plan, image_shape=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (images, labels) of every shard of ``plan`` in order (all must be complete)."""
    for k in range(plan.num_shards):
        yield read_shard(shard_path(out_dir, k), plan.indices(k), image_shape)
