from __future__ import annotations

import pytest

from autocompress.errors import AutocompressError
from autocompress.metrics import TrialMetrics
from autocompress.policy import CompressionPolicy
from autocompress.search.pick import PickCriteria, select
from autocompress.search.study import FrontPoint

DIRS = ["maximize", "minimize", "minimize"]


def _row(trial, acc, lat, size):
    metrics = TrialMetrics(acc, 0.3, lat, int(size * 1024), 1.0, 0.0, 0.1)
    return FrontPoint(trial, CompressionPolicy(), metrics, (acc, lat, size), pareto=True)


FRONT = [
    _row(0, 0.93, 0.20, 300.0),
    _row(1, 0.92, 0.10, 60.0),
    _row(2, 0.91, 0.05, 20.0),
    _row(3, 0.85, 0.02, 10.0),
]


@pytest.mark.parametrize(
    ("criteria", "expect"),
    [
        (PickCriteria(), 0),
        (PickCriteria(max_latency_ms=0.1), 1),
        (PickCriteria(max_size_kb=25), 2),
        (PickCriteria(min_accuracy=0.9, prefer="size"), 2),
        (PickCriteria(min_accuracy=0.9, max_latency_ms=0.06), 2),
        (PickCriteria(prefer="latency"), 3),
    ],
)
def test_bounds_and_preference(criteria, expect):
    choice, cands = select(FRONT, criteria, DIRS)
    assert choice.trial == expect
    assert all(criteria.admits(r) for r in cands)
    assert len(cands) == sum(criteria.admits(r) for r in FRONT)


def test_every_bound_is_honoured():
    for lat in (0.02, 0.05, 0.1, 0.2):
        for acc in (0.85, 0.9, 0.92):
            crit = PickCriteria(max_latency_ms=lat, min_accuracy=acc)
            choice, _ = select(FRONT, crit, DIRS)
            if choice is not None:
                assert choice.latency_ms <= lat and choice.val_accuracy >= acc
            else:
                assert not any(r.latency_ms <= lat and r.val_accuracy >= acc for r in FRONT)


def test_knee_and_empty_selection():
    choice, _ = select(FRONT, PickCriteria(knee=True), DIRS)
    assert choice.trial in (1, 2)  # not an extreme
    choice, cands = select(FRONT, PickCriteria(min_accuracy=0.99), DIRS)
    assert choice is None and cands == []


def test_bad_preference():
    with pytest.raises(AutocompressError, match="prefer"):
        PickCriteria(prefer="colour")
