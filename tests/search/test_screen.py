"""The two-fidelity search: a screen study of cheap policies, its spread front promoted into the
fine-tuned study, the agreement between the two logged, the wall-clock budget honoured."""

from __future__ import annotations

import csv

import mlflow
import numpy as np
import optuna
from conftest import tiny_config
from optuna.trial import TrialState

from autocompress import load_experiment, search
from autocompress.search.pareto import diverse_order, non_dominated
from autocompress.search.study import SCREEN_SUFFIX, load_study


def _quiet(*_):
    pass


def test_screen_promotes_its_front_into_the_fine_tuned_study(tmp_path, fmnist_root):
    cfg = load_experiment(
        tiny_config(tmp_path, fmnist_root, search__screen_trials=12, search__n_trials=4)
    )
    result = search(cfg, log=_quiet)
    assert result.n_complete == 4

    screen = optuna.load_study(study_name=cfg.name + SCREEN_SUFFIX, storage=cfg.optuna_storage)
    screened = screen.get_trials(states=(TrialState.COMPLETE,))
    assert len(screened) == 12
    assert all(t.user_attrs["fidelity"] == 0 for t in screened)
    # nothing is enqueued: every screened policy is the sampler's
    assert not [t for t in screened if t.user_attrs.get("origin")]

    main = load_study(cfg).study.get_trials(states=(TrialState.COMPLETE,))
    assert main[0].user_attrs["origin"] == "anchor"
    promoted = [t for t in main if "screen_trial" in t.user_attrs]
    assert len(promoted) == 3  # every other trial came from the screen
    by_number = {t.number: t for t in screened}
    for t in promoted:
        src = by_number[t.user_attrs["screen_trial"]]
        assert t.params == src.params  # the same policy, now fine-tuned
        assert t.user_attrs["screen_metrics"] == src.user_attrs["metrics"]
    # the promoted policies are the screen's non-dominated ones first
    values = np.array([t.values for t in screened])
    dirs = ["maximize", "minimize", "minimize"]
    front = {screened[i].number for i in non_dominated(values, dirs)}
    first = [t.user_attrs["screen_trial"] for t in promoted][: len(front)]
    assert set(first) <= front

    client = mlflow.MlflowClient(tracking_uri=cfg.tracking)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.metrics["screen_trials"] == 12
    assert "screen_rank_spearman" in parent.data.metrics
    local = client.download_artifacts(result.parent_run_id, "screen/screened.csv", str(tmp_path))
    rows = list(csv.DictReader(open(local)))
    assert len(rows) == 12
    assert {int(r["promoted_to"]) for r in rows if r["promoted_to"]} == {t.number for t in promoted}
    # one MLflow run per fine-tuned trial, none per screened policy
    exp = client.get_experiment_by_name(cfg.name)
    trial_runs = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("autocompress.role") == "trial"
    ]
    assert len(trial_runs) == 4
    for run in trial_runs:
        assert ("screen_val_accuracy" in run.data.metrics) == (run.data.tags["origin"] != "anchor")


def test_screen_is_deterministic_per_policy(tmp_path, fmnist_root):
    from autocompress.baseline import prepare
    from autocompress.hardware.latency import ProxyLatencyModel
    from autocompress.search.trials import TrialEvaluator

    cfg = load_experiment(tiny_config(tmp_path, fmnist_root))
    prep = prepare(cfg, log=_quiet)

    lat = ProxyLatencyModel(prep.baseline.model, prep.data.example_input(1))
    ev = TrialEvaluator(cfg, prep.baseline, prep.data, lat)
    assert len(ev.screen_val) == 100
    harsh = prep.space.policy_from_params(prep.space.extreme(aggressive=True))
    gentle = prep.space.policy_from_params(prep.space.extreme(aggressive=False))
    a, b = ev.screen(harsh), ev.screen(harsh)
    assert a.val_accuracy == b.val_accuracy and a.size_bytes == b.size_bytes
    assert ev.screen(gentle).size_bytes > a.size_bytes


def test_budget_stops_both_stages(tmp_path, fmnist_root):
    """With ``budget_s`` the screen stops at its share and the fine-tuned stage at the end of
    the budget, far short of the trial counts."""
    path = tiny_config(
        tmp_path, fmnist_root, search__screen_trials=500, search__n_trials=200, search__budget_s=15
    )
    cfg = load_experiment(path)
    result = search(cfg, log=_quiet)
    screen = optuna.load_study(study_name=cfg.name + SCREEN_SUFFIX, storage=cfg.optuna_storage)
    assert 0 < len(screen.get_trials(states=(TrialState.COMPLETE,))) < 500
    assert result.n_complete < 200
    assert result.front  # what did run is on the record


def test_diverse_order_ranks_then_spreads():
    # (accuracy max, size min): three non-dominated points, one dominated, one duplicate
    v = np.array([[0.9, 10.0], [0.8, 5.0], [0.85, 7.0], [0.7, 9.0], [0.9, 10.0]])
    order = diverse_order(v, ["maximize", "minimize"])
    assert sorted(order) == list(range(5))
    assert set(order[:2]) == {0, 1}  # the extremes of the first front (infinite crowding)
    assert order[2] == 2
    assert set(order[3:]) == {3, 4}


def test_hypervolume_order_takes_the_biggest_box_first_and_skips_what_adds_nothing():
    from autocompress.search.pareto import hypervolume, hypervolume_order

    ref = [1.0, 1.0]
    pts = np.array([[0.1, 0.9], [0.5, 0.5], [0.9, 0.1], [0.6, 0.6], [1.2, 0.0]])
    order = hypervolume_order(pts, ref)
    assert order[0] == 1  # the 0.25 box beats the 0.09 ones
    assert set(order) == {0, 1, 2}  # dominated (3) and outside the reference (4) left out
    # each step is the largest gain available
    assert hypervolume(pts[order[:2]], ref) >= max(
        hypervolume(pts[[order[0], i]], ref) for i in (0, 2)
    )
