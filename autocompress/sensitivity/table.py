"""The sensitivity table: per layer and per level of one dimension (sparsity, bits or
keep_ratio) applied alone, the validation accuracy drop and loss increase against the baseline,
plus the cheap estimator's predicted loss increase. JSON (cache) and CSV (MLflow) forms.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_write
from ..policy import FLOAT_BITS

DIMENSIONS = ("sparsity", "bits", "keep_ratio")
IDENTITY = {"sparsity": 0.0, "bits": FLOAT_BITS, "keep_ratio": 1.0}
_SHORT = {"sparsity": "s", "bits": "b", "keep_ratio": "k"}


def harsh_order(dim: str, values: Iterable[float]) -> list[float]:
    """``values`` from the gentlest to the harshest (more sparsity, fewer bits, fewer channels)."""
    vals = sorted(set(values))
    return vals if dim == "sparsity" else vals[::-1]


def level_label(dim: str, value: float) -> str:
    """Short column label: ``s=0.5``, ``b=4``, ``k=0.75``."""
    v = int(value) if dim == "bits" else f"{float(value):g}"
    return f"{_SHORT[dim]}={v}"


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


@dataclass(frozen=True)
class LevelResult:
    """One layer compressed alone at one level of one dimension (others untouched).

    ``acc_drop`` is in accuracy points (baseline minus compressed, x100; may be slightly negative
    from noise); ``loss_increase`` in nats; ``estimate`` the cheap estimator's predicted loss
    increase; ``measured`` is False for levels interpolated between measured neighbours.
    """

    layer: str
    dim: str
    value: float
    acc_drop: float | None = None
    loss_increase: float | None = None
    estimate: float | None = None
    measured: bool = True


@dataclass
class SensitivityTable:
    """All levels of all layers, plus ``meta`` (cache key, baseline on the subset, timings,
    rank agreement)."""

    rows: list[LevelResult]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {(r.layer, r.dim, float(r.value)): r for r in self.rows}

    # -- look-ups ----------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(r.layer for r in self.rows))

    def get(self, layer: str, dim: str, value: float) -> LevelResult | None:
        return self._index.get((layer, dim, float(value)))

    def score(self, layer: str, dim: str, value: float, metric: str = "drop") -> float:
        """Sensitivity of one level: accuracy drop (points), loss increase, or the estimate.

        Identity levels score 0; a level missing from the table scores NaN; ``drop`` and
        ``loss`` fall back to the estimate when only the estimator filled the table.
        """
        if float(value) == IDENTITY[dim]:
            return 0.0
        r = self.get(layer, dim, value)
        if r is None:
            return math.nan
        if metric == "drop":
            v = r.acc_drop
        elif metric == "loss":
            v = r.loss_increase if r.loss_increase is not None else r.estimate
        elif metric == "estimate":
            v = r.estimate
        else:
            raise ValueError(f"unknown sensitivity metric {metric!r}")
        return math.nan if v is None else float(v)

    def has(self, metric: str) -> bool:
        return any(not math.isnan(self.score(r.layer, r.dim, r.value, metric)) for r in self.rows)

    # -- heat map data -----------------------------------------------------------------------
    def columns(self) -> list[tuple[str, float]]:
        """(dimension, value) of every level of any layer, in display order."""
        out = []
        for dim in DIMENSIONS:
            vals = {float(r.value) for r in self.rows if r.dim == dim}
            out += [(dim, v) for v in harsh_order(dim, vals)]
        return out

    def matrix(self, metric: str = "drop") -> tuple[list[str], list[str], np.ndarray]:
        """(row labels, column labels, layers x levels array; NaN where a layer lacks a level)."""
        cols = self.columns()
        layers = self.layers
        m = np.full((len(layers), len(cols)), np.nan)
        for i, layer in enumerate(layers):
            for j, (dim, v) in enumerate(cols):
                if self.get(layer, dim, v) is not None:
                    m[i, j] = self.score(layer, dim, v, metric)
        return layers, [level_label(d, v) for d, v in cols], m

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            d = asdict(r)
            for k in ("acc_drop", "loss_increase", "estimate"):
                d[k] = _num(d[k])
            rows.append(d)
        return {"version": 1, "meta": self.meta, "rows": rows}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SensitivityTable:
        if data.get("version") != 1:
            raise ValueError(f"unsupported sensitivity table version {data.get('version')!r}")
        rows = [LevelResult(**r) for r in data["rows"]]
        return cls(rows, dict(data.get("meta", {})))

    def save(self, path: Path) -> Path:
        return atomic_write(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> SensitivityTable:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["layer", "dimension", "value", "acc_drop_points", "loss_increase", "estimate"])
        for r in self.rows:
            cells = [r.acc_drop, r.loss_increase, r.estimate]
            w.writerow(
                [r.layer, r.dim, f"{r.value:g}"]
                + ["" if c is None else f"{c:.6g}" for c in cells]
                + ([] if r.measured else ["interpolated"])
            )
        return buf.getvalue()


def interpolate_levels(
    rows: list[LevelResult], all_levels: list[tuple[str, str, float]]
) -> list[LevelResult]:
    """Fill levels that were not measured by linear interpolation in the level's distance from
    the identity between the measured neighbours (the identity, at zero, below the gentlest;
    the harshest measured level's value beyond it)."""
    got = {(r.layer, r.dim, r.value): r for r in rows}
    out = []
    for name, dim, value in all_levels:
        if (name, dim, value) in got:
            out.append(got[(name, dim, value)])
            continue
        pts = sorted(
            [(abs(v - IDENTITY[dim]), r) for (n, d, v), r in got.items() if n == name and d == dim],
            key=lambda p: p[0],
        )
        pos, xs = abs(value - IDENTITY[dim]), [0.0] + [x for x, _ in pts]
        drop, loss = (
            float(np.interp(pos, xs, [0.0] + [_nan(getattr(r, a)) for _, r in pts]))
            for a in ("acc_drop", "loss_increase")
        )
        out.append(LevelResult(name, dim, value, drop, loss, measured=False))
    return out
