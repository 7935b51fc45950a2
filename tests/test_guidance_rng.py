import torch

from vca_gen.utils.guidance import cfg_forward
from vca_gen.utils.rng import per_sample_generators, randn


def _toy_model(x, t, y):
    # output (B, 2C, H, W): a label-dependent "prediction" half and a variance half
    shift = y.float().view(-1, 1, 1, 1)
    return torch.cat([x * 2 + shift, x - shift], dim=1)


def test_cfg_scale_one_is_conditional_prediction():
    x = torch.randn(3, 4, 2, 2)
    t = torch.zeros(3)
    y = torch.tensor([0, 1, 2])
    assert torch.equal(cfg_forward(_toy_model, x, t, y, 1.0, null_label=10, pred_channels=4), _toy_model(x, t, y))


def test_cfg_guides_prediction_channels_and_keeps_conditional_variance():
    x = torch.randn(2, 4, 2, 2)
    t = torch.zeros(2)
    y = torch.tensor([3, 5])
    s = 4.0
    out = cfg_forward(_toy_model, x, t, y, s, null_label=10, pred_channels=4)
    cond, uncond = _toy_model(x, t, y), _toy_model(x, t, torch.full_like(y, 10))
    torch.testing.assert_close(out[:, :4], uncond[:, :4] + s * (cond[:, :4] - uncond[:, :4]))
    torch.testing.assert_close(out[:, 4:], cond[:, 4:])
    # DiT's 3-channel option: channel 4 stays the conditional prediction
    out3 = cfg_forward(_toy_model, x, t, y, s, null_label=10, pred_channels=4, guide_channels=3)
    torch.testing.assert_close(out3[:, :3], out[:, :3])
    torch.testing.assert_close(out3[:, 3:], cond[:, 3:])


def test_per_sample_generators_make_rows_batch_independent():
    big = randn((5, 3), per_sample_generators(range(100, 105)))
    small = randn((2, 3), per_sample_generators([102, 103]))
    assert torch.equal(big[2:4], small)
    assert not torch.equal(big[0], big[1])
