"""Per-layer cost tables: packed bytes of each layer at each (sparsity, bits), measured once per
checkpoint and grid (cached with the sensitivity table), and latency deltas of each layer's
levels from the search's latency model. Summed, they estimate a whole policy's size and latency
without compressing it (see :mod:`.proxy`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..compress.apply import apply_policy
from ..compress.packing import QuantizedTensor, pack_state
from ..compress.pruning import magnitude_mask
from ..compress.quantization import quantize_weight
from ..policy import FLOAT_BITS, CompressionPolicy, LayerPolicy, compressible_layers
from ..search_space import SearchSpace

__all__ = ["latency_deltas", "layer_bytes"]

_SIZE_POINTS = 4  # sparsity levels packed per bit-width; the others are interpolated


def _sparsity_points(values: list[float]) -> list[float]:
    if len(values) <= _SIZE_POINTS:
        return values
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, _SIZE_POINTS)).astype(int))
    return [values[i] for i in idx]


def _packed_layer(name: str, weight: torch.Tensor, sparsity: float, bits: int) -> int:
    """Bytes one quantised layer adds to a packed file (codes, scales, header entry and the
    two scalars of its input quantiser)."""
    w = weight.detach() * magnitude_mask(weight, sparsity)
    codes, scales = quantize_weight(w, bits)
    qt = QuantizedTensor(codes=codes.numpy().astype(np.int8), bits=bits, scales=scales.numpy())
    prefix = f"{name}." if name else ""
    scalar = np.zeros((), dtype=np.float32)
    state = {
        prefix + "weight": qt,
        prefix + "input_quant.min_val": scalar,
        prefix + "input_quant.max_val": scalar,
    }
    return len(pack_state(state)) - len(pack_state({}))


def layer_bytes(
    model: nn.Module, space: SearchSpace, *, log: Callable[[str], None] = print
) -> dict[str, dict]:
    """Per layer: ``{"sparsity": [...], "bits": [...], "bytes": [[...]], "raw": n}``, the bytes
    the layer's weight adds to the packed file at each (sparsity, bits) of its choices (float
    layers store every weight as float32, pruned or not) and as the uncompressed baseline
    stores it. Sparsity levels between the packed points are interpolated linearly."""
    layers = compressible_layers(model)
    out: dict[str, dict] = {}
    n_packed = 0
    for name, ch in space.layers.items():
        w = layers[name].weight
        sp = sorted(set(ch.sparsity))
        bits = sorted(set(ch.bits))
        table = np.zeros((len(sp), len(bits)))
        prefix = f"{name}." if name else ""
        raw = len(pack_state({prefix + "weight": w.detach().numpy()})) - len(pack_state({}))
        for j, b in enumerate(bits):
            if b == FLOAT_BITS:
                table[:, j] = raw
                continue
            pts = _sparsity_points(sp)
            got = [_packed_layer(name, w, s, b) for s in pts]
            n_packed += len(pts)
            table[:, j] = np.interp(sp, pts, got)
        out[name] = {"sparsity": sp, "bits": bits, "bytes": table.tolist(), "raw": raw}
    log(f"sensitivity: packed {n_packed} (layer, sparsity, bits) points for the size estimate")
    return out


def latency_deltas(
    model: nn.Module,
    space: SearchSpace,
    latency_model,
    example: torch.Tensor,
    *,
    importance: str = "l1",
    round_to: int = 1,
) -> dict[str, dict]:
    """Per layer, the latency model's change (ms) when only that layer is compressed:
    ``{"base": ms, layer: {"sparsity": {s: d}, "bits_keep": {(b, k) as "b|k": d}}}``.

    Only the model's public ``predict(compressed_model, policy)`` is used. When the harshest
    sparsity changes nothing, the other sparsity levels are not asked.
    """
    ident = CompressionPolicy()
    base = float(latency_model.predict(model, ident))
    out: dict[str, dict] = {"base": base}

    def _apply(policy: CompressionPolicy) -> nn.Module:
        return apply_policy(
            model, policy, example=example, importance=importance, round_to=round_to
        ).eval()

    for name, ch in space.layers.items():
        entry: dict[str, dict] = {"sparsity": {}, "bits_keep": {}}
        sp = sorted(s for s in set(ch.sparsity) if s > 0)
        for s in sorted(sp, reverse=True):
            pol = CompressionPolicy({name: LayerPolicy(sparsity=s)})
            d = float(latency_model.predict(_apply(pol), pol)) - base
            entry["sparsity"][f"{s:g}"] = d
            if s == sp[-1] and abs(d) < 1e-12:
                entry["sparsity"] = {f"{v:g}": 0.0 for v in sp}
                break
        for k in sorted(set(ch.keep_ratio) | {1.0}):
            pruned = (
                model if k == 1.0 else _apply(CompressionPolicy({name: LayerPolicy(keep_ratio=k)}))
            )
            for b in sorted(set(ch.bits)):
                pol = CompressionPolicy({name: LayerPolicy(bits=b, keep_ratio=k)})
                entry["bits_keep"][f"{b}|{k:g}"] = float(latency_model.predict(pruned, pol)) - base
        out[name] = entry
    return out
