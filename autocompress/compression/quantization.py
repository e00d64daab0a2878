"""Quantisation: integer weights (2..8 bits; symmetric or asymmetric, per channel or per
tensor), FP16 weights, k-means weight sharing, and 8-bit activations, as fake-quantisation with
a straight-through estimator for fine-tuning."""

from __future__ import annotations

import torch
from torch import nn


def qmax(bits: int) -> int:
    """Largest integer code of a symmetric ``bits``-bit quantiser (codes are -qmax..qmax)."""
    return 2 ** (bits - 1) - 1


def _groups(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """The weight as rows that share a scale: one per output channel, or one for the tensor."""
    return w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)


def quantize_weight(
    weight: torch.Tensor,
    bits: int,
    *,
    scheme: str = "symmetric",
    granularity: str = "per_channel",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (same shape, int32) and float scales (one per output channel, axis 0, or a
    single one ``per_tensor``); the weight is ``codes * scales``.

    ``symmetric``: codes in ``-qmax..qmax`` with the scale covering the largest magnitude.
    ``asymmetric``: min/max with a zero point, ``scale = (max - min) / (2**bits - 1)``; the
    codes returned are relative to the zero point (``q - zero_point``, so ``codes * scales``
    holds either way), spanning at most ``2**bits`` levels per group. Scales are FP16 values
    (2 bytes in the packed file; the largest weight may clip by at most 2**-11 of itself).
    Zeros stay zeros; the rounding error of every other weight is at most half a step.
    """
    w = weight.detach().float()
    rows = _groups(w, granularity == "per_channel")
    view = (-1,) + (1,) * (w.dim() - 1) if granularity == "per_channel" else (1,) * w.dim()
    if scheme == "symmetric":
        q = qmax(bits)
        amax = rows.abs().amax(dim=1)
        scales = _half_scales(torch.where(amax > 0, amax / q, torch.ones_like(amax)))
        codes = torch.clamp(torch.round(w / scales.view(view)), -q, q)
        return codes.to(torch.int32), scales
    levels = 2**bits - 1
    lo = torch.clamp(rows.amin(dim=1), max=0.0)
    hi = torch.clamp(rows.amax(dim=1), min=0.0)
    scales = _half_scales(torch.where(hi > lo, (hi - lo) / levels, torch.ones_like(hi)))
    zero = torch.clamp(torch.round(-lo / scales), 0, levels).view(view)
    codes = torch.clamp(torch.round(w / scales.view(view)) + zero, 0, levels) - zero
    return codes.to(torch.int32), scales


def _half_scales(scales: torch.Tensor) -> torch.Tensor:
    """Scales rounded to FP16 values (what the packed file stores, in 2 bytes each), where they
    stay positive and finite; the rest keep their float32 value."""
    h = scales.half().float()
    return torch.where(torch.isfinite(h) & (h > 0), h, scales)


def fake_quantize_weight(weight: torch.Tensor, bits: int, **options: str) -> torch.Tensor:
    """``codes * scale`` in the forward pass, identity gradient (straight-through estimator).

    Written ``wq + (w - w.detach())`` so that the value is exactly ``codes * scale`` (the packed
    artifact rebuilds bit-identical weights), not ``w + (wq - w)`` which rounds differently.
    ``options``: ``scheme`` and ``granularity`` of :func:`quantize_weight`.
    """
    codes, scales = quantize_weight(weight, bits, **options)
    view = (-1,) + (1,) * (weight.dim() - 1) if scales.numel() > 1 else (1,) * weight.dim()
    wq = codes.to(weight.dtype) * scales.to(weight.dtype).view(view)
    return _straight_through(weight, wq)


def _straight_through(weight: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    if not weight.requires_grad:  # inference (screening, evaluation): no estimator needed
        return value
    return value + (weight - weight.detach())


def fake_half(weight: torch.Tensor) -> torch.Tensor:
    """The weight rounded to FP16 (what the packed file stores), straight-through gradient."""
    return _straight_through(weight, weight.detach().half().to(weight.dtype))


@torch.no_grad()
def kmeans_codebook(
    weight: torch.Tensor, bits: int, iterations: int = 30
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight sharing (Deep Compression): ``2**bits`` centroids fitted by k-means (Lloyd) on the
    non-zero weights, linearly initialised between their min and max (the initialisation Han et
    al. found best). Returns (float centroids ``(k,)``, int64 assignments of the weight's shape:
    0 for a zero weight, ``i`` for centroid ``i - 1``)."""
    w = weight.detach().float().flatten()
    nz = w != 0
    values = w[nz]
    assign = torch.zeros_like(w, dtype=torch.int64)
    if values.numel() == 0:
        return torch.zeros(1), assign.view_as(weight)
    k = min(2**bits, int(values.numel()))
    centroids = torch.linspace(float(values.min()), float(values.max()), k)
    for _ in range(iterations):
        idx = _nearest(values, centroids)
        sums = torch.zeros(k).index_add_(0, idx, values)
        counts = torch.bincount(idx, minlength=k).float()
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
        if torch.equal(moved, centroids):
            break
        centroids = moved
    assign[nz] = _nearest(values, centroids) + 1
    return centroids, assign.view_as(weight)


def _nearest(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of each value (centroids sorted ascending)."""
    edges = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values, edges)


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
