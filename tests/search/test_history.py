"""Hypervolume over trials and the normalisation it shares with the search's final metric."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from autocompress.search.pareto import front_hypervolume, hypervolume_history

OBJ = ["accuracy", "latency", "size"]
BASE = {"latency_ms": 2.0, "size_kb": 100.0}


def _row(trial, acc, lat, size, feasible=True):
    return SimpleNamespace(trial=trial, values=(acc, lat, size), feasible=feasible)


def _hv(points) -> float:
    return front_hypervolume(points, OBJ, BASE)


def test_single_trial_is_the_searchs_normalised_hypervolume():
    # 1 - accuracy, latency / 2 ms, size / 100 KB against (1, 1.1, 1.1)
    hist = hypervolume_history([_row(0, 0.9, 1.0, 50.0)], OBJ, BASE)
    assert hist[0]["hypervolume"] == pytest.approx((1 - 0.1) * (1.1 - 0.5) * (1.1 - 0.5))


def test_history_is_monotone_and_ends_at_the_front_hypervolume():
    rows = [
        _row(0, 0.90, 2.0, 100.0),
        _row(1, 0.80, 1.0, 50.0),
        _row(2, 0.70, 1.5, 80.0),  # dominated by trial 1
        _row(3, 0.95, 0.5, 20.0, feasible=False),  # infeasible: ignored
        _row(4, 0.85, 0.8, 40.0),  # dominates 1
        _row(5, 0.92, 0.4, 10.0),  # dominates everything feasible so far
        _row(6, 0.99, 3.0, 200.0),  # most accurate: joins the front
    ]
    hist = hypervolume_history(list(reversed(rows)), OBJ, BASE)  # any input order
    assert [h["trial"] for h in hist] == [0, 1, 2, 3, 4, 5, 6]
    assert [h["n_complete"] for h in hist] == [1, 2, 3, 4, 5, 6, 7]
    hvs = [h["hypervolume"] for h in hist]
    assert all(b >= a for a, b in zip(hvs, hvs[1:], strict=False))
    assert hist[2]["hypervolume"] == hist[1]["hypervolume"]  # dominated point adds nothing
    assert hist[3]["hypervolume"] == hist[2]["hypervolume"]  # infeasible point adds nothing
    assert [h["front_size"] for h in hist] == [1, 2, 2, 2, 2, 1, 2]
    final = _hv([r.values for r in rows if r.trial in (5, 6)])
    assert hist[-1]["hypervolume"] == pytest.approx(final)


def test_history_two_objectives_and_empty():
    rows = [SimpleNamespace(trial=0, values=(0.9, 1.0), feasible=True)]
    hist = hypervolume_history(rows, ["accuracy", "latency"], BASE)
    assert hist[0]["hypervolume"] == pytest.approx(0.9 * 0.6)
    assert hypervolume_history([], OBJ, BASE) == []
