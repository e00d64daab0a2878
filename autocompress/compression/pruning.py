"""Magnitude pruning: masks that zero exactly the requested fraction of a weight tensor, and
threshold pruning (``|w| < threshold``)."""

from __future__ import annotations

import torch


def magnitude_mask(
    weight: torch.Tensor, sparsity: float, *, threshold: float = 0.0
) -> torch.Tensor:
    """Boolean mask keeping the largest-magnitude weights; exactly ``round(sparsity * n)`` are
    dropped (ties broken by position, so the count is exact even with repeated values), and with
    a ``threshold`` every weight with ``|w| < threshold`` as well."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    n = weight.numel()
    k = int(round(sparsity * n))
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    magnitude = weight.detach().abs().flatten()
    if k:
        order = torch.argsort(magnitude, stable=True)
        mask[order[:k]] = False
    if threshold > 0.0:
        mask &= magnitude >= threshold
    return mask.view_as(weight)


def global_sparsities(
    weights: dict[str, torch.Tensor], sparsity: dict[str, float]
) -> dict[str, float]:
    """Per-layer sparsities of one magnitude ranking across layers: as many weights are
    dropped in total as ``sparsity`` asks layer by layer (layers at 0 take no part), the
    smallest magnitudes among all participating layers first."""
    names = [n for n, s in sparsity.items() if s > 0.0]
    if not names:
        return dict(sparsity)
    sizes = [weights[n].numel() for n in names]
    k = int(round(sum(sparsity[n] * size for n, size in zip(names, sizes, strict=True))))
    magnitude = torch.cat([weights[n].detach().abs().flatten() for n in names])
    dropped = torch.zeros(magnitude.numel(), dtype=torch.bool)
    dropped[torch.argsort(magnitude, stable=True)[:k]] = True
    out = dict(sparsity)
    for name, part, size in zip(names, dropped.split(sizes), sizes, strict=True):
        out[name] = min(int(part.sum()) / size, (size - 1) / size)  # keep one weight at least
    return out
