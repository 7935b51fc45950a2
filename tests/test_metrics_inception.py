"""The Inception feature extractor with the real offline weights (a few dozen images in total)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vca_gen.metrics import (
    InceptionFeatureExtractor,
    InputFormatError,
    compute_statistics,
    fid_between,
    fid_from_uint8,
    tf1_resize_bilinear,
)
from vca_gen.metrics.weights import load_inception_layers


@pytest.fixture(scope="module")
def fx(inception_weights):
    return InceptionFeatureExtractor(mode="clean", device="cpu", weights=inception_weights)


def _animal(animal_mnist_dir, n, offset=0):
    from vca_gen.data.animal_mnist import load_arrays

    images, _ = load_arrays(animal_mnist_dir)
    idx = np.arange(offset, 10000, 10000 // n)[:n]  # spread over the (class-sorted) set
    return images[idx]  # (n, 28, 28) uint8 grayscale


def _tf1_resize_grid_sample(x, size=299):
    """Independent TF1 resize: NVIDIA's grid_sample formulation (translation of half an input pixel)."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=torch.float64).repeat(b, 1, 1)
    theta[:, 0, 2] += 1.0 / w - 1.0 / size
    theta[:, 1, 2] += 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_tf1_resize_matches_independent_formulations():
    x = torch.rand(2, 3, 28, 40) * 255
    got = tf1_resize_bilinear(x)
    assert got.shape == (2, 3, 299, 299)
    assert torch.allclose(got.double(), _tf1_resize_grid_sample(x), atol=2e-3)
    # by hand, 1-D 2 -> 4: source coordinates 0, .5, 1, 1.5 (clamped): [a, (a+b)/2, b, b]
    v = torch.tensor([[[[10.0, 30.0]]]])
    assert tf1_resize_bilinear(v.expand(1, 1, 2, 2), size=4)[0, 0, 0].tolist() == [10.0, 20.0, 30.0, 30.0]


@pytest.fixture(scope="module")
def fx_script(inception_weights):
    """The TorchScript layer stack as loaded (no fast network)."""
    return InceptionFeatureExtractor(mode="clean", device="cpu", weights=inception_weights, fast=False)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "torchscript"])
def test_per_layer_forward_equals_the_scripted_stack_and_spatial_is_mixed_6_conv(fx, fx_script, fast, animal_mnist_dir):
    ext = fx if fast else fx_script
    imgs = _animal(animal_mnist_dir, 3)
    x = ext.preprocess(imgs)  # (3, 3, 299, 299) in [0, 255]
    fb = ext(imgs)
    assert fb.pool.shape == (3, 2048) and fb.spatial.shape == (3, 17 * 17 * 7)
    assert (ext.fast_network() is not None) == fast  # the fast network passed its load-time check
    with torch.inference_mode():
        h = (x - 128) / 128
        whole = ext.layers(h).reshape(3, 2048)  # the TorchScript Sequential in one call
        for name, layer in ext.layers.named_children():
            if name == "mixed_6":
                conv = layer.conv(h)  # mixed_6/conv: (3, 192, 17, 17), after ReLU
                break
            h = layer(h)
    want_s = conv[:, :7].permute(0, 2, 3, 1).reshape(3, -1).numpy()  # TF's NHWC flatten order
    assert conv.shape == (3, 192, 17, 17) and (want_s >= 0).all()
    # the TorchScript path runs these very ops (1e-5); the fast one folds BN into the convs and fuses
    # conv+ReLU: float32 round-off only (measured max |diff| ~3e-5 on values up to ~6)
    atol = 1e-4 if fast else 1e-5
    assert np.allclose(fb.pool, whole.numpy(), atol=1e-4)
    assert np.allclose(fb.spatial, want_s, atol=atol)


def test_fast_network_equals_torchscript_in_both_modes(fx, fx_script, animal_mnist_dir):
    gray = _animal(animal_mnist_dir, 4, offset=5)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)  # distinct channels
    for mode in ("clean", "legacy_tensorflow"):
        a, b = fx(rgb, mode=mode), fx_script(rgb, mode=mode)
        assert np.abs(a.pool - b.pool).max() <= 1e-4 * np.abs(b.pool).max()  # float32 round-off
        assert np.abs(a.spatial - b.spatial).max() <= 1e-4 * np.abs(b.spatial).max()


