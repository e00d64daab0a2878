"""Quantisation: symmetric per-channel integer weights (2..8 bits) and 8-bit activations,
as fake-quantisation with a straight-through estimator for fine-tuning."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ActFakeQuant", "fake_quantize_weight", "qmax", "quantize_weight"]


def qmax(bits: int) -> int:
    """Largest integer code of a symmetric ``bits``-bit quantiser (codes are -qmax..qmax)."""
    return 2 ** (bits - 1) - 1


def quantize_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (same shape, int32) and per-output-channel float scales (axis 0).

    At most ``2**bits - 1`` distinct levels per channel; zeros stay zeros; the rounding error of
    every weight is at most half a step because the scale covers the channel's largest magnitude.
    """
    q = qmax(bits)
    w = weight.detach().float()
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    scales = torch.where(amax > 0, amax / q, torch.ones_like(amax))
    view = (-1,) + (1,) * (w.dim() - 1)
    codes = torch.clamp(torch.round(w / scales.view(view)), -q, q).to(torch.int32)
    return codes, scales


def fake_quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``codes * scale`` in the forward pass, identity gradient (straight-through estimator).

    Written ``wq + (w - w.detach())`` so that the value is exactly ``codes * scale`` (the packed
    artifact rebuilds bit-identical weights), not ``w + (wq - w)`` which rounds differently.
    """
    codes, scales = quantize_weight(weight, bits)
    view = (-1,) + (1,) * (weight.dim() - 1)
    wq = codes.to(weight.dtype) * scales.to(weight.dtype).view(view)
    if not weight.requires_grad:  # inference (screening, evaluation): no estimator needed
        return wq
    return wq + (weight - weight.detach())


class ActFakeQuant(nn.Module):
    """Per-tensor asymmetric fake-quantisation of activations (uint8 by default).

    The range is tracked with an exponential moving average of batch min/max in training mode
    and frozen in eval mode.
    """

    def __init__(self, bits: int = 8, momentum: float = 0.1) -> None:
        super().__init__()
        self.bits = bits
        self.momentum = momentum
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    def scale_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        levels = 2**self.bits - 1
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        scale = torch.clamp((hi - lo) / levels, min=1e-8)
        zero_point = torch.clamp(torch.round(-lo / scale), 0, levels)
        return scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = x.detach().min(), x.detach().max()
            if not bool(self.initialized):
                self.min_val.copy_(lo)
                self.max_val.copy_(hi)
                self.initialized.fill_(True)
            else:
                self.min_val.lerp_(lo, self.momentum)
                self.max_val.lerp_(hi, self.momentum)
        if not bool(self.initialized):
            return x
        scale, zp = self.scale_zero_point()
        levels = 2**self.bits - 1
        xq = (torch.clamp(torch.round(x / scale) + zp, 0, levels) - zp) * scale
        if not x.requires_grad:  # inference: the same values, without the estimator's copies
            return xq
        return xq + (x - x.detach())

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
