"""search.report_test_accuracy (for benchmarks): each trial also carries its test accuracy."""

from __future__ import annotations

from conftest import tiny_config
from optuna.trial import TrialState

from autocompress import load_experiment, search
from autocompress.search.study import load_study


def _metrics(cfg) -> list[dict]:
    info = load_study(cfg)
    return [
        t.user_attrs["metrics"]
        for t in info.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]


def test_test_accuracy_only_when_enabled(tmp_path, fmnist_root):
    on = load_experiment(
        tiny_config(
            tmp_path,
            fmnist_root,
            search__n_trials=2,
            search__report_test_accuracy=True,
            sensitivity__enabled=False,
            data__test_subset=200,
            latency__target="proxy",
        )
    )
    search(on, log=lambda *_: None)
    rows = _metrics(on)
    assert len(rows) == 2
    assert all(0.0 <= m["test_accuracy"] <= 1.0 for m in rows)

    off = load_experiment(on.source, ["search.report_test_accuracy=false", "name=tiny-off"])
    search(off, log=lambda *_: None)
    rows = _metrics(off)
    assert len(rows) == 2
    assert all("test_accuracy" not in m for m in rows)
