"""Backbone: official key names/shapes, embeddings, CFG, checkpointing, loading, errors."""

from __future__ import annotations

import math
import re

import pytest
import torch

from vca_gen.models import create_model, list_models, load_official_checkpoint

# Facts from CONVENTIONS.md / DiT's paper: size -> (depth, hidden, heads)
ZOO = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def official_shapes(depth, C, p, in_ch=4, num_classes=1000, input_size=32, learn_sigma=True):
    """Key -> shape of an official DiT checkpoint, written from the published layer list."""
    out_ch = 2 * in_ch if learn_sigma else in_ch
    N = (input_size // p) ** 2
    shapes = {
        "pos_embed": (1, N, C),
        "x_embedder.proj.weight": (C, in_ch, p, p),
        "x_embedder.proj.bias": (C,),
        "t_embedder.mlp.0.weight": (C, 256),
        "t_embedder.mlp.0.bias": (C,),
        "t_embedder.mlp.2.weight": (C, C),
        "t_embedder.mlp.2.bias": (C,),
        "y_embedder.embedding_table.weight": (num_classes + 1, C),
        "final_layer.linear.weight": (p * p * out_ch, C),
        "final_layer.linear.bias": (p * p * out_ch,),
        "final_layer.adaLN_modulation.1.weight": (2 * C, C),
        "final_layer.adaLN_modulation.1.bias": (2 * C,),
    }
    for i in range(depth):
        shapes.update(
            {
                f"blocks.{i}.attn.qkv.weight": (3 * C, C),
                f"blocks.{i}.attn.qkv.bias": (3 * C,),
                f"blocks.{i}.attn.proj.weight": (C, C),
                f"blocks.{i}.attn.proj.bias": (C,),
                f"blocks.{i}.mlp.fc1.weight": (4 * C, C),
                f"blocks.{i}.mlp.fc1.bias": (4 * C,),
                f"blocks.{i}.mlp.fc2.weight": (C, 4 * C),
                f"blocks.{i}.mlp.fc2.bias": (C,),
                f"blocks.{i}.adaLN_modulation.1.weight": (6 * C, C),
                f"blocks.{i}.adaLN_modulation.1.bias": (6 * C,),
            }
        )
    return shapes


def tiny(attention="mhsa", **kw):
    kw.setdefault("depth", 2)
    kw.setdefault("input_size", 8)
    kw.setdefault("num_classes", 10)
    return create_model("DiT-Ti/2", attention=attention, **kw)


@pytest.mark.parametrize("size", list(ZOO))
@pytest.mark.parametrize("p", [2, 4, 8])
def test_official_state_dict_loads_strict_on_meta(size, p):
    depth, C, heads = ZOO[size]
    expected = official_shapes(depth, C, p)
    with torch.device("meta"):
        model = create_model(f"DiT-{size}/{p}")
        sit = create_model(f"SiT-{size}/{p}")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert {k: tuple(v.shape) for k, v in sit.state_dict().items()} == expected
    fake = {k: torch.empty(s, device="meta") for k, s in expected.items()}
    model.load_state_dict(fake, strict=True, assign=True)


def test_official_checkpoint_roundtrip_and_wrappers(tmp_path):
    """A state dict with official names (built here from the shape list) loads via the helper."""
    C, depth = 192, 2
    shapes = official_shapes(depth, C, 2, num_classes=10, input_size=8)
    plain = {k: torch.randn(s) for k, s in shapes.items()}
    model = tiny()
    load_official_checkpoint(model, plain)
    for k, v in model.state_dict().items():
        assert torch.equal(v, plain[k]), k
    ema = {k: v + 1 for k, v in plain.items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"model": plain, "ema": ema, "opt": {}}, path)
    load_official_checkpoint(model, path)  # prefers EMA weights
    assert torch.equal(model.pos_embed, ema["pos_embed"])
    load_official_checkpoint(model, {"model": {"module." + k: v for k, v in plain.items()}})
    assert torch.equal(model.pos_embed, plain["pos_embed"])
    # VCA model: strict needs every key; strict=False initialises the shared ones from MHSA
    vca = tiny("vca", num_contrast_tokens=4)
    with pytest.raises(ValueError, match="lacks"):
        load_official_checkpoint(vca, plain)
    load_official_checkpoint(vca, plain, strict=False)
    assert torch.equal(vca.blocks[1].attn.qkv.weight, plain["blocks.1.attn.qkv.weight"])


