"""Attention kinds against explicit float64 implementations written here (naive softmax, loops).

The references below are independent of ``vca_gen``: they read the layer's parameters by name
and recompute the forward pass from the formulas in VCA.md / the DIFF Transformer paper.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vca_gen.models import ATTENTION_KINDS, attention_options, build_attention

GRIDS = [(4, 4), (5, 3)]  # square; non-square with uneven adaptive pooling (5 rows -> 2 bins)


# ----------------------------------------------------------------------------- references
def softmax(z):
    z = z - z.max(dim=-1, keepdim=True).values
    e = z.exp()
    return e / e.sum(dim=-1, keepdim=True)


def attend(q, k, v):
    return softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])) @ v


def rms(z, g, eps=1e-5):
    return z / torch.sqrt((z * z).mean(-1, keepdim=True) + eps) * g


def lam(P, prefix, lambda_init):
    return (
        torch.exp((P[prefix + "lambda_q1"] * P[prefix + "lambda_k1"]).sum())
        - torch.exp((P[prefix + "lambda_q2"] * P[prefix + "lambda_k2"]).sum())
        + lambda_init
    )


def adaptive_pool(qmap, s):
    """qmap (B, H, W, C) -> (B, s*s, C): bins [floor(i*H/s), ceil((i+1)*H/s))."""
    B, H, W, C = qmap.shape
    out = torch.zeros(B, s * s, C, dtype=qmap.dtype)
    for i in range(s):
        r0, r1 = (i * H) // s, -((-(i + 1) * H) // s)
        for j in range(s):
            c0, c1 = (j * W) // s, -((-(j + 1) * W) // s)
            out[:, i * s + j] = qmap[:, r0:r1, c0:c1].mean(dim=(1, 2))
    return out


def depthwise3x3(vmap, w, b):
    """vmap (B, H, W, C), w (C, 1, 3, 3), b (C,) -> (B, H, W, C), zero padding."""
    B, H, W, C = vmap.shape
    pad = torch.zeros(B, H + 2, W + 2, C, dtype=vmap.dtype)
    pad[:, 1:-1, 1:-1] = vmap
    out = b.expand(B, H, W, C).clone()
    for dy in range(3):
        for dx in range(3):
            out = out + w[:, 0, dy, dx] * pad[:, dy : dy + H, dx : dx + W]
    return out


def params64(layer):
    return {k: v.detach().double() for k, v in layer.named_parameters()}


def ref_vca(x, P, grid, h, n, lambda_init, stages, stage2_softmax, dwconv, contrast_tokens):
    B, N, C = x.shape
    d, s = C // h, math.isqrt(n)
    qkv = x @ P["qkv.weight"].T + P["qkv.bias"]
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    if contrast_tokens == "pooled":
        t = adaptive_pool(q.reshape(B, *grid, C), s)
        tp, tm = t + P["pos_plus"], t + P["pos_minus"]
    else:
        tp, tm = P["pos_plus"].expand(B, n, C), P["pos_minus"].expand(B, n, C)
    heads = []
    for i in range(h):
        sl = slice(i * d, (i + 1) * d)
        qh, kh, vh, tph, tmh = q[..., sl], k[..., sl], v[..., sl], tp[..., sl], tm[..., sl]
        if stages in ("both", "stage1"):
            vhat = (1 - lambda_init) * rms(
                attend(tph, kh, vh) - lam(P, "lambda1.", lambda_init) * attend(tmh, kh, vh), P["norm1.weight"]
            )
        else:
            vhat = attend(tph, kh, vh)
        if stages in ("both", "stage2"):
            l2 = lam(P, "lambda2.", lambda_init)
            if stage2_softmax == "joint":
                S = softmax(qh @ torch.cat([tph, tmh], 1).transpose(1, 2) / math.sqrt(d))  # (B, N, 2n)
                A = S[..., :n] - l2 * S[..., n:]
            else:
                A = softmax(qh @ tph.transpose(1, 2) / math.sqrt(d)) - l2 * softmax(
                    qh @ tmh.transpose(1, 2) / math.sqrt(d)
                )
            o = (1 - lambda_init) * rms(A @ vhat, P["norm2.weight"])
        else:
            o = attend(qh, tph, vhat)
        heads.append(o)
    o = torch.cat(heads, dim=-1)
    if dwconv:
        o = o + depthwise3x3(v.reshape(B, *grid, C), P["dwc.weight"], P["dwc.bias"]).reshape(B, N, C)
    return o @ P["proj.weight"].T + P["proj.bias"]


def value_conv_ref(o, v, P, grid):
    """``o + DWConv3x3(v)`` with the naive convolution above (o, v: (B, N, C))."""
    B, N, C = v.shape
    return o + depthwise3x3(v.reshape(B, *grid, C), P["dwc.weight"], P["dwc.bias"]).reshape(B, N, C)


def ref_diff(x, P, h, lambda_init, grid=None):
    """h/2 differential heads with q/k halves of size C/h (odd h: h heads with halves of C/(2h));
    with ``grid``, the value depthwise convolution is added before the projection."""
    B, N, C = x.shape
    if h % 2:
        h, d = 2 * h, C // (2 * h)
    else:
        d = C // h
    qkv = x @ P["qkv.weight"].T + P["qkv.bias"]
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    l = lam(P, "lambda_.", lambda_init)
    heads = []
    for i in range(h // 2):
        a, b = slice(2 * i * d, (2 * i + 1) * d), slice((2 * i + 1) * d, (2 * i + 2) * d)
        A = softmax(q[..., a] @ k[..., a].transpose(1, 2) / math.sqrt(d)) - l * softmax(
            q[..., b] @ k[..., b].transpose(1, 2) / math.sqrt(d)
        )
        o = A @ v[..., 2 * i * d : (2 * i + 2) * d]
        heads.append((1 - lambda_init) * rms(o, P["subln.weight"]))
    o = torch.cat(heads, -1)
    if grid is not None:
        o = value_conv_ref(o, v, P, grid)
    return o @ P["proj.weight"].T + P["proj.bias"]


def ref_mhsa(x, P, h, grid=None):
    C = x.shape[-1]
    d = C // h
    qkv = x @ P["qkv.weight"].T + P["qkv.bias"]
    o = torch.cat(
        [
            attend(
                qkv[..., i * d : (i + 1) * d],
                qkv[..., C + i * d : C + (i + 1) * d],
                qkv[..., 2 * C + i * d : 2 * C + (i + 1) * d],
            )
            for i in range(h)
        ],
        -1,
    )
    if grid is not None:
        o = value_conv_ref(o, qkv[..., 2 * C :], P, grid)
    return o @ P["proj.weight"].T + P["proj.bias"]


def randomize_(layer):
    """Non-trivial values for gains / biases that init to constants."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("subln.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return layer


