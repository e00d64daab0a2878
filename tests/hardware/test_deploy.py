"""The deployed form: FP32 ONNX, or QDQ INT8 with exactly the named layers quantised."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from autocompress.errors import ModelError
from autocompress.hardware.deploy import (
    _scope_to_module,
    export_deployed,
    onnx_layer_nodes,
    u8s8_saturates,
)
from autocompress.hardware.measure import make_session
from autocompress.models import TinyCNN


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.block = nn.ModuleDict(
            {"down": nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())}
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.block["down"](self.stem(x))
        return self.head(x.mean((2, 3)))


def test_scope_names_map_to_module_names():
    assert _scope_to_module("/features/features.3/Conv") == "features.3"
    assert _scope_to_module("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert (
        _scope_to_module("/layer2/layer2.0/downsample/downsample.0/Conv") == "layer2.0.downsample.0"
    )
    assert _scope_to_module("/fc/Gemm") == "fc"


def test_every_layer_of_a_nested_model_is_found(tmp_path):
    model = _Nested().eval()
    path = export_deployed(model, torch.zeros(1, 1, 8, 8), tmp_path / "m.onnx")
    nodes = onnx_layer_nodes(onnx.load(str(path)), model)
    assert set(nodes) == {"stem.0", "block.down.0", "head"}


def _quantized_layers(path, model) -> set[str]:
    """Layers whose weight input comes from a DequantizeLinear node."""
    m = onnx.load(str(path))
    dq_out = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in m.graph.node}
    return {
        layer
        for layer, node in onnx_layer_nodes(m, model).items()
        if by_name[node].input[1] in dq_out
    }


def test_int8_export_quantizes_exactly_the_named_layers(tmp_path):
    model = TinyCNN().eval()
    x = torch.randn(2, 1, 28, 28)
    fp32 = export_deployed(model, x, tmp_path / "fp32.onnx")
    assert _quantized_layers(fp32, model) == set()
    q = export_deployed(model, x, tmp_path / "q.onnx", int8_layers=["conv2"], calibration=[x])
    assert _quantized_layers(q, model) == {"conv2"}
    q2 = export_deployed(model, x, tmp_path / "q2.onnx", int8_layers=["conv1", "fc"])
    assert _quantized_layers(q2, model) == {"conv1", "fc"}
    sess = make_session(q, threads=1)
    out = sess.run(None, {"input": x.numpy()})[0]
    ref = model(x).detach().numpy()
    assert out.shape == (2, 10)
    assert np.abs(out - ref).max() < 0.5 * np.abs(ref).max() + 1e-3


def test_an_fp32_layer_keeps_its_own_float_bias_beside_an_int8_layer_with_equal_values(tmp_path):
    """The exporter merges equal initializers (here the zero biases folded from two fresh
    BatchNorms, one fed to the other through an ``Identity``); quantising one layer must not
    turn the other's bias into a DequantizeLinear output (which would also keep ONNX Runtime
    from running the FP32 layer in its NCHWc layout)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
    ).eval()
    x = torch.randn(2, 1, 8, 8)
    fp32 = onnx.load(str(export_deployed(model, x, tmp_path / "fp32.onnx")))
    inits = {t.name for t in fp32.graph.initializer}
    assert any(n.op_type == "Identity" and n.input[0] in inits for n in fp32.graph.node)
    q = onnx.load(str(export_deployed(model, x, tmp_path / "q.onnx", int8_layers=["0"])))
    inits = {t.name for t in q.graph.initializer}
    fp32_conv = onnx_layer_nodes(q, model)["3"]
    node = next(n for n in q.graph.node if n.name == fp32_conv)
    assert node.input[1] in inits and node.input[2] in inits  # float weight and bias
    assert _quantized_layers(tmp_path / "q.onnx", model) == {"0"}
    out = make_session(tmp_path / "q.onnx", threads=1).run(None, {"input": x.numpy()})[0]
    ref = model(x).detach().numpy()
    assert np.abs(out - ref).max() < 0.3 * np.abs(ref).max() + 1e-3  # INT8 noise


def test_unknown_int8_layer_is_an_error(tmp_path):
    with pytest.raises(ModelError, match="nope"):
        export_deployed(
            TinyCNN(), torch.zeros(1, 1, 28, 28), tmp_path / "x.onnx", int8_layers=["nope"]
        )


def test_reduced_weight_range_avoids_u8s8_saturation(tmp_path):
    """Weights on a 1-bit grid (every int8 code at +-max) times large non-negative inputs: the
    pattern that saturates ORT's int16 pair sums on AVX2 CPUs without VNNI. With the reduced
    weight range the INT8 layer must stay within 2 % of float on any CPU."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.sign(torch.randn_like(conv.weight)) * 0.1)
    model = nn.Sequential(conv).eval()
    x = torch.rand(4, 16, 8, 8) * 4
    ref = model(x).detach().numpy()
    path = export_deployed(
        model, x, tmp_path / "r.onnx", int8_layers=["0"], calibration=[x], reduce_range=True
    )
    out = make_session(path, threads=1).run(None, {"input": x.numpy()})[0]
    assert np.abs(out - ref).max() < 0.02 * np.abs(ref).max()
    codes = [
        onnx.numpy_helper.to_array(t)
        for t in onnx.load(str(path)).graph.initializer
        if t.name.endswith("_quantized") and t.data_type == onnx.TensorProto.INT8
    ]
    assert codes and max(int(np.abs(c).max()) for c in codes) <= 64


@pytest.mark.parametrize(
    ("machine", "flags", "expected"),
    [
        ("x86_64", "fpu sse avx avx2", True),
        ("x86_64", "fpu avx2 avx512f avx512_vnni", False),
        ("x86_64", "fpu avx2 avx_vnni", False),
        ("aarch64", "fp asimd", False),
    ],
)
def test_u8s8_saturation_detection(tmp_path, monkeypatch, machine, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr("autocompress.hardware.deploy.platform.machine", lambda: machine)
    assert u8s8_saturates(cpuinfo) is expected
    assert u8s8_saturates(tmp_path / "missing") is (machine == "x86_64")
