"""``autocompress report``: one self-contained HTML page (``report.html``, PNG figures beside it)
about a search: baseline, progress, the Pareto front as a plot and a table, hypervolume over
trials, the sensitivity heat map when present, and the exported model with its verification.

Everything is read from what the search and export stored (the Optuna study, ``output_dir``);
nothing is recomputed, so it also works while a search runs. By default the HTML is also logged
on the search's MLflow parent run as ``report/report.html``.

The page is one file: inline CSS, the figures embedded as data URIs, the per-layer policy of each
front point in a collapsible table. No script and no external request, so it opens from disk,
from an e-mail or as an MLflow artifact.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import html
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .. import plots
from ..api import status
from ..config import ExperimentConfig
from ..export.run import export_rows, fmt
from ..search import FrontPoint, TrialRecord, front_points, load_study, trial_records
from ..search.figures import _best_effort, export_latency_png
from ..search.pareto import hypervolume_history, knee_index
from ..search.study import fmt_time
from ..sensitivity.analysis import SensitivityTable
from ..sensitivity.stage import heatmap_png
from ..tracking import Tracker, mask_secrets


@dataclass
class ReportData:
    """What the report shows, gathered from the study and ``output_dir``."""

    name: str
    source: str
    output_dir: Path
    status: dict  # autocompress.status(): complete / failed / running / elapsed_s / n_trials
    objectives: list[str]
    baseline: dict | None
    records: list[TrialRecord]  # every complete trial
    front: list[FrontPoint]
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
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text()) | {"dir": str(path.parent)}
            found.append((path.stat().st_mtime, data))
    return [data for _, data in sorted(found, key=lambda f: f[0])]


def _read(load, path: Path):
    """``load(path)``, or None when the file is missing or unreadable."""
    try:
        return load(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _baseline(info, output_dir: Path) -> dict | None:
    if base := info.study.user_attrs.get("baseline"):
        return dict(base)
    front = output_dir / "pareto" / "pareto_front.json"
    return _read(lambda p: json.loads(p.read_text()).get("baseline"), front)


def collect(cfg: ExperimentConfig) -> ReportData:
    """Read the study and the output folder (safe while a search runs)."""
    st = status(cfg)
    info = load_study(cfg)
    records = trial_records(info)
    front = front_points(info, records)
    baseline = _baseline(info, cfg.output_dir)
    history = hypervolume_history(records, info.objectives, baseline) if baseline else []
    knee = front[knee_index([p.values for p in front], info.directions)].trial if front else None
    sens = cfg.output_dir / "sensitivity"
    return ReportData(
        name=cfg.name,
        source=str(cfg.source or ""),
        output_dir=cfg.output_dir,
        status={k: v for k, v in st.items() if k != "front"},
        objectives=list(info.objectives),
        baseline=baseline,
        records=records,
        front=front,
        history=history,
        knee=knee,
        sensitivity=_read(SensitivityTable.load, sens / "sensitivity_table.json"),
        exports=_exports(cfg.output_dir),
        tracking=mask_secrets(cfg.tracking),
        parent_run_id=info.study.user_attrs.get("mlflow_parent_run_id"),
    )


def report_figures(data: ReportData, folder: Path) -> dict[str, Path]:
    """The PNG figures the HTML report embeds, written to ``folder``."""
    figs: dict[str, Path] = {}
    if data.records:
        title = f"{data.name}: {len(data.records)} trials, {len(data.front)} on the Pareto front"
        rows = [r.row() for r in data.records]
        figs["pareto"] = plots.pareto_png(rows, folder / "pareto_front.png", title=title)
    if data.history:
        figs["hypervolume"] = plots.hypervolume_png(
            data.history, folder / "hypervolume.png", title="hypervolume of the front"
        )
    drawn = data.output_dir / "sensitivity" / "sensitivity_heatmap.png"  # the stage's own
    if drawn.is_file():
        figs["sensitivity"] = Path(shutil.copy(drawn, folder / drawn.name))
    elif data.sensitivity is not None:
        figs["sensitivity"] = heatmap_png(
            data.sensitivity, folder / drawn.name, title=f"{data.name}: sensitivity"
        )
    if (exp := data.exported) and exp.get("measured_latency_ms") is not None:
        figs["latency"] = export_latency_png(exp, folder / "export_latency.png")
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
        f"{st['running']} running; {fmt_time(st['elapsed_s'])} of trials; "
        f"{len(d.front)} on the Pareto front{hv}"
    )


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1f272d;
background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
section{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:16px 20px;
margin:16px 0}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:0 0 10px}
.sub{color:#5f7281}
table{border-collapse:collapse;margin:6px 0}
td,th{padding:4px 10px;border-bottom:1px solid #eef0f2;text-align:left;vertical-align:top}
th{font-weight:600;background:#fafbfc}
td.num{font-variant-numeric:tabular-nums;text-align:right}
.plots{display:flex;flex-wrap:wrap;gap:12px}
img{max-width:100%;height:auto}
.tag{display:inline-block;font-size:11px;padding:0 6px;border-radius:8px;background:#fde2e2;
color:#9e102c;margin-left:4px}
.bar{display:inline-block;height:10px;vertical-align:middle;margin-right:6px}
details summary{cursor:pointer}
code{background:#f0f2f4;padding:1px 4px;border-radius:3px}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str] | None, rows: list[list[str]], num_cols: set[int] = frozenset()):
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = (
            f'<td class="num">{c}</td>' if j in num_cols else f"<td>{c}</td>"
            for j, c in enumerate(row)
        )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _kv(rows: list[tuple[str, str]]) -> str:
    return _table(None, [[html.escape(k), html.escape(v)] for k, v in rows], {1})


_FRONT_HEADER = "trial|val accuracy (change, points)|latency ms|size KB|ratio|policy".split("|")


def _front_table(d: ReportData) -> str:
    """Trial (knee, exported), accuracy (and change), latency, size, ratio, policy (unfolds)."""
    base = (d.baseline or {}).get("val_accuracy")
    rows = []
    for r in d.front:
        delta = "" if base is None else f" ({(r.val_accuracy - base) * 100:+.2f})"
        trial = html.escape(str(r.trial))
        if r.trial == d.knee:
            trial += '<span class="tag">knee</span>'
        if d.exported and r.trial == d.exported["trial"]:
            trial += '<span class="tag">exported</span>'
        cells = [f"{fmt(r.val_accuracy, '.4f')}{delta}", fmt(r.latency_ms, ".3f")]
        cells += [fmt(r.size_kb, ".1f"), fmt(r.compression_ratio, ".1f") + "x"]
        policy = (
            f"<details><summary>{html.escape(r.summary)}</summary>"
            f"{plots.policy_table_html(r.policy.to_dict())}</details>"
        )
        rows.append([trial, *(html.escape(c) for c in cells), policy])
    return _table(_FRONT_HEADER, rows, {1, 2, 3, 4})


def _export(d: ReportData, figures: dict[str, Path]) -> str:
    e = d.exported
    if not e:
        knee = f" The knee of the front is trial {d.knee}." if d.knee is not None else ""
        return (
            "<p>No model exported yet: <code>autocompress export "
            f"{html.escape(d.source)} --knee</code> (or with bounds, e.g. "
            f"<code>--max-latency-ms</code>, <code>--min-accuracy</code>).{knee}</p>"
        )
    figs = "".join(
        _img(figures[k], alt)
        for k, alt in (("latency", "latency"), ("export_policy", "policy"))
        if k in figures
    )
    files = "".join(
        f"<li>{html.escape(k)}: <code>{html.escape(str(v))}</code></li>"
        for k, v in e.get("artifacts", {}).items()
    )
    older = ", ".join(str(x["trial"]) for x in d.exports[:-1])
    return (
        f"<p>Trial {e['trial']} (files in <code>{html.escape(e['dir'])}</code>)"
        + (f"; earlier exports: trials {html.escape(older)}" if older else "")
        + f"</p>{_kv(export_rows(e))}<div class='plots'>{figs}</div>"
        f"{plots.policy_table_html(e.get('policy') or {})}"
        f"<details><summary>files</summary><ul>{files}</ul></details>"
    )


def render_html(d: ReportData, figures: dict[str, Path]) -> str:
    """The whole report page."""
    esc = html.escape
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(d.name)}: compression search report</title>"
        f"<meta name='viewport' content='width=device-width'><style>{_CSS}</style></head>"
        f"<body><main><h1>Compression search report: {esc(d.name)}</h1>"
        f"<p><b>{esc(summary_line(d))}</b></p>"
        f"<p class='sub'>Experiment <code>{esc(d.source)}</code> · output "
        f"<code>{esc(str(d.output_dir))}</code> · objectives {esc(', '.join(d.objectives))}"
        f" · generated {esc(d.generated)}</p>",
        "<section><h2>Baseline</h2>"
        + (_kv(baseline_rows(d.baseline)) if d.baseline else "<p>No baseline yet.</p>")
        + "</section>",
        "<section id='front'><h2>Pareto front</h2>"
        + (
            (_img(figures["pareto"], "Pareto front") if "pareto" in figures else "")
            + _front_table(d)
            if d.front
            else "<p>No complete trial yet.</p>"
        )
        + "</section>",
    ]
    if "hypervolume" in figures:
        parts.append(
            "<section><h2>Hypervolume over trials</h2><p class='sub'>Front of (1 - accuracy, "
            "latency / baseline, size / baseline) against (1, 1.1, 1.1); higher is better.</p>"
            f"{_img(figures['hypervolume'], 'hypervolume over trials')}</section>"
        )
    where = f"<code>{esc(str(d.output_dir))}/sensitivity/</code>"
    if "sensitivity" in figures:
        text = f"Each layer compressed alone, one level at a time; table in {where}.</p>"
        text += _img(figures["sensitivity"], "sensitivity heat map")
    else:
        text = f"No sensitivity analysis found in {where}.</p>"
    parts.append(f"<section><h2>Sensitivity</h2><p class='sub'>{text}</section>")
    parts.append(f"<section><h2>Exported model</h2>{_export(d, figures)}</section>")
    parts.append(
        "<section><h2>MLflow</h2>"
        f"<p>Tracking URI <code>{esc(d.tracking)}</code>, parent run "
        f"<code>{esc(str(d.parent_run_id))}</code>. Open it with "
        f"<code>autocompress ui {esc(d.source)}</code>.</p></section></main></body></html>"
    )
    return "".join(parts)


def write_report(
    cfg: ExperimentConfig, out_dir: Path | None = None, *, log_to_mlflow: bool = True
) -> ReportFiles:
    """Write ``report.html`` and its PNG figures into ``out_dir`` (default
    ``output_dir/report``); log the HTML on the MLflow parent run if asked and known."""
    data = collect(cfg)
    folder = Path(out_dir) if out_dir else cfg.output_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    figures = report_figures(data, folder)
    page = folder / "report.html"
    page.write_text(render_html(data, figures))
    files = ReportFiles(page, figures)
    if log_to_mlflow and data.parent_run_id:

        def log() -> bool:
            Tracker(cfg.tracking, cfg.name).log_artifacts(data.parent_run_id, [page], "report")
            return True

        files.mlflow_logged = _best_effort("logging the report to MLflow", log, False)
    return files
