"""The Pareto front of a search as artifacts: CSV, JSON, interactive HTML and PNG, logged on the
parent run, the front's trial runs tagged ``pareto=true``; and its normalised hypervolume."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

from ..config import ExperimentConfig
from ..plots import pareto_html, pareto_png
from ..reporting.figures import trial_description
from ..tracking import Tracker
from .pareto import hypervolume, to_minimization
from .study import StudyInfo, front_rows, trial_rows

__all__ = ["front_hypervolume", "write_front"]

_COLUMNS = [
    "trial",
    "val_accuracy",
    "latency_ms",
    "size_kb",
    "compression_ratio",
    "weight_sparsity",
    "summary",
    "mlflow_run_id",
]


def front_hypervolume(
    front: list[dict], objectives: list[str], directions: list[str], baseline: dict
) -> float:
    """Hypervolume of (1 - accuracy, latency / baseline, size / baseline) against the reference
    point (1, 1.1, 1.1): comparable between runs of the same experiment."""
    if not front:
        return 0.0
    scale = {"accuracy": 1.0, "latency": baseline["latency_ms"], "size": baseline["size_kb"]}
    pts = to_minimization([r["values"] for r in front], directions)
    ref = []
    for j, o in enumerate(objectives):
        if o == "accuracy":
            pts[:, j] = 1.0 + pts[:, j]  # -acc -> 1 - acc
            ref.append(1.0)
        else:
            pts[:, j] = pts[:, j] / scale[o]
            ref.append(1.1)
    return hypervolume(pts, ref)


def write_front(
    info: StudyInfo, cfg: ExperimentConfig, tracker: Tracker, parent: str, baseline: dict
) -> tuple[list[dict], list[Path]]:
    """Compute the front from the study, write and log its artifacts, tag the trial runs."""
    rows = trial_rows(info)
    front = front_rows(info, rows)
    on_front = {r["trial"] for r in front}
    for r in rows:
        r["pareto"] = r["trial"] in on_front
        if r["mlflow_run_id"]:
            note = trial_description(r["policy"] or {}, r, pareto=r["pareto"])
            tracker.set_tags(
                r["mlflow_run_id"],
                {"pareto": str(r["pareto"]).lower(), "mlflow.note.content": note},
            )
    # Staged in a folder of this process, then moved into place: workers that finish together
    # never write into each other's files.
    final = cfg.output_dir / "pareto"
    out = final / f".staging-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "pareto_front.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(front)
    json_path = out / "pareto_front.json"
    json_path.write_text(
        json.dumps({"objectives": info.objectives, "baseline": baseline, "front": front}, indent=2)
    )
    title = f"{cfg.name}: {len(rows)} trials, {len(front)} on the Pareto front"
    figs = [
        pareto_html(rows, out / "pareto_front.html", title=title),
        pareto_png(rows, out / "pareto_front.png", title=title),
    ]
    placed = []
    for p in [csv_path, json_path, *figs]:
        placed.append(final / p.name)
        os.replace(p, placed[-1])
    shutil.rmtree(out, ignore_errors=True)
    tracker.log_artifacts(parent, placed, "pareto")
    return front, placed
