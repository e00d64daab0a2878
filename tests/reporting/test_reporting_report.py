"""On a finished tiny search: the figures logged to MLflow, and ``autocompress report``."""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest
from conftest import tiny_config

from autocompress import load_experiment, search
from autocompress.cli import main
from autocompress.reporting.report import collect, write_report
from autocompress.search.figures import (
    HV_METRIC,
    log_export_figures,
    log_search_figures,
    log_trial_chart,
    trial_description,
)
from autocompress.search.study import load_study
from autocompress.sensitivity.analysis import LevelResult, SensitivityTable
from autocompress.tracking import Tracker


@pytest.fixture(scope="module")
def done(tmp_path_factory, fmnist_root):
    """A finished tiny search (4 trials) and its config file."""
    tmp = tmp_path_factory.mktemp("report")
    path = tiny_config(tmp, fmnist_root, search__n_trials=4)
    cfg = load_experiment(path)
    result = search(cfg, log=lambda *_: None)
    return path, cfg, result


def _runs(cfg):
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking)
    exp = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("autocompress.role") == "search")
    trials = [r for r in runs if r.data.tags.get("autocompress.role") == "trial"]
    return client, parent, trials


def _artifacts(client, run_id, path=None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_search_figures_logged_on_parent(done, tmp_path):
    _, cfg, result = done
    client, parent, _ = _runs(cfg)
    info = load_study(cfg)
    tracker = Tracker(cfg.tracking, cfg.name)
    out = tmp_path / "pareto"
    paths = log_search_figures(tracker, parent.info.run_id, info, result.baseline, out, title="t")
    assert {p.name for p in paths} == {"hypervolume.json", "hypervolume.png"}
    assert {"pareto/hypervolume.json", "pareto/hypervolume.png"} <= _artifacts(
        client, parent.info.run_id, "pareto"
    )
    series = client.get_metric_history(parent.info.run_id, HV_METRIC)
    finished = {t.number for t in info.study.trials if t.state.is_finished()}
    assert {m.step for m in series} == finished  # one per trial
    last = max(series, key=lambda m: m.step).value
    # the same normalisation as the search's final metric
    assert last == pytest.approx(client.get_run(parent.info.run_id).data.metrics["hypervolume"])
    history = json.loads((out / "hypervolume.json").read_text())["history"]
    assert history[-1]["hypervolume"] == pytest.approx(last)
    # logging again (a resumed search) adds no duplicate points
    log_search_figures(tracker, parent.info.run_id, info, result.baseline, out, title="t")
    assert len(client.get_metric_history(parent.info.run_id, HV_METRIC)) == len(series)


def test_trial_chart_and_description(done):
    _, cfg, _ = done
    client, _, trials = _runs(cfg)
    run = trials[0]
    policy = json.loads(open(client.download_artifacts(run.info.run_id, "policy.json")).read())
    tracker = Tracker(cfg.tracking, cfg.name)
    assert log_trial_chart(tracker, run.info.run_id, policy, title="trial 0")
    assert "policy_layers.png" in _artifacts(client, run.info.run_id)
    text = trial_description(policy, run.data.metrics, pareto=True)
    first, _, rest = text.partition("\n\n")
    assert first.startswith(f"acc {run.data.metrics['val_accuracy']:.4f}") and "Pareto" in first
    assert rest.startswith("3 layers")


def test_trial_chart_failure_warns_not_raises(done):
    _, cfg, _ = done
    tracker = Tracker(cfg.tracking, cfg.name)
    with pytest.warns(RuntimeWarning, match="per-layer chart"):
        assert log_trial_chart(tracker, "no-such-run", {"layers": {}}, title="x") is False


def _fake_export(cfg, row) -> dict:
    out = cfg.output_dir / "export" / f"trial-{row['trial']:03d}"
    out.mkdir(parents=True, exist_ok=True)
    v = {
        "trial": row["trial"],
        "policy": row["policy"],
        "test_accuracy": 0.5,
        "torch_test_accuracy": 0.51,
        "baseline_test_accuracy": 0.55,
        "val_accuracy_search": row["val_accuracy"],
        "measured_latency_ms": 0.02,
        "predicted_latency_ms": 0.01,
        "baseline_latency_ms": 0.03,
        "packed_bytes": 2000,
        "fp32_state_dict_bytes": 9000,
        "compression_ratio": 4.5,
        "speedup": 1.5,
        "packed_reload_exact": True,
        "int8_layers": ["conv1"],
        "seconds": 1.0,
        "artifacts": {"packed": str(out / "model.acpk")},
        "registered_model": {"name": "tiny", "version": "1", "alias": "picked"},
    }
    (out / "verification.json").write_text(json.dumps(v))
    return v


def test_report_shows_baseline_front_and_export(done, tmp_path):
    _, cfg, result = done
    assert result.front
    data = collect(cfg)
    assert data.status["complete"] == 4 and data.baseline["val_accuracy"] > 0
    assert {r.trial for r in data.front} == {p.trial for p in result.front}
    assert data.knee in {r.trial for r in data.front}
    assert data.exported is None

    files = write_report(cfg, tmp_path / "a", log_to_mlflow=False)
    page = files.html.read_text()
    assert "Baseline" in page and "Pareto front" in page and "No model exported yet" in page
    for p in result.front:  # every front point in the table, its policy beside it
        assert f"<tr><td>{p.trial}" in page
    assert page.count("<details><summary>") >= len(result.front)
    assert "<script" not in page and 'src="http' not in page  # self-contained
    assert page.count("data:image/png;base64,") >= 2  # the front and the hypervolume
    assert (files.html.parent / "pareto_front.png").is_file()

    exported = _fake_export(cfg, result.front[0].row())
    try:
        files = write_report(cfg, tmp_path / "b", log_to_mlflow=False)
        page = files.html.read_text()
        assert f"Trial {exported['trial']}" in page and "exported</span>" in page
        assert "0.0200 / 0.0100 ms" in page  # measured / predicted latency
        assert {"latency", "export_policy"} <= set(files.figures)
        assert "name=tiny version=1 alias=picked" in page
    finally:
        shutil.rmtree(cfg.output_dir / "export")

    sens = cfg.output_dir / "sensitivity"
    shutil.rmtree(sens, ignore_errors=True)  # the search's own stage: replaced by a fake table
    sens.mkdir()
    SensitivityTable([LevelResult("conv1", "bits", 4, acc_drop=2.0)]).save(
        sens / "sensitivity_table.json"
    )
    try:
        files = write_report(cfg, tmp_path / "c", log_to_mlflow=False)
        assert files.figures["sensitivity"].is_file()
        assert "Each layer compressed alone" in files.html.read_text()
    finally:
        shutil.rmtree(sens)

    v = dict(exported, trial=result.front[0].trial)
    fig = log_export_figures(Tracker(cfg.tracking, cfg.name), None, v, tmp_path)
    assert fig == tmp_path / "latency.png" and fig.is_file()


def test_report_command_logs_to_mlflow(done, capsys):
    path, cfg, _ = done
    assert main(["report", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["html"] == str(cfg.output_dir / "report" / "report.html")
    assert out["mlflow_logged"] is True
    client, parent, _ = _runs(cfg)
    assert "report/report.html" in _artifacts(client, parent.info.run_id, "report")


def test_report_without_search_is_a_clear_error(tmp_path, fmnist_root, capsys):
    path = tiny_config(tmp_path, fmnist_root)
    assert main(["report", str(path)]) == 1
    assert "run 'autocompress search' first" in capsys.readouterr().err
