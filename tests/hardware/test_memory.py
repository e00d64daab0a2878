"""Resident memory of a deployed ONNX model, measured on fresh processes."""

from __future__ import annotations

import torch
from torch import nn

from autocompress.hardware.measure import export_onnx, measure_throughput
from autocompress.hardware.memory import measure_memory


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
