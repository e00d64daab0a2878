"""Pareto fronts of trial results: non-dominated filtering, hypervolume, knee point."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["hypervolume", "knee_index", "non_dominated", "to_minimization"]


def to_minimization(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Flip maximised columns so that every column is minimised."""
    v = np.asarray(values, dtype=float).copy()
    for j, d in enumerate(directions):
        if d == "maximize":
            v[:, j] = -v[:, j]
    return v


def non_dominated(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Indices of the rows no other row dominates (duplicates: the first one is kept)."""
    v = to_minimization(values, directions)
    keep = []
    for i in range(len(v)):
        le = np.all(v <= v[i], axis=1)
        lt = np.any(v < v[i], axis=1)
        dominated = np.any(le & lt)
        duplicate = any(np.array_equal(v[i], v[k]) for k in keep)
        if not dominated and not duplicate:
            keep.append(i)
    return np.asarray(keep, dtype=int)


def hypervolume(points: np.ndarray, reference: Sequence[float]) -> float:
    """Hypervolume dominated by ``points`` (all minimised) up to ``reference``.

    Exact, by recursive slicing over the first axis: fine for the tens of points a front has.
    """
    ref = np.asarray(reference, dtype=float)
    p = np.asarray(points, dtype=float)
    if p.size == 0:
        return 0.0
    p = p[np.all(p < ref, axis=1)]
    if len(p) == 0:
        return 0.0
    if p.shape[1] == 1:
        return float(ref[0] - p[:, 0].min())
    p = p[np.argsort(p[:, 0])]
    total = 0.0
    for i in range(len(p)):
        upper = p[i + 1, 0] if i + 1 < len(p) else ref[0]
        width = upper - p[i, 0]
        if width > 0:
            total += width * hypervolume(p[: i + 1, 1:], ref[1:])
    return float(total)


def knee_index(values: np.ndarray, directions: Sequence[str]) -> int:
    """The front point closest (normalised Euclidean distance) to the ideal point."""
    v = to_minimization(values, directions)
    lo, hi = v.min(axis=0), v.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    norm = (v - lo) / span
    return int(np.argmin(np.linalg.norm(norm, axis=1)))
