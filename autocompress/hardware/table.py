"""The latency table of a measured target, fitted from profiled configurations: per layer, in
microseconds of end-to-end latency, ``compute[layer][precision]`` (a monotone grid over (in, out)
channels, bilinear in between), ``glue[layer]["<precision>><next precision>"] = [a, b]`` (``a +
b * out channels`` for what runs up to the next layer: activations, pooling, Q/DQ, layout),
``head``/``const`` (before the first layer, per run) and ``island[layer]``, the factor on an FP32
layer's compute when every layer next to it in the graph (``neighbours``: those its output feeds,
those sharing its input) runs INT8 (on ResNet-18 the stride-2 convolutions then run 2.5-4x
faster: ONNX Runtime picks another kernel outside a float region). Fitted in two steps: (1) a
prior from the in-graph profile (median node times per cell, a bilinear surface for unvisited
cells, lines for glue; island factors as medians over the island profiles), calibrated to the
end-to-end latency by non-negative weights; (2) a ridge regression of the remaining relative
error onto cells and glue contexts, folded back in. Grids are projected onto monotone ones so
that the search never sees removing channels as a slow-down.
"""

from __future__ import annotations

import copy
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydantic import TypeAdapter

from .._files import atomic_write
from ..metrics import summarize

TABLE_VERSION = 3
_PRIOR = ("const", "compute_fp32", "compute_int8", "glue_us", "glue_nodes", "boundaries")


@dataclass
class Grid:
    """Monotone grid of microseconds over (cin, cout), bilinear in between."""

    cin: list[int]
    cout: list[int]
    us: list[list[float]]

    def __call__(self, cin: float, cout: float) -> float:
        return max(_bilinear(self.cin, self.cout, np.asarray(self.us), cin, cout), 0.0)

    def add(self, cin: int, cout: int, delta: float) -> None:
        self.ensure(cin, cout)
        self.us[self.cin.index(cin)][self.cout.index(cout)] += delta

    def ensure(self, cin: int, cout: int) -> None:
        """Put ``cin``/``cout`` on the axes (new rows/columns interpolated)."""
        if cin not in self.cin:
            axis = sorted([*self.cin, cin])
            self.us = [[self(ci, co) for co in self.cout] for ci in axis]
            self.cin = axis
        if cout not in self.cout:
            axis = sorted([*self.cout, cout])
            self.us = [[self(ci, co) for co in axis] for ci in self.cin]
            self.cout = axis

    def make_monotone(self) -> None:
        """Project onto grids non-decreasing in both axes: the mean of the smallest monotone
        grid above the values and the largest one below them."""
        arr = np.maximum(np.asarray(self.us, float), 0.0)
        upper = np.maximum.accumulate(np.maximum.accumulate(arr, axis=0), axis=1)
        flipped = np.minimum.accumulate(np.minimum.accumulate(arr[::-1, ::-1], axis=0), axis=1)
        self.us = ((upper + flipped[::-1, ::-1]) / 2).round(3).tolist()


def _interp_weights(axis: list[int], x: float) -> tuple[int, int, float]:
    if len(axis) == 1:
        return 0, 0, 0.0
    j = int(np.searchsorted(axis, x, side="right")) - 1
    j = min(max(j, 0), len(axis) - 2)
    return j, j + 1, float((x - axis[j]) / (axis[j + 1] - axis[j]))


def _bilinear(xs: list[int], ys: list[int], grid: np.ndarray, x: float, y: float) -> float:
    i0, i1, tx = _interp_weights(xs, x)
    j0, j1, ty = _interp_weights(ys, y)
    top = grid[i0, j0] * (1 - ty) + grid[i0, j1] * ty
    bottom = grid[i1, j0] * (1 - ty) + grid[i1, j1] * ty
    return float(top * (1 - tx) + bottom * tx)


def _grid_from_points(points: dict[tuple[int, int], list[float]]) -> Grid:
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
    out = Grid(cins, couts, grid.tolist())
    out.make_monotone()
    return out


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``a + b x`` with ``b >= 0`` (else the median, flat)."""
    if len(set(xs)) >= 2:
        b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
        if b >= 0:
            return float(a), float(b)
    return float(np.median(np.asarray(ys, float))), 0.0


def _nnls_free_intercept(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Least squares weighted by ``w``: first coefficient (the constant column) free, the
    others >= 0."""
    from sklearn.linear_model import LinearRegression

    fit = LinearRegression(positive=True).fit(x[:, 1:], y, sample_weight=w**2)
    return np.array([fit.intercept_, *fit.coef_])


