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


def test_batchnorm_scale_folds_into_the_layer_before(tmp_path):
    """With a batch, a BatchNorm layer fed by a per-channel-quantised conv alone has its scale
    moved into that conv's weights (the quantiser's per-channel scales absorb it): the packed
    file keeps only its bias, the outputs stay, and the file still reloads bit for bit. A conv
    whose output is also used outside the BatchNorm layer (here added to it) is left alone."""
    from autocompress.compression.apply import compressed_state

    model = build_model("small_cnn", num_classes=10).eval()
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            with torch.no_grad():
                bn.weight.uniform_(-1.0, 2.0)
                bn.running_var.uniform_(0.5, 2.0)
    policy = CompressionPolicy(
        {"features.3": LayerPolicy(0.5, 4), "features.7": LayerPolicy(0.0, 4, quantizer="kmeans")}
    )
    x = torch.randn(32, 1, 28, 28)
    cm = apply_policy(model, policy, example=x[:1])
    calibrate(cm, [x])
    with torch.no_grad():
        before = cm(x)
        fold_statistics(cm, x)
        after = cm(x)
    assert (after.argmax(1) == before.argmax(1)).all()
    state = compressed_state(cm)
    assert "features.4.weight" not in state and "features.4.bias" in state  # folded into 3
    assert "features.8.weight" in state  # k-means layer: one codebook, no per-channel scale
    assert torch.equal(cm.features[4].weight, torch.ones(48))
    path = tmp_path / "m.acpk"
    save_packed_model(path, cm, ModelRef("small_cnn", 10, 1, (1, 28, 28)), policy)
    loaded, _ = load_packed_model(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), cm(x))

    class Shared(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, t):
            y = self.conv(t)
            return (self.bn(y) + y).flatten(1)

    m = Shared().eval()
    with torch.no_grad():
        m.bn.weight.uniform_(2.0, 3.0)
        ref = m(x)
        fold_statistics(m, x)
        assert torch.allclose(m(x), ref, atol=1e-5)
    assert not torch.equal(m.bn.weight, torch.ones(4))  # the fold was undone
