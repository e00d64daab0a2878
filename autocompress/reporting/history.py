"""How the search progressed: the hypervolume of the Pareto front after each trial.

The hypervolume is the search's own (``search.pareto.front_hypervolume``: ``1 - accuracy``,
``latency / baseline``, ``size / baseline`` against ``(1, 1.1, 1.1)``), so the last point equals
the parent run's ``hypervolume`` metric. Only feasible trials count, as for the front.

``autocompress.search`` may import this module while it initialises, so ``search`` modules are
imported only when a function runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..metrics import OBJECTIVES

__all__ = ["hypervolume_history"]


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def hypervolume_history(
    rows: Sequence[Mapping], objectives: Sequence[str], baseline: Mapping[str, float]
) -> list[dict]:
    """One entry per complete trial, in trial order: ``{"trial", "n_complete", "hypervolume",
    "front_size"}``, the hypervolume and size of the front of the feasible trials up to and
    including that one. ``rows`` are ``search.study.trial_rows`` (each with ``trial``,
    ``values`` and ``feasible``)."""
    from ..search.pareto import front_hypervolume, to_minimization

    directions = [OBJECTIVES[o].direction for o in objectives]
    out: list[dict] = []
    front: list[tuple[np.ndarray, Mapping]] = []  # (minimised point, row)
    hv = 0.0
    for n, row in enumerate(sorted(rows, key=lambda r: r["trial"]), start=1):
        if row.get("feasible", True) and row.get("values"):
            p = to_minimization(np.asarray([row["values"]], dtype=float), directions)[0]
            if not any(_dominates(q, p) or np.array_equal(q, p) for q, _ in front):
                front = [(q, r) for q, r in front if not _dominates(p, q)] + [(p, row)]
                hv = front_hypervolume(
                    [r for _, r in front], list(objectives), directions, dict(baseline)
                )
        out.append(
            {"trial": row["trial"], "n_complete": n, "hypervolume": hv, "front_size": len(front)}
        )
    return out
