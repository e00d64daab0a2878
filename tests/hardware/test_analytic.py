"""The analytic targets' formula on hand-computed layers, and the shipped presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.errors import ConfigError
from autocompress.hardware.latency import AnalyticLatencyModel, layer_seconds
from autocompress.hardware.layers import LayerGeometry, channels, layer_geometry
from autocompress.hardware.targets import (
    AnalyticTarget,
    available_targets,
    load_target,
    parse_target,
)
from autocompress.policy import CompressionPolicy, LayerPolicy


def _bitserial(**over) -> AnalyticTarget:
    raw = {
        "name": "t",
        "kind": "analytic",
        "compute": {"kind": "bit_serial", "brick_bits": 2, "bricks": 16, "clock_hz": 1e6},
        "precision": {"act_bits": 8, "float_bits": 16},
        "memory": {"bandwidth_bytes_per_s": 1e12},
        "overhead": {"per_layer_us": 0.0, "per_inference_us": 0.0},
        "credit": {"unstructured_sparsity": False, "sub_8bit": True},
    }
    raw.update(over)
    return parse_target(raw)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)  # 8x8 -> 8x8
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_presets_ship_the_required_targets():
    names = available_targets()
    for name in ("proxy", "cpu-onnxruntime", "bitfusion", "edge-roofline"):
        assert name in names
        assert load_target(name).name == name
    with pytest.raises(ConfigError, match="unknown latency target"):
        load_target("no-such-target")


def test_geometry_and_channels_of_a_model():
    net = _Net()
    geo = layer_geometry(net, torch.zeros(1, 2, 8, 8))
    assert geo["conv"] == LayerGeometry("conv", 1, 64, 64, 9, False)
    assert geo["fc"].macs(4, 3) == 12
    assert geo["conv"].macs(2, 4) == 64 * 4 * 2 * 9  # 4608
    assert channels(net) == {"conv": (2, 4), "fc": (4, 3)}


def test_bit_serial_compute_bound_layer_by_hand():
    target = _bitserial()
    geo = LayerGeometry("conv", 1, 64, 64, 9, False)
    # 4608 MACs; 4-bit weights x 8-bit activations = ceil(4/2)*ceil(8/2) = 8 brick-cycles each;
    # 16 bricks at 1 MHz: 4608 * 8 / 16 / 1e6 s = 2.304 ms
    t = layer_seconds(target, geo, 2, 4, LayerPolicy(bits=4))
    assert t == pytest.approx(4608 * 8 / 16 / 1e6)
    # 2-bit weights: 1 * 4 -> half the time; float layer runs at 16 x 16 bits: 8 * 8 = 64
    assert layer_seconds(target, geo, 2, 4, LayerPolicy(bits=2)) == pytest.approx(t / 2)
    assert layer_seconds(target, geo, 2, 4, LayerPolicy()) == pytest.approx(t * 8)
    # no credit for unstructured sparsity
    assert layer_seconds(target, geo, 2, 4, LayerPolicy(bits=4, sparsity=0.9)) == t


def test_memory_bound_layer_and_overheads_by_hand():
    target = _bitserial(
        memory={"bandwidth_bytes_per_s": 1000.0},
        overhead={"per_layer_us": 10.0, "per_inference_us": 5.0},
        credit={"unstructured_sparsity": True, "sub_8bit": False},
    )
    geo = LayerGeometry("conv", 1, 64, 64, 9, False)
    lp = LayerPolicy(bits=4, sparsity=0.5)
    # sub-8-bit gets no credit: 8-bit weights. bytes = (72 weights * 0.5 density * 8 bits
    # + (128 + 256) activations * 8 bits) / 8 = 36 + 384 = 420 B -> 0.42 s at 1000 B/s
    assert layer_seconds(target, geo, 2, 4, lp) == pytest.approx(0.42 + 10e-6)


def test_peak_roofline_picks_the_next_supported_precision():
    target = parse_target(
        {
            "name": "r",
            "kind": "analytic",
            "compute": {"kind": "peak", "macs_per_s": {8: 1000.0, 32: 100.0}},
            "memory": {"bandwidth_bytes_per_s": 1e15},
        }
    )
    geo = LayerGeometry("fc", 1, 1, 1, 1, False)  # 4 x 3 = 12 MACs
    assert layer_seconds(target, geo, 4, 3, LayerPolicy(bits=6)) == pytest.approx(12 / 1000)
    assert layer_seconds(target, geo, 4, 3, LayerPolicy()) == pytest.approx(12 / 100)


def test_analytic_model_sums_layers_and_reads_pruned_channels():
    target = _bitserial(overhead={"per_layer_us": 0.0, "per_inference_us": 5.0})
    net = _Net()
    model = AnalyticLatencyModel(target, net, torch.zeros(1, 2, 8, 8))
    policy = CompressionPolicy({"conv": LayerPolicy(bits=4), "fc": LayerPolicy(bits=8)})
    conv = 4608 * 8 / 16 / 1e6
    fc = 12 * 16 / 16 / 1e6
    assert model.predict(net, policy) == pytest.approx((conv + fc + 5e-6) * 1e3)
    # half the conv's output channels (as structured pruning leaves the layers)
    net.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
    net.fc = nn.Linear(2, 3)
    assert model.predict(net, policy) == pytest.approx((conv / 2 + fc / 2 + 5e-6) * 1e3)


def test_invalid_preset_is_one_clear_error():
    with pytest.raises(ConfigError, match="kind"):
        parse_target({"name": "x", "kind": "quantum"})
    with pytest.raises(ConfigError, match="memory"):
        parse_target({"name": "x", "kind": "analytic", "compute": {"kind": "peak"}})


def test_a_users_own_preset_file_is_a_target(tmp_path, fmnist_root):
    """``latency.target: my_npu.yaml`` resolves beside the experiment file and drives the
    latency model; a missing or invalid file is a one-line ConfigError naming the key."""
    import yaml
    from conftest import tiny_config

    from autocompress import load_experiment
    from autocompress.hardware.latency import make_latency_model
    from autocompress.models import build_model
    from autocompress.search_space import load_search_space

    preset = yaml.safe_load(load_target.__wrapped__("edge-roofline").model_dump_json())
    preset["name"] = "my-npu"
    preset["memory"]["bandwidth_bytes_per_s"] = 1.0  # memory-bound: latency = bytes / 1 B/s
    (tmp_path / "my_npu.yaml").write_text(yaml.safe_dump(preset))
    cfg = load_experiment(tiny_config(tmp_path, fmnist_root, latency__target="my_npu.yaml"))
    assert cfg.latency.target == str(tmp_path / "my_npu.yaml")
    model = build_model("tiny_cnn", num_classes=10)
    space = load_search_space(cfg.search_space).resolve(model)
    lat = make_latency_model(cfg, model, space, torch.zeros(1, 1, 28, 28), log=lambda *_: None)
    dense = lat.predict(model, CompressionPolicy())
    weight_bytes = 4 * sum(m.weight.numel() for m in (model.conv1, model.conv2, model.fc))
    assert dense >= 1e3 * weight_bytes  # ms: every FP32 weight byte at 1 B/s
    assert lat.predict(model, CompressionPolicy({"fc": LayerPolicy(bits=4)})) < dense
    with pytest.raises(ConfigError, match="latency.target: preset file not found"):
        load_target(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="latency.target: preset file not found"):  # at load
        load_experiment(tiny_config(tmp_path, fmnist_root, latency__target="nope.yaml"))
    (tmp_path / "bad.yaml").write_text("kind: analytic\nname: x\n")
    with pytest.raises(ConfigError, match="latency.target .*bad.yaml: compute"):
        load_target(str(tmp_path / "bad.yaml"))
