"""Measured greedy allocation (AIMET-style): from a start policy that passes the whole-model
check, compress further one group of per-layer moves at a time, keeping a group only while the
*measured* drop of the whole compressed model stays within a tolerance.

The per-layer table only orders the moves (least predicted drop per unit of saved cost first);
acceptance is always a real measurement, because per-layer drops do not add up on residual
networks. Groups grow after an accepted step and shrink after a rejected one (a line search
along the ordered moves), so a chain costs a few dozen checks, not one per layer and level.
One chain serves several tolerances: the policy reached at each is a snapshot, and the chain
goes on from it at the next, looser tolerance (spreading candidates along the front).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .allocate import Candidate
from .proxy import ProxyModel

__all__ = ["greedy_chain", "relative_cost"]

_EPS = 1e-3  # predicted points added to every move: free moves are ordered by their saving


def _moves(proxy: ProxyModel, row: np.ndarray) -> list[tuple[int, int]]:
    """Per gene, the step to its next more aggressive choice: ``(column, new index)``."""
    out = []
    for i in range(len(proxy.codec.layers)):
        for j, opts in enumerate(proxy.codec.choices(i)):
            cur = opts[row[3 * i + j]]
            if j == 0:  # sparsity: the next higher level
                nxt = [(v, x) for x, v in enumerate(opts) if v > cur]
                pick = min(nxt) if nxt else None
            else:  # bits, keep ratio: the next lower one
                nxt = [(v, x) for x, v in enumerate(opts) if v < cur]
                pick = max(nxt) if nxt else None
            if pick is not None:
                out.append((3 * i + j, pick[1]))
    return out


def relative_cost(pred: dict[str, np.ndarray]) -> np.ndarray:
    """Relative cost of rows: size, plus latency when the proxy has a latency model."""
    size = pred["size"] / max(float(pred["size"][0]), 1.0)
    lat = pred["latency"]
    if np.all(np.isfinite(lat)):
        size = size + lat / max(float(lat[0]), 1e-12)
    return size


def _ranked(
    proxy: ProxyModel, row: np.ndarray, blocked: set[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The open moves from ``row``, least predicted drop per saved cost first (moves that save
    nothing are left out)."""
    moves = [m for m in _moves(proxy, row) if m not in blocked]
    if not moves:
        return []
    rows = np.repeat(row[None, :], len(moves) + 1, axis=0)
    for k, (col, val) in enumerate(moves, start=1):
        rows[k, col] = val
    pred = proxy.evaluate(rows)
    cost = relative_cost(pred)
    saving = cost[0] - cost[1:]
    extra = np.maximum(pred["drop"][1:] - pred["drop"][0], 0.0) + _EPS
    ok = saving > 1e-9
    order = sorted(np.flatnonzero(ok), key=lambda k: extra[k] / saving[k])
    return [moves[k] for k in order]


def greedy_chain(
    proxy: ProxyModel,
    start: np.ndarray,
    check: Callable,
    *,
    tolerances: list[float],
    max_checks: int = 24,
    measure: Callable | None = None,
    start_drop: float | None = None,
) -> list[Candidate]:
    """Snapshots of one greedy chain from ``start`` (a codec row), one per tolerance (accuracy
    points of measured drop before fine-tune, ``check(policy) -> drop``), loosest last; a
    tolerance at which the chain could not move past the previous snapshot gives none. At most
    ``max_checks`` checks in all, shared evenly between the tolerances; with ``measure``
    (``policy -> {"size", "latency"}``) each snapshot's real costs are recorded too."""
    row = np.asarray(start, dtype=int).copy()
    drop = float(check(proxy.codec.policy(row))) if start_drop is None else float(start_drop)
    tolerances = sorted(tolerances)
    per = max(max_checks // max(len(tolerances), 1), 1)
    group0 = max(1, len(proxy.codec.layers) // 4)
    out: list[Candidate] = []
    seen = {row.tobytes()}
    for tol in tolerances:
        blocked: set[tuple[int, int]] = set()
        group, used = group0, 0
        while used < per:
            moves = _ranked(proxy, row, blocked)
            if not moves:
                break
            take = moves[:group]
            new = row.copy()
            for col, val in take:
                new[col] = val
            d = float(check(proxy.codec.policy(new)))
            used += 1
            if d <= tol:
                row, drop, group = new, d, group * 2
            elif group > 1:
                group = max(1, group // 2)
            else:
                blocked.add(take[0])
        if row.tobytes() in seen:
            continue
        seen.add(row.tobytes())
        pred = {k: float(v[0]) for k, v in proxy.evaluate(row).items()}
        cand = Candidate(row.copy(), pred, budget=tol, kind="greedy")
        if measure is not None:
            cand.real = dict(measure(proxy.codec.policy(row)))
        cand.real["drop"] = drop
        out.append(cand)
    return out
