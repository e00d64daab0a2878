"""``analyze``: the sensitivity table of an experiment (measured sweep and/or cheap estimator),
cached in ``output_dir/cache`` keyed by checkpoint, data subset, grid and settings, with the
estimator's rank agreement with the sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch

from ..cache_key import content_key, file_digest
from ..config import SensitivityConfig as SensitivitySettings
from ..errors import AutocompressError
from ..metrics import spearman
from ..training import batches
from .estimators import estimate_levels
from .sweep import SweepData, levels_of, run_sweep
from .table import LevelResult, SensitivityTable

if TYPE_CHECKING:
    from ..prepare import Prepared


_VERSION = 5  # 5: each level through apply_policy + calibrate + correct_batchnorm (as a screen)
_CALIB_BATCHES = 4


def _tensors(ds, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in batches(ds, 512, shuffle=True, seed=seed):
        xs.append(x)
        ys.append(y)
        if n is not None and sum(len(t) for t in ys) >= n:
            break
    if not xs:
        raise AutocompressError("sensitivity: the validation split is empty")
    x, y = torch.cat(xs), torch.cat(ys)
    return (x, y) if n is None else (x[:n], y[:n])


def sweep_data(prep: Prepared, settings: SensitivitySettings) -> SweepData:
    """The fixed validation subset (seeded), the activation-calibration batches (as a trial's)
    and the BatchNorm re-estimation batches of the sweep."""
    cfg = prep.cfg
    x, y = _tensors(prep.data.val, settings.images, settings.seed)
    bs = cfg.finetune.batch_size or cfg.data.batch_size
    n = max(_CALIB_BATCHES, settings.bn_batches)
    stream = [
        xb for xb, _ in islice(batches(prep.data.train, bs, shuffle=True, seed=settings.seed), n)
    ]
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
    meta: dict[str, Any] = {"key": key, "images": len(data.x), "settings": settings.to_dict()}
    t0 = time.perf_counter()
    if settings.method == "sweep":
        rows, (acc, loss) = run_sweep(
            model,
            prep.space,
            data,
            importance=comp.importance,
            round_to=comp.round_to,
            max_points=settings.max_points,
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
