"""Deployed forms: FP32, INT8 QDQ (rebuilt from its spec alone), FP16; and unpack."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from autocompress.cli import main
from autocompress.compression.apply import apply_policy, calibrate, materialize
from autocompress.compression.artifact import ModelRef, save_packed_model
from autocompress.export.run import onnx_outputs_equal, unpack
from autocompress.hardware.deploy import (
    DeploySpec,
    build_form,
    deployed_onnx_bytes,
    sparse_initializer_count,
)
from autocompress.models import TinyCNN
from autocompress.policy import CompressionPolicy, LayerPolicy


def _run(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.fixture
def compressed():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    policy = CompressionPolicy(
        {"conv1": LayerPolicy(0.0, 8), "conv2": LayerPolicy(0.5, 4), "fc": LayerPolicy(0.0, 32)}
    )
    x = torch.randn(16, 1, 28, 28)
    comp = apply_policy(model, policy)
    calibrate(comp, [x])
    return comp, policy, x


def test_int8_spec_rebuilds_the_same_model_without_calibration_data(compressed, tmp_path):
    comp, _, x = compressed
    plain, int8 = materialize(comp)
    assert set(int8) == {"conv1", "conv2"}
    spec0 = DeploySpec("int8-qdq", tuple(sorted(int8)), reduce_range=False)
    first, spec = build_form(plain, x[:1], tmp_path / "a.onnx", spec0, calibration=[x])
    assert spec.activation_qparams and not spec0.activation_qparams
    # a JSON round trip (what the packed file stores) and no calibration data: same outputs
    again = DeploySpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    second, _ = build_form(plain, x[:1], tmp_path / "b.onnx", again)
    assert onnx_outputs_equal(first, second, x.numpy())
    # calibrating on other data instead gives other activation ranges: the spec is what matters
    other, _ = build_form(plain, x[:1], tmp_path / "c.onnx", spec0, calibration=[3 * x])
    assert not onnx_outputs_equal(first, other, x.numpy())
    assert spec.layer_forms(["conv1", "conv2", "fc"]) == {
        "conv1": "int8-qdq",
        "conv2": "int8-qdq",
        "fc": "fp32",
    }


def test_fp16_form_halves_the_weights_and_keeps_float32_io(compressed, tmp_path):
    comp, _, x = compressed
    plain, _ = materialize(comp)
    fp32, _ = build_form(plain, x[:1], tmp_path / "fp32.onnx", DeploySpec("fp32"))
    fp16, _ = build_form(plain, x[:1], tmp_path / "fp16.onnx", DeploySpec("fp16"))
    ratio = fp16.stat().st_size / fp32.stat().st_size
    assert 0.4 < ratio < 0.7
    inits = onnx.load(str(fp16)).graph.initializer
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in inits)
    a, b = _run(fp32, x), _run(fp16, x)
    assert b.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=0, atol=0.05 * np.abs(a).max())


def test_unpack_rebuilds_the_shipped_model_from_the_packed_file(compressed, tmp_path, capsys):
    comp, policy, x = compressed
    plain, int8 = materialize(comp)
    shipped, spec = build_form(
        plain,
        x[:1],
        tmp_path / "shipped.onnx",
        DeploySpec("int8-qdq", tuple(sorted(int8))),
        calibration=[x],
    )
    ref = ModelRef("tiny_cnn", 10, 1, (1, 28, 28))
    packed = tmp_path / "model.acpk"
    save_packed_model(packed, comp, ref, policy, deploy=spec.to_dict() | {"example_batch": 1})
    out = unpack(packed, tmp_path / "unpacked.onnx")
    assert onnx_outputs_equal(out, shipped, x.numpy())
    # the command line does the same, and says what it wrote
    assert main(["unpack", str(packed), "-o", str(tmp_path / "cli.onnx"), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["onnx_bytes"] == (tmp_path / "cli.onnx").stat().st_size
    assert onnx_outputs_equal(tmp_path / "cli.onnx", shipped, x.numpy())


def test_unpack_of_a_file_packed_before_export_gives_fp32(compressed, tmp_path):
    comp, policy, x = compressed
    packed = tmp_path / "m.acpk"
    save_packed_model(packed, comp, ModelRef("tiny_cnn", 10, 1, (1, 28, 28)), policy)
    out = unpack(packed, tmp_path / "m.onnx")
    plain, _ = materialize(comp)
    fp32, _ = build_form(plain, x[:1], tmp_path / "fp32.onnx", DeploySpec("fp32"))
    assert onnx_outputs_equal(out, fp32, x.numpy())


def test_unpack_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["unpack", str(tmp_path / "nope.acpk"), "-o", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert "nope.acpk: file not found" in err and "Traceback" not in err


def test_deployed_onnx_bytes_is_the_file_export_writes(compressed, tmp_path):
    """The ``onnx`` size objective: the bytes of the deployed file (whatever the calibration:
    scales are fixed-size), cached per layer structure; sparsity does not change it."""
    comp, policy, x = compressed
    plain, int8 = materialize(comp)
    shipped, spec = build_form(
        plain,
        x[:1],
        tmp_path / "s.onnx",
        DeploySpec("int8-qdq", tuple(sorted(int8))),
        calibration=[x],
    )
    slack = len(spec.activation_qparams)  # a zero point is a varint: 1 or 2 bytes
    cache: dict = {}
    assert abs(deployed_onnx_bytes(comp, x[:1], cache=cache) - shipped.stat().st_size) <= slack
    assert len(cache) == 1
    denser = apply_policy(
        TinyCNN().eval(),
        CompressionPolicy(
            {"conv1": LayerPolicy(0.0, 8), "conv2": LayerPolicy(0.0, 8), "fc": LayerPolicy(0.0, 32)}
        ),
    )
    calibrate(denser, [x])
    assert deployed_onnx_bytes(denser, x[:1], cache=cache) == next(iter(cache.values()))
    assert len(cache) == 1  # same shapes, same INT8 layers: no second build
    # no quantised layer: the FP32 export; on a model this small its QDQ overhead makes the
    # INT8 file the larger one, which is why the objective counts the file, not the weights
    fp32 = apply_policy(TinyCNN().eval(), CompressionPolicy())
    plain32, _ = materialize(fp32)
    want = build_form(plain32, x[:1], tmp_path / "f.onnx", DeploySpec("fp32"))[0].stat().st_size
    assert deployed_onnx_bytes(fp32, x[:1], cache=cache) == want
    assert len(cache) == 2


@pytest.mark.parametrize("form", ["fp32", "int8-qdq"])
def test_mostly_zero_weights_are_stored_sparse_with_the_same_outputs(form, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 1, 28, 28)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    ).eval()
    bits = 8 if form == "int8-qdq" else 32
    policy = CompressionPolicy({"1": LayerPolicy(0.95, bits), "3": LayerPolicy(0.5, bits)})
    comp = apply_policy(model, policy)
    calibrate(comp, [x])
    plain, int8 = materialize(comp)
    spec = DeploySpec(form, tuple(sorted(int8)), reduce_range=False, sparse_initializers=False)
    dense, spec = build_form(plain, x[:1], tmp_path / "d.onnx", spec, calibration=[x])
    on = replace(spec, sparse_initializers=True)
    sparse, _ = build_form(plain, x[:1], tmp_path / "s.onnx", on)
    # only the 95 % sparse layer pays off (50 % zeros cost more as COO: int64 positions)
    assert sparse_initializer_count(sparse) == 1 and sparse_initializer_count(dense) == 0
    assert sparse.stat().st_size < 0.6 * dense.stat().st_size
    assert np.array_equal(_run(sparse, x), _run(dense, x))
    # the onnx size objective counts the sparse file (and does not cache a sparse model's size)
    cache = {}
    assert deployed_onnx_bytes(comp, x[:1], cache=cache) == _rebuilt_size(comp, x, tmp_path)
    assert not cache


def _rebuilt_size(comp, x, tmp_path):
    plain, int8 = materialize(comp)
    form = ("int8-qdq", tuple(sorted(int8))) if int8 else ("fp32",)
    return build_form(plain, x[:1], tmp_path / "r.onnx", DeploySpec(*form))[0].stat().st_size
