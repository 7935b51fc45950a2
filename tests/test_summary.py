"""Model summary: published DiT MACs / params, and agreement with closed-form MAC formulas."""

from __future__ import annotations

import json

import pytest

from vca_gen.models.summary import main, summarize

PUBLISHED = {  # DiT paper, 256 px (latent 32): Gflops (= MACs), params
    "DiT-S/2": (6.06e9, 33e6),
    "DiT-B/2": (23.01e9, 130e6),
    "DiT-L/2": (80.7e9, 458e6),
    "DiT-XL/2": (118.6e9, 675e6),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_macs_and_params(name):
    macs, params = PUBLISHED[name]
    s = summarize(name, "mhsa", 32)
    assert abs(s["macs"] / macs - 1) < 0.01, s["macs"]
    assert abs(s["params"] / params - 1) < 0.01, s["params"]
    assert s["params"] - s["trainable_params"] == 256 * {"S": 384, "B": 768, "L": 1024, "XL": 1152}[name[4:-2]]


def closed_form_macs(depth, C, p, input_size, in_ch, attention, n=64):
    """Per-image MACs from the layer list: blocks + patch embed + t-embedder + final layer."""
    N = (input_size // p) ** 2
    block = 12 * N * C * C + 6 * C * C  # qkv 3NC², proj NC², MLP 8NC², adaLN 6C²
    if attention == "mhsa":
        block += 2 * N * N * C
    elif attention == "vca":
        block += 8 * n * N * C + 9 * N * C  # Stage I 4nNC, Stage II SDPA over 2n 4nNC, dwconv 9NC
    elif attention == "diff":
        block += 4 * N * N * C  # one SDPA per value half: QKᵀ 2 x N²C, AV 2 x N²C
    out_ch = 2 * in_ch
    rest = N * C * in_ch * p * p + (256 * C + C * C) + 2 * C * C + N * C * p * p * out_ch
    return depth * block + rest


@pytest.mark.parametrize("attention", ["mhsa", "vca", "diff"])
@pytest.mark.parametrize("name,dims,size", [("DiT-S/2", (12, 384), 32), ("DiT-B/4", (12, 768), 64)])
def test_flop_counter_matches_closed_form(attention, name, dims, size):
    s = summarize(name, attention, size)
    expected = closed_form_macs(*dims, int(name[-1]), size, 4, attention)
    assert s["macs"] == expected


def test_vca_options_change_counts():
    small = summarize("DiT-S/2", "vca", 32, num_contrast_tokens=16)
    assert small["macs"] == closed_form_macs(12, 384, 2, 32, 4, "vca", n=16)
    no_conv = summarize("DiT-S/2", "vca", 32, dwconv=False)
    assert summarize("DiT-S/2", "vca", 32)["params"] - no_conv["params"] == 12 * 10 * 384


def test_cli_json_and_errors(capsys):
    assert main(["DiT-S/8", "--attention", "vca", "--opt", "num_contrast_tokens=4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "DiT-S/8" and rows[0]["options"] == {"num_contrast_tokens": 4}
    assert main(["DiT-S/8", "--input-size", "64"]) == 0
    assert "DiT-S/8" in capsys.readouterr().out
    assert main(["DiT-Q/2"]) == 2
    assert "valid names" in capsys.readouterr().err
