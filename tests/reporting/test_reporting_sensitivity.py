"""Reading a sensitivity table for the heat map, in each accepted shape."""

from __future__ import annotations

import json

import pytest

from autocompress.reporting.sensitivity import find_sensitivity, sensitivity_table

NESTED = {
    "layers": {
        "conv1": {"sparsity": {"0.5": -0.02, "0.8": -0.05}, "bits": {"4": -0.01}},
        "fc": {"sparsity": {"0.5": 0.0}, "bits": {"4": -0.03}},
    }
}
FLAT = {
    "conv1": {"sparsity 0.5": -0.02, "sparsity 0.8": -0.05, "4 bits": -0.01},
    "fc": {"sparsity 0.5": 0.0, "4 bits": -0.03},
}
RECORDS = {
    "rows": [
        {"layer": "conv1", "knob": "sparsity", "value": 0.5, "delta_accuracy": -0.02},
        {"layer": "conv1", "knob": "sparsity", "value": 0.8, "delta": -0.05},
        {"layer": "conv1", "knob": "bits", "value": 4, "accuracy_drop": 0.01},
        {"layer": "fc", "knob": "sparsity", "value": 0.5, "delta": 0.0},
        {"layer": "fc", "knob": "bits", "value": 4, "delta": -0.03},
    ]
}


@pytest.mark.parametrize("data", [NESTED, FLAT, RECORDS], ids=["nested", "flat", "records"])
def test_shapes_give_the_same_table(data):
    t = sensitivity_table(data)
    assert t.layers == ["conv1", "fc"]
    assert t.columns == ["sparsity 0.5", "sparsity 0.8", "4 bits"]
    assert t.values[0] == pytest.approx([-2.0, -5.0, -1.0])  # fractions shown in points
    assert t.values[1][1] is None  # fc never tried at 0.8
    assert t.values[1][2] == pytest.approx(-3.0)


def test_points_stay_points_and_junk_is_refused():
    assert sensitivity_table({"conv1": {"4 bits": -2.5}}).values == [[-2.5]]
    for junk in (None, [], {}, {"rows": [{"x": 1}]}, {"conv1": 3}, "text"):
        assert sensitivity_table(junk) is None


def test_find_sensitivity_in_output_dir(tmp_path):
    assert find_sensitivity(tmp_path) is None
    (tmp_path / "sensitivity").mkdir()
    (tmp_path / "sensitivity" / "a_broken.json").write_text("{not json")
    (tmp_path / "sensitivity" / "b.json").write_text(json.dumps(NESTED))
    t = find_sensitivity(tmp_path)
    assert t is not None and t.source.name == "b.json"
    # what the sensitivity stage writes comes first, and says what its numbers are
    stage = dict(RECORDS, metric="loss")
    (tmp_path / "sensitivity" / "sensitivity.json").write_text(json.dumps(stage))
    t = find_sensitivity(tmp_path)
    assert t.source.name == "sensitivity.json" and t.label == "sensitivity (loss, negated)"
    assert sensitivity_table(dict(RECORDS, metric="drop")).label == "accuracy change (points)"
