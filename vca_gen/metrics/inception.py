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

Speed: the TorchScript stack runs each conv as conv -> batch_norm -> relu (three passes over the
activations, weights re-laid-out on every call, ``contiguous()`` back to NCHW after every block).
By default the extractor runs :class:`FastInception` instead: the same layers rebuilt from the
loaded weights, each BN folded into its conv (float64 fold, then float32), conv+bias+ReLU as one
oneDNN call on CPU (``mkldnn::_convolution_pointwise``), channels-last end to end. Its features
equal the TorchScript stack's to float32 round-off (max |diff| ~1e-5 for pool3 values up to ~10,
checked against the stack on every load; on a mismatch it falls back to the stack with a warning);
``fast=False`` runs the TorchScript stack itself. About 1.7x the images/s on a 2-core CPU.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
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
    return torch.einsum("oh,bchw,pw->bcop", rh, x, rw)  # (B, C, size, size)


# ---- fast network: the TorchScript layer stack rebuilt with folded BN and fused conv+ReLU ---------
_BN_EPS = 1e-3  # TF-Inception's batch_norm epsilon (in every Conv2dLayer's code)
_POOL_ARGS = re.compile(
    r"\(input, \[(\d+), (\d+)\], \[(\d+), (\d+)\], \[(\d+), (\d+)\]"
    r"(?:, \[1, 1\])?(?:, (True|False), (True|False))?"
)


class _FusedConv(torch.nn.Module):
    """TF-Inception ``Conv2dLayer`` (conv without bias, batch_norm with ``beta`` only, ReLU) with the BN
    folded into the conv: w' = w / sqrt(var + eps), b' = beta - mean / sqrt(var + eps)."""

    def __init__(self, m):
        super().__init__()
        if f"{_BN_EPS}, )" not in m.code or "relu" not in m.code or "None, beta" not in m.code:
            raise ValueError("unexpected Conv2dLayer code")
        w = m.weight.detach().double()
        inv = 1.0 / torch.sqrt(m.var.detach().double() + _BN_EPS)
        pad = m.padding
        pad = [int(v) for v in pad] if isinstance(pad, (list, tuple)) else [int(pad)] * 2
        self.weight = torch.nn.Parameter((w * inv[:, None, None, None]).float(), requires_grad=False)
        self.bias = torch.nn.Parameter(
            (m.beta.detach().double() - m.mean.detach().double() * inv).float(), requires_grad=False
        )
        self.stride, self.padding = [int(m.stride)] * 2, pad
        self.onednn = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and x.device.type == "cpu" and x.dtype == torch.float32:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, self.stride, [1, 1], 1, "relu", [None], ""
            )
        return torch.relu_(torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding))


def _pool(m) -> torch.nn.Module:
    g = _POOL_ARGS.search(m.code)
    if g is None:
        raise ValueError(f"unexpected {m.original_name} code")
    k, st, pad = (int(g[1]), int(g[2])), (int(g[3]), int(g[4])), (int(g[5]), int(g[6]))
    ceil = g[7] == "True"
    if m.original_name == "MaxPool2d":
        return torch.nn.MaxPool2d(k, st, pad, ceil_mode=ceil)
    return torch.nn.AvgPool2d(k, st, pad, ceil_mode=ceil, count_include_pad=g[8] != "False")


def _rebuild(m) -> torch.nn.Module:
    kind = m.original_name
    if kind == "Conv2dLayer":
        return _FusedConv(m)
    if kind in ("MaxPool2d", "AvgPool2d"):
        return _pool(m)
    if kind == "Sequential":
        return torch.nn.Sequential(*[_rebuild(c) for _, c in m.named_children()])
    if kind in _Block.BRANCHES:
        return _Block(m)
    raise ValueError(f"unexpected module {kind}")


