"""Latent store reading, per-item latent sampling, compatibility checks, factory, VAE helpers, loader bench."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch
from safetensors.torch import load_file

from loader_lib import loader_throughput
from test_data_common import tiny_setup  # noqa: F401 (fixture)
from vca_gen.data import DataConfig, build_dataset, model_in_channels, model_input_size
from vca_gen.data.animal_mnist import AnimalMNIST
from vca_gen.data.images import ImageFolderDataset
from vca_gen.data.latents import LatentDataset, LatentStore, StoreError
from vca_gen.data.latents import main as verify_main
from vca_gen.data.sampler import ItemKey, ResumableLoader, item_generator
from vca_gen.data.vae import LatentNormalizer, VAELoadError, decode, encode_latents, encode_moments, load_vae
from vca_gen.utils.rng import per_sample_generators


@pytest.fixture(scope="module")
def moments(tiny_setup):
    _, _, store = tiny_setup
    shards = [load_file(p) for p in sorted(store.glob("shard_*.safetensors"))]
    return (
        torch.cat([s["mean"] for s in shards]),
        torch.cat([s["std"] for s in shards]),
        torch.cat([s["labels"] for s in shards]),
    )


def test_items_are_scaled_posterior_samples_from_the_item_generator(tiny_setup, moments):
    _, _, store = tiny_setup
    mean, std, labels = moments
    ds = LatentDataset(store, random_flip=True, seed=11)
    assert len(ds) == 12 and ds.classes == ["ant", "bee", "cow"]
    copies = []
    for epoch, i in itertools.product(range(3), range(12)):
        g = item_generator(11, epoch, i)
        copy = int(torch.rand((), generator=g) < 0.5)
        eps = torch.randn(4, 16, 16, generator=g)
        x, y = ds[ItemKey(epoch, i)]
        torch.testing.assert_close(x, (mean[i, copy] + std[i, copy] * eps) * 0.18215, rtol=0, atol=1e-7)
        assert y.dtype == torch.int64 and y.item() == labels[i].item()
        copies.append(copy)
    assert 0 < sum(copies) < len(copies)  # both stored copies are used
    no_flip = LatentDataset(store, random_flip=False, seed=11)
    g = item_generator(11, 0, 5)
    torch.rand((), generator=g)
    torch.testing.assert_close(
        no_flip[ItemKey(0, 5)][0],
        (mean[5, 0] + std[5, 0] * torch.randn(4, 16, 16, generator=g)) * 0.18215,
        rtol=0,
        atol=1e-7,
    )
    # per-channel normalisation from the recorded statistics
    st = LatentStore(store).manifest["latent_stats"]
    pc = LatentDataset(store, seed=11, normalizer=LatentStore(store).channel_stats_normalizer())
    z = pc.normalizer.denormalize(pc[ItemKey(1, 3)][0])
    torch.testing.assert_close(z * 0.18215, ds[ItemKey(1, 3)][0], rtol=1e-5, atol=1e-6)
    m, s = torch.tensor(st["mean"]).view(4, 1, 1), torch.tensor(st["std"]).view(4, 1, 1)
    torch.testing.assert_close(pc[ItemKey(1, 3)][0], (z - m) / s, rtol=1e-5, atol=1e-5)


def test_loader_over_store_is_independent_of_workers(tiny_setup):
    _, _, store = tiny_setup
    ds = LatentDataset(store, seed=2)
    a = [x for x, _ in itertools.islice(iter(ResumableLoader(ds, 4, seed=9)), 5)]
    b = [x for x, _ in itertools.islice(iter(ResumableLoader(ds, 4, seed=9, num_workers=2)), 5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    r = loader_throughput(ds, batch_size=4, num_workers=0, steps=3, warmup=1)
    assert r["unit"] == "latents/s" and r["items_per_s"] > 0 and r["batches_per_s"] > 0


def test_check_compatible_errors(tiny_setup):
    _, vae_dir, store = tiny_setup
    s = LatentStore(store)
    s.check_compatible(image_size=32, channels=4, input_size=16, vae=str(vae_dir))
    s.check_compatible(vae=str(vae_dir) + "/../" + vae_dir.name)  # same folder, other spelling
    with pytest.raises(StoreError, match=r"resolution: store has 32 px images, config asks for 256") as e:
        s.check_compatible(image_size=256, channels=8, vae="stabilityai/sd-vae-ft-ema", input_size=32)
    msg = str(e.value)
    assert "channels: store latents have 4 channels, model expects 8" in msg
    assert "VAE: store was encoded with" in msg and "'stabilityai/sd-vae-ft-ema'" in msg
    assert "latent size: store latents are 16x16, model input_size is 32" in msg


def test_corrupt_truncated_and_unfinished_stores(tiny_setup, tmp_path):
    _, _, store = tiny_setup
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    data = bytearray((bad / "shard_00001.safetensors").read_bytes())
    data[-3] ^= 0x55  # same size, different bytes
    (bad / "shard_00001.safetensors").write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"shard_00001\.safetensors is corrupt: sha256"):
        LatentStore(bad, verify="eager")
    assert verify_main([str(bad)]) == 1 and verify_main([str(store)]) == 0
    lazy = LatentDataset(bad, verify="lazy")
    lazy[ItemKey(0, 0)]  # shard 0 is fine
    with pytest.raises(StoreError, match="is corrupt"):
        lazy[ItemKey(0, 7)]
    LatentDataset(bad, verify="size")[ItemKey(0, 7)]  # size-only check does not hash
    (bad / "shard_00002.safetensors").write_bytes(data[:100])
    with pytest.raises(StoreError, match=r"shard_00002\.safetensors has 100 bytes, manifest says"):
        LatentStore(bad, verify="size")
    (bad / "manifest.json").unlink()
    with pytest.raises(StoreError, match="did not finish; re-run"):
        LatentStore(bad)
    with pytest.raises(StoreError, match="does not exist; create it with"):
        LatentStore(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"verify='fast' is not valid; accepted: \['eager', 'lazy', 'size'\]"):
        LatentStore(store, verify="fast")


def test_build_dataset_and_model_shapes(tiny_setup, animal_mnist_dir):
    images, vae_dir, store = tiny_setup
    cfg = DataConfig(
        kind="latents", path=str(store), image_size=32, vae=str(vae_dir), vae_downsample=2, scale_factor=0.5
    )
    ds = build_dataset(cfg)
    assert isinstance(ds, LatentDataset) and ds.normalizer == LatentNormalizer("scale", 0.5)
    assert ds[ItemKey(0, 0)][0].shape == (model_in_channels(cfg), model_input_size(cfg), model_input_size(cfg))
    pc = build_dataset(
        DataConfig(
            kind="latents", path=str(store), image_size=32, vae=None, vae_downsample=2, latent_norm="per_channel"
        )
    )
    assert (
        pc.normalizer.kind == "per_channel" and pc.normalizer.std == LatentStore(store).manifest["latent_stats"]["std"]
    )
    with pytest.raises(StoreError, match="resolution: store has 32 px images, config asks for 256"):
        build_dataset(DataConfig(kind="latents", path=str(store), image_size=256))
    img = build_dataset(DataConfig(kind="images", path=str(images), image_size=32, vae=None))
    assert isinstance(img, ImageFolderDataset) and img[0][0].shape == (3, 32, 32)
    am_cfg = DataConfig(kind="animal_mnist", path=str(animal_mnist_dir), image_size=32, vae=None, split="b")
    am = build_dataset(am_cfg)
    assert (
        isinstance(am, AnimalMNIST)
        and len(am) == 5000
        and (model_in_channels(am_cfg), model_input_size(am_cfg)) == (1, 32)
    )
    assert (model_in_channels(DataConfig()), model_input_size(DataConfig())) == (4, 32)  # 256 px sd-vae latents
    assert model_input_size(DataConfig(kind="images", path="x", image_size=512)) == 64
    assert model_in_channels(DataConfig(kind="images", path="x", vae=None)) == 3
    with pytest.raises(
        ValueError, match=r"data.kind='latent' is not valid; accepted: \['latents', 'images', 'animal_mnist'\]"
    ):
        build_dataset(DataConfig(kind="latent", path="x"))
    with pytest.raises(ValueError, match="data.path is required"):
        build_dataset(DataConfig(kind="images"))


def test_vae_helpers(tiny_setup):
    _, vae_dir, _ = tiny_setup
    vae = load_vae(str(vae_dir))
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    mean, std = encode_moments(vae, x, batch_size=2)
    with torch.no_grad():
        post = vae.encode(x).latent_dist
    torch.testing.assert_close(mean, post.mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(std, post.std, rtol=1e-4, atol=1e-5)
    gray = x[:, :1]
    torch.testing.assert_close(encode_moments(vae, gray)[0], encode_moments(vae, gray.repeat(1, 3, 1, 1))[0])
    z = encode_latents(vae, x, 0.18215, generator=per_sample_generators([1, 2, 3]))
    eps = torch.stack([torch.randn(4, 16, 16, generator=g) for g in per_sample_generators([1, 2, 3])])
    torch.testing.assert_close(z, (mean + std * eps) * 0.18215, rtol=1e-4, atol=1e-5)
    imgs = decode(vae, z, 0.18215, batch_size=2)
    with torch.no_grad():
        want = vae.decode(z / 0.18215).sample.clamp(-1, 1)
    assert imgs.shape == (3, 3, 32, 32) and imgs.min() >= -1 and imgs.max() <= 1
    torch.testing.assert_close(imgs, want, rtol=1e-4, atol=1e-5)
    n = LatentNormalizer("per_channel", mean=[0.1, -0.2, 0.3, 0.0], std=[1.0, 2.0, 0.5, 4.0])
    torch.testing.assert_close(n.denormalize(n.normalize(z)), z)
    with pytest.raises(ValueError, match="latent channels, got 3"):
        decode(vae, z[:, :3])
    with pytest.raises(OSError, match=r"pre-download it into the Hugging Face cache.*or pass a local folder"):
        load_vae("vca-gen-test/no-such-vae")
    with pytest.raises(VAELoadError, match="is not an existing folder"):
        load_vae(str(vae_dir / "missing"))
