"""What a search logs to MLflow besides metrics, and the short run descriptions shown in the runs
table: per trial (at its start, so running trials show it too) ``policy_layers.png``; per search
(at its end, on the parent run) the Pareto front as ``pareto/pareto_front.{csv,json,html,png}``,
its trial runs tagged ``pareto=true``, and ``pareto/hypervolume.{png,json}`` with the metric
series ``hypervolume_by_trial`` (step = trial number); per export (under the trial's run)
``export/latency.png``, ``throughput.png`` and ``activations.png``.

The front's files are written or the search fails; the other figures are best effort: a
rendering or logging failure is reported with ``warnings.warn`` and never fails a trial, a
search or an export.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import plots
from ..config import ExperimentConfig
from ..policy import CompressionPolicy
from ..tracking import Tracker
from .pareto import hypervolume_history
from .study import FrontPoint, StudyInfo, front_points, trial_records

TRIAL_CHART = "policy_layers"
HV_METRIC = "hypervolume_by_trial"


def _best_effort(what: str, fn: Callable[[], Any], default: Any = None) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a figure must never stop the search
        warnings.warn(f"{what}: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=3)
        return default


# -- descriptions ------------------------------------------------------------------------------
def trial_description(
    policy: Mapping[str, Any], metrics: Mapping[str, float] | None = None, *, pareto: bool = False
) -> str:
    """The run's ``mlflow.note.content``: metrics (when known) and the policy in one line each,
    e.g. ``acc 0.9237 · 0.022 ms · 38.3 KB (9.9x) · Pareto`` / ``5 layers, mean sparsity ...``."""
    summary = CompressionPolicy.from_dict(policy).summary() if policy else "no policy"
    if not metrics:
        return summary
    parts = [f"acc {metrics['val_accuracy']:.4f}"]
    if metrics.get("latency_ms") is not None:
        parts.append(f"{metrics['latency_ms']:.3f} ms")
    if metrics.get("size_kb") is not None:
        ratio = metrics.get("compression_ratio")
        parts.append(f"{metrics['size_kb']:.1f} KB" + (f" ({ratio:.1f}x)" if ratio else ""))
    if pareto:
        parts.append("Pareto")
    return " · ".join(parts) + "\n\n" + summary


def search_description(
    name: str, *, n_complete: int, n_failed: int, front_size: int, hypervolume: float
) -> str:
    """The parent run's ``mlflow.note.content`` at the end of a search."""
    return (
        f"search {name}: {n_complete} complete, {n_failed} failed trials; "
        f"{front_size} on the Pareto front, hypervolume {hypervolume:.4f}. "
        "Artifacts: pareto/pareto_front.html (hover for policies), pareto/hypervolume.png."
    )


# -- per trial ---------------------------------------------------------------------------------
def log_trial_chart(tracker, run_id: str, policy: Mapping[str, Any], *, title: str) -> bool:
    """Draw the per-layer chart of ``policy`` (PNG) and log it at the root of the
    trial's run. Returns False (with a warning) if it could not. ``tracker`` is a
    :class:`autocompress.tracking.Tracker`."""

    def run() -> bool:
        with tempfile.TemporaryDirectory(prefix="ac-trial-") as tmp:
            png = plots.policy_png(policy, Path(tmp) / f"{TRIAL_CHART}.png", title=title)
            tracker.log_artifacts(run_id, [png])
        return True

    return _best_effort(f"per-layer chart of run {run_id}", run, False)


# -- per search --------------------------------------------------------------------------------
def _log_metric_series(tracker, run_id: str, key: str, points: list[tuple[int, float]]) -> None:
    """Log ``(step, value)`` points, skipping those already logged (a resumed search)."""
    from mlflow.entities import Metric

    done = {(m.step, m.value) for m in tracker.client.get_metric_history(run_id, key)}
    now = int(time.time() * 1000)
    new = [(int(step), float(v)) for step, v in points if (int(step), float(v)) not in done]
    tracker.client.log_batch(run_id, metrics=[Metric(key, v, now, step) for step, v in new])


