"""The measured sweep: every layer of the search space compressed alone at each of its sparsity,
bit-width and keep-ratio levels, scored on a fixed validation subset without fine-tuning.

Each level is exactly what a screened policy of that one layer is: ``apply_policy``, activation
ranges calibrated, BatchNorm statistics corrected on the same batches, then scored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..compression.apply import apply_policy, calibrate
from ..compression.batchnorm import batch_statistics, correct_batchnorm
from ..policy import CompressionPolicy, LayerPolicy
from ..search_space import SearchSpace
from .table import IDENTITY, LevelResult, harsh_order, interpolate_levels

_BATCH = 500


@dataclass
class SweepData:
    """The fixed inputs of a sweep: validation subset, activation-calibration batches, example
    input, and the batches BatchNorm statistics are corrected on (none: no correction)."""

    x: torch.Tensor
    y: torch.Tensor
    calib: list[torch.Tensor]
    example: torch.Tensor
    bn: list[torch.Tensor] = field(default_factory=list)


def levels_of(space: SearchSpace) -> list[tuple[str, str, float]]:
    """Every non-identity (layer, dimension, value) of the space, gentlest first per dimension."""
    out = []
    for name, ch in space.layers.items():
        for dim in ("sparsity", "bits", "keep_ratio"):
            vals = [v for v in harsh_order(dim, getattr(ch, dim)) if v != IDENTITY[dim]]
            out += [(name, dim, float(v)) for v in vals]
    return out


def _points(values: list[float], max_points: int | None) -> set[float]:
    if max_points is None or len(values) <= max_points:
        return set(values)
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, max_points)).astype(int))
    return {values[i] for i in idx}


class _Scores:
    def __init__(self) -> None:
        self.correct, self.loss, self.n = 0, 0.0, 0

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += float(F.cross_entropy(logits, y, reduction="sum"))
        self.correct += int((logits.argmax(1) == y).sum())
        self.n += len(y)

    def result(self) -> tuple[float, float]:
        return self.correct / max(self.n, 1), self.loss / max(self.n, 1)


@torch.no_grad()
def _score(model: nn.Module, data: SweepData) -> tuple[float, float]:
    s = _Scores()
    for i in range(0, len(data.x), _BATCH):
        s.add(model(data.x[i : i + _BATCH]), data.y[i : i + _BATCH])
    return s.result()


def run_sweep(
    model: nn.Module,
    space: SearchSpace,
    data: SweepData,
    *,
    importance: str = "l1",
    round_to: int = 1,
    max_points: int | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[LevelResult], tuple[float, float]]:
    """Measure every level of ``space`` on ``data``; returns the rows (in ``levels_of`` order)
    and the baseline (accuracy, loss)."""
    model = model.eval()
    all_levels = levels_of(space)
    todo = []
    for name, dim in dict.fromkeys((n, d) for n, d, _ in all_levels):
        vals = [v for n, d, v in all_levels if n == name and d == dim]
        chosen = _points(vals, max_points)
        todo += [(name, dim, v) for v in vals if v in chosen]
    log(
        f"sensitivity: measuring {len(todo)} levels of {len(space)} layers on "
        f"{len(data.x)} validation images"
    )
    ref = batch_statistics(model, data.bn, model) if data.bn else None
    base_acc, base_loss = _score(model, data)
    t0, step = time.perf_counter(), max(1, len(todo) // 10)
    rows = []
    for i, (layer, dim, value) in enumerate(todo, start=1):
        lp = LayerPolicy(**{dim: int(value) if dim == "bits" else value})
        comp = apply_policy(
            model,
            CompressionPolicy({layer: lp}),
            example=data.example,
            importance=importance,
            round_to=round_to,
        )
        calibrate(comp, data.calib)
        if data.bn:
            correct_batchnorm(comp, model, data.bn, reference_estimate=ref)
        acc, loss = _score(comp, data)
        inc = loss - base_loss if math.isfinite(loss) else None
        rows.append(
            LevelResult(layer, dim, value, acc_drop=100.0 * (base_acc - acc), loss_increase=inc)
        )
        if i % step == 0 and i < len(todo):  # a line at every tenth: done, elapsed, ETA
            el = time.perf_counter() - t0
            eta = el * (len(todo) - i) / i
            log(f"sensitivity: {i}/{len(todo)} levels, {el:.0f} s elapsed, ETA {eta:.0f} s")
    return interpolate_levels(rows, all_levels), (base_acc, base_loss)
