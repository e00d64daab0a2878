"""Linear layers at <= 4 bits as MatMulNBits: the deployed weights are exactly the searched
4-bit ones (ONNX Runtime's own quantiser would move them), inside the INT8 form."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from autocompress.compression.apply import apply_policy, materialize
from autocompress.hardware.deploy import DeploySpec, build_form, nbits_candidates
from autocompress.policy import CompressionPolicy, LayerPolicy


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(40, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    ).eval()


@pytest.mark.parametrize(
    ("bits", "granularity"), [(4, "per_channel"), (3, "per_tensor"), (2, "per_channel")]
)
def test_matmul_nbits_runs_the_searched_weights_exactly(tmp_path, bits, granularity):
    model = _mlp()
    policy = CompressionPolicy(
        {"0": LayerPolicy(0.5, bits, granularity=granularity), "2": LayerPolicy(0.0, 8)}
    )
    nbits = nbits_candidates(policy, model)
    assert nbits == {"0": (bits, granularity)}  # the 8-bit layer stays INT8 QDQ
    plain, int8 = materialize(apply_policy(model, policy))
    x = torch.randn(16, 40)
    spec = DeploySpec("int8-qdq", tuple(sorted(int8)), nbits_layers=nbits)
    path, spec = build_form(plain, x[:1], tmp_path / "m.onnx", spec, calibration=[x])
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "MatMulNBits" in ops and ops.count("Gemm") == 1  # the INT8 layer is a QDQ Gemm
    assert spec.layer_forms(["0", "2"]) == {"0": "matmul-nbits", "2": "int8-qdq"}
    assert DeploySpec.from_dict(spec.to_dict()) == spec
    # the MatMulNBits layer alone: same outputs as the compressed layer in float
    only = DeploySpec("int8-qdq", (), nbits_layers=nbits)
    path, _ = build_form(plain, x[:1], tmp_path / "nb.onnx", only)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = plain(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_only_uniform_symmetric_linear_layers_qualify():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    policy = CompressionPolicy(
        {
            "0": LayerPolicy(0.0, 4),
            "2": LayerPolicy(0.0, 4, scheme="asymmetric"),
        }
    )
    assert nbits_candidates(policy, model) == {}
    assert (
        nbits_candidates(CompressionPolicy({"2": LayerPolicy(0.0, 4, quantizer="kmeans")}), model)
        == {}
    )
    assert nbits_candidates(CompressionPolicy({"2": LayerPolicy(0.0, 5)}), model) == {}
