"""Latency models: the interface the search scores policies with, and the placeholder proxy.

The proxy is MACs x weight bits, scaled so that the uncompressed model's prediction equals its
measured FP32 ONNX Runtime latency. It gives no credit to unstructured sparsity (CPU kernels give
none) and full linear credit to fewer bits, which real CPU kernels do not: it is a placeholder
until the measured latency table replaces it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

from ..policy import FLOAT_BITS, CompressionPolicy, compressible_layers

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..search_space import SearchSpace

__all__ = [
    "LatencyModel",
    "ProxyLatencyModel",
    "available_targets",
    "count_macs",
    "make_latency_model",
]


@runtime_checkable
class LatencyModel(Protocol):
    """Predicts milliseconds per inference of the deployed form of a compressed model.

    ``model`` is the compressed model (channels already removed), ``policy`` its per-layer bits.
    """

    name: str

    def predict(self, model: nn.Module, policy: CompressionPolicy) -> float: ...


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d/Linear layer for one forward pass of ``example``."""
    macs: dict[str, int] = {}
    hooks = []
    for name, layer in compressible_layers(model).items():

        def hook(mod: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
            per_out = mod.weight[0].numel()  # in_channels/groups * kh * kw, or in_features
            macs[name] = int(out.numel() // out.shape[0] * per_out)

        hooks.append(layer.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs


class ProxyLatencyModel:
    """``latency = reference_ms * sum(MACs_l * bits_l) / sum(MACs0_l * 32)``: MACs of the
    compressed model (removed channels count) times weight bits, relative to the uncompressed
    reference model whose latency is ``reference_ms``."""

    name = "proxy"

    def __init__(self, reference: nn.Module, example: torch.Tensor, reference_ms: float = 1.0):
        self.example = example
        self.reference_ms = reference_ms
        self._total = sum(count_macs(reference, example).values()) * FLOAT_BITS or 1

    def predict(self, model: nn.Module, policy: CompressionPolicy) -> float:
        cost = 0
        for name, m in count_macs(model, self.example).items():
            lp = policy.layers.get(name)
            cost += m * (lp.bits if lp is not None else FLOAT_BITS)
        return self.reference_ms * cost / self._total


def available_targets() -> tuple[str, ...]:
    """Names an experiment's ``latency.target`` may take."""
    return ("proxy",)


def make_latency_model(
    cfg: ExperimentConfig,
    model: nn.Module,
    space: SearchSpace,
    example: torch.Tensor,
    *,
    reference_ms: float = 1.0,
    log=print,
) -> LatencyModel:
    """Build the latency model ``cfg.latency.target`` names for ``model`` (the uncompressed
    baseline) over the choices of ``space``; ``reference_ms`` is the baseline's measured FP32
    latency. Measured targets load (or build and store) their latency table here."""
    target = cfg.latency.target
    if target == "proxy":
        return ProxyLatencyModel(model, example, reference_ms)
    raise ValueError(f"unknown latency target {target!r}")
