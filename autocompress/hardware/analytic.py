"""Analytic latency for hardware the user does not have, a per-layer roofline: ``t_layer =
max(compute, memory) + per_layer``, ``t_model = sum(t_layer) + per_inference``. Compute is
``MACs * ceil(w/b) * ceil(a/b) / (bricks * clock)`` bit-serial (BitFusion / HAQ, brick width
``b``) or ``MACs / macs_per_s[p]`` (``p`` the smallest listed precision >= the weight bits);
memory is ``(weights * density * w + (inputs + outputs) * a) / 8 / bandwidth``. Float layers run
at ``float_bits``; quantised ones at their weight bits (>= 8 without sub-8-bit credit) and
``act_bits``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..policy import CompressionPolicy, LayerPolicy
from .layers import LayerGeometry, channels, layer_geometry
from .targets import AnalyticTarget


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
    if not lp.quantized:
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
            if (geo := self.geometry.get(name)) is not None:
                lp = policy.layers.get(name, _FP32)
                total += layer_seconds(self.target, geo, cin, cout, lp)
        return total * 1e3


_FP32 = LayerPolicy()
