"""Activation monitoring: per-layer statistics of what each compressible layer outputs, in the
uncompressed and the compressed model on the same batches, and the fraction of its input the
8-bit activation quantiser clips (values outside its calibrated range)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..policy import compressible_layers
from .quantization import ActFakeQuant

CLIP_WARN = 0.01  # the export report flags layers clipping more of their input than this


@dataclass(frozen=True)
class ActivationStats:
    """One layer's output statistics before and after compression (``clipped``: fraction of
    its input outside the activation quantiser's range; None without a quantiser)."""

    layer: str
    before_mean: float
    before_std: float
    before_min: float
    before_max: float
    after_mean: float
    after_std: float
    after_min: float
    after_max: float
    clipped: float | None = None

    @property
    def flagged(self) -> bool:
        return self.clipped is not None and self.clipped > CLIP_WARN

    def to_dict(self) -> dict:
        return asdict(self) | {"flagged": self.flagged}


class _Moments:
    def __init__(self) -> None:
        self.n = 0
        self.total = self.squares = 0.0
        self.lo, self.hi = float("inf"), float("-inf")
        self.clipped = self.seen = 0

    def add(self, t: torch.Tensor) -> None:
        t = t.detach().double()
        self.n += t.numel()
        self.total += float(t.sum())
        self.squares += float((t * t).sum())
        self.lo, self.hi = min(self.lo, float(t.min())), max(self.hi, float(t.max()))

    def stats(self) -> tuple[float, float, float, float]:
        mean = self.total / max(self.n, 1)
        var = max(self.squares / max(self.n, 1) - mean * mean, 0.0)
        return mean, var**0.5, self.lo, self.hi


def _record(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, _Moments]:
    seen = {name: _Moments() for name in compressible_layers(model)}
    hooks = []
    for name, layer in compressible_layers(model).items():

        def out_hook(_m, _inp, out, acc=seen[name]):
            acc.add(out)

        hooks.append(layer.register_forward_hook(out_hook))
        quant = getattr(layer, "input_quant", None)
        if isinstance(quant, ActFakeQuant) and bool(quant.initialized):  # (else: identity)

            def in_hook(q, inp, acc=seen[name]):
                x = inp[0].detach()
                scale, zp = q.scale_zero_point()
                lo, hi = -zp * scale, (2**q.bits - 1 - zp) * scale
                acc.clipped += int(((x < lo - scale / 2) | (x > hi + scale / 2)).sum())
                acc.seen += x.numel()

            hooks.append(quant.register_forward_pre_hook(in_hook))
    try:
        with torch.no_grad():
            model.eval()
            for x in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def activation_stats(
    reference: nn.Module, compressed: nn.Module, batches: list[torch.Tensor]
) -> list[ActivationStats]:
    """Statistics of every compressible layer's output in ``reference`` (uncompressed) and
    ``compressed`` on ``batches``, in module order (layers of the compressed model)."""
    before, after = _record(reference, batches), _record(compressed, batches)
    out = []
    for name, acc in after.items():
        ref = before.get(name) or _Moments()
        b, a = ref.stats(), acc.stats()
        clipped = acc.clipped / acc.seen if acc.seen else None
        out.append(ActivationStats(name, *b, *a, clipped=clipped))
    return out