def log_search_figures(
    tracker, run_id: str, info, baseline: Mapping[str, float], out_dir: Path, *, title: str
) -> list[Path]:
    """Hypervolume over trials (PNG + JSON + metric series), written to ``out_dir`` (the
    search's ``pareto/`` folder) and logged on the parent run. ``info`` is the search's
    ``StudyInfo``. Returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def hv() -> list[Path]:
        history = hypervolume_history(trial_records(info), info.objectives, baseline)
        data = out_dir / "hypervolume.json"
        data.write_text(json.dumps({"objectives": info.objectives, "history": history}, indent=1))
        fig = plots.hypervolume_png(history, out_dir / "hypervolume.png", title=title)
        tracker.log_artifacts(run_id, [data, fig], "pareto")
        _log_metric_series(
            tracker, run_id, HV_METRIC, [(h["trial"], h["hypervolume"]) for h in history]
        )
        return [data, fig]

    return _best_effort("hypervolume over trials", hv, [])


# -- the Pareto front --------------------------------------------------------------------------
_COLUMNS = ["trial", "val_accuracy", "latency_ms", "size_kb", "compression_ratio"]
_COLUMNS += ["weight_sparsity", "summary", "mlflow_run_id"]


def write_front(
    info: StudyInfo, cfg: ExperimentConfig, tracker: Tracker, parent: str, baseline: dict
) -> tuple[list[FrontPoint], list[Path]]:
    """Compute the front from the study, write and log its artifacts, tag the trial runs."""
    records = trial_records(info)
    front = front_points(info, records)
    rows = [r.row() for r in records]
    for r in rows:
        if r["mlflow_run_id"]:
            note = trial_description(r["policy"], r, pareto=r["pareto"])
            tags = {"pareto": str(r["pareto"]).lower(), "mlflow.note.content": note}
            tracker.log(r["mlflow_run_id"], tags=tags)
    front_table = [p.row() for p in front]
    # Staged in a folder of this process, then moved into place: workers that finish together
    # never write into each other's files.
    final = cfg.output_dir / "pareto"
    out = final / f".staging-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "pareto_front.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(front_table)
    json_path = out / "pareto_front.json"
    front_json = {"objectives": info.objectives, "baseline": baseline, "front": front_table}
    json_path.write_text(json.dumps(front_json, indent=2))
    title = f"{cfg.name}: {len(rows)} trials, {len(front)} on the Pareto front"
    figs = [
        plots.pareto_html(rows, out / "pareto_front.html", title=title),
        plots.pareto_png(rows, out / "pareto_front.png", title=title),
    ]
    placed = []
    for p in [csv_path, json_path, *figs]:
        placed.append(final / p.name)
        os.replace(p, placed[-1])
    shutil.rmtree(out, ignore_errors=True)
    tracker.log_artifacts(parent, placed, "pareto")
    return front, placed


# -- per export --------------------------------------------------------------------------------
def log_export_figures(tracker, run_id: str | None, result: Mapping[str, Any], out_dir: Path):
    """``throughput.png`` (images/s of each ONNX form per batch size and thread count),
    ``activations.png`` (+ the activation table) and ``latency.png`` (predicted vs measured vs
    baseline) from an export result (``to_dict()`` of ``ExportResult``), written to ``out_dir``
    and logged under ``export/`` of the trial's run when ``run_id`` is given. Returns the
    latency figure, or None if it could not be drawn."""
    trial, out = result["trial"], Path(out_dir)

    def logged(what: str, draw: Callable[..., Path], *args, **kw) -> Path | None:
        def run() -> Path:
            fig = draw(*args, **kw)
            if run_id:
                tracker.log_artifacts(run_id, [fig], "export")
            return fig

        return _best_effort(f"export {what} figure", run)

    if forms := result.get("forms"):
        title = f"trial {trial}: throughput of each ONNX form"
        logged("throughput", plots.throughput_png, forms, out / "throughput.png", title=title)
    if acts := result.get("activations"):
        if run_id:
            table = "export/activations.json"
            _best_effort("export activation table", lambda: tracker.log_table(run_id, acts, table))
        title = f"trial {trial}: activations before / after compression"
        logged("activation", plots.activations_png, acts, out / "activations.png", title=title)
    return logged("latency", export_latency_png, result, out / "latency.png")


def export_latency_png(result: Mapping[str, Any], path: Path) -> Path:
    """Predicted against measured and baseline latency of an export result."""
    return plots.latency_png(
        predicted_ms=result["predicted_latency_ms"],
        measured_ms=result["measured_latency_ms"],
        baseline_ms=result.get("baseline_latency_ms"),
        path=path,
        title=f"trial {result['trial']}: latency on the target",
    )
