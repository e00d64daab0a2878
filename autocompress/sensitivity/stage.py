"""The sensitivity stage of a search (``sensitivity.enabled``), behind two calls:
:meth:`SensitivityStage.start` (table from cache or measured, shaped space: the space the
screen samples) and :meth:`~SensitivityStage.log` (files and metrics to MLflow).

Shaping (:func:`shape_space`) keeps, per layer and dimension, the choices from the gentlest up
to the last level within the tolerance (or fixes the harshest allowed one), so it only ever
removes choices: each shaped layer keeps a subset of its original ones, its gentlest at least.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from itertools import takewhile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import SensitivityConfig as SensitivitySettings
from ..errors import ConfigError
from ..plots import _figure, _save
from ..search_space import SearchSpace
from .analysis import DIMENSIONS, SensitivityTable, analyze, harsh_order

if TYPE_CHECKING:
    from ..baseline import Prepared


def _within(table: SensitivityTable, layer: str, dim: str, v: float, settings, fix: bool) -> bool:
    """Whether a level meets every limit of the rule (``fix``: the stricter ones of fixing a
    dimension): its accuracy drop (tables that measure it) and its loss increase (with
    ``max_loss_increase``). NaN (a level missing from the table) is too sensitive."""
    s = settings
    scale = (s.fix_drop / s.max_drop if s.max_drop > 0 else 0.0) if fix else 1.0
    limits = [("drop", s.fix_drop if fix else s.max_drop)] if s.method == "sweep" else []
    if s.max_loss_increase is not None:
        limits.append(("loss", s.max_loss_increase * scale))
    return all(table.score(layer, dim, v, metric) <= tol for metric, tol in limits)


def _shape_dim(table, layer: str, dim: str, values: tuple, settings) -> tuple:
    first, *rest = harsh_order(dim, values)  # the gentlest always stays
    allowed = [first, *takewhile(lambda v: _within(table, layer, dim, v, settings, False), rest)]
    if (
        settings.fix_insensitive
        and len(allowed) > 1
        and _within(table, layer, dim, allowed[-1], settings, fix=True)
    ):
        allowed = [allowed[-1]]
    return tuple(sorted(allowed, reverse=dim == "keep_ratio"))


def shape_space(
    space: SearchSpace, table: SensitivityTable, settings: SensitivitySettings
) -> SearchSpace:
    """The space narrowed by the table (unchanged when ``settings.shape`` is off).

    A level is allowed when its single-layer accuracy drop is at most ``max_drop`` points
    (and its loss increase at most ``max_loss_increase`` when set; with an estimator-only
    table, only the loss rule applies). Choices stop at the first level that is not allowed.
    With ``fix_insensitive``, a dimension whose harshest allowed level is within ``fix_drop``
    is fixed there.
    """
    if not settings.shape:
        return space
    shaped = {}
    for layer, ch in space.layers.items():
        dims = {d: _shape_dim(table, layer, d, getattr(ch, d), settings) for d in DIMENSIONS}
        shaped[layer] = replace(ch, **dims)
    return SearchSpace(shaped, space.scope)


def _fmt(dim: str, values: tuple) -> str:
    return "[" + ", ".join(str(int(v)) if dim == "bits" else f"{v:g}" for v in values) + "]"


def shaping_report(original: SearchSpace, shaped: SearchSpace) -> dict:
    """Per layer, the choices before and after shaping, and the space sizes (JSON-ready)."""
    layers = {}
    for name, ch in original.layers.items():
        new = shaped.layers[name]
        layers[name] = {
            d: {"before": list(getattr(ch, d)), "after": list(getattr(new, d))} for d in DIMENSIONS
        }
    return {
        "cardinality_before": original.cardinality,
        "cardinality_after": shaped.cardinality,
        "layers": layers,
    }


def describe_shaping(original: SearchSpace, shaped: SearchSpace) -> list[str]:
    """One line per layer whose choices changed, e.g. ``features.3: sparsity [0..0.9] ->
    [0..0.6]; bits [2..32] -> [3..32]``."""
    lines = []
    for name, ch in original.layers.items():
        new = shaped.layers[name]
        parts = [
            f"{d} {_fmt(d, getattr(ch, d))} -> {_fmt(d, getattr(new, d))}"
            for d in DIMENSIONS
            if getattr(ch, d) != getattr(new, d)
        ]
        if parts:
            lines.append(f"{name}: " + "; ".join(parts))
    return lines


_TITLE = {
    "drop": "accuracy drop (points)",
    "loss": "loss increase (nats)",
    "estimate": "estimated loss increase",
}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic | np.ndarray):
        return _json_safe(obj.tolist())
    return obj


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(data), indent=2, default=str))
    return path


def heatmap_png(table: SensitivityTable, path: Path, *, title: str) -> Path:
    import matplotlib

    metric = "drop" if table.has("drop") else "loss" if table.has("loss") else "estimate"
    layers, cols, z = table.matrix(metric)
    fig = _figure(max(6, 0.45 * len(cols) + 3), max(3, 0.35 * len(layers) + 2), dpi=120)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Reds"].with_extremes(bad="#e8e8e8")
    im = ax.imshow(np.ma.masked_invalid(z), cmap=cmap, aspect="auto", vmin=0)
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    if len(layers) * len(cols) <= 900:
        top = np.nanmax(z) if np.isfinite(z).any() else 1.0
        for i in range(len(layers)):
            for j in range(len(cols)):
                if np.isfinite(z[i, j]):
                    colour = "white" if z[i, j] > 0.6 * top else "black"
                    ax.text(j, i, f"{z[i, j]:.1f}", ha="center", va="center", fontsize=6, c=colour)
    fig.colorbar(im, ax=ax, label=_TITLE[metric])
    ax.set_title(title, fontsize=9)
    return _save(fig, path, tight=True)


class SensitivityStage:
    """State shared by the sensitivity call sites of one search."""

    def __init__(self, prep: Prepared, settings: SensitivitySettings, table: SensitivityTable):
        self.prep, self.settings, self.table = prep, settings, table
        self.space: SearchSpace = shape_space(prep.space, table, settings)
        self.out_dir: Path = prep.cfg.output_dir / "sensitivity"

    @classmethod
    def start(
        cls,
        prep: Prepared,
        settings: SensitivitySettings,
        *,
        force: bool = False,
        log: Callable[[str], None] = print,
    ) -> SensitivityStage | None:
        """Table (cached or measured) and shaped space; None when the stage is disabled."""
        if not settings.enabled:
            return None
        if prep.task.metric is not None or prep.task.loss is not None:
            raise ConfigError(
                "sensitivity.enabled: the per-layer table scores top-1 accuracy and "
                "cross-entropy only; with task.evaluate / task.loss set sensitivity.enabled: "
                "false (the screen scores whole policies with your metric)"
            )
        stage = cls(prep, settings, analyze(prep, settings, force=force, log=log))
        if settings.shape:
            for line in describe_shaping(prep.space, stage.space):
                log(f"  shaped {line}")
            log(
                f"sensitivity: shaped space {prep.space.cardinality:.3g} -> "
                f"{stage.space.cardinality:.3g} policies"
            )
        return stage

    # -- MLflow -------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Write the stage's files into ``output_dir/sensitivity`` and return them:
        ``sensitivity.csv`` (one row per layer level), ``sensitivity_table.json`` (the whole
        table, what ``autocompress report`` reads), the heat map and the shaped space."""
        d, table, name = self.out_dir, self.table, self.prep.cfg.name
        title = f"{name}: sensitivity per layer and level ({table.meta.get('images')} images)"
        d.mkdir(parents=True, exist_ok=True)
        (d / "sensitivity.csv").write_text(table.to_csv())
        shaped = shaping_report(self.prep.space, self.space)
        shaped["settings"] = self.settings.model_dump()
        return [
            d / "sensitivity.csv",
            write_json(d / "sensitivity_table.json", table.to_dict()),
            heatmap_png(table, d / "sensitivity_heatmap.png", title=title),
            write_json(d / "sensitivity_shaped_space.json", shaped),
        ]

    def metrics(self) -> dict[str, float]:
        m = self.table.meta
        out = {
            "sensitivity_seconds": float(m.get("seconds", 0.0)),
            "sensitivity_cached": float(bool(m.get("cached"))),
            "sensitivity_levels": float(len(self.table.rows)),
            "sensitivity_space_before": float(self.prep.space.cardinality),
            "sensitivity_space_after": float(self.space.cardinality),
            "sensitivity_estimator_spearman": m.get("agreement", {}).get("spearman_drop", math.nan),
        }
        return {k: float(v) for k, v in out.items() if np.isfinite(v)}  # (no estimator: NaN)

    def log(self, tracker, run_id: str) -> list[Path]:
        """Files under ``sensitivity/`` and ``sensitivity_*`` metrics on the run; returns the
        files."""
        paths = self.files()
        tracker.log_artifacts(run_id, paths, "sensitivity")
        tracker.log(run_id, metrics=self.metrics())
        return paths
