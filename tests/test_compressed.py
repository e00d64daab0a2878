"""``ac.compress``: a policy applied to a user's own module, sized and exported in each form."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

import autocompress as ac
from autocompress.models import TinyCNN


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_compress_a_plain_module_size_and_forms(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(32, 1, 28, 28)
    policy = ac.CompressionPolicy(
        {
            "conv1": ac.LayerPolicy(0.0, 8, keep_ratio=0.5),
            "conv2": ac.LayerPolicy(0.5, 4),
            "fc": ac.LayerPolicy(0.0, 32),
        }
    )
    cm = ac.compress(model, policy, example=x[:1], calibration=[x])
    assert isinstance(cm, ac.CompressedModel) and isinstance(cm.model, torch.nn.Module)
    assert cm.model.conv1.out_channels == 4  # channels really removed
    assert model.conv1.out_channels == 8  # the user's model is left alone
    none = ac.compress(model, ac.CompressionPolicy(), example=x[:1])
    assert cm.size_bytes() < 0.5 * none.size_bytes()
    assert cm.int8_layers() == ["conv1", "conv2"]
    with torch.no_grad():
        ref = cm.model(x).numpy()
        plain = cm.plain()(x).numpy()
    fp32 = _run(cm.to_onnx(tmp_path / "m32.onnx", form="fp32"), x)
    np.testing.assert_allclose(fp32, plain, rtol=1e-4, atol=1e-4)
    int8 = _run(cm.to_onnx(tmp_path / "m8.onnx"), x)
    assert (int8.argmax(1) == ref.argmax(1)).mean() >= 0.9
    fp16 = cm.to_onnx(tmp_path / "m16.onnx", form="fp16")
    assert fp16.stat().st_size < (tmp_path / "m32.onnx").stat().st_size
