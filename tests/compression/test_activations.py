"""Activation monitoring: statistics equal torch's, clipping is counted and flagged."""

from __future__ import annotations

import pytest
import torch

from autocompress.compression.apply import activation_stats, apply_policy, calibrate
from autocompress.policy import CompressionPolicy, LayerPolicy


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def test_statistics_match_the_outputs_and_clipping_is_flagged():
    model = _model().eval()
    policy = CompressionPolicy({"2": LayerPolicy(0.5, 4)})
    cm = apply_policy(model, policy)
    calibrate(cm, [torch.randn(64, 8) * 0.1])  # ranges from small inputs ...
    x = torch.randn(64, 8) * 3.0  # ... then large ones: the quantiser clips
    stats = {s.layer: s for s in activation_stats(model, cm, [x[:32], x[32:]])}
    assert list(stats) == ["0", "2"]
    with torch.no_grad():
        ref_out = model(x)
        out = cm(x)
    assert stats["2"].before_mean == pytest.approx(float(ref_out.mean()), rel=1e-5)
    assert stats["2"].before_std == pytest.approx(float(ref_out.std(unbiased=False)), rel=1e-4)
    assert stats["2"].after_max == pytest.approx(float(out.max()), rel=1e-5)
    assert stats["0"].clipped is None and not stats["0"].flagged  # no quantiser there
    assert stats["2"].clipped > 0.01 and stats["2"].flagged
    assert stats["2"].to_dict()["flagged"] is True


def test_a_well_calibrated_quantiser_clips_nothing():
    model = _model().eval()
    cm = apply_policy(model, CompressionPolicy({"2": LayerPolicy(0.0, 8)}))
    x = torch.randn(64, 8)
    calibrate(cm, [x])
    (s,) = [s for s in activation_stats(model, cm, [x]) if s.layer == "2"]
    assert s.clipped == 0.0 and not s.flagged
