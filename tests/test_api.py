"""The Python API on objects: a model and data sets of the caller's own, searched, picked,
exported and reloaded without an experiment file."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch.utils.data import TensorDataset

import autocompress as ac
from autocompress.compression.artifact import load_packed_model
from autocompress.errors import ConfigError, ModelError
from autocompress.models import TinyCNN

# Fast settings: the analytic latency target (no latency table), one memory process per form.
_FAST = {
    "latency": {"target": "proxy"},
    "export": {"forms": ["int8-qdq"], "memory_repeats": 1, "batch_sizes": [1]},
}


def _data(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return (
        x,
        TensorDataset(x[:160], y[:160]),
        TensorDataset(x[160:200], y[160:200]),
        (TensorDataset(x[200:], y[200:])),
    )


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyCNN()
    x, train, val, test = _data()
    space = ac.SearchSpace.from_rules(
        model,
        [{"type": "Conv2d", "sparsity": [0.0, 0.5], "bits": [8, 32], "keep_ratio": [1.0, 0.5]}],
        example=x[:1],
    )
    lines: list[str] = []
    result = ac.search(
        model,
        train=train,
        val=val,
        space=space,
        n_trials=3,
        screen_trials=6,
        output_dir=tmp_path_factory.mktemp("api") / "demo",
        sampler=optuna.samplers.RandomSampler(seed=3),
        settings=_FAST,
        log=lines.append,
    )
    return model, x, test, space, result, lines


def test_search_of_objects_returns_a_typed_front(searched):
    model, _, _, space, result, lines = searched
    assert result.n_complete == 3 and result.front
    for p in result.front:
        assert isinstance(p, ac.FrontPoint) and isinstance(p.policy, ac.CompressionPolicy)
        assert isinstance(p.metrics, ac.TrialMetrics) and 0.0 <= p.metrics.val_accuracy <= 1.0
        assert set(p.policy.layers) <= set(space.layers)
    # the caller's model is the baseline as it is: never trained here
    assert not any(line.startswith("baseline: training") for line in lines)
    assert result.config.output_dir.joinpath("search_space.yaml").is_file()
    # the budgets were sized to 160 training images (3 epochs of 3 batches per trial)
    assert result.config.finetune.steps == 6
    assert result.config.export.finetune.distill_weight == 0.5


def test_pick_returns_a_front_point(searched):
    *_, result, _ = searched
    knee = result.pick(knee=True)
    assert knee in result.front
    best = result.pick(prefer="accuracy")
    assert best.metrics.val_accuracy == max(p.metrics.val_accuracy for p in result.front)
    assert result.pick(trial=knee.trial) is knee
    with pytest.raises(ac.AutocompressError, match="not on the front"):
        result.pick(trial=999)
    with pytest.raises(ac.AutocompressError, match="no front point meets"):
        result.pick(min_accuracy=1.01)


def test_export_of_a_point_and_its_packed_file(searched, tmp_path):
    model, x, test, _, result, _ = searched
    point = result.pick(knee=True)
    art = ac.export(result, point, test=test, log=lambda *_: None)
    assert isinstance(art, ac.ExportResult) and art.trial == point.trial
    assert art.onnx_path.is_file() and art.report_path.is_file()
    assert art.onnx_bytes == art.onnx_path.stat().st_size
    assert art.unpack_exact and art.packed_reload_exact
    assert 0.0 <= art.test_accuracy <= 1.0 and 0.0 <= art.baseline_test_accuracy <= 1.0
    # a file packed from a model object needs the architecture to load
    with pytest.raises(ModelError, match="model="):
        load_packed_model(art.packed_path)
    reloaded, meta = load_packed_model(art.packed_path, model=model)
    assert meta["policy"] == point.policy.to_dict()
    out = ac.unpack(art.packed_path, tmp_path / "m.onnx", model=model)
    assert out.is_file()
    cm = ac.compress(model, point.policy, example=x[:1])
    assert cm.size_bytes() > 0


def test_from_rules_errors_name_the_rule():
    model = TinyCNN()
    with pytest.raises(ConfigError, match=r"rules: layers\.0.*unknown key"):
        ac.SearchSpace.from_rules(model, [{"type": "Conv2d", "bitz": [8]}])
    with pytest.raises(ConfigError, match=r"rules: layers\.0: type 'GRU' matches no"):
        ac.SearchSpace.from_rules(model, [{"type": "GRU", "bits": [8, 32]}])


def test_object_search_refuses_workers_and_missing_data(tmp_path):
    model = TinyCNN()
    _, train, val, _ = _data()
    with pytest.raises(ConfigError, match="train= and val="):
        ac.search(model, train=train, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="workers"):
        ac.search(model, train=train, val=val, workers=2, output_dir=tmp_path, settings=_FAST)
    with pytest.raises(ConfigError, match=r"settings: search\.n_trialz: unknown key"):
        ac.search(
            model, train=train, val=val, output_dir=tmp_path, settings={"search": {"n_trialz": 3}}
        )


def test_untrained_batchnorm_statistics_are_estimated(tmp_path):
    from autocompress.baseline import baseline_from_model
    from autocompress.config import ExperimentConfig
    from autocompress.data import DataBundle
    from autocompress.models import SmallCNN

    model = SmallCNN()
    _, train, val, test = _data()
    cfg = ExperimentConfig.model_validate(
        {
            "name": "t",
            "model": {"name": "object:SmallCNN"},
            "search_space": "x.yaml",
            "output_dir": str(tmp_path),
            "latency": {"target": "proxy"},
        }
    )
    lines: list[str] = []
    b = baseline_from_model(
        cfg, model, DataBundle.from_datasets(train, val, test), log=lines.append
    )
    bn = next(m for m in b.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) > 0 and not torch.allclose(
        bn.running_var, torch.ones_like(bn.running_var)
    )
    assert any("never saw a batch" in line for line in lines)
    assert b.checkpoint.is_file()  # content-addressed: the sensitivity cache tells models apart


def _neg_mse(model, batches) -> float:
    """A regression task's metric (higher is better)."""
    total = n = 0.0
    for x, y in batches:
        total += float(((model(x).squeeze(1) - y) ** 2).sum())
        n += len(y)
    return -total / n


