"""Figures logged to MLflow, and the short run descriptions shown in the runs table.

- per trial (at its start, so running trials show it too): ``policy_layers.png`` next to
  ``policy.json`` — :func:`log_trial_chart`;
- per search (at its end, on the parent run): ``pareto/hypervolume.{png,json}`` and the metric
  series ``hypervolume_by_trial`` (step = trial number) — :func:`log_search_figures`;
- per export (under the trial's run): ``export/latency.png``, predicted against measured latency
  — :func:`log_export_figures`.

Figures are best effort: a rendering or logging failure is reported with ``warnings.warn`` and
never fails a trial, a search or an export.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import plots
from ..policy import CompressionPolicy
from .history import hypervolume_history

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
    metrics = [
        Metric(key, float(v), now, int(step))
        for step, v in points
        if (int(step), float(v)) not in done
    ]
    for i in range(0, len(metrics), 500):
        tracker.client.log_batch(run_id, metrics=metrics[i : i + 500])


def log_search_figures(
    tracker, run_id: str, info, baseline: Mapping[str, float], out_dir: Path, *, title: str
) -> list[Path]:
    """Hypervolume over trials (PNG + JSON + metric series), written to ``out_dir`` (the
    search's ``pareto/`` folder) and logged on the parent run. ``info`` is the search's
    ``StudyInfo``. Returns the files written."""
    from .study import trial_rows

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def hv() -> list[Path]:
        history = hypervolume_history(trial_rows(info), info.objectives, baseline)
        data = out_dir / "hypervolume.json"
        data.write_text(json.dumps({"objectives": info.objectives, "history": history}, indent=1))
        fig = plots.hypervolume_png(history, out_dir / "hypervolume.png", title=title)
        tracker.log_artifacts(run_id, [data, fig], "pareto")
        _log_metric_series(
            tracker, run_id, HV_METRIC, [(h["trial"], h["hypervolume"]) for h in history]
        )
        return [data, fig]

    return _best_effort("hypervolume over trials", hv, [])


# -- per export --------------------------------------------------------------------------------
def log_export_figures(tracker, run_id: str | None, result: Mapping[str, Any], out_dir: Path):
    """``throughput.png`` (images/s of each ONNX form per batch size and thread count),
    ``activations.png`` (+ the activation table) and ``latency.png`` (predicted vs measured vs
    baseline) from an export result (``to_dict()`` of ``ExportResult``), written to ``out_dir``
    and logged under ``export/`` of the trial's run when ``run_id`` is given. Returns the
    latency figure, or None if it could not be drawn."""
    trial, out = result["trial"], Path(out_dir)

    def logged(label: str, draw) -> Path | None:
        def run() -> Path | None:
            fig = draw()
            if fig is not None and run_id:
                tracker.log_artifacts(run_id, [fig], "export")
            return fig

        return _best_effort(label, run)

    forms, acts = result.get("forms"), result.get("activations")
    if forms:
        title = f"trial {trial}: throughput of each ONNX form"
        logged(
            "export throughput figure",
            lambda: plots.throughput_png(forms, out / "throughput.png", title=title),
        )
    if acts:
        if run_id:
            _best_effort(
                "export activation table",
                lambda: tracker.log_table(run_id, acts, "export/activations.json"),
            )
        title = f"trial {trial}: activations before / after compression"
        logged(
            "export activation figure",
            lambda: plots.activations_png(acts, out / "activations.png", title=title),
        )
    return logged(
        "export latency figure",
        lambda: plots.latency_png(
            predicted_ms=result["predicted_latency_ms"],
            measured_ms=result["measured_latency_ms"],
            baseline_ms=result.get("baseline_latency_ms"),
            path=out / "latency.png",
            title=f"trial {trial}: latency on the target",
        ),
    )
