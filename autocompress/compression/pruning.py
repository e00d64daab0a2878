"""Magnitude pruning: masks that zero exactly the requested fraction of a weight tensor."""

from __future__ import annotations

import torch

__all__ = ["magnitude_mask"]


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the largest-magnitude weights; exactly ``round(sparsity * n)`` are
    dropped (ties broken by position, so the count is exact even with repeated values)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    n = weight.numel()
    k = int(round(sparsity * n))
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    if k:
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        mask[order[:k]] = False
    return mask.view_as(weight)
