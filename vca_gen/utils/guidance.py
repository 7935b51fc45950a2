"""Classifier-free guidance, applied the same way by the model and by every sampler.

``guided = uncond + scale * (cond - uncond)`` on the prediction channels. Extra output
channels (the learned-variance half of a ``learn_sigma`` model) are taken from the conditional
branch. ``guide_channels=None`` guides every prediction channel (diffusers and later papers);
``guide_channels=3`` reproduces DiT's choice of guiding only the first three latent channels.
A scale of exactly 1 performs one conditional forward pass and returns it unchanged.

Precision: the combination runs in at least fp32. A bf16 model output (autocast) is upcast
before ``cond − uncond`` (which cancels) is scaled by ``scale``, and the guided output is returned
in fp32: every sampler casts the model output to its own (fp32) state dtype anyway, so nothing
is rounded back to bf16 after the amplification. fp32 / fp64 outputs: unchanged, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cfg_forward(
    model_fn: ModelFn,
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    cfg_scale: float,
    null_label: int,
    pred_channels: int,
    guide_channels: int | None = None,
) -> torch.Tensor:
    """Guided prediction for inputs ``x`` (B, C, H, W), times ``t`` (B,), labels ``y`` (B,).

    ``pred_channels`` is the number of leading output channels that are the model's prediction
    (the input channel count); ``null_label`` the class index of the unconditional embedding.
    Returns at least fp32 (the model's dtype if that is fp32 or fp64) when ``cfg_scale != 1``.
    """
    if cfg_scale == 1.0:
        return model_fn(x, t, y)
    if guide_channels is not None and not 0 < guide_channels <= pred_channels:
        raise ValueError(f"guide_channels must be in 1..{pred_channels} or None, got {guide_channels}")
    b = x.shape[0]
    y_null = torch.full_like(y, null_label)
    out = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y_null]))  # (2B, C_out, H, W)
    dt = torch.promote_types(out.dtype, torch.float32)  # bf16 under autocast -> fp32; fp64 stays
    cond, uncond = out[:b].to(dt), out[b:].to(dt)
    g = pred_channels if guide_channels is None else guide_channels
    guided = uncond[:, :g] + cfg_scale * (cond[:, :g] - uncond[:, :g])
    return torch.cat([guided, cond[:, g:]], dim=1)


def guided_model_fn(
    model_fn: ModelFn,
    cfg_scale: float,
    null_label: int | None,
    pred_channels: int,
    guide_channels: int | None = None,
) -> ModelFn:
    """``model_fn`` wrapped with :func:`cfg_forward` (returns ``model_fn`` itself at scale 1, where
    ``null_label`` may be None)."""
    if cfg_scale == 1.0:
        return model_fn
    if null_label is None:
        raise ValueError("cfg_scale != 1 needs null_label (the model's num_classes)")
    return lambda x, t, y: cfg_forward(model_fn, x, t, y, cfg_scale, null_label, pred_channels, guide_channels)
