"""Pareto fronts of trial results: non-dominated filtering, hypervolume, knee point."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "diverse_order",
    "front_hypervolume",
    "hypervolume",
    "hypervolume_order",
    "knee_index",
    "non_dominated",
    "to_minimization",
]


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


def _crowding(v: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of the rows of one front (minimised columns); extremes inf."""
    n = len(v)
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(v.shape[1]):
        order = np.argsort(v[:, j], kind="stable")
        span = v[order[-1], j] - v[order[0], j]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (v[order[2:], j] - v[order[:-2], j]) / span
    return dist


def diverse_order(values: np.ndarray, directions: Sequence[str]) -> list[int]:
    """All row indices, best first: by non-domination rank (NSGA-II's fronts), and within a
    rank by decreasing crowding distance, so that any prefix is as spread as the ranks allow.
    Duplicate rows follow every distinct one."""
    v = to_minimization(values, directions)
    left = list(range(len(v)))
    out: list[int] = []
    while left:
        front = [left[i] for i in non_dominated(v[left], ["minimize"] * v.shape[1])]
        crowd = _crowding(v[front])
        out += [front[i] for i in np.argsort(-crowd, kind="stable")]
        taken = set(front)
        left = [i for i in left if i not in taken]
    return out


def hypervolume_order(points: np.ndarray, reference: Sequence[float]) -> list[int]:
    """Indices of the rows (all minimised) that add hypervolume up to ``reference``, greedily:
    each next row is the one that adds the most to the rows before it (so any prefix is a good
    subset, spread where the volume is). Rows that add nothing are left out."""
    p = np.asarray(points, dtype=float)
    left = [i for i in range(len(p)) if np.all(p[i] < reference)]
    chosen: list[int] = []
    current = 0.0
    while left:
        gains = [hypervolume(p[chosen + [i]], reference) - current for i in left]
        best = int(np.argmax(gains))
        if gains[best] <= 0:
            break
        current += gains[best]
        chosen.append(left.pop(best))
    return chosen


def front_hypervolume(
    front: list[dict], objectives: list[str], directions: list[str], baseline: dict
) -> float:
    """Hypervolume of (1 - accuracy, latency / baseline, size / baseline) against the reference
    point (1, 1.1, 1.1): comparable between runs of the same experiment."""
    if not front:
        return 0.0
    scale = {"accuracy": 1.0, "latency": baseline["latency_ms"], "size": baseline["size_kb"]}
    pts = to_minimization([r["values"] for r in front], directions)
    ref = []
    for j, o in enumerate(objectives):
        if o == "accuracy":
            pts[:, j] = 1.0 + pts[:, j]  # -acc -> 1 - acc
            ref.append(1.0)
        else:
            pts[:, j] = pts[:, j] / scale[o]
            ref.append(1.1)
    return hypervolume(pts, ref)
