"""Latent store: format, reader, and the training dataset over it.

Store layout (written by :mod:`vca_gen.data.extract`)::

    STORE/manifest.json              written last, by the main process
    STORE/shard_00000.safetensors    mean, std: (n, 2, c, h, w) store dtype; labels, indices: (n,) int64
    STORE/shard_00000.json           per-shard record (checksum, count, channel sums) used for resume

Axis 1 of ``mean``/``std`` is the copy: 0 = the centre-cropped image, 1 = its horizontal flip.
``indices`` are positions in the sorted source listing (``ImageFolderDataset.samples``). Shard ``k``
covers source indices ``[k*shard_size, (k+1)*shard_size)``; its ``n`` can be smaller when unreadable
images were skipped (``manifest["skipped"]``).

``manifest.json`` (``version`` 1): ``count`` (stored items), ``num_source_images``, ``image_size``,
``image_channels``, ``latent_shape`` [c, h, w], ``copies``, ``vae`` {id, subfolder, dtype,
latent_channels, downsample}, ``normalization`` (default used by :class:`LatentDataset`: {kind:
"scale", scale_factor} or {kind: "per_channel", mean, std}), ``latent_stats`` {mean, std} per channel
of posterior samples over both copies, ``store_dtype``, ``classes``, ``num_classes``, ``shard_size``,
``shards`` [{file, start, end, count, bytes, sha256}], ``skipped`` [{index, path}].

:class:`LatentDataset` items are ``(normalize(mean[k] + std[k] * eps), label)`` with the flip copy
``k`` and ``eps`` drawn from ``item_generator(seed, epoch, index)`` (constraint B), float32 (c, h, w).
Checksums: ``verify="eager"`` hashes every shard at construction, ``"lazy"`` (class default) hashes a
shard the first time a process opens it, ``"size"`` only checks file sizes (always done). Every
DataLoader worker is its own process, so ``"lazy"`` re-reads the whole store once per worker and rank:
fine for small stores, wasteful for ImageNet (84 GB in float32). Training configs therefore default to
``"size"`` (``DataConfig.verify``): extraction already hashed every shard when writing it and re-hashes
on resume; run ``LatentStore(path, verify="eager")`` once after copying a store to another machine.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path
from typing import cast

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from vca_gen.data.config import VERIFY_MODES
from vca_gen.data.sampler import item_generator, split_key
from vca_gen.data.vae import LatentNormalizer, as_normalizer
from vca_gen.errors import UserError
from vca_gen.utils.io import atomic_write_json, sha256_file

FORMAT, VERSION = "vca-gen-latents", 1
MANIFEST = "manifest.json"
REQUIRED_KEYS = (
    "format",
    "version",
    "count",
    "image_size",
    "latent_shape",
    "vae",
    "normalization",
    "latent_stats",
    "classes",
    "shards",
)


class StoreError(UserError, ValueError):
    """A latent store is missing, incomplete, corrupt or incompatible."""


def shard_name(k: int) -> str:
    return f"shard_{k:05d}.safetensors"


def write_json_atomic(path: str | os.PathLike, obj, what: str = "a latent-store record") -> None:
    """Write JSON (sorted keys, deterministic) atomically; a full disk is a
    :class:`~vca_gen.utils.io.WriteFaultError` with exit 75 (re-running the extraction continues)."""
    atomic_write_json(path, obj, indent=1, what=what, resumable=True)


def same_vae(a: str | None, b: str | None) -> bool:
    """Same VAE id, or local paths resolving to the same folder."""
    if a == b:
        return True
    if a is None or b is None:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


class LatentStore:
    """Read access to a latent store: ``store[i] -> (mean (2,c,h,w), std (2,c,h,w), label)`` float32."""

    def __init__(self, path: str | os.PathLike, verify: str = "lazy"):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify={verify!r} is not valid; accepted: {list(VERIFY_MODES)}")
        self.path, self.verify = Path(path), verify
        mpath = self.path / MANIFEST
        if not self.path.is_dir():
            raise StoreError(
                f"latent store {self.path} does not exist; create it with "
                f"`python -m vca_gen.data.extract --images DIR --out {self.path}`"
            )
        if not mpath.is_file():
            raise StoreError(
                f"{self.path} has no {MANIFEST}: the extraction did not finish; re-run the same "
                f"`python -m vca_gen.data.extract` command to resume it"
            )
        try:
            self.manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{mpath} is not valid JSON: {e}") from e
        missing = [k for k in REQUIRED_KEYS if k not in self.manifest]
        if missing or self.manifest.get("format") != FORMAT:
            raise StoreError(f"{mpath} is not a vca-gen latent store manifest (missing keys {missing})")
        if self.manifest["version"] != VERSION:
            raise StoreError(f"{mpath}: store version {self.manifest['version']} is not supported (expected {VERSION})")
        self.shards = self.manifest["shards"]
        counts = [int(s["count"]) for s in self.shards]
        self._offsets = [0]
        for c in counts:
            self._offsets.append(self._offsets[-1] + c)
        if self._offsets[-1] != int(self.manifest["count"]):
            raise StoreError(
                f"{mpath}: shard counts sum to {self._offsets[-1]}, manifest count is {self.manifest['count']}"
            )
        for s in self.shards:
            f = self.path / s["file"]
            if not f.is_file():
                raise StoreError(f"latent store shard {f} is missing")
            if f.stat().st_size != int(s["bytes"]):
                raise StoreError(
                    f"latent store shard {f} has {f.stat().st_size} bytes, manifest says {s['bytes']} "
                    f"(truncated or replaced)"
                )
        if verify == "eager":
            for k in range(len(self.shards)):
                self._check_sha(k)
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    # -- manifest accessors -------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return cast("tuple[int, int, int]", tuple(int(v) for v in self.manifest["latent_shape"]))

    @property
    def normalizer(self) -> LatentNormalizer:
        """The store's default normalisation (chosen at extraction)."""
        return as_normalizer(self.manifest["normalization"])

    def channel_stats_normalizer(self) -> LatentNormalizer:
        """Per-channel normalisation from the stored statistics (always recorded)."""
        st = self.manifest["latent_stats"]
        return LatentNormalizer("per_channel", mean=st["mean"], std=st["std"])

    def check_compatible(
        self,
        image_size: int | None = None,
        channels: int | None = None,
        vae: str | None = None,
        input_size: int | None = None,
    ) -> None:
        """Raise :class:`StoreError` when the store does not match the model / data config."""
        m, c, h = self.manifest, self.latent_shape[0], self.latent_shape[1]
        problems = []
        if image_size is not None and int(image_size) != int(m["image_size"]):
            problems.append(f"resolution: store has {m['image_size']} px images, config asks for {image_size}")
        if channels is not None and int(channels) != c:
            problems.append(f"channels: store latents have {c} channels, model expects {channels}")
        if input_size is not None and int(input_size) != h:
            problems.append(f"latent size: store latents are {h}x{h}, model input_size is {input_size}")
        if vae is not None and not same_vae(vae, m["vae"]["id"]):
            problems.append(f"VAE: store was encoded with {m['vae']['id']!r}, config uses {vae!r}")
        if problems:
            raise StoreError(
                f"latent store {self.path} does not match the config:\n  "
                + "\n  ".join(problems)
                + "\nRe-extract with matching options or fix the config."
            )

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._offsets[-1]

    def _check_sha(self, k: int) -> None:
        f = self.path / self.shards[k]["file"]
        got = sha256_file(f)
        if got != self.shards[k]["sha256"]:
            raise StoreError(
                f"latent store shard {f} is corrupt: sha256 {got} != manifest {self.shards[k]['sha256']}; "
                f"delete it and its .json and re-run the extraction to rebuild it"
            )

    def _handle(self, k: int):
        if self._pid != os.getpid():  # forked into a DataLoader worker: do not share handles
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(k)
        if h is None:
            if self.verify == "lazy":
                self._check_sha(k)
            h = safe_open(str(self.path / self.shards[k]["file"]), framework="pt")
            self._handles[k] = h
        return h

    def locate(self, i: int) -> tuple[int, int]:
        """Global item ``i`` -> (shard, row)."""
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for a store of {len(self)}")
        k = bisect.bisect_right(self._offsets, i) - 1
        return k, i - self._offsets[k]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        k, row = self.locate(int(i))
        h = self._handle(k)
        mean = h.get_slice("mean")[row].float()  # (2, c, h, w)
        std = h.get_slice("std")[row].float()  # (2, c, h, w)
        label = int(h.get_slice("labels")[row : row + 1][0])
        return mean, std, label

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


