"""An ADM-format reference batch written here (mu, sigma, mu_s, sigma_s, arr_0 from legacy_tensorflow
features computed in this test) gives the same FID / sFID / precision / recall as scoring against
the images directly in legacy_tensorflow mode; exactly one JSON line is printed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vca_gen.metrics import InceptionFeatureExtractor, cli, evaluate, precision_recall


@pytest.mark.slow
def test_adm_reference_batch_equals_direct_legacy_tensorflow(tmp_path, capsys, inception_weights, animal_mnist_dir):
    from vca_gen.data.animal_mnist import load_arrays

    images, _ = load_arrays(animal_mnist_dir)
    gray_ref, gray_smp = images[5::834][:12], images[400::834][:12]  # 12 + 12, spread over classes
    ref_imgs = np.repeat(gray_ref[..., None], 3, axis=-1)  # (12, 28, 28, 3) uint8
    smp_imgs = np.repeat(gray_smp[..., None], 3, axis=-1)

    fx = InceptionFeatureExtractor(mode="legacy_tensorflow", device="cpu", weights=inception_weights)
    fr, fs = fx(ref_imgs), fx(smp_imgs)  # (12, 2048), (12, 2023)
    adm = tmp_path / "VIRTUAL_ref.npz"
    np.savez(
        adm,
        mu=fr.pool.astype(np.float64).mean(0),
        sigma=np.cov(fr.pool.astype(np.float64), rowvar=False),
        mu_s=fr.spatial.astype(np.float64).mean(0),
        sigma_s=np.cov(fr.spatial.astype(np.float64), rowvar=False),
        arr_0=ref_imgs,
    )
    samples, ref_set = tmp_path / "samples.npz", tmp_path / "ref_images.npz"
    np.savez(samples, arr_0=smp_imgs)
    np.savez(ref_set, arr_0=ref_imgs)

    # 1) the CLI against the ADM batch; mode comes from the reference (legacy_tensorflow)
    code = cli.main(
        [
            str(samples),
            "--ref",
            str(adm),
            "--pr",
            "--batch-size",
            "12",
            "--device",
            "cpu",
            "--threads",
            str(torch.get_num_threads()),
            "--inception",
            str(inception_weights),
            "--json-out",
            str(tmp_path / "r.json"),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    json_lines = [line for line in out if line.startswith("{")]
    assert len(json_lines) == 1 and out[-1] == json_lines[0]
    via_adm = json.loads(json_lines[0])
    assert via_adm == json.loads((tmp_path / "r.json").read_text())
    assert via_adm["mode"] == "legacy_tensorflow" and via_adm["reference_kind"] == "adm"
    assert via_adm["weights_sha256"] == fx.weights_sha256 and any(fx.weights_sha256 in line for line in out)
    assert via_adm["n"] == 12 and via_adm["kid"] is None

    # 2) the same images as a plain image-set reference, features computed directly
    direct = evaluate(samples, ref_set, mode="legacy_tensorflow", extractor=fx, pr=True, batch_size=5)
    assert direct["reference_kind"] == "computed"
    assert via_adm["fid"] > 1.0
    assert via_adm["fid"] == pytest.approx(direct["fid"], rel=1e-5)
    assert via_adm["sfid"] == pytest.approx(direct["sfid"], rel=1e-5)
    # precision/recall of the ADM path used arr_0; both equal an independent computation on our features
    want = precision_recall(fr.pool, fs.pool, k=3, dtype=np.float64)
    assert (via_adm["precision"], via_adm["recall"]) == pytest.approx(want, abs=1e-9)
    assert (direct["precision"], direct["recall"]) == pytest.approx(want, abs=1e-9)
