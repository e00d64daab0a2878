"""What a trial measures, and how objectives map onto it (names, units, directions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields


def spearman(a: Sequence[float], b: Sequence[float], *, min_pairs: int = 3) -> float:
    """Spearman's rank correlation (scipy; ties share their mean rank) of the pairs where both
    values are finite; NaN when fewer than ``min_pairs`` remain or one side is constant."""
    import numpy as np
    from scipy.stats import spearmanr

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < min_pairs or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


@dataclass(frozen=True)
class Objective:
    name: str
    metric: str
    direction: str  # "maximize" | "minimize"

    def violation(self, value: float, bound: float | None) -> float:
        """Optuna constraint value: <= 0 when ``value`` honours ``bound``."""
        if bound is None:
            return 0.0
        return bound - value if self.direction == "maximize" else value - bound


OBJECTIVES: dict[str, Objective] = {
    "accuracy": Objective("accuracy", "val_accuracy", "maximize"),
    "latency": Objective("latency", "latency_ms", "minimize"),
    "size": Objective("size", "size_kb", "minimize"),
}


@dataclass(frozen=True)
class TrialMetrics:
    """Measurements of one compressed model. Accuracy is on the validation split."""

    val_accuracy: float
    val_loss: float
    latency_ms: float
    size_bytes: int
    compression_ratio: float
    weight_sparsity: float
    finetune_loss: float
    test_accuracy: float | None = None  # only with search.report_test_accuracy (benchmarks)

    @property
    def size_kb(self) -> float:
        return self.size_bytes / 1024.0

    def value(self, objective: str) -> float:
        return float(getattr(self, OBJECTIVES[objective].metric))

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None} | {"size_kb": self.size_kb}

    @classmethod
    def from_dict(cls, d: dict) -> TrialMetrics:
        """The inverse of :meth:`to_dict` (what a trial stored; unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        kw = {"finetune_loss": math.nan, "val_loss": math.nan}
        return cls(**kw | {k: v for k, v in d.items() if k in names})


def summarize(predicted, measured) -> tuple[float, float, float]:
    """(fraction within ±10 %, mean absolute percentage error, Spearman) of predictions."""
    import numpy as np

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    err = np.abs(p - m) / m
    return float(np.mean(err <= 0.10)), float(np.mean(err)), spearman(p, m, min_pairs=2)
