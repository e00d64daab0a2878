"""The latency table of a measured target and the predictor built on it.

Per layer and precision, a grid over (in channels, out channels) of the layer's compute-node
time profiled inside whole-model runs (cells the design did not visit are filled by a bilinear
least-squares surface; the grid is made monotone, and queries between grid points are
interpolated bilinearly). Per layer and precision context (its own and the next layer's), the
glue after it (activations, pooling, Quantize/DequantizeLinear, layout changes) as a line in its
output channels, plus the glue's node count. A last linear calibration maps these profiled sums
to end-to-end latency measured without the profiler (whose per-node overhead inflates tiny
nodes), fitted on the same configurations with non-negative weights.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .layers import LayerGeometry

__all__ = ["TABLE_VERSION", "LatencyTable", "fit_table"]

TABLE_VERSION = 1
_FEATURES = ("const", "compute_fp32", "compute_int8", "glue_us", "glue_nodes", "boundaries")


@dataclass
class _Grid:
    """Monotone grid of microseconds over (cin, cout), bilinear in between."""

    cin: list[int]
    cout: list[int]
    us: list[list[float]]

    def __call__(self, cin: float, cout: float) -> float:
        return max(_bilinear(self.cin, self.cout, np.asarray(self.us), cin, cout), 0.0)


def _interp_weights(axis: list[int], x: float) -> tuple[int, int, float]:
    if len(axis) == 1:
        return 0, 0, 0.0
    j = int(np.searchsorted(axis, x, side="right")) - 1
    j = min(max(j, 0), len(axis) - 2)
    t = (x - axis[j]) / (axis[j + 1] - axis[j])
    return j, j + 1, float(t)


def _bilinear(xs: list[int], ys: list[int], grid: np.ndarray, x: float, y: float) -> float:
    i0, i1, tx = _interp_weights(xs, x)
    j0, j1, ty = _interp_weights(ys, y)
    top = grid[i0, j0] * (1 - ty) + grid[i0, j1] * ty
    bottom = grid[i1, j0] * (1 - ty) + grid[i1, j1] * ty
    return float(top * (1 - tx) + bottom * tx)


def _grid_from_points(points: dict[tuple[int, int], list[float]]) -> _Grid:
    cins = sorted({c for c, _ in points})
    couts = sorted({c for _, c in points})
    grid = np.full((len(cins), len(couts)), np.nan)
    for (ci, co), vals in points.items():
        grid[cins.index(ci), couts.index(co)] = float(np.median(vals))
    if np.isnan(grid).any():
        known = [(ci, co, float(np.median(v))) for (ci, co), v in points.items()]
        a = np.array([[1.0, ci, co, ci * co] for ci, co, _ in known])
        b = np.array([t for *_, t in known])
        cols = 4 if len(known) >= 4 else (3 if len(known) >= 3 else 1)
        coef = np.linalg.lstsq(a[:, :cols], b, rcond=None)[0]
        for i, j in zip(*np.where(np.isnan(grid)), strict=True):
            row = np.array([1.0, cins[i], couts[j], cins[i] * couts[j]])[:cols]
            grid[i, j] = max(float(row @ coef), 0.0)
    grid = np.maximum.accumulate(np.maximum.accumulate(grid, axis=0), axis=1)
    return _Grid(cins, couts, grid.round(3).tolist())


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``a + b x`` with ``b >= 0``."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(set(xs)) < 2:
        return float(np.median(y)), 0.0
    b, a = np.polyfit(x, y, 1)
    if b < 0:
        return float(np.median(y)), 0.0
    return float(a), float(b)


def _nnls_free_intercept(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with a free first coefficient and the others >= 0 (exhaustive over the
    active sets: there are only a handful of features)."""
    k = x.shape[1]
    best, best_err = np.zeros(k), np.inf
    for r in range(k):
        for subset in itertools.combinations(range(1, k), r):
            cols = [0, *subset]
            coef = np.linalg.lstsq(x[:, cols], y, rcond=None)[0]
            if (coef[1:] < 0).any():
                continue
            err = float(np.sum((x[:, cols] @ coef - y) ** 2))
            if err < best_err:
                best, best_err = np.zeros(k), err
                best[cols] = coef
    return best


