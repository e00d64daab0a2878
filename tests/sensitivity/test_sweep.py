"""The measured sweep and its cache: values equal what ``apply_policy`` gives, the cache is
reused, a fragile layer shows up as fragile."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from torch import nn
from torch.utils.data import TensorDataset

from autocompress import load_experiment
from autocompress.baseline import prepare
from autocompress.compression.apply import apply_policy, calibrate
from autocompress.compression.batchnorm import correct_batchnorm
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.search_space import LayerChoices, SearchSpace
from autocompress.sensitivity import SensitivitySettings, analyze, cache_key
from autocompress.sensitivity import analysis as analysis_mod
from autocompress.sensitivity.analysis import SweepData, run_sweep
from autocompress.training import evaluate

QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def prep(tmp_path_factory, fmnist_root):
    tmp = tmp_path_factory.mktemp("sens")
    cfg = load_experiment(tiny_config(tmp, fmnist_root, baseline__epochs=4))
    return prepare(cfg, **QUIET)


def _scores_by_hand(model, key, data, round_to=1, bn=False):
    name, dim, value = key
    lp = LayerPolicy(**{dim: int(value) if dim == "bits" else value})
    comp = apply_policy(
        model, CompressionPolicy({name: lp}), example=data.example, round_to=round_to
    )
    calibrate(comp, data.calib)
    if bn:
        correct_batchnorm(comp, model, data.bn)
    return evaluate(comp, TensorDataset(data.x, data.y))


def test_sweep_equals_apply_policy(prep):
    data = analysis_mod.sweep_data(prep, SensitivitySettings(images=150, bn_batches=0))
    rows, (base_acc, base_loss) = run_sweep(prep.baseline.model, prep.space, data, **QUIET)
    assert {r.layer for r in rows} == set(prep.space.layers)
    by_hand = {("conv2", "bits", 2.0), ("conv1", "sparsity", 0.8)}
    checked = [r for r in rows if (r.layer, r.dim, r.value) in by_hand]
    assert len(checked) == len(by_hand), [(r.layer, r.dim, r.value) for r in rows]
    for r in checked:
        acc, loss = _scores_by_hand(prep.baseline.model, (r.layer, r.dim, r.value), data)
        assert r.acc_drop == pytest.approx(100 * (base_acc - acc), abs=1e-9)
        assert r.loss_increase == pytest.approx(loss - base_loss, rel=1e-4, abs=1e-6)


class _Residual(nn.Module):
    """A residual block whose shortcut is added in place to the main path's last BatchNorm output
    (torchvision's ``BasicBlock``), and a next block whose statistics every level corrects."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.down = nn.Conv2d(1, 6, 1)
        self.down_bn = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)  # the next block: its statistics are
        self.bn3 = nn.BatchNorm2d(6)  # re-estimated for every level above
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += self.down_bn(self.down(x))
        out = self.bn3(self.conv3(self.relu(out)))
        return self.fc(self.relu(out).mean(dim=(2, 3)))


