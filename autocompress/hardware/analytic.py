"""Analytic latency for hardware the user does not have: per-layer roofline.

``t_layer = max(compute, memory) + per_layer``, ``t_model = sum(t_layer) + per_inference``:

- compute, bit-serial (BitFusion / HAQ): ``MACs * ceil(w/b) * ceil(a/b) / (bricks * clock)``
  with ``b`` the brick width; peak: ``MACs / macs_per_s[p]``, ``p`` the smallest listed
  precision >= the weight bits.
- memory: ``(weights * w + (inputs + outputs) * a) / 8 / bandwidth`` bytes per second, weights
  scaled by their density when the target credits unstructured sparsity.

Float (32-bit) layers run at ``precision.float_bits`` for weights and activations; quantised
layers at their weight bits (8 when the target gives sub-8-bit no credit) and ``act_bits``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..policy import FLOAT_BITS, CompressionPolicy, LayerPolicy
from .layers import LayerGeometry, channels, layer_geometry
from .targets import AnalyticTarget

__all__ = ["AnalyticLatencyModel", "layer_seconds"]


def _compute_seconds(target: AnalyticTarget, macs: int, w_bits: int, a_bits: int) -> float:
    c = target.compute
    if c.kind == "bit_serial":
        cycles = macs * math.ceil(w_bits / c.brick_bits) * math.ceil(a_bits / c.brick_bits)
        return cycles / (c.bricks * c.clock_hz)
    supported = sorted(c.macs_per_s)
    key = next((p for p in supported if p >= w_bits), supported[-1])
    return macs / c.macs_per_s[key]


def layer_seconds(
    target: AnalyticTarget, geo: LayerGeometry, cin: int, cout: int, lp: LayerPolicy
) -> float:
    """Seconds of one layer on ``target`` at ``cin``/``cout`` channels under ``lp``."""
    if lp.bits == FLOAT_BITS:
        w_bits = a_bits = target.precision.float_bits
    else:
        w_bits = lp.bits if target.credit.sub_8bit else max(lp.bits, 8)
        a_bits = target.precision.act_bits
    density = 1.0 - lp.sparsity if target.credit.unstructured_sparsity else 1.0
    compute = _compute_seconds(target, geo.macs(cin, cout), w_bits, a_bits)
    act = geo.in_elements(cin) + geo.out_elements(cout)
    mem_bytes = (geo.weights(cin, cout) * density * w_bits + act * a_bits) / 8
    memory = mem_bytes / target.memory.bandwidth_bytes_per_s
    return max(compute, memory) + target.overhead.per_layer_us * 1e-6


class AnalyticLatencyModel:
    """The :class:`LatencyModel` of an analytic target, in milliseconds."""

    def __init__(self, target: AnalyticTarget, reference: nn.Module, example: torch.Tensor):
        self.target = target
        self.name = target.name
        self.geometry = layer_geometry(reference, example)

    def predict(self, model: nn.Module, policy: CompressionPolicy) -> float:
        total = self.target.overhead.per_inference_us * 1e-6
        for name, (cin, cout) in channels(model).items():
            geo = self.geometry.get(name)
            if geo is None:
                continue
            total += layer_seconds(self.target, geo, cin, cout, policy.layers.get(name, _FP32))
        return total * 1e3


_FP32 = LayerPolicy()