def _context(prec: dict[str, str], order: list[str], i: int) -> str:
    nxt = prec[order[i + 1]] if i + 1 < len(order) else "end"
    return f"{prec[order[i]]}>{nxt}"


def _is_island(name: str, prec: dict[str, str], neighbours: dict[str, list[str]]) -> bool:
    """An FP32 layer whose graph neighbours all run INT8."""
    near = neighbours.get(name, ())
    return prec.get(name) == "fp32" and bool(near) and all(prec.get(m) == "int8" for m in near)


def _island_scale(
    name: str, prec: dict[str, str], neighbours: dict[str, list[str]], island: dict[str, float]
) -> float:
    """The compute factor of ``name`` under ``prec``: its island factor, else 1."""
    return island.get(name, 1.0) if _is_island(name, prec, neighbours) else 1.0


_ISLAND_MIN = 3  # profiled island configurations of a layer needed to fit its factor
_ISLAND_SIGNIFICANT = 1.25  # a factor nearer 1 than this is noise: the layer has none


def _crosses(key: str) -> float:
    """1 for a glue context between FP32 and INT8 regions (``fp32>int8``), else 0."""
    p, nxt = key.split(">")
    return float(nxt not in (p, "end"))


@dataclass
class LatencyTable:
    """Per-layer latency table (see the module docstring); JSON round-trippable."""

    order: list[str]
    compute: dict[str, dict[str, Grid]]
    glue: dict[str, dict[str, list[float]]]
    head: dict[str, float]
    const: float = 0.0
    records: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    neighbours: dict[str, list[str]] = field(default_factory=dict)
    island: dict[str, float] = field(default_factory=dict)

    def _scale(self, name: str, prec: dict[str, str]) -> float:
        """The compute factor of ``name`` under ``prec`` (``island``, else 1)."""
        return _island_scale(name, prec, self.neighbours, self.island)

    def _glue(self, name: str, key: str) -> list[float]:
        options = self.glue.get(name, {})
        if key in options:
            return options[key]
        same = [v for k, v in options.items() if k.split(">")[0] == key.split(">")[0]]
        return same[0] if same else next(iter(options.values()), [0.0, 0.0])

    def _compute(self, name: str, p: str) -> Grid | None:
        grids = self.compute.get(name, {})
        return grids.get(p) or next(iter(grids.values()), None)

    def predict_us(self, chans: dict[str, tuple[int, int]], prec: dict[str, str]) -> float:
        first = prec.get(self.order[0], "fp32") if self.order else "fp32"
        total = self.const + self.head.get(first, 0.0)
        for i, name in enumerate(self.order):
            cin, cout = chans[name]
            grid = self._compute(name, prec[name])
            total += grid(cin, cout) * self._scale(name, prec) if grid is not None else 0.0
            a, b = self._glue(name, _context(prec, self.order, i))
            total += a + b * cout
        return max(total, 0.0)

    def predict_ms(self, chans: dict[str, tuple[int, int]], prec: dict[str, str]) -> float:
        return self.predict_us(chans, prec) / 1e3

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"version": TABLE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> LatencyTable:
        if d.get("version") != TABLE_VERSION:
            raise ValueError(f"latency table version {d.get('version')} != {TABLE_VERSION}")
        return TypeAdapter(cls).validate_python(d)  # (Grid rows from their dicts)

    def save(self, path: Path) -> Path:
        return atomic_write(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _chans(record: dict) -> dict[str, tuple[int, int]]:
    return {n: (int(c[0]), int(c[1])) for n, c in record["channels"].items()}


def _exec_order(records: list[dict]) -> list[str]:
    """The most common order of the layers' blocks in the profiles."""
    orders = Counter(tuple(b[0] for b in r["blocks"] if b[0] is not None) for r in records)
    return list(max(orders, key=orders.__getitem__))


def _prior(records: list[dict], neighbours: dict[str, list[str]]) -> LatencyTable:
    """Step 1: the profiled table and its calibration to end-to-end latency."""
    compute_pts: dict[tuple[str, str], dict] = defaultdict(lambda: defaultdict(list))
    island_pts: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    glue_pts: dict[tuple[str, str], list[tuple[int, float, float]]] = defaultdict(list)
    head_pts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    profiled = [r for r in records if r.get("blocks")]
    for r in profiled:
        prec, chans, blocks = r["precision"], r["channels"], r["blocks"]
        for i, (layer, comp_us, glue_us, glue_n) in enumerate(blocks):
            nxt_layer = blocks[i + 1][0] if i + 1 < len(blocks) else None
            nxt = prec[nxt_layer] if nxt_layer is not None else "end"
            if layer is None:
                head_pts[nxt].append((glue_us, glue_n))
                continue
            cin, cout = chans[layer]
            if _is_island(layer, prec, neighbours):
                island_pts[layer].append((cin, cout, comp_us))
            else:
                compute_pts[(layer, prec[layer])][(cin, cout)].append(comp_us)
            glue_pts[(layer, f"{prec[layer]}>{nxt}")].append((cout, glue_us, glue_n))
    grids: dict[str, dict[str, Grid]] = defaultdict(dict)
    island: dict[str, float] = {}
    for layer, pts in island_pts.items():  # factor: island profiles / the region's grid
        if len(pts) >= _ISLAND_MIN and (layer, "fp32") in compute_pts:
            fp = _grid_from_points(compute_pts[(layer, "fp32")])
            factor = float(np.median([us / max(fp(ci, co), 1e-3) for ci, co, us in pts]))
            if not 1 / _ISLAND_SIGNIFICANT < factor < _ISLAND_SIGNIFICANT:
                island[layer] = float(np.clip(factor, 0.2, 5.0))
                continue
        for cin, cout, us in pts:  # no island effect: one FP32 grid from all its profiles
            compute_pts[(layer, "fp32")][(cin, cout)].append(us)
    for (layer, p), pts in compute_pts.items():
        grids[layer][p] = _grid_from_points(pts)
    glue_raw: dict[str, dict[str, tuple[float, float, float]]] = defaultdict(dict)
    for (layer, key), pts in glue_pts.items():
        a, b = _line([c for c, _, _ in pts], [g for _, g, _ in pts])
        glue_raw[layer][key] = (a, b, float(np.median([n for *_, n in pts])))
    head_raw = {
        p: (float(np.median([u for u, _ in v])), float(np.median([n for _, n in v])))
        for p, v in head_pts.items()
    }
    order = _exec_order(profiled)
    for r in records:  # a precision only timed end to end starts from the profiled one
        for name in order:
            p = r["precision"][name]
            if p not in grids[name]:
                grids[name][p] = copy.deepcopy(next(iter(grids[name].values())))

    def features(r: dict) -> np.ndarray:
        prec, chans = r["precision"], _chans(r)
        f = dict.fromkeys(_PRIOR, 0.0)
        f["const"] = 1.0
        f["glue_us"], f["glue_nodes"] = head_raw.get(prec[order[0]], (0.0, 0.0))
        for i, name in enumerate(order):
            p, key = prec[name], _context(prec, order, i)
            grid = grids[name].get(p) or next(iter(grids[name].values()))
            f[f"compute_{p}"] += grid(*chans[name]) * _island_scale(name, prec, neighbours, island)
            a, b, n = glue_raw[name].get(key) or next(iter(glue_raw[name].values()))
            f["glue_us"] += a + b * chans[name][1]
            f["glue_nodes"] += n
            f["boundaries"] += _crosses(key)
        return np.array([f[k] for k in _PRIOR])

    x = np.array([features(r) for r in records])
    y = np.array([r["wall_ms"] * 1e3 for r in records])
    c = dict(zip(_PRIOR, _nnls_free_intercept(x, y, 1.0 / y), strict=True))
    for layer in grids:
        for p, grid in grids[layer].items():
            grid.us = (np.asarray(grid.us) * c[f"compute_{p}"]).tolist()
    glue = {
        layer: {
            key: [
                c["glue_us"] * a + c["glue_nodes"] * n + c["boundaries"] * _crosses(key),
                c["glue_us"] * b,
            ]
            for key, (a, b, n) in opts.items()
        }
        for layer, opts in glue_raw.items()
    }
    head = {p: c["glue_us"] * u + c["glue_nodes"] * n for p, (u, n) in head_raw.items()}
    table = LatencyTable(
        order, dict(grids), glue, head, const=c["const"], neighbours=neighbours, island=island
    )
    table.meta["calibration"] = {k: round(float(v), 6) for k, v in c.items()}
    return table


def _keys(r: dict, table: LatencyTable) -> list[tuple[tuple, float]]:
    """A record's cells and glue contexts, each with its weight in the prediction."""
    prec, chans, order = r["precision"], _chans(r), table.order
    return [
        kw
        for i, n in enumerate(order)
        for kw in (
            (("cell", n, prec[n], *chans[n]), table._scale(n, prec)),
            (("glue", n, _context(prec, order, i)), 1.0),
        )
    ]


def _refine(table: LatencyTable, records: list[dict], ridge: float) -> None:
    """Step 2: ridge regression of the relative residuals onto cells and glue contexts."""
    from sklearn.linear_model import Ridge

    rows = [_keys(r, table) for r in records]
    keys = sorted({k for ks in rows for k, _ in ks}, key=str)
    index = {k: i for i, k in enumerate(keys)}
    x = np.zeros((len(records), len(keys)))
    for row, ks in enumerate(rows):
        for k, w in ks:
            x[row, index[k]] = w
    y = np.array([r["wall_ms"] * 1e3 for r in records])
    base = np.array([table.predict_us(_chans(r), r["precision"]) for r in records])
    sw = 1.0 / y**2  # relative errors
    ridge_fit = Ridge(ridge * float(np.mean(sw)), fit_intercept=False)
    delta = ridge_fit.fit(x, y - base, sample_weight=sw).coef_
    for k, d in zip(keys, delta, strict=True):
        if k[0] == "cell":
            _, name, p, cin, cout = k
            table.compute[name][p].add(cin, cout, float(d))
        else:
            options = table.glue.setdefault(k[1], {})
            options.setdefault(k[2], list(table._glue(k[1], k[2])))[0] += float(d)
    for grids in table.compute.values():
        for grid in grids.values():
            grid.make_monotone()


def _fit(records: list[dict], ridge: float, neighbours: dict[str, list[str]]) -> LatencyTable:
    table = _prior(records, neighbours)
    if ridge > 0:
        _refine(table, records, ridge)
    return table


def _cross_validate(
    records: list[dict], ridge: float, folds: int, neighbours: dict[str, list[str]]
) -> tuple[float, float]:
    idx = np.random.default_rng(0).permutation(len(records))
    pred, wall = [], []
    for k in range(folds):
        test = set(idx[k::folds].tolist())
        sub = _fit([r for i, r in enumerate(records) if i not in test], ridge, neighbours)
        pred += [sub.predict_ms(_chans(records[i]), records[i]["precision"]) for i in test]
        wall += [records[i]["wall_ms"] for i in test]
    return summarize(pred, wall)[:2]


RIDGES = (0.0, 3.0, 10.0, 30.0, 100.0)


def fit_table(
    records: list[dict],
    *,
    ridge: float | None = None,
    folds: int = 5,
    neighbours: dict[str, list[str]] | None = None,
) -> LatencyTable:
    """Fit the table from profiled records (see :mod:`.profiler`); ``neighbours`` (per layer,
    the layers next to it in the graph: island factors are fitted for them); ``ridge`` (step 2's
    shrinkage, 0: the calibrated profile alone; ``None``: the lowest cross-validated MAPE of
    :data:`RIDGES`). ``meta["fit"]`` holds the in-sample and cross-validated accuracy."""
    neighbours = neighbours or {}
    can_cv = folds > 1 and len(records) >= 5 * folds
    scores: dict[float, tuple[float, float]] = {}
    if can_cv:
        for r in RIDGES if ridge is None else (ridge,):
            scores[r] = _cross_validate(records, r, folds, neighbours)
        ridge = min(scores, key=lambda r: scores[r][1])
    elif ridge is None:
        ridge = 0.0
    table = _fit(records, ridge, neighbours)
    p = [table.predict_ms(_chans(r), r["precision"]) for r in records]
    within, mape = summarize(p, [r["wall_ms"] for r in records])[:2]
    fit = {
        "configs": len(records),
        "ridge": ridge,
        "within_10pct": round(within, 4),
        "mape": round(mape, 4),
    }
    if can_cv:
        fit["cv_within_10pct"] = round(scores[ridge][0], 4)
        fit["cv_mape"] = round(scores[ridge][1], 4)
    table.meta["fit"] = fit
    table.records = records
    return table
