from __future__ import annotations

import torch

from autocompress.compression.apply import apply_policy, calibrate
from autocompress.compression.artifact import (
    ModelRef,
    load_packed_model,
    pack_model,
    save_packed_model,
)
from autocompress.models import build_model
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.training import train


def test_pack_then_load_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn").eval()
    x = torch.randn(16, 1, 28, 28)
    policy = CompressionPolicy(
        {
            "features.0": LayerPolicy(0.25, 8),
            "features.3": LayerPolicy(0.7, 4, keep_ratio=0.5),
            "features.7": LayerPolicy(0.5, 2),
            "features.11": LayerPolicy(0.9, 32, keep_ratio=0.75),
            "classifier": LayerPolicy(0.5, 6),
        }
    )
    cm = apply_policy(model, policy, example=x[:1])
    calibrate(cm, [x])
    data = torch.utils.data.TensorDataset(x, torch.randint(0, 10, (16,)))
    train(cm, data, steps=3, lr=0.01, batch_size=8)
    cm.eval()
    path = tmp_path / "model.acpk"
    ref = ModelRef("small_cnn", 10, 1, (1, 28, 28))
    n = save_packed_model(path, cm, ref, policy)
    assert n == path.stat().st_size == len(pack_model(cm, ref, policy))
    loaded, meta = load_packed_model(path)
    assert meta["policy"] == policy.to_dict()
    assert loaded.features[3].out_channels == cm.features[3].out_channels == 24
    with torch.no_grad():
        assert torch.equal(loaded(x), cm(x))