def test_learn_sigma_mismatch_error_names_key_and_shapes():
    shapes = official_shapes(2, 192, 2, num_classes=10, input_size=8)
    sd = {k: torch.zeros(s) for k, s in shapes.items()}
    model = tiny(learn_sigma=False)
    with pytest.raises(ValueError, match=r"final_layer\.linear\.weight.*\(32, 192\).*\(16, 192\).*learn_sigma"):
        load_official_checkpoint(model, sd)


def test_vca_and_diff_add_keys_only_under_attention():
    base = {k: v.shape for k, v in tiny().state_dict().items()}
    for kind, opts in (("vca", {"num_contrast_tokens": 4}), ("diff", {})):
        other = {k: v.shape for k, v in tiny(kind, **opts).state_dict().items()}
        assert all(other[k] == s for k, s in base.items())
        extra = set(other) - set(base)
        assert extra and all(re.match(r"blocks\.\d+\.attn\.", k) for k in extra), extra


def test_model_names_and_overrides():
    names = list_models()
    assert len(names) == 30 and "DiT-XL/2" in names and "SiT-B/4" in names and "DiT-Ti/2" in names
    m = create_model("SiT-S/4", depth=3, hidden_size=64, num_heads=4, mlp_ratio=2.0, input_size=16, num_classes=5)
    assert len(m.blocks) == 3 and m.blocks[0].attn.num_heads == 4 and m.blocks[0].mlp.fc1.out_features == 128
    assert (m.name, m.attention, m.patch_size, m.num_classes, m.input_size) == ("SiT-S/4", "mhsa", 4, 5, 16)
    ti = create_model("DiT-Ti/8", input_size=16)
    assert (len(ti.blocks), ti.hidden_size, ti.num_heads) == (12, 192, 3)


def test_timestep_embedding_closed_form():
    m = tiny()
    t = torch.tensor([0.0, 3.0, 0.25])
    # first MLP input: [cos(t f_i), sin(t f_i)], f_i = 10000^(-i/128)
    captured = {}
    h = m.t_embedder.mlp[0].register_forward_hook(lambda mod, inp, out: captured.update(x=inp[0]))
    m.t_embedder(t)
    h.remove()
    i = torch.arange(128, dtype=torch.float64)
    f = 10000.0 ** (-i / 128)
    expected = torch.cat([torch.cos(t.double()[:, None] * f), torch.sin(t.double()[:, None] * f)], 1)
    torch.testing.assert_close(captured["x"].double(), expected, atol=1e-5, rtol=1e-5)


