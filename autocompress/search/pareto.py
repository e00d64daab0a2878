"""Pareto fronts of trial results: non-dominated filtering, hypervolume (Optuna's), knee point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from optuna._hypervolume import _solve_hssp, compute_hypervolume
from optuna.study._multi_objective import _is_pareto_front

from ..metrics import OBJECTIVES


def to_minimization(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Flip maximised columns so that every column is minimised."""
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return np.asarray(values, dtype=float).reshape(-1, len(sign)) * sign


def non_dominated(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Indices of the rows no other row dominates (duplicates: the first one is kept)."""
    v = to_minimization(values, directions)
    if not len(v):
        return np.zeros(0, dtype=int)
    unique, first = np.unique(v, axis=0, return_index=True)  # lexsorted, first occurrences
    return np.sort(first[_is_pareto_front(unique, assume_unique_lexsorted=True)])


def hypervolume(points: np.ndarray, reference: Sequence[float]) -> float:
    """Hypervolume dominated by ``points`` (all minimised) up to ``reference`` (exact)."""
    ref = np.asarray(reference, dtype=float)
    p = np.asarray(points, dtype=float).reshape(-1, len(ref))
    return float(compute_hypervolume(p[np.all(p < ref, axis=1)], ref))


def knee_index(values: np.ndarray, directions: Sequence[str]) -> int:
    """The front point closest (normalised Euclidean distance) to the ideal point."""
    v = to_minimization(values, directions)
    lo, hi = v.min(axis=0), v.max(axis=0)
    norm = (v - lo) / np.where(hi > lo, hi - lo, 1.0)
    return int(np.argmin(np.linalg.norm(norm, axis=1)))


def _crowding(v: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of the rows of one front (minimised columns); extremes inf."""
    dist = np.zeros(len(v)) if len(v) > 2 else np.full(len(v), np.inf)
    for j in range(v.shape[1] if len(v) > 2 else 0):
        order = np.argsort(v[:, j], kind="stable")
        span = v[order[-1], j] - v[order[0], j]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (v[order[2:], j] - v[order[:-2], j]) / span
    return dist


def diverse_order(values: np.ndarray, directions: Sequence[str]) -> list[int]:
    """All row indices by non-domination rank, within a rank by decreasing crowding distance
    (any prefix is as spread as the ranks allow); a duplicate ranks after its first copy."""
    v = to_minimization(values, directions)
    left, out = np.arange(len(v)), []
    while left.size:
        front = left[non_dominated(v[left], ["minimize"] * v.shape[1])]
        out += front[np.argsort(-_crowding(v[front]), kind="stable")].tolist()
        left = np.setdiff1d(left, front)
    return out


def hypervolume_order(points: np.ndarray, reference: Sequence[float]) -> list[int]:
    """Indices of the rows (all minimised) that add hypervolume up to ``reference``, greedily
    (Optuna's HSSP: each next row adds the most to the ones before); the others left out."""
    ref = np.asarray(reference, dtype=float)
    p = np.asarray(points, dtype=float).reshape(-1, len(ref))
    idx = np.flatnonzero(np.all(p < ref, axis=1))
    idx = idx[non_dominated(p[idx], ["minimize"] * len(ref))]
    if idx.size <= 1:
        return idx.tolist()
    first = _solve_hssp(p[idx], idx, idx.size - 1, ref).tolist()  # the last one: what is left
    return first + [i for i in idx.tolist() if i not in first]


def normalised(values: np.ndarray, objectives: Sequence[str], scale: Mapping) -> np.ndarray:
    """Objective values as ``1 - accuracy`` and ``value / scale[metric]``: all minimised."""
    v = np.asarray(values, dtype=float).reshape(-1, len(objectives))
    cols = [
        1.0 - v[:, j] if o == "accuracy" else v[:, j] / scale[OBJECTIVES[o].metric]
        for j, o in enumerate(objectives)
    ]
    return np.stack(cols, axis=1)


def front_hypervolume(
    values: Sequence[Sequence[float]], objectives: list[str], baseline: Mapping
) -> float:
    """Hypervolume of the front's objective ``values`` as (1 - accuracy, latency / baseline,
    size / baseline) against the reference point (1, 1.1, 1.1): comparable between runs of the
    same experiment."""
    if not len(values):
        return 0.0
    pts = normalised([list(v) for v in values], objectives, baseline)
    return hypervolume(pts, [1.0 if o == "accuracy" else 1.1 for o in objectives])


def hypervolume_history(
    records: Sequence, objectives: Sequence[str], baseline: Mapping[str, float]
) -> list[dict]:
    """How the search progressed: per trial record (``.trial``, ``.values``, ``.feasible``) in
    trial order, ``{"trial", "n_complete", "hypervolume", "front_size"}`` of the front of the
    feasible trials up to and including that one. The hypervolume is :func:`front_hypervolume`,
    so the last point equals the parent run's ``hypervolume`` metric; only feasible trials
    count, as for the front."""
    directions = [OBJECTIVES[o].direction for o in objectives]
    out: list[dict] = []
    front: list[Sequence[float]] = []
    hv = 0.0
    for n, r in enumerate(sorted(records, key=lambda r: r.trial), start=1):
        if r.feasible and len(r.values):
            keep = non_dominated([*front, r.values], directions).tolist()
            if keep[-1] == len(front):  # the new point is on the front (not dominated, no twin)
                front = [[*front, r.values][i] for i in keep]
                hv = front_hypervolume(front, list(objectives), baseline)
        out.append({"trial": r.trial, "n_complete": n, "hypervolume": hv, "front_size": len(front)})
    return out
