"""The report page: one file, inline CSS, PNG figures embedded as data URIs, the per-layer policy
of each front point in a collapsible table. No script and no external request, so it opens from
disk, from an e-mail or as an MLflow artifact."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from .. import plots
from ..config import ExperimentConfig
from ..export.summary import export_rows
from .report import (
    FRONT_HEADER,
    ReportData,
    ReportFiles,
    baseline_rows,
    collect,
    front_table_rows,
    report_figures,
    summary_line,
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
        out.append(
            "<tr>"
            + "".join(
                f'<td class="num">{c}</td>' if j in num_cols else f"<td>{c}</td>"
                for j, c in enumerate(row)
            )
            + "</tr>"
        )
    out.append("</table>")
    return "".join(out)


def _kv(rows: list[tuple[str, str]]) -> str:
    return _table(None, [[html.escape(k), html.escape(v)] for k, v in rows], {1})


def _front_table(d: ReportData) -> str:
    cells = front_table_rows(d)
    rows = []
    for r, row in zip(d.front, cells, strict=True):
        trial = html.escape(str(r["trial"]))
        if r["trial"] == d.knee:
            trial += '<span class="tag">knee</span>'
        if d.exported and r["trial"] == d.exported["trial"]:
            trial += '<span class="tag">exported</span>'
        policy = (
            f"<details><summary>{html.escape(r['summary'])}</summary>"
            f"{plots.policy_table_html(r.get('policy') or {})}</details>"
        )
        rows.append([trial, *(html.escape(c) for c in row[1:5]), policy])
    return _table(FRONT_HEADER, rows, {1, 2, 3, 4})


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
    if "sensitivity" in figures:
        parts.append(
            "<section><h2>Sensitivity</h2><p class='sub'>Each layer compressed alone, one "
            f"level at a time; table in <code>{esc(str(d.output_dir))}/sensitivity/"
            "</code>.</p>"
            f"{_img(figures['sensitivity'], 'sensitivity heat map')}</section>"
        )
    else:
        parts.append(
            "<section><h2>Sensitivity</h2><p class='sub'>No sensitivity analysis found in "
            f"<code>{esc(str(d.output_dir))}/sensitivity/</code>.</p></section>"
        )
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
    from ..search.figures import _best_effort

    data = collect(cfg)
    folder = Path(out_dir) if out_dir else cfg.output_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    figures = report_figures(data, folder)
    page = folder / "report.html"
    page.write_text(render_html(data, figures))
    files = ReportFiles(page, figures)
    if log_to_mlflow and data.parent_run_id:

        def log() -> bool:
            from ..tracking import Tracker

            Tracker(cfg.tracking, cfg.name).log_artifacts(data.parent_run_id, [page], "report")
            return True

        files.mlflow_logged = _best_effort("logging the report to MLflow", log, False)
    return files
