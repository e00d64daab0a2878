"""``autocompress report``: the report's two forms written side by side — ``report.md`` (with
PNG figures) and a self-contained ``report.html`` — and the HTML logged on the parent run."""

from __future__ import annotations

from pathlib import Path

from ..config import ExperimentConfig
from .html_report import render_html
from .report import ReportFiles, collect, render_markdown, report_figures

__all__ = ["write_report"]


def write_report(
    cfg: ExperimentConfig, out_dir: Path | None = None, *, log_to_mlflow: bool = True
) -> ReportFiles:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ PNGs) into ``out_dir``
    (default ``output_dir/report``); log the HTML on the MLflow parent run if asked and known."""
    data = collect(cfg)
    folder = Path(out_dir) if out_dir else cfg.output_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    figures = report_figures(data, folder)
    md = folder / "report.md"
    md.write_text(render_markdown(data, figures, folder))
    page = folder / "report.html"
    page.write_text(render_html(data, figures))
    files = ReportFiles(page, md, figures)
    if log_to_mlflow and data.parent_run_id:
        from .figures import _best_effort

        def log() -> bool:
            from ..tracking import Tracker

            Tracker(cfg.tracking, cfg.name).log_artifacts(data.parent_run_id, [page], "report")
            return True

        files.mlflow_logged = _best_effort("logging the report to MLflow", log, False)
    return files
