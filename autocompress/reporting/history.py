"""How the search progressed: the normalised hypervolume of the Pareto front after each trial.

Normalisation (the one ``search`` logs as the parent run's ``hypervolume`` metric): every
objective is minimised as ``1 - accuracy``, ``latency / baseline latency`` and
``size / baseline size``, against the reference point ``(1, 1.1, 1.1)``, so runs of the same
experiment are comparable. Only feasible trials (all constraints met) count, as for the front.

``autocompress.search`` imports this module, so it imports ``search.pareto`` only when called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..metrics import OBJECTIVES

__all__ = ["hypervolume_history", "normalised_hypervolume", "normalised_points"]

_SCALE_KEY = {"latency": "latency_ms", "size": "size_kb"}
_REFERENCE = {"accuracy": 1.0, "latency": 1.1, "size": 1.1}


def normalised_points(
    values: Sequence[Sequence[float]], objectives: Sequence[str], baseline: Mapping[str, float]
) -> tuple[np.ndarray, list[float]]:
    """Raw objective values (one row per trial, columns in ``objectives`` order, as Optuna
    stores them) as minimised, baseline-normalised points, and the reference point."""
    from ..search.pareto import to_minimization

    directions = [OBJECTIVES[o].direction for o in objectives]
    pts = to_minimization(np.asarray(values, dtype=float).reshape(-1, len(objectives)), directions)
    for j, o in enumerate(objectives):
        if o == "accuracy":
            pts[:, j] = 1.0 + pts[:, j]  # -acc -> 1 - acc
        else:
            pts[:, j] = pts[:, j] / float(baseline[_SCALE_KEY[o]])
    return pts, [_REFERENCE[o] for o in objectives]


def normalised_hypervolume(
    values: Sequence[Sequence[float]], objectives: Sequence[str], baseline: Mapping[str, float]
) -> float:
    """Hypervolume of the given points (normally the front) after normalisation; 0 if none."""
    from ..search.pareto import hypervolume

    if len(values) == 0:
        return 0.0
    pts, ref = normalised_points(values, objectives, baseline)
    return hypervolume(pts, ref)


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def hypervolume_history(
    rows: Sequence[Mapping], objectives: Sequence[str], baseline: Mapping[str, float]
) -> list[dict]:
    """One entry per complete trial, in trial order: ``{"trial", "n_complete", "hypervolume",
    "front_size"}`` where the hypervolume and size are those of the front of the feasible trials
    up to and including that one. ``rows`` are ``search.study.trial_rows`` (each with ``trial``,
    ``values`` and ``feasible``); the last entry's hypervolume is the search's final one."""
    from ..search.pareto import to_minimization

    out: list[dict] = []
    front: list[np.ndarray] = []
    front_values: list[Sequence[float]] = []
    hv = 0.0
    directions = [OBJECTIVES[o].direction for o in objectives]
    for n, row in enumerate(sorted(rows, key=lambda r: r["trial"]), start=1):
        if row.get("feasible", True) and row.get("values"):
            p = to_minimization(np.asarray([row["values"]], dtype=float), directions)[0]
            if not any(_dominates(q, p) or np.array_equal(q, p) for q in front):
                keep = [i for i, q in enumerate(front) if not _dominates(p, q)]
                front = [front[i] for i in keep] + [p]
                front_values = [front_values[i] for i in keep] + [row["values"]]
                hv = normalised_hypervolume(front_values, objectives, baseline)
        out.append(
            {
                "trial": row["trial"],
                "n_complete": n,
                "hypervolume": hv,
                "front_size": len(front),
            }
        )
    return out