@dataclass
class LatencyTable:
    """Everything the predictor needs, JSON round-trippable."""

    order: list[str]
    compute: dict[str, dict[str, _Grid]]
    glue: dict[str, dict[str, list[float]]]  # layer -> "p>next" -> [a, b, nodes]
    head: dict[str, list[float]]  # first layer's precision -> [us, nodes]
    calibration: list[float]
    records: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    # -- prediction -------------------------------------------------------------------------
    def features(self, chans: dict[str, tuple[int, int]], prec: dict[str, str]) -> np.ndarray:
        f = dict.fromkeys(_FEATURES, 0.0)
        f["const"] = 1.0
        first = prec[self.order[0]]
        f["glue_us"], f["glue_nodes"] = self.head.get(first, [0.0, 0.0])
        for i, name in enumerate(self.order):
            p = prec[name]
            nxt = prec[self.order[i + 1]] if i + 1 < len(self.order) else "end"
            cin, cout = chans[name]
            f[f"compute_{p}"] += self.compute[name][p](cin, cout)
            a, b, nodes = self._glue(name, p, nxt)
            f["glue_us"] += a + b * cout
            f["glue_nodes"] += nodes
            f["boundaries"] += float(nxt not in (p, "end"))
        return np.array([f[k] for k in _FEATURES])

    def _glue(self, name: str, p: str, nxt: str) -> list[float]:
        options = self.glue[name]
        key = f"{p}>{nxt}"
        if key in options:
            return options[key]
        same = [v for k, v in options.items() if k.startswith(f"{p}>")]
        return same[0] if same else next(iter(options.values()))

    def predict_ms(self, chans: dict[str, tuple[int, int]], prec: dict[str, str]) -> float:
        return max(float(self.features(chans, prec) @ np.asarray(self.calibration)), 0.0) / 1e3

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "version": TABLE_VERSION,
            "meta": self.meta,
            "order": self.order,
            "compute": {
                n: {p: g.__dict__ for p, g in grids.items()} for n, grids in self.compute.items()
            },
            "glue": self.glue,
            "head": self.head,
            "calibration": dict(zip(_FEATURES, self.calibration, strict=True)),
            "records": self.records,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LatencyTable:
        if d.get("version") != TABLE_VERSION:
            raise ValueError(f"latency table version {d.get('version')} != {TABLE_VERSION}")
        return cls(
            order=list(d["order"]),
            compute={
                n: {p: _Grid(**g) for p, g in grids.items()} for n, grids in d["compute"].items()
            },
            glue=d["glue"],
            head=d["head"],
            calibration=[float(d["calibration"][k]) for k in _FEATURES],
            records=d.get("records", []),
            meta=d.get("meta", {}),
        )

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _exec_order(records: list[dict]) -> list[str]:
    orders: dict[tuple, int] = defaultdict(int)
    for r in records:
        orders[tuple(b[0] for b in r["blocks"] if b[0] is not None)] += 1
    return list(max(orders, key=orders.__getitem__))


def fit_table(
    records: list[dict], geometry: dict[str, LayerGeometry], layers: list[str]
) -> LatencyTable:
    """Fit the table from profiled configuration records (see :mod:`.profiler`)."""
    compute_pts: dict[tuple[str, str], dict] = defaultdict(lambda: defaultdict(list))
    glue_pts: dict[tuple[str, str], list[tuple[int, float, int]]] = defaultdict(list)
    head_pts: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for r in records:
        prec, chans, blocks = r["precision"], r["channels"], r["blocks"]
        for i, (layer, comp_us, glue_us, glue_n) in enumerate(blocks):
            nxt_layer = blocks[i + 1][0] if i + 1 < len(blocks) else None
            nxt = prec[nxt_layer] if nxt_layer is not None else "end"
            if layer is None:
                head_pts[nxt].append((glue_us, glue_n))
                continue
            cin, cout = chans[layer]
            compute_pts[(layer, prec[layer])][(cin, cout)].append(comp_us)
            glue_pts[(layer, f"{prec[layer]}>{nxt}")].append((cout, glue_us, glue_n))
    compute: dict[str, dict[str, _Grid]] = defaultdict(dict)
    for (layer, p), pts in compute_pts.items():
        compute[layer][p] = _grid_from_points(pts)
    for layer in layers:  # a precision never profiled for a layer borrows the other one
        for p, q in (("fp32", "int8"), ("int8", "fp32")):
            if p not in compute[layer] and q in compute[layer]:
                compute[layer][p] = compute[layer][q]
    glue: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for (layer, key), pts in glue_pts.items():
        a, b = _line([c for c, _, _ in pts], [g for _, g, _ in pts])
        glue[layer][key] = [a, b, float(np.median([n for *_, n in pts]))]
    head = {
        p: [float(np.median([u for u, _ in v])), float(np.median([n for _, n in v]))]
        for p, v in head_pts.items()
    }
    table = LatencyTable(_exec_order(records), dict(compute), dict(glue), head, [0.0] * 6)
    x = np.array([table.features(_chans(r), r["precision"]) for r in records])
    y = np.array([r["wall_ms"] * 1e3 for r in records])
    table.calibration = _nnls_free_intercept(x, y).round(6).tolist()
    pred = x @ np.asarray(table.calibration)
    err = np.abs(pred - y) / y
    table.records = records
    table.meta["fit"] = {
        "configs": len(records),
        "within_10pct": round(float(np.mean(err <= 0.10)), 4),
        "mape": round(float(np.mean(err)), 4),
    }
    table.meta["geometry"] = {n: g.__dict__ for n, g in geometry.items()}
    return table


def _chans(record: dict) -> dict[str, tuple[int, int]]:
    return {n: (int(c[0]), int(c[1])) for n, c in record["channels"].items()}