def test_pos_embed_is_fixed_sincos_on_nonsquare_grid():
    m = tiny(input_size=(6, 10), hidden_size=16, num_heads=2)  # grid 3 x 5
    assert not m.pos_embed.requires_grad and "pos_embed" in m.state_dict()
    D = 16
    omega = 1.0 / 10000 ** (torch.arange(D // 4, dtype=torch.float64) / (D / 4))
    for r in range(3):
        for c in range(5):
            e = torch.cat([torch.sin(c * omega), torch.cos(c * omega), torch.sin(r * omega), torch.cos(r * omega)])
            torch.testing.assert_close(m.pos_embed[0, r * 5 + c].double(), e, atol=1e-6, rtol=0)


def test_init_scheme():
    m = tiny()
    for b in m.blocks:
        assert b.adaLN_modulation[-1].weight.abs().sum() == 0
    assert m.final_layer.linear.weight.abs().sum() == 0 and m.final_layer.adaLN_modulation[-1].bias.abs().sum() == 0
    assert abs(m.y_embedder.embedding_table.weight.std().item() - 0.02) < 0.004
    assert abs(m.t_embedder.mlp[0].weight.std().item() - 0.02) < 0.004
    w = m.blocks[0].mlp.fc1.weight  # xavier uniform bound sqrt(6 / (fan_in + fan_out))
    assert w.abs().max() <= math.sqrt(6 / (192 + 768)) and m.blocks[0].mlp.fc1.bias.abs().sum() == 0
    x = torch.randn(2, 4, 8, 8)
    out = m(x, torch.tensor([1.0, 999.0]), torch.tensor([0, 3]))
    assert out.abs().sum() == 0  # adaLN-Zero: zero output at init


def perturb_(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("attention", ["mhsa", "vca", "diff"])
@pytest.mark.parametrize("learn_sigma,in_ch", [(True, 4), (False, 4), (True, 1), (False, 3)])
def test_forward_shapes_and_channels(attention, learn_sigma, in_ch):
    opts = {"num_contrast_tokens": 4} if attention == "vca" else {}
    m = tiny(attention, learn_sigma=learn_sigma, in_channels=in_ch, input_size=(8, 12), num_heads=4, **opts)
    assert m.out_channels == (2 * in_ch if learn_sigma else in_ch) and m.in_channels == in_ch
    out = m(torch.randn(2, in_ch, 8, 12), torch.rand(2), torch.tensor([1, 2]))
    assert out.shape == (2, m.out_channels, 8, 12)


def test_unpatchify_inverts_patch_layout():
    m = tiny(learn_sigma=False, input_size=(4, 6))
    x = torch.randn(2, 4, 4, 6)
    p = 2
    tokens = x.reshape(2, 4, 2, p, 3, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 6, p * p * 4)  # (B, N, p*p*C)
    assert torch.equal(m.unpatchify(tokens), x)


def test_label_dropout():
    m = tiny(class_dropout_prob=0.5)
    y = torch.arange(10).repeat(20)
    emb = m.y_embedder
    null = emb.embedding_table.weight[10]
    assert torch.equal(emb(y, train=False), emb.embedding_table.weight[y])
    dropped = (emb(y, train=True) == null).all(dim=1).float().mean().item()
    assert 0.35 < dropped < 0.65
    forced = emb(y[:4], train=False, force_drop_ids=torch.tensor([1, 0, 1, 0]))
    assert torch.equal(forced[0], null) and torch.equal(forced[1], emb.embedding_table.weight[1])
    assert tiny(class_dropout_prob=0.0).y_embedder.embedding_table.num_embeddings == 10


def test_cfg_forward():
    m = perturb_(tiny("vca", num_contrast_tokens=4)).eval()
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([5.0, 10.0, 700.0]), torch.tensor([1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(m.forward_with_cfg(x, t, y, 1.0), m(x, t, y))
        cond, uncond = m(x, t, y), m(x, t, torch.full_like(y, 10))
        g = m.forward_with_cfg(x, t, y, 4.0)
        torch.testing.assert_close(g[:, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g[:, 4:], cond[:, 4:], atol=1e-5, rtol=1e-5)
        g3 = m.forward_with_cfg(x, t, y, 4.0, guide_channels=3)
        torch.testing.assert_close(g3[:, 3:], cond[:, 3:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="null"):
        tiny(class_dropout_prob=0.0).forward_with_cfg(x, t, y, 2.0)


@pytest.mark.parametrize("attention", ["mhsa", "vca"])
def test_grad_checkpointing_same_grads(attention):
    opts = {"num_contrast_tokens": 4} if attention == "vca" else {}
    a = perturb_(tiny(attention, class_dropout_prob=0.0, **opts))
    b = tiny(attention, class_dropout_prob=0.0, grad_checkpointing=True, **opts)
    b.load_state_dict(a.state_dict())
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 400.0]), torch.tensor([1, 2])
    for m in (a, b):
        m.train()
        (m(x, t, y) ** 2).mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.requires_grad:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_model_gradients_reach_vca_parameters():
    m = perturb_(tiny("vca", num_contrast_tokens=4))
    (m(torch.randn(2, 4, 8, 8), torch.rand(2) * 1000, torch.tensor([1, 2])) ** 2).mean().backward()
    for name, p in m.named_parameters():
        if ".attn." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_vca_lambda_init_follows_block_index():
    m = tiny("vca", depth=4, num_contrast_tokens=4)
    for i, b in enumerate(m.blocks):
        assert b.attn.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.3 * i))


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"unknown model name 'DiT-M/2'.*DiT-S/2"):
        create_model("DiT-M/2")
    with pytest.raises(ValueError, match=r"unknown model name.*DiT-XL/8"):
        create_model("DiT-S/3")
    with pytest.raises(ValueError, match=r"unknown attention kind 'flash'.*mhsa, vca, diff"):
        create_model("DiT-S/2", attention="flash")
    with pytest.raises(ValueError, match="unknown option.*num_contrast_tokens"):
        create_model("DiT-S/2", attention="vca", contrast=4)
    with pytest.raises(ValueError, match="divisible by the patch size 4"):
        create_model("DiT-Ti/4", input_size=30)
    with pytest.raises(ValueError, match="perfect square"):
        tiny("vca", num_contrast_tokens=8)
    m = tiny()
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 4, 8, 8\).*in_channels=4.*got \(2, 3, 8, 8\)"):
        m(torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="expects x of shape"):
        m(torch.randn(2, 4, 16, 16), torch.rand(2), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t must have shape"):
        m(torch.randn(2, 4, 8, 8), torch.rand(3), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="y must be an integer"):
        m(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1.0, 2.0]))
