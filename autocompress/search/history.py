"""How the search progressed: the hypervolume of the Pareto front after each trial.

The hypervolume is the search's own (``search.pareto.front_hypervolume``), so the last point
equals the parent run's ``hypervolume`` metric; only feasible trials count, as for the front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..metrics import OBJECTIVES
from .pareto import front_hypervolume, non_dominated


def hypervolume_history(
    rows: Sequence[Mapping], objectives: Sequence[str], baseline: Mapping[str, float]
) -> list[dict]:
    """Per ``trial_rows`` row in trial order: ``{"trial", "n_complete", "hypervolume",
    "front_size"}`` of the front of the feasible trials up to and including that one."""
    directions = [OBJECTIVES[o].direction for o in objectives]
    out: list[dict] = []
    front: list[Mapping] = []
    hv = 0.0
    for n, row in enumerate(sorted(rows, key=lambda r: r["trial"]), start=1):
        if row.get("feasible", True) and row.get("values"):
            keep = non_dominated([r["values"] for r in [*front, row]], directions).tolist()
            if keep[-1] == len(front):  # the new row is on the front (not dominated, no twin)
                front = [[*front, row][i] for i in keep]
                hv = front_hypervolume(front, list(objectives), directions, dict(baseline))
        out.append(
            {"trial": row["trial"], "n_complete": n, "hypervolume": hv, "front_size": len(front)}
        )
    return out