def _mse(out, y):
    return torch.nn.functional.mse_loss(out.squeeze(1), y)


def test_a_regression_task_with_its_own_metric_and_loss(tmp_path):
    """evaluate= and loss= replace top-1 and cross-entropy everywhere: the baseline, the
    fine-tunes (a float target would crash cross-entropy), the screen and the export."""
    torch.manual_seed(0)
    model = TinyCNN(num_classes=1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 1, 28, 28, generator=g)
    y = x.mean(dim=(1, 2, 3)) * 3.0  # a float target
    train, val, test = (
        TensorDataset(x[a:b], y[a:b]) for a, b in ((0, 120), (120, 160), (160, 200))
    )
    result = ac.search(
        model,
        train=train,
        val=val,
        n_trials=2,
        screen_trials=4,
        output_dir=tmp_path / "reg",
        evaluate=_neg_mse,
        loss=_mse,
        settings=_FAST,
        log=lambda *_: None,
    )
    assert result.n_complete == 2 and result.front
    assert all(p.metrics.val_accuracy <= 0.0 for p in result.front)  # -MSE, not an accuracy
    base = result.prepared.baseline.metrics.val_accuracy
    assert base == pytest.approx(
        _neg_mse(model.eval(), [(val.tensors[0], val.tensors[1])]), rel=1e-4
    )
    art = ac.export(result, result.pick(prefer="accuracy"), test=test, log=lambda *_: None)
    assert art.test_accuracy <= 0.0 and art.unpack_exact


def test_task_callables_from_yaml(tmp_path, fmnist_root):
    from autocompress.baseline import task_from_config
    from autocompress.config import load_experiment
    from tests.conftest import tiny_config

    (tmp_path / "mytask.py").write_text("def top5(model, batches):\n    return 0.5\n")
    path = tiny_config(tmp_path, fmnist_root, task__evaluate="mytask:top5")
    cfg = load_experiment(path)
    assert task_from_config(cfg).metric(None, []) == 0.5  # resolved beside the experiment file
    with pytest.raises(ConfigError, match=r"task\.loss.*module:callable"):
        load_experiment(tiny_config(tmp_path, fmnist_root, task__loss="mse"))
