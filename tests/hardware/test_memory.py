"""Resident memory of a deployed ONNX model, measured on fresh processes."""

from __future__ import annotations

import torch
from torch import nn

from autocompress.hardware.measure import export_onnx, measure_memory, measure_throughput


class _Wide(nn.Module):
    """About 16 MB of float32 weights."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.big = nn.Linear(64, 62_500)

    def forward(self, x):
        return self.big(self.fc(x.flatten(1)))[:, :10]


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_memory_is_net_of_the_runtime_and_grows_with_the_weights(tmp_path):
    x = torch.zeros(1, 1, 8, 8)
    small = export_onnx(_Small().eval(), x, tmp_path / "small.onnx")
    wide = export_onnx(_Wide().eval(), x, tmp_path / "wide.onnx")
    m_small, m_wide = measure_memory([small, wide], (1, 1, 8, 8), threads=1, runs=3, repeats=1)
    # the process itself (Python + NumPy + ONNX Runtime) is tens of MB; the small model adds ~0
    assert m_small.empty_steady_mb > 10
    assert m_small.steady_mb < 3
    # 16 MB of weights are resident once loaded, and the peak is at least the steady value
    assert 12 < m_wide.steady_mb < 60
    assert m_wide.peak_mb >= m_wide.steady_mb - 1
    assert m_wide.process_peak_mb >= m_wide.process_steady_mb


def test_throughput_per_batch_and_thread_count(tmp_path):
    path = export_onnx(_Small().eval(), torch.zeros(1, 1, 8, 8), tmp_path / "m.onnx")
    points = measure_throughput(path, (1, 8, 8), batch_sizes=(1, 4), threads=(1, 2))
    assert [(p.batch, p.threads) for p in points] == [(1, 1), (4, 1), (1, 2), (4, 2)]
    for p in points:
        assert p.ms > 0
        assert abs(p.images_per_s - 1e3 * p.batch / p.ms) < 1e-6
        assert p.to_dict()["images_per_s"] == p.images_per_s


def test_memory_model_fit_recovers_a_linear_law():
    """The memory model's fit: non-negative coefficients, cross-validated predictions."""
    import numpy as np

    from autocompress.hardware.memory_model import FEATURES, fit_cv

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 5, size=(20, len(FEATURES)))
    y = 2.0 + x @ np.array([1.0, 1.5, 0.5]) + rng.normal(0, 0.01, 20)
    fit = fit_cv(x, y)
    assert fit["cv_within_10pct"] == 1.0 and fit["cv_mape"] < 0.02
    assert abs(fit["coef"]["float_weight_mb"] - 1.5) < 0.05 and abs(fit["intercept_mb"] - 2) < 0.1
    assert len(fit["cv_predicted_mb"]) == 20


def test_memory_features_count_int8_and_float_weights():
    from autocompress.hardware.memory_model import memory_features

    model = _Small().eval()  # fc: 64 x 10 weights + 10 biases
    f = memory_features(model, ["fc"], torch.zeros(1, 1, 8, 8))
    assert f["int8_weight_mb"] == 640 / 1e6
    assert f["float_weight_mb"] == 4 * 10 / 1e6
    assert f["activation_mb"] == 4 * 10 / 1e6  # the largest module output (fc's)
    f32 = memory_features(model, [], torch.zeros(1, 1, 8, 8))
    assert f32["int8_weight_mb"] == 0 and f32["float_weight_mb"] == 4 * 650 / 1e6


def test_memory_as_the_size_objective_is_fitted_cached_and_predicted(tmp_path, fmnist_root, capsys):
    import json

    from conftest import tiny_config

    import autocompress as ac
    from autocompress.baseline import prepare
    from autocompress.cli import main
    from autocompress.search.study import load_study

    path = tiny_config(
        tmp_path,
        fmnist_root,
        search__n_trials=2,
        search__screen_trials=4,
        objectives__size__measure="memory",
        objectives__size__memory_samples=4,
    )
    cfg = ac.load_experiment(path)
    lines: list[str] = []
    prep = prepare(cfg, log=lines.append)
    mm = prep.memory_model
    assert mm is not None and mm.samples == 4
    assert any("memory model:" in line and "cross-validated" in line for line in lines)
    cached = list((cfg.output_dir / "cache").glob("memory-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["samples"] == 4
    example = torch.zeros(1, 1, 28, 28)
    assert prep.baseline.metrics.size_bytes == round(
        mm.predict_mb(prep.baseline.model, example) * 1e6
    )
    # The search's trials are scored on it, from the cache (nothing measured again).
    result = ac.search(cfg, log=lines.append)
    assert result.n_complete == 2
    assert sum("memory model:" in line and "cached" in line for line in lines) >= 1
    sizes = [
        t.user_attrs["metrics"]["size_kb"]
        for t in load_study(cfg).study.trials
        if t.state.name == "COMPLETE"
    ]
    assert len(sizes) == 2 and all(s > 0 for s in sizes)
    # `memory validate` reports the same kind of fit from measured samples.
    capsys.readouterr()
    assert main(["memory", "validate", str(path), "--samples", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["samples"] == 4
    for fit in (out["steady"], out["peak"]):
        assert 0.0 <= fit["cv_within_10pct"] <= 1.0 and fit["cv_mape"] >= 0.0