class LatentDataset(Dataset):
    """Training items from a latent store: ``(x (c, h, w) float32, y int64)``.

    ``normalizer`` overrides the store's default normalisation (e.g. a training config's scale).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        random_flip: bool = True,
        seed: int = 0,
        verify: str = "lazy",
        normalizer: LatentNormalizer | float | dict | None = None,
    ):
        self.store = LatentStore(path, verify=verify)
        self.normalizer = self.store.normalizer if normalizer is None else as_normalizer(normalizer)
        self.random_flip, self.seed, self.epoch = random_flip, int(seed), 0
        self.classes = self.store.classes

    def __len__(self) -> int:
        return len(self.store)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def check_compatible(self, **kwargs) -> None:
        self.store.check_compatible(**kwargs)

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = split_key(key)
        epoch = self.epoch if epoch is None else epoch
        mean, std, label = self.store[index]  # (2, c, h, w) each
        g = item_generator(self.seed, epoch, index)
        flip = bool(torch.rand((), generator=g) < 0.5)  # always drawn: eps is the same with or without flips
        copy = 1 if (self.random_flip and flip) else 0
        eps = torch.randn(mean.shape[1:], generator=g)
        x = self.normalizer.normalize(mean[copy] + std[copy] * eps)
        return x, torch.tensor(label, dtype=torch.int64)


def main(argv=None) -> int:
    """``python -m vca_gen.data.latents STORE``: verify every shard's sha256 and print a summary."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m vca_gen.data.latents", description="Verify a latent store.")
    ap.add_argument("store", help="latent store directory (with manifest.json)")
    args = ap.parse_args(argv)
    try:
        s = LatentStore(args.store, verify="eager")
    except StoreError as e:
        print(f"python -m vca_gen.data.latents: error: {e}", file=sys.stderr)
        return 1
    m = s.manifest
    print(
        f"{args.store}: OK — {m['count']} images x 2 copies, {m['image_size']} px, latents {m['latent_shape']}, "
        f"VAE {m['vae']['id']}, {len(s.shards)} shards verified, {len(m['skipped'])} skipped"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
