"""``autocompress report``: one self-contained HTML page (``report.html``, PNG figures beside it)
about a search: baseline, progress, the Pareto front as a plot and a table, hypervolume over
trials, the sensitivity heat map when present, and the exported model with its verification.

Everything is read from what the search and export stored (the Optuna study, ``output_dir``);
nothing is recomputed, so it also works while a search runs. By default the HTML is also logged
on the search's MLflow parent run as ``report/report.html``.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .. import plots
from ..config import ExperimentConfig
from ..export.summary import fmt
from ..search.history import hypervolume_history
from ..sensitivity.table import SensitivityTable
from ..tracking import mask_secrets


@dataclass
class ReportData:
    """What the report shows, gathered from the study and ``output_dir``."""

    name: str
    source: str
    output_dir: Path
    status: dict  # autocompress.status(): complete / failed / running / elapsed_s / n_trials
    objectives: list[str]
    baseline: dict | None
    rows: list[dict]  # every complete trial (trial_rows), with "pareto"
    front: list[dict]
    history: list[dict]
    knee: int | None  # trial number of the front's knee
    sensitivity: SensitivityTable | None
    exports: list[dict]  # verification.json of each export, oldest first, + "dir"
    tracking: str  # masked
    parent_run_id: str | None
    generated: str = field(default_factory=lambda: _dt.datetime.now().strftime("%Y-%m-%d %H:%M"))

    @property
    def exported(self) -> dict | None:
        """The most recent export (the picked model)."""
        return self.exports[-1] if self.exports else None


@dataclass
class ReportFiles:
    html: Path
    figures: dict[str, Path]
    mlflow_logged: bool = False


def _exports(output_dir: Path) -> list[dict]:
    found = []
    for path in (output_dir / "export").glob("trial-*/verification.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data["dir"] = str(path.parent)
        data["_mtime"] = path.stat().st_mtime
        found.append(data)
    return sorted(found, key=lambda d: d.pop("_mtime"))


def _baseline(info, output_dir: Path) -> dict | None:
    base = info.study.user_attrs.get("baseline")
    if base:
        return dict(base)
    path = output_dir / "pareto" / "pareto_front.json"
    try:
        return json.loads(path.read_text()).get("baseline")
    except (OSError, ValueError):
        return None


def _sensitivity(output_dir: Path) -> SensitivityTable | None:
    try:
        return SensitivityTable.load(output_dir / "sensitivity" / "sensitivity_table.json")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def collect(cfg: ExperimentConfig) -> ReportData:
    """Read the study and the output folder (safe while a search runs)."""
    import numpy as np

    from ..api import status
    from ..search.pareto import knee_index
    from ..search.study import front_rows, load_study, trial_rows

    st = status(cfg)
    info = load_study(cfg)
    rows = trial_rows(info)
    front = front_rows(info, rows)
    on_front = {r["trial"] for r in front}
    for r in rows:
        r["pareto"] = r["trial"] in on_front
    baseline = _baseline(info, cfg.output_dir)
    history = hypervolume_history(rows, info.objectives, baseline) if baseline else []
    knee = None
    if front:
        knee = front[knee_index(np.array([r["values"] for r in front]), info.directions)]["trial"]
    return ReportData(
        name=cfg.name,
        source=str(cfg.source or ""),
        output_dir=cfg.output_dir,
        status={k: v for k, v in st.items() if k != "front"},
        objectives=list(info.objectives),
        baseline=baseline,
        rows=rows,
        front=front,
        history=history,
        knee=knee,
        sensitivity=_sensitivity(cfg.output_dir),
        exports=_exports(cfg.output_dir),
        tracking=mask_secrets(cfg.tracking),
        parent_run_id=info.study.user_attrs.get("mlflow_parent_run_id"),
    )


def fmt_seconds(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def report_figures(data: ReportData, folder: Path) -> dict[str, Path]:
    """The PNG figures the HTML report embeds, written to ``folder``."""
    figs: dict[str, Path] = {}
    if data.rows:
        title = f"{data.name}: {len(data.rows)} trials, {len(data.front)} on the Pareto front"
        figs["pareto"] = plots.pareto_png(data.rows, folder / "pareto_front.png", title=title)
    if data.history:
        figs["hypervolume"] = plots.hypervolume_png(
            data.history, folder / "hypervolume.png", title="hypervolume of the front"
        )
    drawn = data.output_dir / "sensitivity" / "sensitivity_heatmap.png"  # the stage's own
    if drawn.is_file():
        figs["sensitivity"] = Path(shutil.copy(drawn, folder / drawn.name))
    elif data.sensitivity is not None:
        from ..sensitivity.report import heatmap_png

        figs["sensitivity"] = heatmap_png(
            data.sensitivity, folder / drawn.name, title=f"{data.name}: sensitivity"
        )
    exp = data.exported
    if exp and exp.get("measured_latency_ms") is not None:
        figs["latency"] = plots.latency_png(
            predicted_ms=exp["predicted_latency_ms"],
            measured_ms=exp["measured_latency_ms"],
            baseline_ms=exp.get("baseline_latency_ms"),
            path=folder / "export_latency.png",
            title=f"trial {exp['trial']}: latency on the target",
        )
        pol = exp.get("policy") or {}
        figs["export_policy"] = plots.policy_png(
            pol, folder / "export_policy.png", title=f"trial {exp['trial']}: per-layer policy"
        )
    return figs


def baseline_rows(b: dict) -> list[tuple[str, str]]:
    return [
        ("validation accuracy", fmt(b.get("val_accuracy"), ".4f")),
        ("test accuracy", fmt(b.get("test_accuracy"), ".4f")),
        ("latency (ONNX Runtime, measured)", fmt(b.get("latency_ms"), ".4f") + " ms"),
        ("packed size", fmt(b.get("size_kb"), ".1f") + " KB"),
        ("FP32 state_dict", fmt(b.get("fp32_state_dict_bytes"), "d") + " bytes"),
        ("parameters", fmt(b.get("params"), "d")),
    ]


def summary_line(d: ReportData) -> str:
    st = d.status
    hv = f", hypervolume {d.history[-1]['hypervolume']:.4f}" if d.history else ""
    return (
        f"{st['complete']} of {st['n_trials']} trials complete, {st['failed']} failed, "
        f"{st['running']} running; {fmt_seconds(st['elapsed_s'])} of trials; "
        f"{len(d.front)} on the Pareto front{hv}"
    )


def front_table_rows(d: ReportData) -> list[list[str]]:
    """Cells of the front table: trial, accuracy (and change), latency, size, ratio, policy."""
    base = d.baseline or {}
    out = []
    for r in d.front:
        delta = ""
        if base.get("val_accuracy") is not None and r["val_accuracy"] is not None:
            delta = f" ({(r['val_accuracy'] - base['val_accuracy']) * 100:+.2f})"
        marks = "".join(
            m
            for m, on in (
                (" knee", r["trial"] == d.knee),
                (" exported", d.exported is not None and r["trial"] == d.exported["trial"]),
            )
            if on
        )
        out.append(
            [
                f"{r['trial']}{marks}",
                f"{fmt(r['val_accuracy'], '.4f')}{delta}",
                fmt(r["latency_ms"], ".3f"),
                fmt(r["size_kb"], ".1f"),
                fmt(r["compression_ratio"], ".1f") + "x",
                r["summary"],
            ]
        )
    return out


FRONT_HEADER = [
    "trial",
    "val accuracy (change, points)",
    "latency ms",
    "size KB",
    "ratio",
    "policy",
]
