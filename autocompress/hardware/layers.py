"""What latency predictors read off a model: per-layer geometry fixed by the architecture
(spatial sizes, kernel size), and the channel counts of a compressed model (which structured
pruning changes, coupled layers together)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..models import evaluating
from ..policy import CompressionPolicy, compressible_layers


@dataclass(frozen=True)
class LayerGeometry:
    """Shape facts of one Conv2d/Linear layer that pruning does not change: spatial positions
    (H*W, or tokens for Linear) per sample, kernel elements (kh*kw, 1 for Linear), whether
    groups == in channels, and the groups."""

    kind: str
    batch: int
    in_positions: int
    out_positions: int
    kernel: int
    depthwise: bool
    groups: int = 1

    def _fan_in(self, cin: int) -> int:
        """Input channels one output channel reads (``cin / groups``; 1 for depthwise)."""
        return 1 if self.depthwise else max(1, cin // self.groups)

    def macs(self, cin: int, cout: int) -> int:
        return self.batch * self.out_positions * cout * self.kernel * self._fan_in(cin)

    def weights(self, cin: int, cout: int) -> int:
        return self.kernel * cout * self._fan_in(cin)

    def activations(self, cin: int, cout: int) -> int:
        """Input plus output elements."""
        return self.batch * (self.in_positions * cin + self.out_positions * cout)


@torch.no_grad()
def layer_geometry(model: nn.Module, example: torch.Tensor) -> dict[str, LayerGeometry]:
    """Geometry of every Conv2d/Linear of ``model`` for one forward pass of ``example``."""
    geo: dict[str, LayerGeometry] = {}

    def hook(mod: nn.Module, args: tuple, out: torch.Tensor, name: str) -> None:
        batch, conv = int(args[0].shape[0]), isinstance(mod, nn.Conv2d)
        cin, cout = (
            (mod.in_channels, mod.out_channels) if conv else (mod.in_features, mod.out_features)
        )
        groups = mod.groups if conv else 1
        geo[name] = LayerGeometry(
            kind="conv" if conv else "fc",
            batch=batch,
            in_positions=int(args[0].numel() // (batch * cin)),
            out_positions=int(out.numel() // (batch * cout)),
            kernel=int(mod.kernel_size[0] * mod.kernel_size[1]) if conv else 1,
            depthwise=groups > 1 and groups == cin,
            groups=groups,
        )

    hooks = [
        layer.register_forward_hook(lambda m, a, o, n=name: hook(m, a, o, n))
        for name, layer in compressible_layers(model).items()
    ]
    with evaluating(model, hooks):
        model(example)
    return geo


def count_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per sample of every Conv2d/Linear layer (a forward of ``example``)."""
    geo, chans = layer_geometry(model, example), channels(model)
    return {n: g.macs(*chans[n]) // g.batch for n, g in geo.items()}


def _weight_shape(layer: nn.Module) -> torch.Size:
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations["weight"].original.shape
    return layer.weight.shape


def channels(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{layer: (in channels, out channels)}`` as the (possibly pruned) model has them, read
    off the weight shapes (no forward pass)."""
    out = {}
    for name, layer in compressible_layers(model).items():
        shape = _weight_shape(layer)
        groups = getattr(layer, "groups", 1)
        out[name] = (int(shape[1]) * groups, int(shape[0]))
    return out


def precisions(policy: CompressionPolicy, names) -> dict[str, str]:
    """``{layer: "int8" | "fp32"}``: layers with integer weights (2..8 bits) are deployed as
    INT8, FP16 and float layers as FP32 (what ONNX Runtime's CPU provider runs)."""
    quantized = {n for n, lp in policy.layers.items() if lp.quantized}
    return {n: "int8" if n in quantized else "fp32" for n in names}
