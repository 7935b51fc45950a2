"""Exponential moving average of model weights with an fp32 shadow.

``EMA(model, decay)`` keeps a frozen fp32 copy of ``model`` (``ema.model``, always in eval
mode) and, after each optimizer step, ``ema.update(model)`` moves every floating-point
parameter towards the live weights: ``shadow <- decay * shadow + (1 - decay) * param``.
Buffers are copied as they are. The shadow's ``state_dict`` has the same keys and shapes as the
model's, so it is what an export writes and what ``create_model`` loads.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

# (live model, shadow params, live params, shadow buffers, live buffers)
_Bound = tuple[nn.Module, list[nn.Parameter], list[nn.Parameter], list[torch.Tensor], list[torch.Tensor]]


class EMA:
    """fp32 exponential moving average of ``model``'s parameters (see module docstring)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model).float().eval()
        self.model.requires_grad_(False)
        self._bound: _Bound | None = None  # (live model, shadow params, live params, shadow buffers, live buffers)

    def _lists(self, model: nn.Module):
        """Matched parameter / buffer lists, built once per live model (an update is then one
        ``_foreach_lerp_`` plus the buffer copies, with no per-step Python walk of the module tree)."""
        if self._bound is not None and self._bound[0] is model:
            return self._bound[1:]
        shadow, live = dict(self.model.named_parameters()), dict(model.named_parameters())
        if shadow.keys() != live.keys():
            raise ValueError("EMA update: the model's parameters do not match the EMA copy")
        sb, lb = dict(self.model.named_buffers()), dict(model.named_buffers())
        if sb.keys() != lb.keys():
            raise ValueError("EMA update: the model's buffers do not match the EMA copy")
        names = list(shadow)
        self._bound = (
            model,
            [shadow[n] for n in names],
            [live[n] for n in names],
            list(sb.values()),
            [lb[n] for n in sb],
        )
        return self._bound[1:]

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """One EMA step towards ``model`` (the unwrapped training model)."""
        d = self.decay if decay is None else float(decay)
        ema_p, live_p, ema_b, live_b = self._lists(model)
        if ema_p:
            new_p = [q.detach() if q.dtype == p.dtype else q.detach().to(p.dtype) for p, q in zip(ema_p, live_p)]
            torch._foreach_lerp_(ema_p, new_p, 1.0 - d)
        for b, lb in zip(ema_b, live_b):
            b.copy_(lb)

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Set the shadow to the model's current weights (an update with decay 0)."""
        self.update(model, decay=0.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def to(self, device) -> EMA:
        self.model.to(device)
        self._bound = None  # .to() may replace parameter tensors
        return self
