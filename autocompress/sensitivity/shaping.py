"""Shaping the search space with the sensitivity table: per layer and dimension, keep the choices
from the gentlest up to the last level whose single-layer sensitivity is within the tolerance
(highest allowed sparsity, lowest allowed bits, fewest allowed channels), and fix a dimension
at its harshest allowed level when even that costs (almost) nothing.

Shaping only ever removes choices: every shaped layer's choices are a subset of its original
ones, and each keeps at least its gentlest choice.
"""

from __future__ import annotations

from dataclasses import replace

from ..config import SensitivityConfig as SensitivitySettings
from ..search_space import SearchSpace
from .table import DIMENSIONS, SensitivityTable, harsh_order


def _limits(settings: SensitivitySettings) -> tuple[str, float, float]:
    """(metric, tolerance, fix tolerance) of the shaping rule."""
    if settings.measures_accuracy and settings.max_loss_increase is None:
        return "drop", settings.max_drop, settings.fix_drop
    tol = float(settings.max_loss_increase)
    if settings.measures_accuracy:
        return "both", tol, settings.fix_drop
    ratio = settings.fix_drop / settings.max_drop if settings.max_drop > 0 else 0.0
    return "loss", tol, tol * ratio


def _within(table: SensitivityTable, layer: str, dim: str, v: float, settings, fix: bool) -> bool:
    metric, tol, fix_tol = _limits(settings)
    if metric == "both":
        drop_ok = table.score(layer, dim, v, "drop") <= (
            settings.fix_drop if fix else settings.max_drop
        )
        loss_tol = tol * (settings.fix_drop / settings.max_drop if fix else 1.0)
        return drop_ok and table.score(layer, dim, v, "loss") <= loss_tol
    # NaN (level missing from the table) compares False: treated as too sensitive.
    return table.score(layer, dim, v, metric) <= (fix_tol if fix else tol)


def _shape_dim(table, layer: str, dim: str, values: tuple, settings) -> tuple:
    ordered = harsh_order(dim, values)
    allowed = [ordered[0]]
    for v in ordered[1:]:
        if not _within(table, layer, dim, v, settings, fix=False):
            break
        allowed.append(v)
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
