from __future__ import annotations

import torch

from autocompress.compression.apply import apply_policy, calibrate
from autocompress.compression.artifact import (
    ModelRef,
    load_packed_model,
    pack_model,
    save_packed_model,
)
from autocompress.compression.batchnorm import fold_statistics
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
    with torch.no_grad():
        before = cm(x)
    fold_statistics(cm)
    with torch.no_grad():
        assert torch.allclose(cm(x), before, atol=1e-5)  # folding keeps the outputs
    path = tmp_path / "model.acpk"
    ref = ModelRef("small_cnn", 10, 1, (1, 28, 28))
    n = save_packed_model(path, cm, ref, policy)
    assert n == path.stat().st_size == len(pack_model(cm, ref, policy))
    loaded, meta = load_packed_model(path)
    assert meta["policy"] == policy.to_dict()
    assert loaded.features[3].out_channels == cm.features[3].out_channels == 24
    with torch.no_grad():
        assert torch.equal(loaded(x), cm(x))


def test_batchnorm_is_stored_in_inference_form():
    """A BatchNorm layer costs two arrays in the packed file (weight and bias with the
    statistics folded in), not four: the size the search scores is what inference needs."""
    from autocompress.compression.apply import compressed_state

    model = build_model("small_cnn", num_classes=10).eval()
    state = compressed_state(model)
    assert "features.1.weight" in state and "features.1.running_mean" not in state
    bn = model.features[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
    w = compressed_state(model)["features.1.weight"]
    fold_statistics(model)
    assert torch.equal(torch.from_numpy(w), bn.weight.detach())  # the state already folds
    assert torch.equal(bn.running_mean, torch.zeros(24))
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)
    folded = {k: v.copy() for k, v in compressed_state(model).items()}
    fold_statistics(model)  # idempotent: a folded layer stays bit for bit
    assert all((compressed_state(model)[k] == v).all() for k, v in folded.items())
