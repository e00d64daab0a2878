"""Cheap sensitivity estimators: a predicted loss increase per (layer, level) from one look at
the loss curvature, without evaluating a compressed model per level.

- ``hessian`` (HAWQ-V2 style): the mean Hessian diagonal of each layer, ``Tr(H_l) / n_l``, from
  Hutchinson's estimator (Rademacher vectors, Hessian-vector products by double backward);
  predicted increase ``0.5 * Tr(H_l) / n_l * ||dW||^2``.
- ``fisher``: the diagonal empirical Fisher information (mean squared per-example gradient) of
  each weight; predicted increase ``0.5 * sum(F * dW^2)`` (second-order Taylor with F for H).

``dW`` is the level's perturbation of the layer's weight: magnitude pruning or per-channel
quantisation exactly as the compressor does it; for channel removal, the output channels with
the smallest L1 norm set to zero (an approximation of what removal does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..compression.pruning import magnitude_mask
from ..compression.quantization import fake_half, fake_quantize_weight
from ..compression.structured import kept_channels
from ..policy import HALF_BITS, compressible_layers
from .table import IDENTITY


@torch.no_grad()
def perturbation(weight: torch.Tensor, dim: str, value: float, *, round_to: int = 1):
    """``compressed - weight`` for one level of one dimension."""
    w = weight.detach()
    if dim == "sparsity":
        return w * magnitude_mask(w, value) - w
    if dim == "bits":
        if int(value) == HALF_BITS:
            return fake_half(w) - w
        return fake_quantize_weight(w, int(value)) - w
    if dim == "keep_ratio":
        n_out = w.shape[0]
        drop = n_out - kept_channels(n_out, value, round_to)
        idx = torch.argsort(w.abs().reshape(n_out, -1).sum(1))[:drop]
        d = torch.zeros_like(w)
        d[idx] = -w[idx]
        return d
    raise ValueError(f"unknown dimension {dim!r}")


def _params(model: nn.Module, names: list[str]) -> list[torch.Tensor]:
    layers = compressible_layers(model)
    return [layers[n].weight for n in names]


def hessian_traces(
    model: nn.Module,
    names: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    samples: int = 16,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """Mean Hessian diagonal ``Tr(H_l) / n_l`` of the loss for each named layer's weight.

    One Rademacher vector over all layers per sample: the cross-layer terms of ``v^T H v``
    vanish in expectation, so the per-layer parts estimate the per-layer block traces.
    """
    model.eval()
    params = _params(model, names)
    gen = torch.Generator().manual_seed(seed)
    totals = torch.zeros(len(params), dtype=torch.float64)
    chunks = 0
    for i in range(0, len(x), batch_size):
        loss = F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for _ in range(samples):
            vs = [
                torch.randint(0, 2, p.shape, generator=gen).to(p.dtype).mul_(2).sub_(1)
                for p in params
            ]
            hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
            for j, (h, v) in enumerate(zip(hv, vs, strict=True)):
                totals[j] += float((h * v).sum())
        chunks += 1
    denom = max(chunks * samples, 1)
    return {
        n: float(totals[j]) / denom / p.numel()
        for j, (n, p) in enumerate(zip(names, params, strict=True))
    }


def fisher_diagonals(
    model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of each named layer's weight: mean of per-example squared
    gradients (one backward pass per example)."""
    model.eval()
    params = _params(model, names)
    acc = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        for a, g in zip(acc, grads, strict=True):
            a.add_(g.detach() ** 2)
    return {n: a / max(len(x), 1) for n, a in zip(names, acc, strict=True)}


def estimate_levels(
    model: nn.Module,
    levels: list[tuple[str, str, float]],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str = "hessian",
    samples: int = 16,
    round_to: int = 1,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[tuple[str, str, float], float]:
    """Predicted loss increase of every (layer, dimension, value) in ``levels``."""
    names = list(dict.fromkeys(n for n, _, _ in levels))
    if method == "hessian":
        traces = hessian_traces(model, names, x, y, samples=samples, seed=seed)
        curv = {n: torch.tensor(t) for n, t in traces.items()}
    elif method == "fisher":
        curv = fisher_diagonals(model, names, x, y)
    else:
        raise ValueError(f"unknown estimator {method!r}")
    layers = compressible_layers(model)
    out = {}
    for name, dim, value in levels:
        if value == IDENTITY[dim]:
            out[(name, dim, value)] = 0.0
            continue
        d = perturbation(layers[name].weight, dim, value, round_to=round_to)
        out[(name, dim, value)] = 0.5 * float((curv[name] * d.pow(2)).sum())
    log(f"sensitivity: {method} estimate of {len(levels)} levels from {len(x)} images")
    return out
