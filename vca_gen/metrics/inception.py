"""Inception feature extractor: uint8 NHWC images -> pool3 (2048) and spatial (mixed_6/conv) features.

Modes (as in clean-fid; never compare features of one mode with statistics of the other):

* ``clean``: each image is resized to 299x299 with clean-fid's own resizer (PIL bicubic on float32
  channels, no quantisation: ``cleanfid.resize.build_resizer("clean")``), then the network.
* ``legacy_tensorflow``: images enter at their own size and are resized inside, exactly like the
  original TF graph (``tf.image.resize_bilinear``, align_corners=False, no half-pixel centres:
  source coordinate = destination * in / out, clamped at the border) - what clean-fid's
  ``legacy_tensorflow`` mode and the ADM evaluator compute.

Both then normalise ``(x - 128) / 128`` and run the TF-Inception (2015-12-05) layer stack. Spatial
features are those of the ADM evaluator's sFID: ``mixed_6/conv`` (the first, 1x1 branch of block
``mixed_6``: conv+BN+ReLU, (B, 192, 17, 17)), first 7 channels, flattened in TF's NHWC order ->
(B, 17*17*7 = 2023). ``mixed_6``'s output concatenates that branch first, so its channels [:7] are
exactly ``mixed_6/conv[:7]``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from vca_gen.metrics.errors import InputFormatError
from vca_gen.metrics.weights import load_inception_layers, resolve_inception_weights
from vca_gen.utils.io import sha256_file as file_sha256

MODES = ("clean", "legacy_tensorflow")
INCEPTION_SIZE = 299
POOL_DIM = 2048
SPATIAL_LAYER, SPATIAL_CHANNELS = "mixed_6", 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
EXTRACTOR_NAME = "tf-inception-2015-12-05/pool3+mixed_6/conv[:7]"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputFormatError(f"mode {mode!r} is not supported; accepted: {', '.join(MODES)}")
    return mode


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=8)
def _tf1_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float32 matrix R with R @ v = TF1 bilinear resize of v (align_corners=False)."""
    src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)  # no half-pixel offset (TF1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (src - i0).astype(np.float32)
    r = np.zeros((n_out, n_in), dtype=np.float32)
    np.add.at(r, (np.arange(n_out), i0), 1.0 - w)
    np.add.at(r, (np.arange(n_out), i1), w)
    return torch.from_numpy(r)


def tf1_resize_bilinear(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, half_pixel_centers=False) of (B, C, H, W) float."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    rh = _tf1_resize_matrix(h, size).to(x.device, x.dtype)  # (size, H)
    rw = _tf1_resize_matrix(w, size).to(x.device, x.dtype)  # (size, W)
    return torch.einsum("oh,bchw,pw->bcop", rh, x, rw)       # (B, C, size, size)


@dataclass
class FeatureBatch:
    pool: np.ndarray             # (B, 2048) float32
    spatial: np.ndarray | None   # (B, 2023) float32


class InceptionFeatureExtractor:
    """TF-Inception pool3 / spatial features of uint8 images; load once and reuse (e.g. in a training loop).

    ``extractor(images)`` takes uint8 (B, H, W, 3) numpy/torch (grayscale (B, H, W) or (B, H, W, 1)
    is replicated to 3 channels) or a list of (H, W, 3) arrays, and returns a :class:`FeatureBatch`.
    Any torch device works (``cuda:1`` included); on CPU it uses channels-last convolutions and
    torch's intra-op threads (set ``torch.set_num_threads``) to keep the cores busy.
    """

    def __init__(self, mode: str = "clean", device: str | torch.device | None = None,
                 weights: str | os.PathLike | None = None, spatial: bool = True):
        self.mode = check_mode(mode)
        self.device = torch.device(device) if device is not None else default_device()
        self.weights_path = resolve_inception_weights(weights)
        self.weights_sha256 = file_sha256(self.weights_path)
        self.layers = load_inception_layers(self.weights_path, self.device)
        self.spatial = spatial
        self._clean_resizer: Callable[[np.ndarray], np.ndarray] | None = None

    def __repr__(self) -> str:
        return (f"InceptionFeatureExtractor(mode={self.mode!r}, device={str(self.device)!r}, "
                f"weights={str(self.weights_path)!r}, sha256={self.weights_sha256[:12]}...)")

    # ---- preprocessing -------------------------------------------------------------------------
    def _clean_resize(self, img: np.ndarray) -> np.ndarray:
        if self._clean_resizer is None:
            from cleanfid.resize import build_resizer  # clean-fid's PIL-bicubic float resize
            self._clean_resizer = build_resizer("clean")
        return self._clean_resizer(img)  # (299, 299, 3) float32 in [0, 255]

    def preprocess(self, images, mode: str | None = None) -> torch.Tensor:
        """uint8 images -> float32 (B, 3, 299, 299) in [0, 255] on ``self.device``."""
        from vca_gen.metrics.sources import as_uint8_images
        mode = check_mode(mode or self.mode)
        imgs = as_uint8_images(images)  # ndarray (B, H, W, 3) or list of (H, W, 3)
        if mode == "clean":
            x = np.stack([self._clean_resize(np.ascontiguousarray(im)) for im in imgs])  # (B, 299, 299, 3)
            return torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2)
        groups = [imgs] if isinstance(imgs, np.ndarray) else [im[None] for im in imgs]
        out = []
        for g in groups:  # (b, H, W, 3) uint8, same size within a group
            t = torch.from_numpy(np.array(g, copy=True)).to(self.device).permute(0, 3, 1, 2).float()
            out.append(tf1_resize_bilinear(t))
        return torch.cat(out)

    # ---- network ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_299(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """float (B, 3, 299, 299) in [0, 255] -> pool3 (B, 2048), spatial (B, 2023) or None."""
        if x.ndim != 4 or x.shape[1:] != (3, INCEPTION_SIZE, INCEPTION_SIZE):
            raise InputFormatError(f"Inception input must be (B, 3, 299, 299), got {tuple(x.shape)}")
        h = ((x.float() - 128.0) / 128.0).to(self.device)
        if self.device.type == "cpu":
            h = h.contiguous(memory_format=torch.channels_last)
        spatial = None
        for name, layer in self.layers.named_children():
            h = layer(h)
            if name == SPATIAL_LAYER and self.spatial:
                s = h[:, :SPATIAL_CHANNELS]                          # (B, 7, 17, 17)
                spatial = s.permute(0, 2, 3, 1).reshape(len(s), -1)  # NHWC flatten, (B, 2023)
        return h.reshape(len(h), POOL_DIM), spatial

    def __call__(self, images, mode: str | None = None) -> FeatureBatch:
        pool, spatial = self.forward_299(self.preprocess(images, mode))
        return FeatureBatch(pool.float().cpu().numpy(),
                            None if spatial is None else spatial.float().cpu().numpy())

    def as_clean_fid_module(self) -> torch.nn.Module:
        """nn.Module for ``cleanfid.fid.compute_fid(custom_feat_extractor=...)``: (B,3,299,299) [0,255] -> (B,2048)."""
        outer = self

        class _Pool3(torch.nn.Module):
            def forward(self, x):
                return outer.forward_299(x)[0]
        return _Pool3()
