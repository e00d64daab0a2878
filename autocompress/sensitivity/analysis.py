"""``analyze``: the sensitivity table of an experiment (measured sweep and/or cheap estimator,
per-layer packed bytes), cached in ``output_dir/cache`` keyed by checkpoint, data subset, grid
and settings; and the checks around it (estimator rank agreement, additivity of whole-policy
predictions, size-estimate error).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..compress.apply import apply_policy, calibrate
from ..compress.batchnorm import correct_batchnorm
from ..errors import AutocompressError
from ..export.artifact import ModelRef, packed_model_size
from ..policy import CompressionPolicy
from ..search_space import SearchSpace
from ..training import batches
from .allocate import policy_key
from .costs import latency_deltas, layer_bytes
from .estimators import estimate_levels
from .proxy import ProxyModel
from .settings import SensitivitySettings
from .sweep import SweepData, levels_of, model_structure, run_sweep
from .table import LevelResult, SensitivityTable, spearman

if TYPE_CHECKING:
    from ..search.run import Prepared

__all__ = [
    "analyze",
    "cache_key",
    "check_additivity",
    "checks_path",
    "make_proxy",
    "policy_drop",
    "real_costs",
    "size_error",
    "sweep_data",
]

_VERSION = 4  # 4: BatchNorm re-estimation no longer sees in-place edits of replayed outputs
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
        "checkpoint": hashlib.sha256(Path(prep.baseline.checkpoint).read_bytes()).hexdigest(),
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
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
        rows, structure, (acc, loss) = run_sweep(
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
        structure = model_structure(model)
        if any(d == "keep_ratio" for _, d, _ in levels_of(prep.space)):
            _, structure, _ = run_sweep(  # shapes only: channel levels on a tiny subset
                model,
                _keep_only(prep.space),
                SweepData(data.x[:2], data.y[:2], data.calib[:1], data.example),
                importance=comp.importance,
                round_to=comp.round_to,
                log=lambda *_: None,
            )
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
    t2 = time.perf_counter()
    structure["bytes"] = layer_bytes(model, prep.space, log=log)
    meta["size_table_seconds"] = time.perf_counter() - t2
    meta["seconds"] = time.perf_counter() - t0
    table = SensitivityTable(rows, meta, structure)
    table.save(path)
    table.meta["cached"] = False
    agree = meta.get("agreement", {})
    extra = f", {est_name} vs sweep Spearman {agree['spearman_drop']:.2f}" if agree else ""
    log(f"sensitivity: {len(rows)} levels in {meta['seconds']:.1f} s{extra} -> {path.name}")
    return table


def _keep_only(space: SearchSpace) -> SearchSpace:
    from ..search_space import LayerChoices

    return SearchSpace(
        {n: LayerChoices((0.0,), (32,), c.keep_ratio) for n, c in space.layers.items()}
    )


# -- whole policies -------------------------------------------------------------------------
def real_costs(prep: Prepared, latency_model=None) -> Callable[[CompressionPolicy], dict]:
    """``policy -> {"size": packed bytes, "latency": ms}`` of the real compressed model."""
    cfg = prep.cfg
    ref = ModelRef.from_config(cfg, prep.data.input_shape)
    example = prep.data.example_input(2)

    def measure(policy: CompressionPolicy) -> dict:
        comp = cfg.compression
        model = apply_policy(
            prep.baseline.model,
            policy,
            example=example,
            importance=comp.importance,
            round_to=comp.round_to,
        ).eval()
        out = {"size": float(packed_model_size(model, ref, policy, round_to=comp.round_to))}
        if latency_model is not None:
            out["latency"] = float(latency_model.predict(model, policy))
        return out

    return measure


def _read_checks(path: Path | None) -> dict[str, float]:
    if path is None or not path.is_file():
        return {}
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text())["drops"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}  # a damaged cache is measured again, not trusted


def _write_checks(path: Path, drops: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"drops": drops}, indent=1, sort_keys=True))
    os.replace(tmp, path)


def checks_path(output_dir: Path, key: str) -> Path:
    """Where an experiment's whole-policy checks of the table ``key`` are cached (beside the
    table, in ``output_dir/cache``)."""
    return Path(output_dir) / "cache" / f"policy-checks-{key}.json"


def policy_drop(
    prep: Prepared, settings: SensitivitySettings, *, cache: Path | None = None
) -> Callable[[CompressionPolicy], float]:
    """``policy -> accuracy drop (points)`` of the whole compressed model before any fine-tune,
    measured as the sweep measures one layer: activation ranges calibrated, BatchNorm statistics
    re-estimated, scored on the sweep's fixed validation images. The measurement is
    deterministic for a table key, so with ``cache`` (a JSON file, see :func:`checks_path`)
    each policy is measured once across searches: uniform corners and greedy chains repeated
    by a re-run or another seed cost nothing."""
    known = _read_checks(cache)
    data = sweep_data(prep, settings)
    comp = prep.cfg.compression
    with torch.no_grad():
        logits = prep.baseline.model.eval()(data.x)
        base_acc = float((logits.argmax(1) == data.y).float().mean())

    def drop(policy: CompressionPolicy) -> float:
        pid = policy_key(policy)
        if pid not in known:
            known[pid] = _measure(policy)
            if cache is not None:
                _write_checks(cache, known)
        return known[pid]

    def _measure(policy: CompressionPolicy) -> float:
        model = apply_policy(
            prep.baseline.model,
            policy,
            example=data.example,
            importance=comp.importance,
            round_to=comp.round_to,
        )
        calibrate(model, data.calib)
        correct_batchnorm(model, prep.baseline.model, data.bn)
        with torch.no_grad():
            acc = float((model(data.x).argmax(1) == data.y).float().mean())
        return 100.0 * (base_acc - acc)

    return drop


def make_proxy(
    prep: Prepared,
    space: SearchSpace,
    table: SensitivityTable,
    settings: SensitivitySettings,
    *,
    latency_model=None,
) -> ProxyModel:
    """The vectorised predictor of drop / size / latency over ``space`` (latency deltas are
    asked from ``latency_model`` once per layer level)."""
    lat = None
    if latency_model is not None:
        lat = latency_deltas(
            prep.baseline.model,
            space,
            latency_model,
            prep.data.example_input(prep.cfg.latency.batch_size),
            importance=prep.cfg.compression.importance,
            round_to=prep.cfg.compression.round_to,
        )
    metric = "drop" if settings.method == "sweep" and settings.proxy_metric == "drop" else "loss"
    return ProxyModel(
        space, table, base_bytes=prep.baseline.metrics.size_bytes, latency=lat, metric=metric
    )


def _sample_rows(proxy: ProxyModel, n: int, rng: np.random.Generator) -> np.ndarray:
    """Policies of graded aggressiveness: each dimension leaves its gentlest choice with a
    probability drawn per policy, so predicted drops spread from none to large."""
    codec = proxy.codec
    rows = codec.random(n, rng)
    p = rng.random((n, 1))
    gentle = rng.random(rows.shape) >= p
    for i in range(len(codec.layers)):
        s, b, k = codec.choices(i)
        gentlest = (0, int(np.argmax(b)), int(np.argmax(k)))
        for j in range(3):
            rows[gentle[:, 3 * i + j], 3 * i + j] = gentlest[j]
    return rows


def check_additivity(
    prep: Prepared,
    table: SensitivityTable,
    settings: SensitivitySettings,
    *,
    space: SearchSpace | None = None,
    n: int = 40,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Predicted (sum of per-layer drops, and of loss increases) vs measured accuracy drop of
    ``n`` sampled policies, compressed as in the sweep (no fine-tune) and scored on the
    sensitivity subset. ``spearman`` is for the settings' proxy metric."""
    space = space or prep.space
    proxy = make_proxy(prep, space, table, settings)
    rows = _sample_rows(proxy, n, np.random.default_rng(seed))
    preds = {
        m: make_proxy(prep, space, table, settings.with_(proxy_metric=m)).evaluate(rows)["drop"]
        for m in ("drop", "loss")
        if table.has(m)
    }
    drop = policy_drop(prep, settings)
    real = [drop(proxy.codec.policy(row)) for row in rows]
    rho = {m: spearman(p, real) for m, p in preds.items()}
    log(f"sensitivity: predicted vs measured drop of {n} policies: Spearman {rho}")
    return {
        "n": n,
        "spearman": rho[proxy.metric],
        "metric": proxy.metric,
        **{f"spearman_{m}": r for m, r in rho.items()},
        "predicted": preds[proxy.metric].tolist(),
        "measured_drop": real,
    }


def size_error(
    prep: Prepared, proxy: ProxyModel, *, n: int = 8, seed: int = 0
) -> dict[str, float | list]:
    """Relative error of the size estimate against the real packed bytes on sampled policies."""
    rows = _sample_rows(proxy, n, np.random.default_rng(seed))
    est = proxy.evaluate(rows)["size"]
    measure = real_costs(prep)
    real = np.array([measure(proxy.codec.policy(r))["size"] for r in rows])
    rel = (est - real) / real
    return {
        "mean_abs_rel_error": float(np.abs(rel).mean()),
        "max_abs_rel_error": float(np.abs(rel).max()),
        "estimated": est.tolist(),
        "real": real.tolist(),
    }
