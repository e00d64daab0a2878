"""The profiler on a tiny model with a tiny grid, the cached table, the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import tiny_config

from autocompress import load_experiment
from autocompress.cli import main
from autocompress.compression.apply import apply_policy
from autocompress.hardware import latency as latency_mod
from autocompress.hardware import memory_model
from autocompress.hardware.deploy import export_deployed
from autocompress.hardware.latency import (
    AnalyticLatencyModel,
    ProxyLatencyModel,
    TableLatencyModel,
    make_latency_model,
    profile,
)
from autocompress.hardware.profiler import design_policies, layer_neighbours
from autocompress.hardware.targets import load_target, parse_target
from autocompress.models import TinyCNN
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.search_space import load_search_space

SPACE = Path(__file__).with_name("tiny_keep.yaml")

CHEAP = parse_target(
    {
        "name": "cpu-onnxruntime",
        "kind": "measured",
        "runtime": {"threads": 1, "warmup": 2, "repeats": 5, "rounds": 2, "passes": 2},
        "profile": {"runs": 3, "min_configs": 6, "max_configs": 14, "max_seconds": 30},
    }
)


@pytest.fixture
def cheap_target(monkeypatch):
    """The CPU target with a tiny measurement budget (tests assert behaviour, not speed)."""
    monkeypatch.setattr(latency_mod, "load_target", lambda name: CHEAP)
    # validate times through measurement_inputs (no 120 s span of the shipped preset)
    monkeypatch.setattr(memory_model, "load_target", lambda name: CHEAP)
    return CHEAP


def _cfg(tmp_path, fmnist_root, **over):
    over.setdefault("latency__target", "cpu-onnxruntime")
    return load_experiment(tiny_config(tmp_path, fmnist_root, search_space=str(SPACE), **over))


@pytest.mark.parametrize("int8", [False, True])
def test_neighbours_are_the_layers_an_output_feeds_and_those_sharing_an_input(tmp_path, int8):
    import onnx
    from torchvision.models import resnet18

    model = resnet18(num_classes=10).eval()
    path = tmp_path / "r18.onnx"
    layers = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    export_deployed(model, torch.randn(1, 3, 32, 32), path, int8_layers=layers[::2] if int8 else [])
    near = layer_neighbours(onnx.load(str(path)), model)
    # a downsampling block's first conv: its output feeds conv2, its input is the shortcut's
    assert near["layer2.0.conv1"] == ["layer2.0.conv2", "layer2.0.downsample.0"]
    # a block's last conv feeds the next block (through the residual add, not past the next)
    assert near["layer1.1.conv2"] == ["layer2.0.conv1", "layer2.0.downsample.0"]
    assert near["layer4.1.conv2"] == ["fc"] and near["fc"] == []


def test_design_covers_channel_pairs_at_both_precisions():
    model = TinyCNN()
    space = load_search_space(SPACE).resolve(model)
    layers = ["conv1", "conv2", "fc"]
    gen = design_policies(space, layers)
    policies = [next(gen) for _ in range(1 + 2 * 4 + 2 * 2)]
    assert policies[0] == CompressionPolicy(
        {n: LayerPolicy(bits=32, keep_ratio=1.0) for n in layers}
    )
    for bits1, bits2 in ((32, 8), (8, 32)):  # INT8 layers are profiled at 8 bits
        pairs = {
            (p["conv1"].keep_ratio, p["conv2"].keep_ratio)
            for p in policies
            if p["conv1"].bits == bits1 and p["conv2"].bits == bits2
        }
        assert pairs == {(1.0, 1.0), (1.0, 0.5), (0.5, 1.0), (0.5, 0.5)}
    uniform = [p for p in policies if len({lp.bits < 32 for lp in p.values()}) == 1]
    assert {p["conv1"].keep_ratio for p in uniform} == {1.0, 0.5}


def test_profile_builds_a_table_that_is_cached_and_monotone(
    tmp_path, fmnist_root, cheap_target, monkeypatch
):
    cfg = _cfg(tmp_path, fmnist_root)
    lines: list[str] = []
    lat = profile(cfg, target=cheap_target, log=lines.append)
    assert isinstance(lat, TableLatencyModel) and lat.path.is_file()
    table = lat.table
    assert table.order == ["conv1", "conv2", "fc"]
    for name in table.order:
        assert set(table.compute[name]) == {"fp32", "int8"}
    assert len(table.records) >= CHEAP.profile.min_configs
    assert all(r["wall_ms"] > 0 for r in table.records)
    assert any("configurations" in line for line in lines)

    # the search's factory loads the same table without measuring again
    def no_profiling(*a, **k):
        raise AssertionError("profiled again instead of using the cache")

    monkeypatch.setattr("autocompress.hardware.profiler.profile_model", no_profiling)
    model = TinyCNN().eval()
    example = torch.zeros(1, 1, 28, 28)
    space = load_search_space(SPACE).resolve(model)
    again = make_latency_model(cfg, model, space, example, reference_ms=1.0, log=lines.append)
    assert isinstance(again, TableLatencyModel) and again.path == lat.path

    # monotone in the channel count of each layer, at each precision
    for bits in (32, 8):
        for layer in ("conv1", "conv2"):
            preds = []
            for keep in (0.25, 0.5, 0.75, 1.0):
                policy = CompressionPolicy(
                    {
                        n: LayerPolicy(bits=bits if n != "conv2" else min(bits, 4))
                        for n in space.layers
                    }
                    | {
                        layer: LayerPolicy(
                            bits=bits if layer != "conv2" else min(bits, 4), keep_ratio=keep
                        )
                    }
                )
                compressed = apply_policy(model, policy, example=example)
                preds.append(again.predict(compressed, policy))
            # non-decreasing in the kept channels (up to float rounding)
            ok = all(b >= a * (1 - 1e-9) for a, b in zip(preds, preds[1:], strict=False))
            assert ok, (layer, bits, preds)
            assert preds[0] > 0


def test_validate_cli_reports_json_plot_and_mlflow_run(tmp_path, fmnist_root, cheap_target, capsys):
    path = tiny_config(
        tmp_path, fmnist_root, search_space=str(SPACE), latency__target="cpu-onnxruntime"
    )
    assert main(["latency", "validate", str(path), "--samples", "4", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert report["samples"] == 4
    assert 0.0 <= report["within_10pct"] <= 1.0
    assert report["mape"] >= 0 and -1.0 <= report["spearman"] <= 1.0
    png, pairs = Path(report["artifacts"][1]), Path(report["artifacts"][0])
    assert png.is_file() and png.stat().st_size > 0
    assert len(json.loads(pairs.read_text())["pairs"]) == 4
    cfg = load_experiment(path)
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking)
    exp = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([exp.experiment_id])
    run = next(r for r in runs if r.info.run_name == "latency-validate")
    assert run.data.metrics["within_10pct"] == pytest.approx(report["within_10pct"])
    names = {a.path for a in client.list_artifacts(run.info.run_id, "latency")}
    assert {f"latency/{png.name}", f"latency/{pairs.name}"} <= names


def test_profile_of_an_analytic_target_is_a_usage_error(tmp_path, fmnist_root, capsys):
    path = tiny_config(tmp_path, fmnist_root, latency__target="bitfusion")
    assert main(["latency", "profile", str(path)]) == 2
    assert "nothing to measure" in capsys.readouterr().err


def test_factory_builds_each_kind_of_target(tmp_path, fmnist_root):
    model = TinyCNN().eval()
    example = torch.zeros(1, 1, 28, 28)
    space = load_search_space(SPACE).resolve(model)
    for name, kind in (("proxy", ProxyLatencyModel), ("bitfusion", AnalyticLatencyModel)):
        cfg = _cfg(tmp_path, fmnist_root, latency__target=name)
        lat = make_latency_model(cfg, model, space, example, reference_ms=2.0, log=print)
        assert isinstance(lat, kind) and lat.name == name
        policy = CompressionPolicy({n: LayerPolicy() for n in space.layers})
        assert lat.predict(model, policy) > 0
    assert load_target("edge-roofline").kind == "analytic"


def test_search_trials_carry_the_tables_prediction(tmp_path, fmnist_root, cheap_target):
    from autocompress import search
    from autocompress.search.study import load_study

    cfg = _cfg(tmp_path, fmnist_root, search__n_trials=2)
    result = search(cfg, log=lambda *_: None)
    assert result.n_complete == 2
    table_model = make_latency_model(
        cfg,
        TinyCNN().eval(),
        load_search_space(SPACE).resolve(TinyCNN()),
        torch.zeros(1, 1, 28, 28),
        log=lambda *_: None,
    )
    # complete ones: warm-start trials beyond n_trials stay enqueued (WAITING) for a resume
    trials = [t for t in load_study(cfg).study.trials if t.state.name == "COMPLETE"]
    assert len(trials) == 2
    for trial in trials:
        policy = CompressionPolicy.from_dict(trial.user_attrs["policy"])
        compressed = apply_policy(TinyCNN().eval(), policy, example=torch.zeros(2, 1, 28, 28))
        expected = table_model.predict(compressed, policy)
        assert trial.user_attrs["metrics"]["latency_ms"] == pytest.approx(expected, rel=1e-6)


def test_a_damaged_cached_table_is_profiled_again(tmp_path, fmnist_root, cheap_target, monkeypatch):
    import autocompress.hardware.profiler as profiler

    cfg = _cfg(tmp_path, fmnist_root)
    lat = profile(cfg, target=cheap_target, log=lambda _: None)
    lat.path.write_text(lat.path.read_text()[:50])  # a half-written file
    calls, real = [], profiler.profile_model
    monkeypatch.setattr(profiler, "profile_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = TinyCNN().eval()
    space = load_search_space(SPACE).resolve(model)
    lines: list[str] = []
    again = make_latency_model(
        cfg, model, space, torch.zeros(1, 1, 28, 28), reference_ms=1.0, log=lines.append
    )
    assert calls == [1] and any("unreadable" in line for line in lines)
    assert again.table.to_dict() == type(again.table).load(again.path).to_dict()  # rebuilt
