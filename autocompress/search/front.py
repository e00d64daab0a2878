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
from ..tracking import Tracker
from .figures import trial_description
from .study import StudyInfo, front_rows, trial_rows

_COLUMNS = ["trial", "val_accuracy", "latency_ms", "size_kb", "compression_ratio"]
_COLUMNS += ["weight_sparsity", "summary", "mlflow_run_id"]


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
            tags = {"pareto": str(r["pareto"]).lower(), "mlflow.note.content": note}
            tracker.set_tags(r["mlflow_run_id"], tags)
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
