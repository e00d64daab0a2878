from __future__ import annotations

import numpy as np
import pytest

from autocompress.search.pareto import hypervolume, hypervolume_order, knee_index, non_dominated


def test_non_dominated_mixed_directions():
    # (accuracy max, size min)
    v = np.array([[0.9, 10], [0.8, 5], [0.85, 12], [0.9, 10], [0.7, 5]])
    front = set(non_dominated(v, ["maximize", "minimize"]).tolist())
    assert front == {0, 1}


def test_hypervolume_2d_and_3d_by_hand():
    assert hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), [3, 3]) == 3.0
    assert hypervolume(np.array([[0.0, 0.0, 0.0]]), [1, 2, 3]) == 6.0
    # dominated point adds nothing; a point outside the reference adds nothing
    assert hypervolume(np.array([[1.0, 1.0], [2.0, 2.0], [5.0, 0.0]]), [3, 3]) == 4.0


def test_hypervolume_matches_monte_carlo():
    rng = np.random.default_rng(0)
    pts = rng.random((6, 3))
    ref = np.ones(3)
    samples = rng.random((200_000, 3))
    dominated = np.zeros(len(samples), bool)
    for p in pts:
        dominated |= np.all(samples >= p, axis=1)
    assert abs(hypervolume(pts, ref) - dominated.mean()) < 0.01


def test_knee_is_balanced_point():
    v = np.array([[0.95, 100.0], [0.90, 20.0], [0.60, 10.0]])
    assert knee_index(v, ["maximize", "minimize"]) == 1


def test_non_dominated_keeps_the_first_duplicate_and_takes_no_rows():
    v = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [2.0, 2.0]])
    assert non_dominated(v, ["minimize", "minimize"]).tolist() == [0, 2]
    assert non_dominated(np.zeros((0, 2)), ["minimize", "minimize"]).tolist() == []
    assert hypervolume(np.zeros((0, 2)), [1, 1]) == 0.0
    assert hypervolume(np.array([[0.25], [0.5]]), [1]) == 0.75


def test_hypervolume_order_is_the_greedy_order_over_the_front():
    rng = np.random.default_rng(3)
    pts, ref = rng.random((12, 3)), np.ones(3)
    order = hypervolume_order(pts, ref)
    assert sorted(order) == non_dominated(pts, ["minimize"] * 3).tolist()
    chosen: list[int] = []
    for i in order:
        best = max(hypervolume(pts[[*chosen, j]], ref) for j in order if j not in chosen)
        assert hypervolume(pts[[*chosen, i]], ref) == pytest.approx(best)
        chosen.append(i)