# ----------------------------------------------------------------------------- combos
def vca_combos():
    for stages, sm, dw, ct in itertools.product(
        ("both", "stage1", "stage2"), ("joint", "separate"), (True, False), ("pooled", "learned")
    ):
        if stages == "stage1" and sm == "separate":
            continue
        yield dict(stages=stages, stage2_softmax=sm, dwconv=dw, contrast_tokens=ct)


def lambda_init_ref(l):
    return 0.8 - 0.6 * math.exp(-0.3 * l)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("opts", list(vca_combos()), ids=lambda o: "-".join(str(v) for v in o.values()))
def test_vca_matches_float64_reference(grid, opts):
    C, h, n, layer_idx = 16, 2, 4, 3
    layer = randomize_(build_attention("vca", C, h, grid, layer_idx, num_contrast_tokens=n, **opts)).double()
    x = torch.randn(2, grid[0] * grid[1], C, dtype=torch.float64)
    expected = ref_vca(x, params64(layer), grid, h, n, lambda_init_ref(layer_idx), **opts)
    torch.testing.assert_close(layer(x), expected, rtol=1e-9, atol=1e-10)
    # fp32 path (fused SDPA kernels) agrees to fp32 accuracy
    out32 = layer.float()(x.float())
    torch.testing.assert_close(out32.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("h", [4, 3])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_diff_and_mhsa_match_float64_reference(grid, h):
    C, layer_idx = 24, 5
    x = torch.randn(2, grid[0] * grid[1], C, dtype=torch.float64)
    diff = randomize_(build_attention("diff", C, h, grid, layer_idx)).double()
    torch.testing.assert_close(
        diff(x), ref_diff(x, params64(diff), h, lambda_init_ref(layer_idx)), rtol=1e-9, atol=1e-10
    )
    mhsa = randomize_(build_attention("mhsa", C, h, grid, layer_idx)).double()
    torch.testing.assert_close(mhsa(x), ref_mhsa(x, params64(mhsa), h), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("h", [4, 3])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_diff_and_mhsa_with_dwconv_match_float64_reference(grid, h):
    """The value depthwise conv on MHSA / DIFF: plain float64 attention plus the naive convolution."""
    C, layer_idx = 24, 2
    x = torch.randn(2, grid[0] * grid[1], C, dtype=torch.float64)
    diff = randomize_(build_attention("diff", C, h, grid, layer_idx, dwconv=True)).double()
    P = params64(diff)
    assert P["dwc.weight"].shape == (C, 1, 3, 3) and P["dwc.bias"].shape == (C,)
    torch.testing.assert_close(diff(x), ref_diff(x, P, h, lambda_init_ref(layer_idx), grid=grid), rtol=1e-9, atol=1e-10)
    mhsa = randomize_(build_attention("mhsa", C, h, grid, layer_idx, dwconv=True)).double()
    torch.testing.assert_close(mhsa(x), ref_mhsa(x, params64(mhsa), h, grid=grid), rtol=1e-9, atol=1e-10)
    # the convolution is really there: without it the outputs differ
    assert (mhsa(x) - ref_mhsa(x, params64(mhsa), h)).abs().max() > 1e-3
    # fp32 path agrees to fp32 accuracy
    torch.testing.assert_close(
        mhsa.float()(x.float()).double(), ref_mhsa(x, params64(mhsa), h, grid=grid), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("kind", ["mhsa", "diff"])
def test_dwconv_off_is_the_plain_layer_bit_for_bit(kind):
    """``dwconv=False`` (the default) builds the same parameters from the same RNG draws, so the
    weights and outputs equal the plain layer's bit for bit, and adds no key."""
    grid, C, h = (4, 4), 24, 4
    torch.manual_seed(0)
    plain = build_attention(kind, C, h, grid, 1)
    torch.manual_seed(0)
    off = build_attention(kind, C, h, grid, 1, dwconv=False)
    assert list(plain.state_dict()) == list(off.state_dict())
    assert not any(k.startswith("dwc") for k in off.state_dict())
    for k, v in plain.state_dict().items():
        assert torch.equal(v, off.state_dict()[k]), k
    x = torch.randn(2, 16, C)
    assert torch.equal(plain(x), off(x))
    torch.manual_seed(0)
    on = build_attention(kind, C, h, grid, 1, dwconv=True)
    assert set(on.state_dict()) - set(plain.state_dict()) == {"dwc.weight", "dwc.bias"}


def test_every_kind_accepts_dwconv_with_its_default():
    assert {k: attention_options(k)["dwconv"] for k in ATTENTION_KINDS} == {"mhsa": False, "vca": True, "diff": False}
    with pytest.raises(ValueError, match="dwconv must be true or false"):
        build_attention("mhsa", 16, 2, (4, 4), 0, dwconv="yes")


@pytest.mark.parametrize("opts", list(vca_combos()), ids=lambda o: "-".join(str(v) for v in o.values()))
def test_vca_gradients_reach_every_parameter(opts):
    layer = randomize_(build_attention("vca", 16, 2, (4, 4), 1, num_contrast_tokens=4, **opts))
    x = torch.randn(2, 16, 16, requires_grad=True)
    (layer(x) ** 2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert x.grad.abs().sum() > 0


def test_diff_gradients_reach_every_parameter():
    layer = randomize_(build_attention("diff", 16, 4, (4, 4), 1))
    (layer(torch.randn(2, 16, 16)) ** 2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("C,h,n", [(384, 6, 64), (192, 3, 16), (64, 4, 9)])
def test_vca_added_parameters(C, h, n):
    d = C // h
    count = lambda m: sum(p.numel() for p in m.parameters())
    mhsa = build_attention("mhsa", C, h, (16, 16), 0)
    vca = build_attention("vca", C, h, (16, 16), 0, num_contrast_tokens=n)
    assert count(vca) - count(mhsa) == 2 * n * C + 10 * d + 10 * C
    if h % 2 == 0:  # DIFF pairs heads
        diff = build_attention("diff", C, h, (16, 16), 0)
        assert count(diff) - count(mhsa) == 6 * d  # λ vectors 4d + RMSNorm gain over 2d


def test_lambda_init_schedule_and_param_init():
    for l in (0, 1, 7, 27):
        layer = build_attention("vca", 16, 2, (4, 4), l, num_contrast_tokens=4)
        assert layer.lambda_init == pytest.approx(lambda_init_ref(l))
        assert build_attention("diff", 16, 2, (4, 4), l).lambda_init == pytest.approx(lambda_init_ref(l))
    layer = build_attention("vca", 256, 4, (8, 8), 0, num_contrast_tokens=64)
    assert 0.9 < layer.pos_plus.std().item() < 1.1  # e± ~ N(0, 1)
    lam_vecs = torch.cat([p for n_, p in layer.named_parameters() if "lambda_" in n_])
    assert 0.07 < lam_vecs.std().item() < 0.13  # λ vectors ~ N(0, 0.1²)


def test_learned_contrast_tokens_are_input_independent():
    layer = build_attention("vca", 16, 2, (4, 4), 0, num_contrast_tokens=4, contrast_tokens="learned", dwconv=False)
    pooled = build_attention("vca", 16, 2, (4, 4), 0, num_contrast_tokens=4)
    T = layer._contrast_tokens(torch.randn(3, 16, 16))  # (B, h, 2n, d)
    assert T.shape == (3, 2, 8, 8) and torch.equal(T[0], T[2])
    T2 = pooled._contrast_tokens(torch.randn(3, 16, 16))
    assert not torch.allclose(T2[0], T2[2])


def test_factory_errors_name_valid_choices():
    with pytest.raises(ValueError, match="mhsa, vca, diff"):
        build_attention("linear", 16, 2, (4, 4), 0)
    with pytest.raises(ValueError, match="num_contrast_tokens"):
        build_attention("vca", 16, 2, (4, 4), 0, n_tokens=4)
    with pytest.raises(ValueError, match=r"valid options \(defaults\): dwconv=False"):
        build_attention("mhsa", 16, 2, (4, 4), 0, num_contrast_tokens=4)
    with pytest.raises(ValueError, match="perfect square"):
        build_attention("vca", 16, 2, (4, 4), 0, num_contrast_tokens=10)
    with pytest.raises(ValueError, match="'joint', 'separate'"):
        build_attention("vca", 16, 2, (4, 4), 0, stage2_softmax="both")
    with pytest.raises(ValueError, match="'both', 'stage1', 'stage2'"):
        build_attention("vca", 16, 2, (4, 4), 0, stages="one")
    with pytest.raises(ValueError, match="'pooled', 'learned'"):
        build_attention("vca", 16, 2, (4, 4), 0, contrast_tokens="random")
    with pytest.raises(ValueError, match="stage2_softmax applies only"):
        build_attention("vca", 16, 2, (4, 4), 0, stages="stage1", stage2_softmax="separate")
    with pytest.raises(ValueError, match="even num_heads or an even head dim"):
        build_attention("diff", 9, 3, (4, 4), 0)
    with pytest.raises(ValueError, match="divisible"):
        build_attention("mhsa", 10, 3, (4, 4), 0)
    with pytest.raises(ValueError, match="expects 4x4=16 tokens"):
        build_attention("vca", 16, 2, (4, 4), 0, num_contrast_tokens=4)(torch.randn(1, 9, 16))
    assert set(ATTENTION_KINDS) == {"mhsa", "vca", "diff"}
    assert attention_options("vca")["num_contrast_tokens"] == 64


def test_more_contrast_tokens_than_grid_warns_but_works():
    with pytest.warns(UserWarning, match="replicate"):
        layer = build_attention("vca", 16, 2, (2, 3), 0, num_contrast_tokens=9)
    assert layer(torch.randn(1, 6, 16)).shape == (1, 6, 16)