def test_levels_are_independent_and_the_model_is_left_as_it_was():
    """A level scores the same alone as after the other levels (no state leaks between them:
    BatchNorm statistics, in-place adds, quantisers) and equals apply_policy by hand."""
    torch.manual_seed(0)
    model = _Residual().eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.down_bn, model.bn3):
            bn.running_mean.uniform_(-0.2, 0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(96, 1, 12, 12), torch.randint(0, 10, (96,))
    extra = torch.randn(64, 1, 12, 12)
    data = SweepData(x, y, [x[:32], x[32:64]], x[:2], [extra[:32], extra[32:]])
    space = SearchSpace(
        {
            "conv1": LayerChoices((0.0, 0.6), (3, 32), (1.0, 0.5)),
            "conv2": LayerChoices((0.0, 0.5), (8, 32)),
            "down": LayerChoices((0.0, 0.3, 0.6), (8, 4, 32)),
        }
    )
    rows, (_, base_loss) = run_sweep(model, space, data, **QUIET)
    assert len(rows) == 9 and all(r.measured for r in rows)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    alone, _ = run_sweep(model, SearchSpace({"down": space.layers["down"]}), data, **QUIET)
    by_key = {(r.layer, r.dim, r.value): r for r in rows}
    for r in alone:
        assert by_key[(r.layer, r.dim, r.value)].loss_increase == pytest.approx(r.loss_increase)
        _, loss = _scores_by_hand(model, (r.layer, r.dim, r.value), data, bn=True)
        assert r.loss_increase == pytest.approx(loss - base_loss, rel=1e-4, abs=1e-5), r
    assert len({round(r.loss_increase, 6) for r in rows}) > 5  # levels differ


def test_cache_is_reused_and_keyed(prep, monkeypatch):
    settings = SensitivitySettings(images=120)
    first = analyze(prep, settings, **QUIET)
    assert first.meta["cached"] is False

    def boom(*a, **k):
        raise AssertionError("measured again instead of using the cache")

    monkeypatch.setattr(analysis_mod, "run_sweep", boom)
    second = analyze(prep, settings, **QUIET)
    assert second.meta["cached"] is True
    assert second.to_dict()["rows"] == first.to_dict()["rows"]
    # a damaged cache file is measured again, not loaded
    path = prep.cfg.output_dir / "cache" / f"sensitivity-{cache_key(prep, settings)}.json"
    path.write_text(path.read_text()[:40])
    monkeypatch.undo()
    third = analyze(prep, settings, **QUIET)
    assert third.meta["cached"] is False and third.to_dict()["rows"] == first.to_dict()["rows"]
    # another subset or grid is another key
    assert cache_key(prep, settings.with_(images=100)) != cache_key(prep, settings)
    narrower = SearchSpace({n: c for n, c in list(prep.space.layers.items())[:2]})
    other = type(prep)(prep.cfg, prep.data, prep.baseline, narrower)
    assert cache_key(other, settings) != cache_key(prep, settings)


def _silence_conv1_channel0(model: nn.Module) -> None:
    """conv1's channel 0 is zero after its BatchNorm and ReLU from now on."""
    with torch.no_grad():
        model.bn1.weight[0] = 0.0
        model.bn1.bias[0] = -1.0


def _make_conv2_fragile_to_quantisation(model: nn.Module) -> None:
    """conv2's weights reading the silenced channel never matter; make them huge: the function
    is unchanged, but each output channel's quantisation scale is now set by a weight that
    carries no signal and every useful weight rounds to zero at any bit-width."""
    with torch.no_grad():
        model.conv2.weight[:, 0] = 1e4


def test_fragile_layer_is_measured_fragile_and_narrowed(prep, tmp_path):
    from autocompress.sensitivity import shape_space

    model = prep.baseline.model
    x = analysis_mod.sweep_data(prep, SensitivitySettings()).x
    _silence_conv1_channel0(model)
    try:
        with torch.no_grad():
            before = model(x)
        _make_conv2_fragile_to_quantisation(model)
        with torch.no_grad():
            assert torch.allclose(model(x), before, atol=1e-4)
        settings = SensitivitySettings(images=200, estimator=None, fix_insensitive=False, seed=99)
        table = analyze(prep, settings, force=True, **QUIET)
        for b in (2, 4, 8):
            assert table.score("conv2", "bits", b) > 5.0
        shaped = shape_space(prep.space, table, settings)
        assert shaped.layers["conv2"].bits == (32,)
        assert set(shaped.layers["conv1"].bits) <= set(prep.space.layers["conv1"].bits)
    finally:
        prep.baseline.model.load_state_dict(torch.load(prep.baseline.checkpoint))


def test_estimator_only_table_shapes_by_loss(prep):
    from autocompress.sensitivity import shape_space

    settings = SensitivitySettings(method="fisher", max_loss_increase=0.01, images=50)
    table = analyze(prep, settings, **QUIET)
    assert table.rows
    assert all(r.acc_drop is None and r.estimate is not None for r in table.rows)
    assert table.has("loss") and not table.has("drop")
    shaped = shape_space(prep.space, table, settings)
    for name, ch in prep.space.layers.items():
        assert set(shaped.layers[name].bits) <= set(ch.bits)
    assert shaped.cardinality <= prep.space.cardinality
