"""Policies derived from the sensitivity table, before the sampler takes over.

- :func:`knapsack` / :func:`warm_start`: per budget (size or latency, spread along the front),
  the per-layer choice of sparsity, bits and keep ratio that minimises the summed sensitivity
  under that budget (HAWQ-V3 style multiple-choice knapsack, by dynamic programming), checked
  against the real cost of the compressed model and tightened until it fits.
- :func:`proxy_front`: the two-stage search's first stage — thousands of policies scored by
  the proxy (predicted drop, estimated size and latency) with a small evolutionary search, and
  the front's candidates spread out for the real evaluation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .proxy import ProxyModel

__all__ = ["Candidate", "knapsack", "proxy_front", "spread", "uniform_corners", "warm_start"]

_BINS = 2000
_TIE = 1e-3  # accuracy points per whole budget: prefer the cheaper of equally sensitive options


@dataclass
class Candidate:
    """A policy (as a codec row) with its predictions and, when measured, real costs."""

    row: np.ndarray
    predicted: dict[str, float]
    real: dict[str, float] = field(default_factory=dict)
    budget: float | None = None
    kind: str = "size"  # what the budget is in ("size" bytes, "latency" ms), "proxy", "uniform"
    loosened: int = 0  # times the budget was loosened because the measured drop was too large

    def attrs(self) -> dict:
        """JSON-ready summary (Optuna user attribute of the enqueued trial)."""
        out = {"kind": self.kind, **{f"predicted_{k}": v for k, v in self.predicted.items()}}
        out.update({f"real_{k}": v for k, v in self.real.items()})
        if self.budget is not None:
            out["budget"] = self.budget
        if self.loosened:
            out["loosened"] = self.loosened
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()
        }


def knapsack(costs: list[np.ndarray], values: list[np.ndarray], budget: float) -> list[int] | None:
    """Per group, the index of one option so that the summed cost is at most ``budget`` and the
    summed value is smallest (costs rounded up to 1/2000 of the slack). None if infeasible."""
    # An option without a finite cost or value (e.g. no size estimate) is never chosen.
    ok = [np.isfinite(c) & np.isfinite(v) for c, v in zip(costs, values, strict=True)]
    if not all(o.any() for o in ok):
        return None
    mins = [float(c[o].min()) for c, o in zip(costs, ok, strict=True)]
    slack = budget - sum(mins)
    if slack < 0:
        return None
    width = max(slack / _BINS, 1e-12)
    bins = []
    for c, m, o in zip(costs, mins, ok, strict=True):
        b = np.full(len(c), _BINS + 1, dtype=np.int64)
        b[o] = np.minimum(np.ceil((c[o] - m) / width - 1e-9), _BINS + 1).astype(np.int64)
        bins.append(b)
    dp = np.zeros(_BINS + 1)
    choices = []
    for cb, val in zip(bins, values, strict=True):
        new = np.full(_BINS + 1, np.inf)
        arg = np.zeros(_BINS + 1, dtype=np.int64)
        for j in np.argsort(cb, kind="stable"):
            c = int(cb[j])
            if c > _BINS:
                continue
            cand = np.full(_BINS + 1, np.inf)
            cand[c:] = dp[: _BINS + 1 - c] + val[j]
            better = cand < new
            new[better] = cand[better]
            arg[better] = j
        dp = new
        choices.append(arg)
    if not np.isfinite(dp[_BINS]):
        return None
    cap, picks = _BINS, []
    for cb, arg in zip(reversed(bins), reversed(choices), strict=True):
        j = int(arg[cap])
        picks.append(j)
        cap -= int(cb[j])
    return picks[::-1]


def _solve(
    proxy: ProxyModel, budget_kind: str, budget: float, offset: float, *, gentle: bool = False
) -> np.ndarray | None:
    """Knapsack row; equally sensitive options are broken towards the cheaper one, or with
    ``gentle`` towards the more expensive (less compressed) one."""
    combos, costs, values = proxy.separable(budget_kind)
    span = max(sum(float(c.max() - c.min()) for c in costs), 1e-12)
    values = [
        v + _TIE * ((c.max() - c) if gentle else (c - c.min())) / span
        for v, c in zip(values, costs, strict=True)
    ]
    picks = knapsack(costs, values, budget - offset)
    if picks is None:
        return None
    return np.concatenate([combos[i][j] for i, j in enumerate(picks)])


def _range(proxy: ProxyModel, kind: str) -> tuple[float, float]:
    """Cheapest total cost of the separable model, and the cheapest cost at which the summed
    sensitivity is as small as it gets (more budget buys nothing)."""
    _, costs, _ = proxy.separable(kind)
    off = proxy.base(kind)
    lo = off + sum(float(c.min()) for c in costs)
    top = _solve(proxy, kind, off + sum(float(c.max()) for c in costs), off)
    hi = off + _separable_cost(proxy, kind, top) if top is not None else lo
    return lo, hi


def _separable_cost(proxy: ProxyModel, kind: str, row: np.ndarray) -> float:
    combos, costs, _ = proxy.separable(kind)
    total = 0.0
    for i, (combo, cost) in enumerate(zip(combos, costs, strict=True)):
        j = np.flatnonzero((combo == row[3 * i : 3 * i + 3]).all(axis=1))[0]
        total += float(cost[j])
    return total


def _fit(
    proxy: ProxyModel,
    kind: str,
    budget: float,
    measure: Callable | None,
    tries: int,
    gentle: bool = False,
) -> Candidate | None:
    """The knapsack allocation for ``budget``; with ``measure``, its budget tightened (up to
    ``tries`` times) until the real cost fits. None when nothing fits."""
    target = budget
    for _ in range(tries):
        row = _solve(proxy, kind, target, proxy.base(kind), gentle=gentle)
        if row is None:
            return None
        pred = {k: float(v[0]) for k, v in proxy.evaluate(row).items()}
        cand = Candidate(row, pred, budget=budget, kind=kind)
        if measure is None:
            return cand
        cand.real = measure(proxy.codec.policy(row))
        if cand.real[kind] <= budget:
            return cand
        target *= budget / cand.real[kind] * 0.99
    return None


def warm_start(
    proxy: ProxyModel,
    *,
    n: int,
    kind: str = "size",
    measure: Callable | None = None,
    budgets: list[float] | None = None,
    tries: int = 4,
    check: Callable | None = None,
    max_drop: float | None = None,
    loosen: int = 6,
) -> list[Candidate]:
    """Knapsack allocations for ``n`` budgets spread geometrically between the cheapest policy
    of the space and the cheapest one of least summed sensitivity (or the given ``budgets``, in
    bytes or ms), the cheapest budget first.

    With ``measure`` (``policy -> {"size": bytes, "latency": ms}``), each allocation's real
    cost is checked and its budget tightened (up to ``tries`` times) until the real cost fits;
    an allocation that never fits is dropped.

    With ``check`` (``policy -> accuracy drop in points`` of the whole compressed model) and
    ``max_drop``, the summed per-layer drops are not trusted: an allocation whose measured drop
    exceeds ``max_drop`` has its budget loosened towards the cost of the uncompressed model in
    ``loosen`` equal steps on a log scale (equally sensitive options now broken towards the
    less compressed one) until it passes; it is dropped if it never does. Layers interact (residual
    networks above all), so a sum of small drops can be a large one.
    """
    if kind == "latency" and proxy.latency is None:
        raise ValueError("latency budgets need the latency deltas (a latency model)")
    lo, hi = _range(proxy, kind)
    if budgets is None:
        lo = max(lo, 1e-9)
        budgets = [lo * (hi / lo) ** (i / max(n - 1, 1)) for i in range(n)] if hi > lo else [hi]
    top = proxy.base(kind) + sum(float(c.max()) for c in proxy.separable(kind)[1])
    out: list[Candidate] = []
    seen: set[bytes] = set()
    for budget in budgets:
        cand = None
        ratio = (top / budget) ** (1 / (loosen + 1)) if 0 < budget < top else 1.0
        for step in range(loosen + 1 if check is not None and max_drop is not None else 1):
            cand = _fit(proxy, kind, budget, measure, tries, gentle=step > 0)
            if cand is None or check is None or max_drop is None:
                break
            cand.real["drop"] = float(check(proxy.codec.policy(cand.row)))
            cand.loosened = step
            if cand.real["drop"] <= max_drop:
                break
            cand = None
            if ratio <= 1.0:
                break
            budget *= ratio
        if cand is not None and cand.row.tobytes() not in seen:
            seen.add(cand.row.tobytes())
            out.append(cand)
    return out


def uniform_corners(
    space, bits: list[int], check: Callable, max_drop: float, *, dense: bool = True
) -> list[dict]:
    """Per bit-width, the uniform policy (every layer the same sparsity and bits, no channel
    removal) of the highest sparsity whose measured drop is at most ``max_drop``, found by
    bisection over the space's sparsity levels (drop grows with sparsity). With ``dense``, also
    the lowest passing bit-width and the highest of ``bits`` at the lowest sparsity level (pure
    quantisation): on residual networks the former is often the best trade-off a short
    fine-tune keeps, and the latter is the front's accurate end. Returns dicts with ``bits``,
    ``sparsity``, ``policy`` and measured ``drop``; a bit-width none of whose levels passes
    gives none, a policy already found is not repeated, and a sparse corner with more bits but
    no more sparsity than another is dropped (the costlier of two passing policies).
    """
    levels = sorted({v for ch in space.layers.values() for v in ch.sparsity})
    drops: dict[tuple[int, float], float] = {}

    def measured(b: int, level: float) -> dict:
        pol = space.uniform_policy(level, b)
        if (b, level) not in drops:
            drops[b, level] = float(check(pol))
        return {"bits": b, "sparsity": level, "policy": pol, "drop": drops[b, level]}

    found = []
    for b in bits:
        lo, hi, best = 0, len(levels) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            corner = measured(b, levels[mid])
            if corner["drop"] <= max_drop:
                best, lo = corner, mid + 1
            else:
                hi = mid - 1
        if best is not None:
            found.append(best)
    if dense and found:
        for b in dict.fromkeys([max(bits), min(c["bits"] for c in found)]):
            corner = measured(b, levels[0])
            if corner["drop"] <= max_drop:
                found.append(corner)
    out, seen = [], set()
    for corner in found:
        if corner["sparsity"] > levels[0] and any(
            c["bits"] < corner["bits"] and c["sparsity"] >= corner["sparsity"] for c in found
        ):
            continue
        if policy_key(corner["policy"]) not in seen:
            seen.add(policy_key(corner["policy"]))
            out.append(corner)
    return out


def policy_key(policy) -> str:
    """A hashable identity of a policy (its canonical JSON)."""
    return json.dumps(policy.to_dict(), sort_keys=True)


# -- stage one of the two-stage search ------------------------------------------------------
def _objectives(pred: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    key = {"accuracy": "drop", "size": "size", "latency": "latency"}
    return np.stack([pred[key[n]] for n in names], axis=1)


def _nondominated(v: np.ndarray) -> np.ndarray:
    le = np.all(v[:, None, :] <= v[None, :, :], axis=2)
    lt = np.any(v[:, None, :] < v[None, :, :], axis=2)
    dominated = np.any(le & lt, axis=0)
    return np.flatnonzero(~dominated)


def proxy_front(
    proxy: ProxyModel,
    *,
    objectives: list[str],
    n_policies: int,
    seed: int = 0,
    seeds: list[np.ndarray] = (),
) -> tuple[np.ndarray, np.ndarray, int]:
    """Non-dominated policies (rows, objective values) found by evaluating ``n_policies``
    policies with the proxy: random ones, the ``seeds``, then uniform crossover + mutation of
    front members. Returns (rows, values, number evaluated)."""
    rng = np.random.default_rng(seed)
    codec = proxy.codec
    batch = max(50, min(500, n_policies // 8))
    rows = np.concatenate([codec.random(batch, rng), *[np.atleast_2d(s) for s in seeds]])
    rows = np.unique(rows, axis=0)
    vals = _objectives(proxy.evaluate(rows), objectives)
    keep = _nondominated(vals)
    arch, arch_v = rows[keep], vals[keep]
    done = len(rows)
    n_genes = rows.shape[1]
    while done < n_policies:
        m = min(batch, n_policies - done)
        a = arch[rng.integers(0, len(arch), m)]
        b = arch[rng.integers(0, len(arch), m)]
        child = np.where(rng.random((m, n_genes)) < 0.5, a, b)
        mutate = rng.random((m, n_genes)) < 1.5 / n_genes
        mutate[np.arange(m), rng.integers(0, n_genes, m)] = True
        step = rng.choice([-1, 1], size=(m, n_genes))
        child = np.where(mutate, np.clip(child + step, 0, codec.sizes - 1), child)
        cvals = _objectives(proxy.evaluate(child), objectives)
        done += m
        allr = np.concatenate([arch, child])
        allv = np.concatenate([arch_v, cvals])
        allr, idx = np.unique(allr, axis=0, return_index=True)
        allv = allv[idx]
        keep = _nondominated(allv)
        arch, arch_v = allr[keep], allv[keep]
    return arch, arch_v, done


def spread(values: np.ndarray, k: int, *, first: list[int] = ()) -> list[int]:
    """``k`` indices of ``values`` spread over the (min-max normalised) objective space by
    farthest-point sampling, starting from ``first`` and the most accurate point."""
    if len(values) == 0 or k <= 0:
        return []
    lo, hi = values.min(axis=0), values.max(axis=0)
    norm = (values - lo) / np.where(hi > lo, hi - lo, 1.0)
    chosen = list(dict.fromkeys(first)) or [int(np.argmin(values[:, 0]))]
    dist = np.min(np.linalg.norm(norm[:, None, :] - norm[chosen][None, :, :], axis=2), axis=1)
    while len(chosen) < min(k, len(values)):
        j = int(np.argmax(dist))
        if dist[j] <= 0:
            break
        chosen.append(j)
        dist = np.minimum(dist, np.linalg.norm(norm - norm[j], axis=1))
    return chosen[:k]
