"""Classifier-free guidance, applied the same way by the model and by every sampler.

``guided = uncond + scale * (cond - uncond)`` on the prediction channels. Extra output
channels (the learned-variance half of a ``learn_sigma`` model) are taken from the conditional
branch. ``guide_channels=None`` guides every prediction channel (diffusers and later papers);
``guide_channels=3`` reproduces DiT's choice of guiding only the first three latent channels.
A scale of exactly 1 performs one conditional forward pass and returns it unchanged.

Guidance interval (:class:`GuidedModelFn` with ``interval=(lo, hi)``, as edm2 / REPA / LightningDiT
sample): an evaluation at time ``t`` is guided when ``lo <= t <= hi`` (both ends included), ``t``
being the time the model receives (the objective's own time), compared in ``t``'s dtype (``lo`` and
``hi`` rounded to it, so a grid time equal to an end is inside). Outside, the evaluation is the plain
conditional one: a single forward pass on the B samples, the unconditional half skipped.

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
    return _cfg_split(model_fn, x, t, y, cfg_scale, null_label, pred_channels, guide_channels)[0]


def _cfg_split(
    model_fn: ModelFn,
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    cfg_scale: float,
    null_label: int,
    pred_channels: int,
    guide_channels: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(guided, conditional) outputs of one doubled forward pass, both in at least fp32."""
    if guide_channels is not None and not 0 < guide_channels <= pred_channels:
        raise ValueError(f"guide_channels must be in 1..{pred_channels} or None, got {guide_channels}")
    b = x.shape[0]
    y_null = torch.full_like(y, null_label)
    out = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y_null]))  # (2B, C_out, H, W)
    dt = torch.promote_types(out.dtype, torch.float32)
    cond, uncond = out[:b].to(dt), out[b:].to(dt)
    g = pred_channels if guide_channels is None else guide_channels
    guided = uncond[:, :g] + cfg_scale * (cond[:, :g] - uncond[:, :g])
    return torch.cat([guided, cond[:, g:]], dim=1), cond


class GuidedModelFn:
    """``model_fn`` with classifier-free guidance, optionally only inside a time ``interval``; counts
    its calls (``nfe``) and the calls that ran the doubled cond + uncond batch (``guided``).

    Without an interval every call is :func:`cfg_forward` (bit for bit; ``guided == nfe`` when
    ``cfg_scale != 1``, 0 at scale 1). With ``interval=(lo, hi)`` a call whose times ``t`` (B,) all lie
    outside is one plain conditional pass; all inside, :func:`cfg_forward`; a batch with both (no
    built-in sampler makes one) runs the doubled pass and keeps the conditional output outside.
    Deciding costs one device-to-host read of the in-interval count per call.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        cfg_scale: float,
        null_label: int | None,
        pred_channels: int,
        guide_channels: int | None = None,
        interval: tuple[float, float] | None = None,
    ):
        if cfg_scale != 1.0 and null_label is None:
            raise ValueError("cfg_scale != 1 needs null_label (the model's num_classes)")
        if cfg_scale != 1.0 and guide_channels is not None and not 0 < guide_channels <= pred_channels:
            raise ValueError(f"guide_channels must be in 1..{pred_channels} or None, got {guide_channels}")
        self.model_fn, self.cfg_scale, self.null_label = model_fn, float(cfg_scale), null_label
        self.pred_channels, self.guide_channels = pred_channels, guide_channels
        self.interval = None if interval is None else (float(interval[0]), float(interval[1]))
        self.nfe = 0
        self.guided = 0

    def inside(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) bool: which times lie in the interval (compared in ``t``'s dtype)."""
        assert self.interval is not None
        lo = torch.tensor(self.interval[0], dtype=t.dtype, device=t.device)
        hi = torch.tensor(self.interval[1], dtype=t.dtype, device=t.device)
        return (t >= lo) & (t <= hi)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        if self.cfg_scale == 1.0:
            return self.model_fn(x, t, y)
        null = int(self.null_label)  # type: ignore[arg-type]  # checked in __init__
        if self.interval is None:
            self.guided += 1
            return cfg_forward(self.model_fn, x, t, y, self.cfg_scale, null, self.pred_channels, self.guide_channels)
        inside = self.inside(t)
        n = int(inside.sum())  # the one host read: the batch size of this call depends on it
        if n == 0:
            return self.model_fn(x, t, y)
        self.guided += 1
        if n == inside.numel():
            return cfg_forward(self.model_fn, x, t, y, self.cfg_scale, null, self.pred_channels, self.guide_channels)
        guided, cond = _cfg_split(self.model_fn, x, t, y, self.cfg_scale, null, self.pred_channels, self.guide_channels)
        keep = inside.view(-1, *([1] * (guided.dim() - 1)))
        return torch.where(keep, guided, cond)
