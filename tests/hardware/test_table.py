"""The latency table: fit from profiled records, JSON round trip, monotone predictions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from autocompress.hardware.table import LatencyTable, _grid_from_points, fit_table
from autocompress.metrics import spearman, summarize

LAYERS = ["a", "b"]


def _truth(chans: dict, prec: dict) -> float:
    """A made-up additive latency (us): compute ~ channels, INT8 cheaper, boundaries cost."""
    us = 5.0
    for name in LAYERS:
        cin, cout = chans[name]
        us += (0.02 if prec[name] == "fp32" else 0.01) * cin * cout + 1.0
    us += 3.0 * (prec["a"] != prec["b"])
    return us


def _records() -> list[dict]:
    out = []
    for ka, kb, pa, pb in itertools.product(
        (4, 8, 16), (4, 8, 16), ("fp32", "int8"), ("fp32", "int8")
    ):
        chans = {"a": (1, ka), "b": (ka, kb)}
        prec = {"a": pa, "b": pb}
        comp = {
            n: (0.02 if prec[n] == "fp32" else 0.01) * chans[n][0] * chans[n][1] for n in LAYERS
        }
        out.append(
            {
                "wall_ms": _truth(chans, prec) / 1e3,
                "channels": {n: list(c) for n, c in chans.items()},
                "precision": prec,
                "blocks": [
                    [None, 0.0, 0.0, 0],
                    ["a", comp["a"], 3.0 if pa != pb else 1.0, 1],
                    ["b", comp["b"], 1.0, 1],
                ],
            }
        )
    return out


def test_table_reproduces_an_additive_latency_and_round_trips(tmp_path):
    records = _records()
    table = fit_table(records)
    assert table.order == LAYERS
    assert table.meta["fit"]["within_10pct"] == 1.0
    for r in records:
        chans = {n: tuple(c) for n, c in r["channels"].items()}
        assert table.predict_ms(chans, r["precision"]) == pytest.approx(r["wall_ms"], rel=0.02)
    again = LatencyTable.load(table.save(tmp_path / "t.json"))
    chans, prec = {"a": (1, 8), "b": (8, 16)}, {"a": "int8", "b": "fp32"}
    assert again.predict_ms(chans, prec) == table.predict_ms(chans, prec)


def test_prediction_is_monotone_in_channel_count():
    table = fit_table(_records())
    for prec in ({"a": "fp32", "b": "fp32"}, {"a": "int8", "b": "fp32"}):
        for kb in (4, 8, 16):
            preds = [table.predict_ms({"a": (1, ka), "b": (ka, kb)}, prec) for ka in range(2, 20)]
            assert all(np.diff(preds) >= -1e-12), preds
        preds = [table.predict_ms({"a": (1, 8), "b": (8, kb)}, prec) for kb in range(2, 20)]
        assert all(np.diff(preds) >= -1e-12)


def test_grid_fills_missing_cells_and_is_monotone():
    points = {(4, 4): [1.0], (4, 8): [2.0], (8, 4): [2.2], (8, 8): [1.9]}  # (8, 8) is noisy
    grid = _grid_from_points(points)
    arr = np.asarray(grid.us)
    assert (np.diff(arr, axis=0) >= 0).all() and (np.diff(arr, axis=1) >= 0).all()
    assert grid(6, 6) == pytest.approx(np.mean(arr))  # bilinear at the centre
    sparse = _grid_from_points({(4, 4): [1.0], (8, 8): [4.0], (4, 8): [2.0]})
    assert sparse(8, 4) > 0


def test_summary_statistics():
    within, mape, rho = summarize([1.0, 2.0, 3.4], [1.0, 2.1, 3.0])
    assert within == pytest.approx(2 / 3)
    assert mape == pytest.approx((0 + 0.1 / 2.1 + 0.4 / 3) / 3)
    assert rho == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)


def test_describe_fit_warns_on_a_weak_profile():
    from autocompress.hardware.latency import describe_fit
    from autocompress.hardware.table import LatencyTable

    def table(cv):
        fit = {"configs": 10, "cv_within_10pct": cv, "cv_mape": 0.1}
        return LatencyTable(order=[], compute={}, glue={}, head={}, meta={"fit": fit})

    assert "warning" not in describe_fit(table(0.95))
    weak = describe_fit(table(0.3))
    assert "30% within" in weak and "latency profile EXP --force" in weak


def test_steal_time_while_profiling_is_measured_and_reported():
    from autocompress.hardware.latency import describe_fit
    from autocompress.hardware.measure import cpu_times, steal_fraction
    from autocompress.hardware.table import LatencyTable

    before = [100, 0, 50, 800, 0, 0, 0, 10]
    after = [180, 0, 60, 900, 0, 0, 0, 30]  # 210 jiffies, 20 of them stolen
    assert steal_fraction(before, after) == pytest.approx(20 / 210)
    assert steal_fraction(None, after) is None
    now = cpu_times()
    assert now is None or len(now) >= 4
    fit = {"configs": 10, "cv_within_10pct": 0.95, "cv_mape": 0.03}
    t = LatencyTable(order=[], compute={}, glue={}, head={}, meta={"fit": fit, "cpu_steal": 0.07})
    assert "7.0% of the CPU time stolen" in describe_fit(t)


def _island_records(factor: float) -> list[dict]:
    """Three layers a -> b -> c; ``b`` in FP32 between INT8 neighbours runs ``factor`` x."""
    names = ["a", "b", "c"]
    out = []
    for ka, kb, pa, pb, pc in itertools.product((8, 16, 32), (8, 16, 32), *[("fp32", "int8")] * 3):
        chans = {"a": (1, ka), "b": (ka, kb), "c": (kb, 4)}
        prec = {"a": pa, "b": pb, "c": pc}
        comp = {n: (0.02 if prec[n] == "fp32" else 0.01) * chans[n][0] * chans[n][1] for n in names}
        if pb == "fp32" and pa == pc == "int8":
            comp["b"] *= factor
        out.append(
            {
                "wall_ms": (5.0 + sum(comp.values()) + 3.0) / 1e3,
                "channels": {n: list(c) for n, c in chans.items()},
                "precision": prec,
                "blocks": [[None, 0.0, 0.0, 0]] + [[n, comp[n], 1.0, 1] for n in names],
            }
        )
    return out


def test_an_fp32_layer_between_int8_neighbours_gets_its_own_factor():
    records = _island_records(0.3)
    neighbours = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
    table = fit_table(records, neighbours=neighbours, folds=1)
    assert table.island == {"b": pytest.approx(0.3, rel=0.05)}
    island = [r for r in records if r["precision"] == {"a": "int8", "b": "fp32", "c": "int8"}]
    for r in island:
        chans = {n: tuple(c) for n, c in r["channels"].items()}
        assert table.predict_ms(chans, r["precision"]) == pytest.approx(r["wall_ms"], rel=0.05)
    # without the neighbours the same records leave the island cells far off
    plain = fit_table(records, folds=1)
    errs = [
        plain.predict_ms({n: tuple(c) for n, c in r["channels"].items()}, r["precision"])
        / r["wall_ms"]
        - 1
        for r in island
    ]
    assert max(np.abs(errs)) > 0.1
    # no effect, no factor: island profiles then join the layer's FP32 grid
    assert fit_table(_island_records(1.0), neighbours=neighbours, folds=1).island == {}