class _Block(torch.nn.Module):
    """The Inception blocks A-E, wired as in the TorchScript code (branches concatenated in this order)."""

    BRANCHES = {
        "InceptionA": ("conv", "tower", "tower_1", "tower_2"),
        "InceptionB": ("conv", "tower", "pool"),
        "InceptionC": ("conv", "tower", "tower_1", "tower_2"),
        "InceptionD": ("tower", "tower_1", "pool"),
        "InceptionE": (
            "conv",
            "tower_conv",
            "tower_mixed_conv",
            "tower_mixed_conv_1",
            "tower_1_conv",
            "tower_1_conv_1",
            "tower_1_mixed_conv",
            "tower_1_mixed_conv_1",
            "tower_2_pool",
            "tower_2_conv",
        ),
    }

    def __init__(self, m):
        super().__init__()
        self.kind = m.original_name
        names = tuple(n for n, _ in m.named_children())
        if set(names) != set(self.BRANCHES[self.kind]):
            raise ValueError(f"unexpected {self.kind} children {names}")
        self.b = torch.nn.ModuleDict({n: _rebuild(c) for n, c in m.named_children()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.b
        if self.kind == "InceptionE":
            a = b["tower_conv"](x)
            c = b["tower_1_conv_1"](b["tower_1_conv"](x))
            parts = [
                b["conv"](x),
                b["tower_mixed_conv"](a),
                b["tower_mixed_conv_1"](a),
                b["tower_1_mixed_conv"](c),
                b["tower_1_mixed_conv_1"](c),
                b["tower_2_conv"](b["tower_2_pool"](x)),
            ]
        else:
            parts = [b[n](x) for n in self.BRANCHES[self.kind]]
        return torch.cat(parts, 1)


class FastInception(torch.nn.Module):
    """The TF-Inception layer stack rebuilt from a loaded TorchScript ``layers`` (see the module docstring).

    ``forward(x)``: float (B, 3, 299, 299) in [-1, 1] -> (pool3 (B, 2048), ``SPATIAL_LAYER`` output).
    """

    def __init__(self, layers: torch.nn.Module):
        super().__init__()
        children = list(layers.named_children())
        names = [n for n, _ in children]
        k = names.index(SPATIAL_LAYER) + 1
        self.head = torch.nn.Sequential(*[_rebuild(m) for _, m in children[:k]])
        self.tail = torch.nn.Sequential(*[_rebuild(m) for _, m in children[k:]])
        onednn = bool(torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))
        for m in self.modules():
            if isinstance(m, _FusedConv):
                m.onednn = onednn
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mid = self.head(x)
        return self.tail(mid).reshape(len(x), POOL_DIM), mid


def _check_fast(fast: FastInception, layers: torch.nn.Module, device: torch.device) -> float:
    """Largest |pool3 difference| of the two networks on a fixed input, relative to the pool3 scale."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 3, INCEPTION_SIZE, INCEPTION_SIZE, generator=g) * 2 - 1).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = layers(x).reshape(1, POOL_DIM)
        got = fast(x)[0]
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """Autocast off and TF32 off (restored afterwards): metric features are computed in true fp32."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclass
class FeatureBatch:
    pool: np.ndarray  # (B, 2048) float32
    spatial: np.ndarray | None  # (B, 2023) float32


class InceptionFeatureExtractor:
    """TF-Inception pool3 / spatial features of uint8 images; load once and reuse (e.g. in a training loop).

    ``extractor(images)`` takes uint8 (B, H, W, 3) numpy/torch (grayscale (B, H, W) or (B, H, W, 1)
    is replicated to 3 channels) or a list of (H, W, 3) arrays, and returns a :class:`FeatureBatch`.
    Any torch device works (``cuda:1`` included); on CPU it uses channels-last convolutions and
    torch's intra-op threads (set ``torch.set_num_threads``) to keep the cores busy. ``fast`` (default)
    runs :class:`FastInception` (folded BN, fused conv+ReLU; float32 round-off from the TorchScript
    stack), ``fast=False`` the TorchScript ``layers`` as loaded.
    """

    FAST_TOLERANCE = 1e-4  # relative pool3 difference above which the fast network is not used

    def __init__(
        self,
        mode: str = "clean",
        device: str | torch.device | None = None,
        weights: str | os.PathLike | None = None,
        spatial: bool = True,
        fast: bool = True,
    ):
        self.mode = check_mode(mode)
        self.device = torch.device(device) if device is not None else default_device()
        self.weights_path = resolve_inception_weights(weights)
        self.weights_sha256 = file_sha256(self.weights_path)
        self.layers = load_inception_layers(self.weights_path, self.device)
        self.spatial = spatial
        self.fast = fast
        self._fast_net: FastInception | None = None
        self._clean_resizer: Callable[[np.ndarray], np.ndarray] | None = None

    def __repr__(self) -> str:
        return (
            f"InceptionFeatureExtractor(mode={self.mode!r}, device={str(self.device)!r}, "
            f"weights={str(self.weights_path)!r}, sha256={self.weights_sha256[:12]}...)"
        )

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
    def fast_network(self) -> FastInception | None:
        """The :class:`FastInception` of ``self.layers`` (built and checked on first use), or None."""
        if self.fast and self._fast_net is None:
            try:
                net = FastInception(self.layers).to(self.device)
                err = _check_fast(net, self.layers, self.device)
                if not err <= self.FAST_TOLERANCE:
                    raise ValueError(f"relative pool3 difference {err:.2e} on the check input")
                self._fast_net = net
            except Exception as e:  # an unexpected layer stack: keep the TorchScript one
                warnings.warn(f"Inception: fast network unavailable ({e}); using the TorchScript layers", stacklevel=2)
                self.fast = False
        return self._fast_net

    @torch.inference_mode()
    def forward_299(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """float (B, 3, 299, 299) in [0, 255] -> pool3 (B, 2048), spatial (B, 2023) or None.

        Always in fp32: autocast is switched off and TF32 disabled for the duration (in-loop FID
        runs inside a bf16 training process), so features never depend on the caller's precision."""
        with exact_fp32(self.device):
            return self._forward_299(x)

    def _forward_299(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.ndim != 4 or x.shape[1:] != (3, INCEPTION_SIZE, INCEPTION_SIZE):
            raise InputFormatError(f"Inception input must be (B, 3, 299, 299), got {tuple(x.shape)}")
        h = ((x.float() - 128.0) / 128.0).to(self.device)
        net = self.fast_network()
        if self.device.type == "cpu" or net is not None:
            h = h.contiguous(memory_format=torch.channels_last)
        if net is not None:
            pool, mid = net(h)
        else:
            mid = None
            for name, layer in self.layers.named_children():
                h = layer(h)
                if name == SPATIAL_LAYER:
                    mid = h
            pool = h.reshape(len(h), POOL_DIM)
        spatial = None
        if self.spatial:
            s = mid[:, :SPATIAL_CHANNELS]  # (B, 7, 17, 17)
            spatial = s.permute(0, 2, 3, 1).reshape(len(s), -1)  # NHWC flatten, (B, 2023)
        return pool, spatial

    def __call__(self, images, mode: str | None = None) -> FeatureBatch:
        pool, spatial = self.forward_299(self.preprocess(images, mode))
        return FeatureBatch(pool.float().cpu().numpy(), None if spatial is None else spatial.float().cpu().numpy())

    def as_clean_fid_module(self) -> torch.nn.Module:
        """nn.Module for ``cleanfid.fid.compute_fid(custom_feat_extractor=...)``: (B,3,299,299) [0,255] -> (B,2048)."""
        outer = self

        class _Pool3(torch.nn.Module):
            def forward(self, x):
                return outer.forward_299(x)[0]

        return _Pool3()
