"""The stage a search runs when ``sensitivity.enabled``: the table, the shaped space the screen
samples, MLflow files, and the ``autocompress sensitivity`` command."""

from __future__ import annotations

import json

import mlflow
import optuna
import pytest
from conftest import tiny_config

from autocompress import load_experiment
from autocompress.baseline import prepare
from autocompress.cli import main
from autocompress.sensitivity import SensitivitySettings, SensitivityStage
from autocompress.tracking import Tracker

QUIET = {"log": lambda *_: None}
SETTINGS = SensitivitySettings(enabled=True, images=150, estimator_images=64, max_drop=5.0)


@pytest.fixture(scope="module")
def prep(tmp_path_factory, fmnist_root):
    tmp = tmp_path_factory.mktemp("stage")
    cfg = load_experiment(tiny_config(tmp, fmnist_root, baseline__epochs=4))
    return prepare(cfg, **QUIET)


@pytest.fixture(scope="module")
def stage(prep):
    return SensitivityStage.start(prep, SETTINGS, **QUIET)


def test_disabled_stage_is_none(prep):
    assert SensitivityStage.start(prep, SensitivitySettings(), **QUIET) is None


def test_log_to_mlflow(prep, stage, tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", "sens", tmp_path / "art")
    run = tracker.client.create_run(tracker.experiment_id, run_name="x")
    stage.log(tracker, run.info.run_id)
    names = {a.path for a in tracker.client.list_artifacts(run.info.run_id, "sensitivity")}
    for n in ("sensitivity.csv", "sensitivity_table.json", "sensitivity_heatmap.png"):
        assert f"sensitivity/{n}" in names
    assert "sensitivity/sensitivity_shaped_space.json" in names
    metrics = tracker.client.get_run(run.info.run_id).data.metrics
    assert metrics["sensitivity_levels"] == len(stage.table.rows)
    assert metrics["sensitivity_space_after"] <= metrics["sensitivity_space_before"]


def test_cli_command(tmp_path, fmnist_root, capsys):
    path = tiny_config(tmp_path, fmnist_root)
    assert main(["sensitivity", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["levels"] > 0 and summary["cached"] is False
    cfg = load_experiment(path)
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking)
    exp = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([exp.experiment_id])
    assert any(r.data.tags.get("autocompress.role") == "sensitivity" for r in runs)
    assert (cfg.output_dir / "sensitivity" / "sensitivity.csv").is_file()
    # second call: from the cache
    assert main(["sensitivity", str(path), "--no-mlflow", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cached"] is True


def test_config_section_is_the_settings():
    from autocompress.config import ExperimentConfig

    assert ExperimentConfig.model_fields["sensitivity"].annotation is SensitivitySettings


def test_search_screens_the_shaped_space(tmp_path, fmnist_root):
    from autocompress import search
    from autocompress.search.study import SCREEN_SUFFIX

    path = tiny_config(
        tmp_path,
        fmnist_root,
        search__n_trials=3,
        sensitivity__enabled=True,
        sensitivity__images=100,
        sensitivity__max_drop=0.5,
    )
    cfg = load_experiment(path)
    search(cfg, log=lambda *_: None)
    # the search's own settings: the table comes from the cache the search wrote
    stage = SensitivityStage.start(prepare(cfg, **QUIET), cfg.sensitivity, **QUIET)
    allowed = stage.space.choices()
    screen = optuna.load_study(study_name=cfg.name + SCREEN_SUFFIX, storage=cfg.optuna_storage)
    assert screen.trials
    for t in screen.trials:
        for key, value in t.params.items():
            assert value in allowed[key], (key, value)
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
    search(load_experiment(path, ["search.n_trials=4"]), log=lambda *_: None)
    assert cached[0].stat().st_mtime == mtime
