"""Figures: per-trial policy chart, Pareto plots, hypervolume, heat map, latency."""

from __future__ import annotations

import json
import re

from PIL import Image

from autocompress import plots

POLICY = {
    "version": 1,
    "layers": {
        "conv1": {"sparsity": 0.5, "bits": 4, "keep_ratio": 1.0},
        "conv2": {"sparsity": 0.0, "bits": 32, "keep_ratio": 0.75},
        "fc": {"sparsity": 0.8, "bits": 8, "keep_ratio": 1.0},
    },
}


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _rows() -> list[dict]:
    return [
        {
            "trial": i,
            "val_accuracy": 0.9 - 0.01 * i,
            "latency_ms": 1.0 / (i + 1),
            "size_kb": 100.0 / (i + 1),
            "compression_ratio": float(i + 1),
            "summary": f"3 layers, policy {i}",
            "policy": POLICY,
            "pareto": i % 2 == 0,
        }
        for i in range(6)
    ]


def test_policy_layers_reads_policy_and_bare_mapping():
    rows = plots.policy_layers(POLICY)
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc"]
    assert rows[1] == {"layer": "conv2", "sparsity": 0.0, "bits": 32, "keep_ratio": 0.75}
    assert plots.policy_layers(POLICY["layers"]) == rows
    lines = plots.policy_lines(POLICY)
    assert lines[0] == "conv1: sparsity 0.50, 4b"
    assert lines[1] == "conv2: sparsity 0.00, fp32, keep 0.75"


def test_policy_png_and_table(tmp_path):
    png = plots.policy_png(POLICY, tmp_path / "p.png", title="trial 3")
    w, h = _png_size(png)
    assert w > 300 and h > 200
    table = plots.policy_table_html({"layers": {"a<b": {"sparsity": 0.5, "bits": 32}}})
    assert "a&lt;b" in table  # escaped
    assert table.count("<tr>") == 2 and "fp32" in table and "0.50" in table


def test_policy_png_many_layers_stays_bounded(tmp_path):
    many = {"layers": {f"layer{i}": {"sparsity": 0.1, "bits": 8} for i in range(60)}}
    w, _ = _png_size(plots.policy_png(many, tmp_path / "p.png", title="t"))
    assert w <= 16 * 96


def test_pareto_html_hover_has_trial_summary_and_layers(tmp_path):
    path = plots.pareto_html(_rows(), tmp_path / "f.html", title="front")
    text = path.read_text()
    data = json.loads(
        re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", text).group(1)
    )
    front = [t for t in data if t["name"] == "Pareto"]
    assert front and all(len(t["x"]) == 3 for t in front)  # trials 0, 2, 4 in each panel
    hover = front[0]["text"][0]
    assert hover.startswith("<b>trial 0</b>")
    assert "3 layers, policy 0" in hover and "conv1: sparsity 0.50, 4b" in hover


def test_pareto_png_one_or_two_panels(tmp_path):
    w2, _ = _png_size(plots.pareto_png(_rows(), tmp_path / "a.png", title="t"))
    rows = [dict(r, latency_ms=None) for r in _rows()]
    w1, _ = _png_size(plots.pareto_png(rows, tmp_path / "b.png", title="t"))
    assert w1 < w2


def test_hypervolume_latency_pngs(tmp_path):
    history = [{"trial": i, "hypervolume": i / 10, "front_size": i} for i in range(5)]
    assert _png_size(plots.hypervolume_png(history, tmp_path / "hv.png", title="hv"))[0] > 300
    lat = plots.latency_png(
        predicted_ms=0.02, measured_ms=0.08, baseline_ms=0.12, path=tmp_path / "l.png", title="x"
    )
    assert _png_size(lat)[0] > 300
