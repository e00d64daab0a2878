"""The trial table and the progress line read back from a study."""

from __future__ import annotations

import time

import optuna

from autocompress.metrics import TrialMetrics
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.search.study import StudyInfo, front_points, progress_tail, trial_records


def _study() -> StudyInfo:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, size, cons in [(0.9, 20.0, 0.0), (0.8, 10.0, 0.0), (0.7, 30.0, 0.0), (0.95, 5, 1.0)]:
        metrics = TrialMetrics(acc, 0.3, 1.0, int(size * 1024), 2.0, 0.5, 0.1).to_dict()
        policy = CompressionPolicy({"fc": LayerPolicy(0.5, 4)}).to_dict() if acc < 0.9 else {}
        attrs = {"metrics": metrics, "constraints": [cons], "policy": policy}
        study.add_trial(optuna.trial.create_trial(values=[acc, size], user_attrs=attrs))
    return StudyInfo(study, ["accuracy", "size"])


def test_records_and_front_of_the_feasible_trials():
    info = _study()
    records = trial_records(info)
    assert [r.feasible for r in records] == [True, True, True, False]
    assert [r.pareto for r in records] == [True, True, False, False]  # trial 2 is dominated
    assert records[0].summary == "no compression" and records[1].policy["fc"].bits == 4
    assert records[1].size_kb == 10.0 and records[1].values == (0.8, 10.0)
    row = records[1].row()  # the table / JSON form
    assert row["trial"] == 1 and row["size_kb"] == 10.0 and row["pareto"] and row["feasible"]
    assert row["policy"]["layers"]["fc"]["bits"] == 4
    assert [p.trial for p in front_points(info)] == [0, 1]  # the infeasible one is left out


def test_progress_tail_reports_the_front_and_caps_the_eta_at_the_deadline():
    empty = StudyInfo(
        optuna.create_study(directions=["maximize", "minimize"]), ["accuracy", "size"]
    )
    assert progress_tail(empty, 5, 10, None) == "front empty | 5s elapsed, ETA 10s"
    tail = progress_tail(_study(), 75, 1000, time.monotonic() + 30.5)
    assert tail == "front 2 pts, best acc 0.9000, smallest 10.0 KB | 1m15s elapsed, ETA 30s"


def test_samplers_by_registered_name_and_by_module_callable(tmp_path, fmnist_root):
    """``search.sampler`` names a registered factory or a ``module:callable`` beside the
    experiment file; the study of the search (and of its screen) uses it; a wrong name or a
    factory that returns no sampler is a one-line ConfigError."""
    import pytest
    from conftest import tiny_config

    import autocompress as ac
    from autocompress.errors import ConfigError
    from autocompress.search.study import _sampler

    calls = []

    @ac.register_sampler("test-qmc")
    def _qmc(*, seed, n_trials, screen, population_size, constraints_func):
        calls.append(screen)
        return optuna.samplers.QMCSampler(seed=seed)

    cfg = ac.load_experiment(tiny_config(tmp_path, fmnist_root, search__sampler="test-qmc"))
    assert isinstance(_sampler(cfg, 10, screen=True), optuna.samplers.QMCSampler)
    assert calls == [True]
    (tmp_path / "my_samplers.py").write_text(
        "import optuna\n"
        "def gp(*, seed, **_):\n    return optuna.samplers.RandomSampler(seed=seed + 1)\n"
        "def broken(**_):\n    return 42\n"
    )
    cfg = ac.load_experiment(tiny_config(tmp_path, fmnist_root, search__sampler="my_samplers:gp"))
    assert isinstance(_sampler(cfg, 10), optuna.samplers.RandomSampler)
    cfg = cfg.model_copy(
        update={"search": cfg.search.model_copy(update={"sampler": "my_samplers:broken"})}
    )
    with pytest.raises(ConfigError, match="search.sampler: 'my_samplers:broken' returned int"):
        _sampler(cfg, 10)
    with pytest.raises(ConfigError, match="search.sampler: module 'my_samplers' has no"):
        ac.load_experiment(tiny_config(tmp_path, fmnist_root, search__sampler="my_samplers:nope"))
    with pytest.raises(ConfigError, match="unknown sampler 'grid'"):
        ac.load_experiment(tiny_config(tmp_path, fmnist_root, search__sampler="grid"))
