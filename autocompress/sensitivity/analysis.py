"""``analyze``: the sensitivity table of an experiment (measured sweep and/or cheap estimator),
cached in ``output_dir/cache`` keyed by checkpoint, data subset, grid and settings, with the
estimator's rank agreement with the sweep. The table (:class:`SensitivityTable`) holds, per layer
and level, the accuracy drop, loss increase and estimate; JSON (cache) and CSV (MLflow) forms.

The measured sweep: every layer of the search space compressed alone at each of its sparsity,
bit-width and keep-ratio levels, scored on a fixed validation subset without fine-tuning. Each
level is exactly what a screened policy of that one layer is: ``apply_policy``, activation
ranges calibrated, BatchNorm statistics corrected on the same batches, then scored.

Cheap sensitivity estimators: a predicted loss increase per (layer, level) from one look at
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

import csv
import io
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .._files import atomic_write, content_key, file_digest
from ..compression.apply import apply_policy, calibrate, compressed_weight
from ..compression.batchnorm import batch_statistics, correct_batchnorm
from ..compression.structured import kept_channels
from ..config import SensitivityConfig as SensitivitySettings
from ..errors import AutocompressError
from ..metrics import spearman
from ..policy import FLOAT_BITS, CompressionPolicy, LayerPolicy, compressible_layers
from ..search_space import LayerChoices, SearchSpace
from ..training import batches, evaluate, first_batches

if TYPE_CHECKING:
    from ..baseline import Prepared


_VERSION = 5  # 5: each level through apply_policy + calibrate + correct_batchnorm (as a screen)
_CALIB_BATCHES = 4
_BATCH = 500


def _tensors(ds, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (all) examples of ``ds`` in a seeded shuffle, as one batch."""
    batch = next(batches(ds, n or max(len(ds), 1), shuffle=True, seed=seed), None)
    if batch is None:
        raise AutocompressError("sensitivity: the validation split is empty")
    return batch


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


def _level(dim: str, value: float, choices: LayerChoices | None = None) -> LayerPolicy:
    """The layer policy of one level: ``value`` on ``dim``, the rest untouched; a bit-width
    with the layer's first quantiser choices (``choices``; the defaults without)."""
    if dim != "bits":
        return LayerPolicy(**{dim: value})
    options = ("quantizer", "scheme", "granularity") if choices is not None else ()
    return LayerPolicy(bits=int(value), **{k: getattr(choices, k)[0] for k in options})


def _points(values: list[float], max_points: int | None) -> set[float]:
    if max_points is None or len(values) <= max_points:
        return set(values)
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, max_points)).astype(int))
    return {values[i] for i in idx}


