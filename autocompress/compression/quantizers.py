"""Weight quantisers, one registry (``LayerPolicy.quantizer`` names an entry; FP16 and float
storage are the two fixed formats of 16- and 32-bit layers). A format says how a layer's masked
weights are computed during fine-tuning (fake-quantisation, straight-through gradient) and what
the packed file stores for them, which is the model's size: ``apply_policy``, the packed file and
its loader, BatchNorm folding, the sensitivity sweeps and estimators and the export report all go
through :func:`weight_format`, so a quantiser registered here works everywhere.

Built in: ``uniform`` (integer grid; ``scheme`` and ``granularity`` options) and ``kmeans``
(Deep Compression's weight sharing). :func:`register_quantizer` adds one, e.g. a power-of-two
or ternary grid, by subclassing :class:`WeightFormat`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..policy import FLOAT_BITS, HALF_BITS, LayerPolicy, _register_quantizer_name
from .packing import QuantizedTensor


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
    rows = w.reshape(w.shape[0] if granularity == "per_channel" else 1, -1)  # one row per scale
    view = (-1,) + (1,) * (w.dim() - 1)  # (a single scale broadcasts the same way)
    if scheme == "symmetric":
        q = 2 ** (bits - 1) - 1  # codes are -q..q
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
    wq = codes.to(weight.dtype) * scales.to(weight.dtype).view((-1,) + (1,) * (weight.dim() - 1))
    return straight_through(weight, wq)


def straight_through(weight: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` forward, identity gradient to ``weight`` (none needed without a gradient)."""
    if not weight.requires_grad:  # inference (screening, evaluation): no estimator needed
        return value
    return value + (weight - weight.detach())


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


class _ScaleGrad(torch.autograd.Function):
    """Identity forward (the value exactly), gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class WeightFormat:
    """How one layer's weights are computed and stored. Subclass and register with
    :func:`register_quantizer` (the methods get the layer's parametrisation ``comp``: a module
    holding ``mask``, ``bits`` and ``policy``, on which :meth:`setup` may register parameters or
    buffers, and the masked float weight ``w``).

    ``options``: the ``LayerPolicy`` options the format reads (others are reset to defaults).
    """

    options: tuple[str, ...] = ()

    def setup(self, comp: nn.Module, w: torch.Tensor) -> None:
        """Called once when the policy is applied (``w``: the masked weight)."""

    def value(self, comp: nn.Module, w: torch.Tensor) -> torch.Tensor:
        """The weight the layer computes with, with a straight-through gradient to ``w``."""
        raise NotImplementedError

    def stored(self, comp: nn.Module, w: torch.Tensor) -> QuantizedTensor | np.ndarray:
        """What the packed file stores (its byte count is the layer's share of the size):
        integer codes with scales or a codebook (a :class:`QuantizedTensor`), or an array."""
        raise NotImplementedError

    def ranking(self, comp: nn.Module, w: torch.Tensor, layer_weight: torch.Tensor):
        """The weights gradual pruning ranks by magnitude (default: the masked float weight)."""
        return w

    def pruned(self, comp: nn.Module) -> None:
        """Called after the mask lost weights (gradual pruning)."""

    def scalable(self, lp: LayerPolicy) -> bool:
        """Whether a per-output-channel factor (a folded BatchNorm scale) keeps the stored form
        exact."""
        return False

    def label(self, lp: LayerPolicy) -> str:
        """How the export report names the layer's weights, e.g. ``4-bit kmeans``."""
        return f"{lp.bits}-bit {lp.quantizer}"


class _Float(WeightFormat):
    def value(self, comp, w):
        return w

    def stored(self, comp, w):
        return w.numpy().astype(np.float32)

    def scalable(self, lp):
        return True

    def label(self, lp):
        return "fp32"


class _Half(_Float):
    def value(self, comp, w):  # rounded to FP16 (what the packed file stores)
        return straight_through(w, w.detach().half().to(w.dtype))

    def stored(self, comp, w):
        return w.numpy().astype(np.float16)

    def label(self, lp):
        return "fp16"


class _Uniform(WeightFormat):
    """Integer codes on a grid, ``codes * scales`` (:func:`quantize_weight`)."""

    options = ("scheme", "granularity")

    def value(self, comp, w):
        return fake_quantize_weight(w, comp.bits, **_grid(comp.policy))

    def stored(self, comp, w):
        lp = comp.policy
        codes, scales = quantize_weight(w, lp.bits, **_grid(lp))
        dtype = np.int8 if lp.scheme == "symmetric" else np.int16
        return QuantizedTensor(codes.numpy().astype(dtype), lp.bits, scales.numpy(), lp.scheme)

    def scalable(self, lp):
        return lp.granularity == "per_channel"

    def label(self, lp):
        extra = [o for o in (lp.scheme, lp.granularity) if o not in ("symmetric", "per_channel")]
        return " ".join([f"{lp.bits}-bit", *extra])


class _KMeans(WeightFormat):
    """Shared weights ``centroids[assign]``: assignments fixed at apply time, the centroids a
    trained parameter moved by the mean gradient of their cluster (Deep Compression's
    fine-tuning of shared weights, normalised by the cluster size)."""

    def setup(self, comp, w):
        centroids, assign = kmeans_codebook(w, comp.bits)
        comp.centroids = nn.Parameter(centroids.to(w.dtype))
        comp.register_buffer("assign", assign)

    def value(self, comp, w):
        # The gradient each centroid receives is its cluster's mean gradient (Han et al.'s sum
        # divided by the cluster size): at the weights' learning rate the sum over thousands of
        # weights diverged (techniques benchmark).
        c = comp.centroids
        if c.requires_grad:
            counts = torch.bincount(comp.assign.flatten(), minlength=len(c) + 1)
            c = _ScaleGrad.apply(c, 1.0 / counts[1:].clamp(min=1).to(c.dtype))
        return torch.cat([c.new_zeros(1), c])[comp.assign]

    def stored(self, comp, w):
        codes = comp.assign.numpy().astype(np.int16)
        return QuantizedTensor(codes, comp.bits, comp.centroids.detach().numpy(), "kmeans")

    def ranking(self, comp, w, layer_weight):
        return layer_weight  # trained: the shared weights

    def pruned(self, comp):
        comp.assign[~comp.mask] = 0


def _grid(lp: LayerPolicy) -> dict[str, str]:
    return {"scheme": lp.scheme, "granularity": lp.granularity}


_FORMATS: dict[str, WeightFormat] = {}
_FIXED = {FLOAT_BITS: _Float(), HALF_BITS: _Half()}


def register_quantizer(name: str, fmt: WeightFormat) -> WeightFormat:
    """Make ``name`` a value of ``LayerPolicy.quantizer`` (and of a search space's
    ``quantizer`` list) for integer bit-widths (2..8), computed and stored as ``fmt`` says."""
    if not isinstance(fmt, WeightFormat):
        raise TypeError(f"quantizer {name!r}: expected a WeightFormat instance, got {fmt!r}")
    _FORMATS[name] = fmt
    _register_quantizer_name(name, fmt.options)
    return fmt


def weight_format(lp: LayerPolicy) -> WeightFormat:
    """The format of a layer's weights under ``lp``."""
    return _FIXED.get(lp.bits) or _FORMATS[lp.quantizer]


register_quantizer("uniform", _Uniform())
register_quantizer("kmeans", _KMeans())
