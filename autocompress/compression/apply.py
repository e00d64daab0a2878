"""Apply a :class:`CompressionPolicy` to a model: masks + fake-quantisation as weight
parametrisations (so fine-tuning keeps them), 8-bit activation fake-quant on quantised layers,
and the packed state that defines the model's size."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..policy import CompressionPolicy, compressible_layers
from .packing import QuantizedTensor
from .pruning import magnitude_mask
from .quantization import ActFakeQuant, fake_quantize_weight, quantize_weight
from .structured import prune_channels

__all__ = [
    "CompressWeight",
    "attach_input_quant",
    "apply_policy",
    "calibrate",
    "compressed_state",
    "materialize",
    "weight_sparsity",
]

ACT_BITS = 8


class CompressWeight(nn.Module):
    """Weight parametrisation: ``fake_quant(weight * mask)`` with a fixed mask."""

    def __init__(self, mask: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight * self.mask
        return fake_quantize_weight(w, self.bits) if self.bits < 32 else w

    def extra_repr(self) -> str:
        return f"bits={self.bits}, density={self.mask.float().mean().item():.3f}"


def _quant_input_hook(module: nn.Module, args: tuple) -> tuple:
    return (module.input_quant(args[0]), *args[1:])


def attach_input_quant(layer: nn.Module, bits: int = ACT_BITS) -> None:
    """Fake-quantise the layer's input (submodule ``input_quant`` + a forward pre-hook)."""
    layer.input_quant = ActFakeQuant(bits)
    layer.register_forward_pre_hook(_quant_input_hook)


def apply_policy(
    model: nn.Module,
    policy: CompressionPolicy,
    *,
    example: torch.Tensor | None = None,
    importance: str = "l1",
    round_to: int = 1,
    inplace: bool = False,
) -> nn.Module:
    """Return the model compressed as ``policy`` says (a copy unless ``inplace``).

    First output channels are removed for layers with ``keep_ratio < 1`` (real removal, needs an
    ``example`` input to trace the model); then each named layer gets a magnitude mask at its
    sparsity and, below 32 bits, symmetric per-channel weight fake-quantisation plus 8-bit
    fake-quantisation of its input.
    """
    policy.validate(model)
    out = model if inplace else copy.deepcopy(model)
    if any(p.keep_ratio < 1.0 for p in policy.values()):
        if example is None:
            raise ValueError("structured pruning (keep_ratio < 1) needs an example input")
        prune_channels(out, policy, example, importance=importance, round_to=round_to)
    layers = compressible_layers(out)
    for name, lp in policy.items():
        if lp.sparsity == 0.0 and not lp.quantized:
            continue
        layer = layers[name]
        mask = magnitude_mask(layer.weight, lp.sparsity)
        parametrize.register_parametrization(layer, "weight", CompressWeight(mask, lp.bits))
        if lp.quantized:
            attach_input_quant(layer)
    return out


def _bake(layer: nn.Module) -> None:
    """Replace a parametrised weight by its current value. (Not ``remove_parametrizations``:
    a deep copy shares the generated ``Parametrized*`` class with the original, and removing the
    parametrisation deletes the property from that shared class.)"""
    with torch.no_grad():
        value = layer.weight.detach().clone()
    del layer._modules["parametrizations"]
    layer.__class__ = layer.__class__.__bases__[0]
    layer.weight = nn.Parameter(value)


def materialize(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """A plain copy of a compressed model for export: masks and quantised values baked into the
    weights, activation quantisers removed. Returns it with ``{layer: bits}`` of the layers that
    were quantised (their deployed form is INT8; sub-8-bit weights sit on a coarser grid)."""
    plain = copy.deepcopy(model)
    bits: dict[str, int] = {}
    for name, layer in compressible_layers(plain).items():
        if parametrize.is_parametrized(layer, "weight"):
            comp = layer.parametrizations["weight"][0]
            if comp.bits < 32:
                bits[name] = comp.bits
            _bake(layer)
        if hasattr(layer, "input_quant"):
            del layer.input_quant
            for key, hook in list(layer._forward_pre_hooks.items()):
                if hook is _quant_input_hook:
                    del layer._forward_pre_hooks[key]
    return plain.eval(), bits


@torch.no_grad()
def calibrate(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Initialise activation ranges from a few batches (BatchNorm statistics are left as they
    are: the model runs in eval mode apart from the quantisers)."""
    quants = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    if not quants:
        return
    model.eval()
    for q in quants:
        q.train()
    for x in batches:
        model(x)
    model.eval()


def _layer_parts(layer: nn.Module) -> tuple[torch.Tensor, CompressWeight | None]:
    if parametrize.is_parametrized(layer, "weight"):
        plist = layer.parametrizations["weight"]
        return plist.original.detach(), plist[0]
    return layer.weight.detach(), None


def compressed_state(model: nn.Module) -> dict[str, np.ndarray | QuantizedTensor]:
    """Everything a loader needs to rebuild the compressed model: integer codes + scales for
    quantised weights, masked float weights for pruned float layers, float arrays otherwise."""
    out: dict[str, np.ndarray | QuantizedTensor] = {}
    handled: set[str] = set()
    for name, layer in compressible_layers(model).items():
        weight, comp = _layer_parts(layer)
        if comp is None:
            continue
        prefix = f"{name}." if name else ""
        w = weight * comp.mask
        if comp.bits < 32:
            codes, scales = quantize_weight(w, comp.bits)
            out[prefix + "weight"] = QuantizedTensor(
                codes=codes.numpy().astype(np.int8), bits=comp.bits, scales=scales.numpy()
            )
        else:
            out[prefix + "weight"] = w.numpy().astype(np.float32)
        handled.update({prefix + "parametrizations.weight.original", prefix + "weight"})
        handled.add(prefix + "parametrizations.weight.0.mask")
    for key, value in model.state_dict().items():
        if key in handled or key.endswith("num_batches_tracked") or key.endswith("initialized"):
            continue
        out[key] = value.detach().cpu().numpy().astype(np.float32)
    return out


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all Conv2d/Linear layers (after masks and quantisation)."""
    zeros = total = 0
    for layer in compressible_layers(model).values():
        w = layer.weight.detach()
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)