def run_sweep(
    model: nn.Module,
    space: SearchSpace,
    data: SweepData,
    *,
    max_points: int | None = None,
    log: Callable[[str], None] = print,
    **compression,
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
    ref = batch_statistics(model, data.bn) if data.bn else None
    val = TensorDataset(data.x, data.y)
    base_acc, base_loss = evaluate(model, val, batch_size=_BATCH)
    t0, step = time.perf_counter(), max(1, len(todo) // 10)
    rows = []
    for i, (layer, dim, value) in enumerate(todo, start=1):
        comp = apply_policy(
            model,
            CompressionPolicy({layer: _level(dim, value, space.layers[layer])}),
            example=data.example,
            **compression,
        )
        calibrate(comp, data.calib)
        if data.bn:
            correct_batchnorm(comp, model, data.bn, reference_estimate=ref)
        acc, loss = evaluate(comp, val, batch_size=_BATCH)
        inc = loss - base_loss if math.isfinite(loss) else None
        rows.append(
            LevelResult(layer, dim, value, acc_drop=100.0 * (base_acc - acc), loss_increase=inc)
        )
        if i % step == 0 and i < len(todo):  # a line at every tenth: done, elapsed, ETA
            el = time.perf_counter() - t0
            eta = el * (len(todo) - i) / i
            log(f"sensitivity: {i}/{len(todo)} levels, {el:.0f} s elapsed, ETA {eta:.0f} s")
    return interpolate_levels(rows, all_levels), (base_acc, base_loss)


@torch.no_grad()
def perturbation(
    weight: torch.Tensor,
    dim: str,
    value: float,
    *,
    round_to: int = 1,
    choices: LayerChoices | None = None,
):
    """``compressed - weight`` for one level of one dimension (``choices``: the layer's, whose
    first quantiser a bit-width uses)."""
    w = weight.detach()
    if dim in ("sparsity", "bits"):  # what apply_policy does to the layer at this level
        return compressed_weight(w, _level(dim, value, choices)) - w
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
    chunks = range(0, len(x), batch_size)
    for i in chunks:
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
    denom = max(len(chunks) * samples, 1)
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
    space: SearchSpace | None = None,
    log: Callable[[str], None] = print,
) -> dict[tuple[str, str, float], float]:
    """Predicted loss increase of every (layer, dimension, value) in ``levels`` (bit-widths
    with each layer's first quantiser choices in ``space``)."""
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
        choices = space.layers.get(name) if space is not None else None
        d = perturbation(layers[name].weight, dim, value, round_to=round_to, choices=choices)
        out[(name, dim, value)] = 0.5 * float((curv[name] * d.pow(2)).sum())
    log(f"sensitivity: {method} estimate of {len(levels)} levels from {len(x)} images")
    return out


def sweep_data(prep: Prepared, settings: SensitivitySettings) -> SweepData:
    """The fixed validation subset (seeded), the activation-calibration batches (as a trial's)
    and the BatchNorm re-estimation batches of the sweep."""
    cfg = prep.cfg
    x, y = _tensors(prep.data.val, settings.images, settings.seed)
    bs = cfg.finetune.batch_size or cfg.data.batch_size
    n = max(_CALIB_BATCHES, settings.bn_batches)
    stream = first_batches(prep.data.train, bs, n, shuffle=True, seed=settings.seed)
    example = prep.data.example_input(2)
    return SweepData(x, y, stream[:_CALIB_BATCHES], example, stream[: settings.bn_batches])


def cache_key(prep: Prepared, settings: SensitivitySettings) -> str:
    """Hash of the checkpoint's bytes, the data subset, the grid and the table's settings."""
    d = prep.cfg.to_dict()
    data_keys = ("dataset", "root", "kwargs", "val_fraction", "seed", "val_subset")
    payload = {
        "version": _VERSION,
        "checkpoint": file_digest(prep.baseline.checkpoint),
        "model": {k: d["model"][k] for k in ("name", "kwargs", "num_classes")},
        "data": {k: d["data"].get(k) for k in data_keys},
        "calibration": {
            "train_subset": d["data"].get("train_subset"),
            "batch_size": prep.cfg.finetune.batch_size or prep.cfg.data.batch_size,
        },
        "grid": {n: asdict(c) for n, c in prep.space.layers.items()},
        "compression": d.get("compression"),
        "settings": settings.cache_fields(),
    }
    return content_key(payload)


def _agreement(rows: list[LevelResult]) -> dict[str, float]:
    measured = [r for r in rows if r.measured and r.estimate is not None]
    out: dict[str, float] = {"n_levels": float(len(measured))}
    if not measured or measured[0].loss_increase is None:
        return out
    est = [r.estimate for r in measured]
    out["spearman_loss"] = spearman(est, [r.loss_increase for r in measured])
    out["spearman_drop"] = spearman(est, [r.acc_drop for r in measured])
    for dim in ("sparsity", "bits", "keep_ratio"):
        sub = [r for r in measured if r.dim == dim]
        out[f"spearman_drop_{dim}"] = spearman([r.estimate for r in sub], [r.acc_drop for r in sub])
    return out


def analyze(
    prep: Prepared,
    settings: SensitivitySettings,
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> SensitivityTable:
    """The experiment's sensitivity table, from the cache when it is there (unless ``force``).

    ``settings.method`` fills the table (``sweep`` measures; ``hessian``/``fisher`` predict a
    loss increase); with the sweep, ``settings.estimator`` is computed too and its Spearman
    rank agreement with the sweep is stored in ``meta["agreement"]``.
    """
    cfg = prep.cfg
    key = cache_key(prep, settings)
    path = cfg.output_dir / "cache" / f"sensitivity-{key}.json"
    if path.is_file() and not force:
        try:
            table = SensitivityTable.load(path)
            table.meta["cached"] = True
            log(f"sensitivity: cached table {path.name} ({len(table.rows)} levels)")
            return table
        except (ValueError, KeyError, TypeError) as exc:
            log(f"sensitivity: {path.name} unreadable ({exc}): measuring again")
    torch.manual_seed(settings.seed)
    model = prep.baseline.model.eval()
    comp = cfg.compression
    data = sweep_data(prep, settings)
    meta: dict[str, Any] = {"key": key, "images": len(data.x), "settings": settings.model_dump()}
    t0 = time.perf_counter()
    if settings.method == "sweep":
        rows, (acc, loss) = run_sweep(
            model,
            prep.space,
            data,
            max_points=settings.max_points,
            **comp.model_dump(),
            log=log,
        )
        meta.update(baseline_accuracy=acc, baseline_loss=loss)
    else:
        rows = [LevelResult(*lvl) for lvl in levels_of(prep.space)]
    meta["sweep_seconds"] = time.perf_counter() - t0
    est_name = settings.method if settings.method != "sweep" else settings.estimator
    if est_name is not None:
        t1 = time.perf_counter()
        ex, ey = _tensors(prep.data.train, settings.estimator_images, settings.seed + 1)
        est = estimate_levels(
            model,
            [(r.layer, r.dim, r.value) for r in rows],
            ex,
            ey,
            method=est_name,
            samples=settings.estimator_samples,
            round_to=comp.round_to,
            seed=settings.seed,
            space=prep.space,
            log=log,
        )
        rows = [replace(r, estimate=est[(r.layer, r.dim, r.value)]) for r in rows]
        meta.update(estimator=est_name, estimator_seconds=time.perf_counter() - t1)
        if settings.method == "sweep":
            meta["agreement"] = _agreement(rows)
    meta["seconds"] = time.perf_counter() - t0
    table = SensitivityTable(rows, meta)
    table.save(path)
    table.meta["cached"] = False
    agree = meta.get("agreement", {})
    extra = f", {est_name} vs sweep Spearman {agree['spearman_drop']:.2f}" if agree else ""
    log(f"sensitivity: {len(rows)} levels in {meta['seconds']:.1f} s{extra} -> {path.name}")
    return table


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
        loss = r.loss_increase if r.loss_increase is not None else r.estimate
        v = {"drop": r.acc_drop, "loss": loss, "estimate": r.estimate}[metric]
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
            for k in ("acc_drop", "loss_increase", "estimate"):  # NaN/inf stored as null
                d[k] = None if d[k] is None or not math.isfinite(d[k]) else float(d[k])
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
        ys = np.array([(0.0, 0.0)] + [(r.acc_drop, r.loss_increase) for _, r in pts], dtype=float)
        drop, loss = (float(np.interp(pos, xs, col)) for col in ys.T)  # (None: NaN)
        out.append(LevelResult(name, dim, value, drop, loss, measured=False))
    return out
