"""The stage a search runs: warm start within budget, proxy front, size estimate, MLflow files,
agreement with real trials, and the ``autocompress sensitivity`` command."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import optuna
import pytest
from conftest import tiny_config

from autocompress import load_experiment
from autocompress.cli import main
from autocompress.hardware.latency import ProxyLatencyModel
from autocompress.search.run import prepare
from autocompress.sensitivity import (
    SensitivitySettings,
    SensitivityStage,
    make_proxy,
    real_costs,
    size_error,
    uniform_corners,
    warm_start,
)
from autocompress.sensitivity.allocate import policy_key
from autocompress.sensitivity.greedy import greedy_chain, relative_cost
from autocompress.tracking import Tracker

QUIET = {"log": lambda *_: None}
SETTINGS = SensitivitySettings(images=150, estimator_images=64, max_drop=5.0)


@pytest.fixture(scope="module")
def prep(tmp_path_factory, fmnist_root):
    tmp = tmp_path_factory.mktemp("stage")
    cfg = load_experiment(tiny_config(tmp, fmnist_root, baseline__epochs=4))
    return prepare(cfg, **QUIET)


@pytest.fixture(scope="module")
def stage(prep):
    return SensitivityStage.start(prep, SETTINGS, **QUIET)


def _latency(prep):
    return ProxyLatencyModel(prep.baseline.model, prep.data.example_input(1), 1.0)


def _valid(params: dict, space) -> None:
    choices = space.choices()
    assert set(params) == set(choices)
    for k, v in params.items():
        assert v in choices[k], (k, v)


def test_warm_start_respects_real_size_budgets(prep, stage):
    proxy = make_proxy(prep, stage.space, stage.table, SETTINGS)
    measure = real_costs(prep)
    base = prep.baseline.metrics.size_bytes
    budgets = [0.35 * base, 0.5 * base, 0.8 * base]
    cands = warm_start(proxy, n=3, budgets=budgets, measure=measure)
    assert cands
    for c in cands:
        policy = proxy.codec.policy(c.row)
        assert measure(policy)["size"] <= c.budget
        _valid(proxy.codec.params(c.row), stage.space)
    drops = [c.predicted["drop"] for c in sorted(cands, key=lambda c: c.budget)]
    assert drops == sorted(drops, reverse=True)  # more budget never costs accuracy


def test_warm_start_under_latency_budget(prep, stage):
    lat = _latency(prep)
    proxy = make_proxy(prep, stage.space, stage.table, SETTINGS, latency_model=lat)
    measure = real_costs(prep, lat)
    for c in warm_start(proxy, n=3, kind="latency", measure=measure):
        assert measure(proxy.codec.policy(c.row))["latency"] <= c.budget * (1 + 1e-9)


def test_checked_warm_start_loosens_until_the_measured_drop_passes(prep, stage):
    """A fake whole-policy check that fails every policy under 60 % of the baseline's bytes: the
    allocations for tighter budgets are loosened until they pass, or dropped."""
    proxy = make_proxy(prep, stage.space, stage.table, SETTINGS)
    measure = real_costs(prep)
    base = prep.baseline.metrics.size_bytes
    budgets = [0.3 * base, 0.45 * base, 0.9 * base]

    def check(policy):
        return 0.0 if measure(policy)["size"] >= 0.6 * base else 50.0

    unchecked = warm_start(proxy, n=3, budgets=budgets, measure=measure)
    assert any(measure(proxy.codec.policy(c.row))["size"] < 0.6 * base for c in unchecked)
    cands = warm_start(proxy, n=3, budgets=budgets, measure=measure, check=check, max_drop=5.0)
    assert cands
    for c in cands:
        assert c.real["drop"] <= 5.0
        assert measure(proxy.codec.policy(c.row))["size"] >= 0.6 * base
        assert c.real["size"] <= c.budget
    assert any(c.loosened for c in cands)
    never = warm_start(
        proxy, n=3, budgets=budgets, measure=measure, check=lambda p: 99.0, max_drop=5.0
    )
    assert never == []


def test_uniform_corners_take_the_highest_sparsity_that_passes(stage):
    space = stage.space
    levels = sorted({v for ch in space.layers.values() for v in ch.sparsity})
    calls = []

    def check(policy):  # drop grows with the (uniform) sparsity, and more with fewer bits
        lp = next(iter(policy.values()))
        calls.append(policy)
        return 10 * lp.sparsity * (8 / min(lp.bits, 8))

    corners = uniform_corners(space, [8, 4], check, max_drop=5.0, dense=False)
    assert corners and len(calls) <= 2 * (len(levels).bit_length() + 1)  # bisection
    for corner in corners:
        pol, drop = corner["policy"], corner["drop"]
        assert drop <= 5.0
        first = next(iter(pol.values()))
        for name, lp in pol.items():
            ch = space.layers[name]
            assert lp.keep_ratio == max(ch.keep_ratio)
            assert lp.sparsity in ch.sparsity and lp.bits in ch.bits
        higher = [v for v in levels if v > first.sparsity]
        if higher:  # the next level up fails the check
            assert check(space.uniform_policy(higher[0], first.bits)) > 5.0
    assert uniform_corners(space, [8], lambda p: 99.0, max_drop=5.0) == []


def test_uniform_corners_add_the_dense_corner_at_the_lowest_passing_bits(stage):
    space = stage.space
    levels = sorted({v for ch in space.layers.values() for v in ch.sparsity})
    calls = []

    def check(policy):
        lp = next(iter(policy.values()))
        calls.append((lp.bits, lp.sparsity))
        return 10 * lp.sparsity * (8 / min(lp.bits, 8))

    sparse = uniform_corners(space, [8, 4], check, max_drop=5.0, dense=False)
    calls.clear()
    corners = uniform_corners(space, [8, 4], check, max_drop=5.0)
    keys = [policy_key(c["policy"]) for c in corners]
    assert len(keys) == len(set(keys))  # no policy twice
    lowest = min(c["bits"] for c in sparse)
    dense = [c for c in corners if c["sparsity"] == levels[0]]
    assert sorted(c["bits"] for c in dense) == sorted({lowest, 8})  # accurate end too
    for c in dense:
        assert all(lp.sparsity == levels[0] for lp in c["policy"].values())
    sparse_bits = [c["bits"] for c in corners if c["sparsity"] != levels[0]]
    # 8 and 4 bits pass at different sparsities here: neither sparse corner is left out
    assert sparse_bits == [c["bits"] for c in sparse if c["sparsity"] != levels[0]]
    assert len(calls) == len(set(calls))  # each (bits, sparsity) measured once
    # a dense corner that fails the check is not added
    strict = uniform_corners(space, [8, 4], lambda p: 99.0 if _dense(p, levels) else 0.0, 5.0)
    assert all(c["sparsity"] != levels[0] for c in strict)


def _dense(policy, levels) -> bool:
    return all(lp.sparsity == levels[0] for lp in policy.values())


def test_greedy_chain_keeps_only_moves_whose_measured_drop_passes(prep, stage):
    proxy = make_proxy(prep, stage.space, stage.table, SETTINGS)
    codec = proxy.codec
    start = codec.encode(stage.space.uniform_policy(0.0, 8))
    fragile = codec.layers[0]
    calls = []

    def check(policy):  # interacting layers: the drop is the square of summed sparsity,
        calls.append(policy)  # and the first layer alone is fragile beyond 8 bits dense
        total = sum(lp.sparsity for lp in policy.values())
        lp = policy[fragile]
        return total**2 + (50.0 if lp.sparsity > 0 or lp.bits < 8 else 0.0)

    cands = greedy_chain(
        proxy, start, check, tolerances=[1.0, 2.0, 4.0], max_checks=18, start_drop=0.0
    )
    assert cands and len(calls) <= 18
    costs = list(relative_cost(proxy.evaluate(np.stack([start] + [c.row for c in cands]))))
    assert costs == sorted(costs, reverse=True) and costs[1] < costs[0]  # compresses further
    for c in cands:
        pol = codec.policy(c.row)
        assert c.real["drop"] == check(pol) <= c.budget  # measured, within its tolerance
        assert pol[fragile].sparsity == 0 and pol[fragile].bits >= 8
    # a check nothing passes leaves the start alone: no snapshot
    assert greedy_chain(proxy, start, lambda p: 99.0, tolerances=[1.0], start_drop=0.0) == []


def test_initial_trials_greedy_start_from_the_most_compressed_corner(prep, stage):
    s = SETTINGS.with_(warm_start=2, greedy_checks=6, uniform_start=(8, 4))
    st = SensitivityStage(prep, s, stage.table, lambda *_: None)
    trials = st.initial_trials(objectives=["accuracy", "size"], n_trials=10)
    kinds = [a["warm_start"]["kind"] for _, a in trials]
    assert kinds == sorted(kinds, key=lambda k: k != "uniform")  # corners, then the chain
    for params, _ in trials:
        _valid(params, st.space)
    corners = [a["warm_start"] for _, a in trials if a["warm_start"]["kind"] == "uniform"]
    for a, b in [(a, b) for a in corners for b in corners if a is not b]:
        if b["sparsity"] > 0:  # no sparse corner costlier than another (dense ones are kept)
            assert not (a["bits"] < b["bits"] and a["sparsity"] >= b["sparsity"])
    for c in st.warm:
        assert c.kind == "greedy" and c.real["drop"] <= c.budget


def test_whole_policy_checks_are_cached_beside_the_table(prep, stage, monkeypatch):
    import autocompress.sensitivity.analysis as analysis

    s = SETTINGS.with_(warm_start=2, greedy_checks=4, uniform_start=(4,))
    first = SensitivityStage(prep, s, stage.table, lambda *_: None)
    trials = first.initial_trials(objectives=["accuracy", "size"], n_trials=10)
    path = analysis.checks_path(prep.cfg.output_dir, stage.table.meta["key"])
    assert path.is_file() and json.loads(path.read_text())["drops"]
    calls = []
    real = analysis.correct_batchnorm  # once per measured check
    monkeypatch.setattr(
        analysis, "correct_batchnorm", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    again = SensitivityStage(prep, s, stage.table, lambda *_: None)
    assert again.initial_trials(objectives=["accuracy", "size"], n_trials=10) == trials
    assert calls == []  # every corner and chain step came from the cache
    path.write_text("{not json")  # a damaged cache is measured again
    assert (
        SensitivityStage(prep, s, stage.table, lambda *_: None).initial_trials(
            objectives=["accuracy", "size"], n_trials=10
        )
        == trials
    )
    assert calls


def test_size_estimate_is_close_to_packed_bytes(prep):
    proxy = make_proxy(prep, prep.space, stage_table(prep), SETTINGS)
    err = size_error(prep, proxy, n=6)
    assert err["mean_abs_rel_error"] < 0.05


def stage_table(prep):
    from autocompress.sensitivity import analyze

    return analyze(prep, SETTINGS, **QUIET)


def test_initial_trials_two_stage_and_agreement(prep, stage):
    s = SETTINGS.with_(two_stage=True, proxy_policies=500, warm_start=2)
    st = SensitivityStage(prep, s, stage.table, lambda *_: None)
    trials = st.initial_trials(
        _latency(prep), objectives=["accuracy", "latency", "size"], n_trials=8
    )
    assert 1 <= len(trials) <= 7
    kinds = [next(iter(attrs)) for _, attrs in trials]
    assert kinds == sorted(kinds, key=lambda k: k != "warm_start")  # warm start first
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for params, attrs in trials:
        _valid(params, st.space)
        study.enqueue_trial(params, user_attrs=attrs)
    # play the search: each enqueued trial gets a fake real accuracy
    rng = np.random.default_rng(0)
    for _ in trials:
        t = study.ask()
        policy = st.space.policy_from_params(
            {k: t.suggest_categorical(k, list(v)) for k, v in st.space.choices().items()}
        )
        t.set_user_attr("policy", policy.to_dict())
        t.set_user_attr("metrics", {"val_accuracy": float(rng.uniform(0.2, 0.4))})
        study.tell(t, [0.3, 1.0, 1.0])
    res = st.agreement(study, prep.baseline.metrics.val_accuracy)
    assert res["n"] == len(trials)
    assert {r["origin"] for r in res["trials"]} <= {"warm_start", "proxy_stage"}
    assert st.stage1["evaluated"] >= 500


def test_log_to_mlflow(prep, stage, tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", "sens", tmp_path / "art")
    run = tracker.client.create_run(tracker.experiment_id, run_name="x")
    stage.log(tracker, run.info.run_id)
    names = {a.path for a in tracker.client.list_artifacts(run.info.run_id, "sensitivity")}
    for n in ("sensitivity.csv", "sensitivity_heatmap.html", "sensitivity_heatmap.png"):
        assert f"sensitivity/{n}" in names
    assert "sensitivity/sensitivity_shaped_space.json" in names
    metrics = tracker.client.get_run(run.info.run_id).data.metrics
    assert metrics["sensitivity_levels"] == len(stage.table.rows)
    assert metrics["sensitivity_space_after"] <= metrics["sensitivity_space_before"]


def test_cli_command(tmp_path, fmnist_root, capsys):
    path = tiny_config(tmp_path, fmnist_root)
    assert main(["sensitivity", str(path), "--check", "4", "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["levels"] > 0 and summary["cached"] is False
    assert "additivity_spearman" in summary
    cfg = load_experiment(path)
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking)
    exp = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([exp.experiment_id])
    assert any(r.data.tags.get("autocompress.role") == "sensitivity" for r in runs)
    assert (cfg.output_dir / "sensitivity" / "sensitivity.csv").is_file()
    # second call: from the cache
    assert main(["sensitivity", str(path), "--no-mlflow", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cached"] is True


def _wired() -> bool:
    from autocompress.config import ExperimentConfig

    return "sensitivity" in ExperimentConfig.model_fields


@pytest.mark.skipif(not _wired(), reason="sensitivity config section not wired yet")
def test_config_section_matches_settings():
    from dataclasses import fields

    from autocompress.config import ExperimentConfig

    section = ExperimentConfig.model_fields["sensitivity"].annotation
    assert set(section.model_fields) == {f.name for f in fields(SensitivitySettings)}
    assert SensitivitySettings.from_mapping(section()) == SensitivitySettings()


@pytest.mark.skipif(not _wired(), reason="sensitivity config section not wired yet")
def test_search_runs_sensitivity_and_warm_start(tmp_path, fmnist_root):
    from autocompress import search
    from autocompress.search.study import load_study

    path = tiny_config(
        tmp_path, fmnist_root, search__n_trials=4, sensitivity__images=100, sensitivity__max_drop=5
    )
    cfg = load_experiment(path)
    search(cfg, log=lambda *_: None)
    study = load_study(cfg).study
    attrs = [t.user_attrs for t in study.trials]
    assert attrs[0].get("anchor") and any("warm_start" in a for a in attrs)
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking)
    exp = client.get_experiment_by_name(cfg.name)
    parent = next(
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("autocompress.role") == "search"
    )
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "sensitivity")}
    assert "sensitivity/sensitivity_heatmap.png" in names
    assert "sensitivity_space_after" in parent.data.metrics
    # the second search of the same experiment reuses the table
    cached = list((cfg.output_dir / "cache").glob("sensitivity-*.json"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime
    search(load_experiment(path, ["search.n_trials=5"]), log=lambda *_: None)
    assert cached[0].stat().st_mtime == mtime
