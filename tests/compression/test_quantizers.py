"""The quantiser and pruning options of a layer policy: asymmetric / per-tensor integer grids,
FP16, k-means weight sharing, threshold and global pruning — values, gradients, packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autocompress.compression.apply import (
    apply_policy,
    calibrate,
    compressed_state,
    global_sparsities,
    gradual_policies,
    magnitude_mask,
    update_masks,
    weight_sparsity,
)
from autocompress.compression.artifact import ModelRef, load_packed_model, save_packed_model
from autocompress.compression.batchnorm import fold_statistics
from autocompress.compression.packing import QuantizedTensor, pack_state, packed_size, unpack_state
from autocompress.compression.quantizers import (
    WeightFormat,
    kmeans_codebook,
    quantize_weight,
    register_quantizer,
)
from autocompress.models import build_model
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.search_space import SearchSpace
from autocompress.training import train


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_asymmetric_grid_error_and_levels(bits, granularity):
    torch.manual_seed(bits)
    w = torch.rand(6, 3, 3, 3) * 2 - 0.4  # one-sided: most weights positive
    w[0, 0] = 0.0
    codes, scales = quantize_weight(w, bits, scheme="asymmetric", granularity=granularity)
    assert scales.shape == ((6,) if granularity == "per_channel" else (1,))
    view = (-1, 1, 1, 1) if granularity == "per_channel" else (1, 1, 1, 1)
    wq = codes * scales.view(view)
    assert torch.all((wq - w).abs() <= scales.view(view) / 2 + 1e-6)
    assert torch.all(wq[0, 0] == 0)  # zeros stay exactly zero (pruned weights)
    rows = codes.reshape(6, -1) if granularity == "per_channel" else codes.reshape(1, -1)
    assert int((rows.amax(1) - rows.amin(1)).max()) <= 2**bits - 1


def test_asymmetric_beats_symmetric_on_one_sided_weights():
    torch.manual_seed(0)
    w = torch.rand(8, 64) * 0.9 + 0.1
    errors = {}
    for scheme in ("symmetric", "asymmetric"):
        codes, scales = quantize_weight(w, 4, scheme=scheme)
        errors[scheme] = float(((codes * scales.view(-1, 1)) - w).pow(2).mean())
    assert errors["asymmetric"] < errors["symmetric"] / 2


def test_kmeans_codebook_shares_weights_and_fits_better_than_a_grid():
    torch.manual_seed(0)
    w = torch.cat([torch.randn(500) * 0.05 - 0.6, torch.randn(500) * 0.05 + 0.3]).view(10, 100)
    w[w.abs() < 0.02] = 0.0
    w[0, :10] = 0.0
    centroids, assign = kmeans_codebook(w, 2)
    assert centroids.numel() == 4 and torch.all(centroids[1:] >= centroids[:-1])
    shared = torch.cat([torch.zeros(1), centroids])[assign]
    assert torch.all(shared[w == 0] == 0) and torch.all(assign[w != 0] > 0)
    codes, scales = quantize_weight(w, 2)
    grid = codes * scales.view(-1, 1)
    assert (shared - w).pow(2).mean() < (grid - w).pow(2).mean() / 4


def test_kmeans_centroids_train_with_the_cluster_gradient():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 4))
    policy = CompressionPolicy({"0": LayerPolicy(0.5, 3, quantizer="kmeans")})
    cm = apply_policy(model, policy).eval()  # (input quantiser not calibrated: identity)
    comp = cm[0].parametrizations["weight"][0]
    x = torch.randn(8, 16)
    cm(x).sum().backward()
    grad_w = x.sum(0).expand(4, 16)  # d(sum(x @ W.T)) / dW
    members = (comp.assign.flatten() - 1).clamp(min=0)
    total = torch.zeros(comp.centroids.numel()).index_add_(
        0, members, (grad_w * (comp.assign > 0)).flatten()
    )
    size = torch.bincount(comp.assign.flatten(), minlength=comp.centroids.numel() + 1)[1:]
    expected = total / size.clamp(min=1)  # each centroid: the mean gradient of its cluster
    assert torch.allclose(comp.centroids.grad, expected, atol=1e-5)
    before = cm[0].weight.detach().clone()
    with torch.no_grad():
        comp.centroids -= 0.1 * comp.centroids.grad
    after = cm[0].weight.detach()
    assert not torch.equal(before, after)
    assert torch.all(after[before == 0] == 0)  # pruned weights stay pruned
    assert after[after != 0].unique().numel() <= 8


def test_fp16_layer_is_rounded_stored_half_and_not_activation_quantised():
    torch.manual_seed(0)
    model = build_model("small_cnn").eval()
    policy = CompressionPolicy({"classifier": LayerPolicy(0.0, 16)})
    cm = apply_policy(model, policy)
    assert not hasattr(cm.classifier, "input_quant")
    w = cm.classifier.weight.detach()
    assert torch.equal(w, w.half().float())
    state = compressed_state(cm)
    assert state["classifier.weight"].dtype.name == "float16"
    plain = packed_size(compressed_state(apply_policy(model, CompressionPolicy())))
    half = packed_size(state)
    assert abs((plain - half) - cm.classifier.weight.numel() * 2) < 32  # (header: zlib)


@pytest.mark.parametrize(
    "qt",
    [
        QuantizedTensor(torch.randint(-15, 16, (4, 9)).numpy(), 4, [0.1] * 4, "asymmetric"),
        QuantizedTensor(torch.randint(-7, 8, (4, 9)).numpy(), 4, [0.1], "symmetric"),
        QuantizedTensor(torch.randint(0, 5, (4, 9)).numpy(), 2, [-0.2, -0.1, 0.1, 0.3], "kmeans"),
    ],
)
def test_new_kinds_pack_exactly(qt):
    data = pack_state({"w": qt})
    assert len(data) == packed_size({"w": qt})
    out, _ = unpack_state(data)
    assert out["w"].kind == qt.kind
    assert (out["w"].codes == qt.codes).all() and (out["w"].dequantize() == qt.dequantize()).all()


def test_packed_kinds_reject_codes_outside_their_range():
    with pytest.raises(ValueError, match="outside"):
        pack_state({"w": QuantizedTensor(torch.full((2, 2), 5).numpy(), 2, [0.1, 0.2], "kmeans")})
    with pytest.raises(ValueError, match="scales must have shape"):
        pack_state({"w": QuantizedTensor(torch.zeros(3, 2, dtype=torch.int8).numpy(), 4, [1, 2])})


def test_every_option_round_trips_through_the_packed_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn").eval()
    x = torch.randn(16, 1, 28, 28)
    policy = CompressionPolicy(
        {
            "features.0": LayerPolicy(0.25, 8, scheme="asymmetric", granularity="per_tensor"),
            "features.3": LayerPolicy(0.5, 4, keep_ratio=0.5, quantizer="kmeans"),
            "features.7": LayerPolicy(0.0, 3, scheme="asymmetric"),
            "features.11": LayerPolicy(0.3, 16, threshold=0.01),
            "classifier": LayerPolicy(0.5, 5, quantizer="kmeans"),
        },
        scope="global",
    )
    cm = apply_policy(model, policy, example=x[:1])
    calibrate(cm, [x])
    train(cm, torch.utils.data.TensorDataset(x, torch.randint(0, 10, (16,))), steps=3, lr=0.01)
    cm.eval()
    fold_statistics(cm)
    ref = ModelRef("small_cnn", 10, 1, (1, 28, 28))
    path = tmp_path / "m.acpk"
    save_packed_model(path, cm, ref, policy)
    loaded, meta = load_packed_model(path)
    assert CompressionPolicy.from_dict(meta["policy"]) == policy
    with torch.no_grad():
        assert torch.equal(loaded(x), cm(x))
    assert cm.classifier.weight.detach().unique().numel() <= 2**5 + 1


def test_threshold_and_global_ranking():
    w = torch.tensor([[0.01, -0.2, 0.5, -0.03]])
    assert magnitude_mask(w, 0.0, threshold=0.05).tolist() == [[False, True, True, False]]
    assert magnitude_mask(w, 0.75, threshold=0.05).sum() == 1
    small, large = torch.linspace(0.01, 0.02, 20), torch.linspace(0.1, 1.0, 10)
    out = global_sparsities({"a": small, "b": large, "c": large}, {"a": 0.5, "b": 0.5, "c": 0.0})
    assert out == {"a": 0.75, "b": 0.0, "c": 0.0}  # 15 weights go, the smallest first


def test_search_space_offers_the_new_dimensions():
    model = build_model("small_cnn")
    rules = [
        {"type": "Conv2d", "bits": [4, 16], "quantizer": ["uniform", "kmeans"]},
        {"type": "Linear", "bits": [8], "scheme": ["asymmetric"], "threshold": [0.0, 0.02]},
    ]
    space = SearchSpace.from_rules(model, rules, scope="global")
    choices = space.choices()
    assert choices["features.0.quantizer"] == ("uniform", "kmeans")
    assert choices["classifier.threshold"] == (0.0, 0.02)
    assert "classifier.scheme" not in choices  # one option: fixed, not searched
    policy = space.policy_from_params(
        {"features.0.quantizer": "kmeans", "features.0.bits": 4, "classifier.threshold": 0.02}
    )
    assert policy.scope == "global"
    assert policy["features.0"].quantizer == "kmeans"
    assert policy["classifier"].scheme == "asymmetric" and policy["classifier"].threshold == 0.02
    assert space.params_from_policy(policy)["features.0.quantizer"] == "kmeans"
    uniform = space.uniform_policy(0.0, 4)
    assert uniform["classifier"].scheme == "asymmetric" and uniform.scope == "global"


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gradual_steps_end_at_the_policy(scope):
    torch.manual_seed(0)
    model = build_model("small_cnn").eval()
    policy = CompressionPolicy(
        {"features.3": LayerPolicy(0.8, 4), "classifier": LayerPolicy(0.6, 3, quantizer="kmeans")},
        scope=scope,
    )
    stages = gradual_policies(policy, 4)
    assert stages[-1] == policy
    amounts = [s["features.3"].sparsity for s in stages]
    assert amounts == sorted(amounts) and amounts[0] == pytest.approx(0.8 * (1 - 0.75**3))
    cm = apply_policy(model, stages[0])
    seen = [weight_sparsity(cm)]
    comps = [
        cm.features[3].parametrizations["weight"][0],
        cm.classifier.parametrizations["weight"][0],
    ]
    centroids = comps[1].centroids.detach().clone()
    for stage in stages[1:]:
        before = [c.mask.clone() for c in comps]
        with torch.no_grad():  # training moves a pruned weight's latent value above the others
            cm.features[3].parametrizations["weight"].original[~before[0]] = 10.0
        update_masks(cm, stage)
        seen.append(weight_sparsity(cm))
        for c, old in zip(comps, before, strict=True):
            assert not (c.mask & ~old).any()  # masks only shrink: nothing pruned comes back
    assert seen == sorted(seen)
    assert torch.equal(comps[1].centroids, centroids)  # the trained codebook is kept
    assert seen[-1] == pytest.approx(weight_sparsity(apply_policy(model, policy)), abs=1e-6)
    assert cm.classifier.weight.detach().unique().numel() <= 2**3 + 1


class _Binary(WeightFormat):
    """A user's quantiser: signs times the layer's mean magnitude (binary weights), stored as a
    two-entry codebook."""

    def _codes(self, w):
        scale = w.abs()[w != 0].mean() if bool((w != 0).any()) else w.new_ones(())
        codes = torch.where(w > 0, 2, torch.where(w < 0, 1, 0))
        return codes, torch.stack([-scale, scale])

    def value(self, comp, w):
        codes, book = self._codes(w.detach())
        wq = torch.cat([book.new_zeros(1), book])[codes]
        return wq + (w - w.detach()) if w.requires_grad else wq

    def stored(self, comp, w):
        codes, book = self._codes(w)
        return QuantizedTensor(codes.numpy().astype(np.int16), comp.bits, book.numpy(), "kmeans")


@pytest.fixture
def binary_quantizer():
    from autocompress import policy as policy_module
    from autocompress.compression import quantizers

    register_quantizer("binary", _Binary())
    yield
    del quantizers._FORMATS["binary"]
    del policy_module._QUANTIZER_OPTIONS["binary"]
    policy_module._CHOICES["quantizer"].remove("binary")


def test_a_registered_quantizer_is_searched_applied_packed_and_reported(binary_quantizer, tmp_path):
    from autocompress.export.run import _weights
    from autocompress.sensitivity.analysis import perturbation

    torch.manual_seed(0)
    model = build_model("small_cnn").eval()
    x = torch.randn(8, 1, 28, 28)
    space = SearchSpace.from_rules(
        model, [{"type": "Linear", "bits": [2], "quantizer": ["binary"]}]
    )
    assert space.layers["classifier"].quantizer == ("binary",)
    lp = LayerPolicy(0.5, 2, quantizer="binary", scheme="asymmetric")
    assert lp.scheme == "symmetric"  # an option the format does not read takes its default
    policy = CompressionPolicy({"classifier": lp})
    cm = apply_policy(model, policy)
    calibrate(cm, [x])
    w = cm.classifier.weight.detach()
    assert w[w != 0].abs().unique().numel() == 1  # binary: one magnitude
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    stored = compressed_state(cm)["classifier.weight"]
    assert isinstance(stored, QuantizedTensor) and stored.kind == "kmeans"
    eight = apply_policy(model, CompressionPolicy({"classifier": LayerPolicy(0.5, 8)}))
    assert packed_size(compressed_state(cm)) < packed_size(compressed_state(eight))
    ref = ModelRef("small_cnn", 10, 1, (1, 28, 28))
    save_packed_model(tmp_path / "m.acpk", cm, ref, policy)
    loaded, _ = load_packed_model(tmp_path / "m.acpk")
    with torch.no_grad():
        assert torch.equal(loaded(x), cm(x))
    # the sensitivity estimators perturb a weight with the same code as apply_policy
    dense = CompressionPolicy({"classifier": LayerPolicy(bits=2, quantizer="binary")})
    assert torch.equal(
        model.classifier.weight + perturbation(model.classifier.weight, "bits", 8.0),
        apply_policy(
            model, CompressionPolicy({"classifier": LayerPolicy(bits=8)})
        ).classifier.weight.detach(),
    )
    binary = apply_policy(model, dense).classifier.weight.detach()
    assert binary.abs().unique().numel() == 1
    # ... and a layer whose space offers only this quantiser is swept and estimated with it
    w = model.classifier.weight
    got = w + perturbation(w, "bits", 2.0, choices=space.layers["classifier"])
    assert torch.allclose(got, binary, rtol=0, atol=1e-7)
    assert _weights(lp) == "2-bit binary"
    with pytest.raises(ValueError, match="binary"):
        LayerPolicy(bits=2, quantizer="ternary")  # the message lists the registered ones
