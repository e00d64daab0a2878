"""Shaping, estimators and small helpers (synthetic tables, no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autocompress.errors import ConfigError
from autocompress.search_space import LayerChoices, SearchSpace
from autocompress.sensitivity import (
    LevelResult,
    SensitivitySettings,
    SensitivityTable,
    shape_space,
    spearman,
)
from autocompress.sensitivity.analysis import (
    estimate_levels,
    interpolate_levels,
    levels_of,
    perturbation,
)

SPACE = SearchSpace(
    {
        "a": LayerChoices((0.0, 0.25, 0.5, 0.75), (2, 4, 8, 32), (1.0, 0.5)),
        "b": LayerChoices((0.0, 0.5, 0.9), (3, 6, 32)),
        "c": LayerChoices((0.25, 0.5), (4, 8)),
    }
)


def _table(drops: dict[tuple[str, str, float], float]) -> SensitivityTable:
    rows = [
        LevelResult(n, d, v, acc_drop=drops.get((n, d, v), 0.0), loss_increase=0.01)
        for n, d, v in levels_of(SPACE)
    ]
    return SensitivityTable(rows)


def _subset(shaped: SearchSpace, original: SearchSpace) -> None:
    for name, ch in original.layers.items():
        new = shaped.layers[name]
        for dim in ("sparsity", "bits", "keep_ratio"):
            assert set(getattr(new, dim)) <= set(getattr(ch, dim)), (name, dim)
            assert getattr(new, dim), (name, dim)


@pytest.mark.parametrize("seed", range(20))
def test_shaping_never_widens(seed):
    rng = np.random.default_rng(seed)
    drops = {lvl: float(rng.uniform(-1, 8)) for lvl in levels_of(SPACE)}
    settings = SensitivitySettings(max_drop=float(rng.uniform(0, 5)), fix_drop=0.3)
    shaped = shape_space(SPACE, _table(drops), settings)
    _subset(shaped, SPACE)
    assert shaped.cardinality <= SPACE.cardinality


def test_shaping_cuts_at_the_first_level_over_tolerance_and_fixes_free_ones():
    drops = {
        ("a", "sparsity", 0.25): 0.5,
        ("a", "sparsity", 0.5): 3.0,  # over 2 points: 0.5 and 0.75 go
        ("a", "sparsity", 0.75): 1.0,  # not allowed back in after a violation
        ("a", "bits", 8): 0.0,
        ("a", "bits", 4): 0.5,
        ("a", "bits", 2): 30.0,
        ("a", "keep_ratio", 0.5): 9.0,
        ("b", "bits", 6): 0.05,
        ("b", "bits", 3): 0.1,  # everything free: fixed at 3 bits
    }
    shaped = shape_space(
        SPACE, _table(drops), SensitivitySettings(max_drop=2.0, fix_drop=0.2, fix_insensitive=True)
    )
    a, b = shaped.layers["a"], shaped.layers["b"]
    assert a.sparsity == (0.0, 0.25)
    assert a.bits == (4, 8, 32)
    assert a.keep_ratio == (1.0,)
    assert b.bits == (3,)
    off = shape_space(SPACE, _table(drops), SensitivitySettings(shape=False))
    assert off == SPACE


def test_settings_validation():
    with pytest.raises(ConfigError, match="max_loss_increase"):
        SensitivitySettings(method="fisher")
    with pytest.raises(ConfigError, match="images"):
        SensitivitySettings(images=3)
    with pytest.raises(ConfigError, match="sensitivity: imagez: Extra inputs are not permitted"):
        SensitivitySettings(imagez=10)
    assert SensitivitySettings().with_(max_drop=1.0).max_drop == 1.0


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [5, 5, 6, 7]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 2], [1, 2]))
    assert math.isnan(spearman([1, 2, 3, float("nan")], [1, 1, 1, 2]))


def test_unmeasured_levels_lie_on_the_line_between_measured_neighbours():
    rows = [
        LevelResult("a", "sparsity", 0.5, acc_drop=4.0, loss_increase=0.2),
        LevelResult("a", "sparsity", 0.9, acc_drop=20.0, loss_increase=None),
        LevelResult("a", "bits", 8.0, acc_drop=1.5, loss_increase=0.3),
    ]
    levels = [("a", "sparsity", v) for v in (0.25, 0.5, 0.75, 0.9, 0.95)]
    levels += [("a", "bits", v) for v in (16.0, 8.0, 4.0)] + [("b", "bits", 4.0)]
    out = {(r.layer, r.dim, r.value): r for r in interpolate_levels(rows, levels)}
    assert list(out) == levels
    assert [out[r.layer, r.dim, r.value] for r in rows] == rows
    assert not any(r.measured for k, r in out.items() if k[2] not in (0.5, 0.9, 8.0))

    def at(*key):
        return out[key].acc_drop, out[key].loss_increase

    assert at("a", "sparsity", 0.25) == pytest.approx((2.0, 0.1))  # from the identity (0 at 0)
    assert at("a", "sparsity", 0.75)[0] == pytest.approx(14.0)
    assert math.isnan(at("a", "sparsity", 0.75)[1])  # a neighbour without a loss
    assert at("a", "sparsity", 0.95)[0] == pytest.approx(20.0)  # beyond: the harshest measured
    assert at("a", "bits", 16.0) == pytest.approx((1.0, 0.2))  # distances 16 and 24 from 32
    assert at("a", "bits", 4.0) == pytest.approx((1.5, 0.3))
    assert at("b", "bits", 4.0) == (0.0, 0.0)  # nothing measured


def test_perturbations_and_estimates_grow_with_the_level():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU())
    model.append(torch.nn.Linear(8, 3))
    w = model[1].weight
    assert torch.count_nonzero(perturbation(w, "sparsity", 0.5)) == 64
    d = perturbation(w, "keep_ratio", 0.5)
    assert int((d.abs().sum(1) > 0).sum()) == 4
    x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 3, (64,))
    levels = [("1", "sparsity", s) for s in (0.25, 0.5, 0.75)]
    levels += [("1", "bits", b) for b in (8.0, 4.0, 2.0)]
    for method in ("fisher", "hessian"):
        est = estimate_levels(model, levels, x, y, method=method, samples=8, log=lambda *_: None)
        sp = [abs(est[lvl]) for lvl in levels[:3]]  # Hessian trace may be negative
        assert sp == sorted(sp)
        if method == "fisher":
            bits = [est[lvl] for lvl in levels[3:]]
            assert bits == sorted(bits) and bits[0] >= 0