def test_fast_network_falls_back_to_torchscript_when_its_check_fails(inception_weights, animal_mnist_dir):
    ext = InceptionFeatureExtractor(mode="clean", device="cpu", weights=inception_weights)
    ext.FAST_TOLERANCE = -1.0  # the load-time check fails: TorchScript stack
    with pytest.warns(UserWarning, match="fast network unavailable"):
        assert ext.fast_network() is None
    assert ext.fast is False
    ref = InceptionFeatureExtractor(mode="clean", device="cpu", weights=inception_weights, fast=False)
    imgs = _animal(animal_mnist_dir, 2, offset=9)
    assert np.array_equal(ext(imgs).pool, ref(imgs).pool)


def test_clean_resize_is_clean_fid_and_gray_is_replicated(fx, animal_mnist_dir):
    from cleanfid.resize import build_resizer

    gray = _animal(animal_mnist_dir, 2, offset=7)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    ref = np.stack([build_resizer("clean")(im) for im in rgb]).transpose(0, 3, 1, 2)
    assert np.array_equal(fx.preprocess(gray).numpy(), ref)
    assert np.array_equal(fx(gray).pool, fx(rgb).pool)
    legacy = fx(rgb, mode="legacy_tensorflow").pool
    assert np.abs(legacy - fx(rgb).pool).max() > 1e-2  # the two modes do differ at 28 px
    with pytest.raises(InputFormatError, match="accepted: clean, legacy_tensorflow"):
        fx(rgb, mode="legacy_pytorch")


def test_other_weights_format_gives_identical_features(fx, tmp_path, inception_weights, animal_mnist_dir):
    """clean-fid's file exposes `.layers` directly; fid-helper's default_1.pt nests it in `.net`."""

    class CleanFidLike(torch.nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = layers

        def forward(self, x):
            return self.layers(x)

    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(CleanFidLike(fx.layers)).save(str(path))
    other = InceptionFeatureExtractor(mode="legacy_tensorflow", device="cpu", weights=path)
    imgs = _animal(animal_mnist_dir, 2, offset=3)
    assert np.array_equal(other(imgs).pool, fx(imgs, mode="legacy_tensorflow").pool)
    assert other.weights_sha256 != fx.weights_sha256
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a network")
    with pytest.raises(InputFormatError, match="cannot be loaded as a TorchScript Inception"):
        load_inception_layers(junk, torch.device("cpu"))


@pytest.mark.slow
def test_self_fid_is_zero_and_streaming_is_batch_size_independent(fx, animal_mnist_dir):
    imgs = _animal(animal_mnist_dir, 8, offset=1)
    stats = compute_statistics(imgs, fx, batch_size=8)
    assert stats.count == 8 and stats.feats.shape == (8, 2048) and stats.mu_s.shape == (2023,)
    assert abs(fid_between(stats, stats)) < 1e-4  # float64 round-off of sqrtm; real FIDs are >= ~1
    # the same images as an iterable of uneven batches, re-batched to 5: same statistics, FID ~ 0
    batches = (imgs[i : i + 3] for i in range(0, 8, 3))
    assert abs(fid_from_uint8(batches, stats, extractor=fx, batch_size=5)) < 1e-3
    other = compute_statistics(_animal(animal_mnist_dir, 8, offset=2), fx, batch_size=8)
    assert fid_between(stats, other) > 1.0


def test_clean_mode_folder_features_equal_clean_fid_pipeline(fx, tmp_path, animal_mnist_dir):
    """Our clean mode on a PNG folder == clean-fid's own folder pipeline fed our network."""
    from cleanfid.fid import get_folder_features
    from PIL import Image

    gray = _animal(animal_mnist_dir, 3, offset=11)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)  # (3, 28, 28, 3), distinct channels
    for i, im in enumerate(rgb):
        Image.fromarray(im).save(tmp_path / f"{i:02d}.png")
    theirs = get_folder_features(
        str(tmp_path),
        model=fx.as_clean_fid_module(),
        num_workers=0,
        batch_size=3,
        device=torch.device("cpu"),
        mode="clean",
        verbose=False,
    )
    ours = compute_statistics(str(tmp_path), fx, batch_size=3).feats
    assert theirs.shape == ours.shape == (3, 2048)
    assert np.allclose(ours, theirs, atol=1e-4)


def test_feature_throughput_reports_rate_and_cpu_use(fx):
    from features_lib import feature_throughput

    r = feature_throughput(n=2, batch_size=2, mode="legacy_tensorflow", image_size=16, extractor=fx)
    assert r["n"] == 2 and r["mode"] == "legacy_tensorflow" and r["device"] == "cpu"
    assert r["images_per_s"] == pytest.approx(2 / r["seconds"]) and r["cpu_utilisation"] > 0
    assert r["threads"] == torch.get_num_threads()
