"""The browser check of issue #7: an MLflow UI on a finished search, opened in headless
Chromium (``uibrowser``: test and script support, not part of the package): the experiment, the
trial runs, the trade-off view, the Pareto artifacts and a trial's per-layer chart must be
visible; screenshots are saved."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from uibrowser import Chromium

__all__ = ["UiCheck", "check_experiment_ui", "check_mlflow_ui", "pareto_hover_screenshot"]


@dataclass
class UiCheck:
    """What was checked in the MLflow UI, and the screenshots taken."""

    checks: dict[str, bool] = field(default_factory=dict)
    screenshots: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def describe(self) -> str:
        return "\n".join(f"  [{'ok' if v else 'FAIL'}] {k}" for k, v in self.checks.items())


_CLOSE_ASSISTANT = """Array.from(document.querySelectorAll('button[aria-label="Close"]')).find(
  b => { let p = b; for (let i = 0; i < 8 && p; i++) { p = p.parentElement;
    if (p && p.innerText && p.innerText.startsWith('MLflow Assistant')) return true; }
    return false; })"""


def _expander(run_name: str) -> str:
    """The expander button in the run-name cell of ``run_name``."""
    return (
        f"(() => {{ const a = Array.from(document.querySelectorAll('a')).find("
        f"a => a.innerText.trim() === {json.dumps(run_name)}); if (!a) return null; "
        "const cell = a.closest('.ag-cell') || a.parentElement; "
        "return cell.querySelector('button'); })()"
    )


def _artifact_node(name: str) -> str:
    """The clickable entry of artifact ``name`` in the run's artifact tree."""
    sel = json.dumps(f'[data-testid="artifact-tree-node"][artifact-name="{name}"]')
    return f"(document.querySelector({sel}) || {{}}).parentElement"


def check_mlflow_ui(
    browser: Chromium,
    base_url: str,
    *,
    experiment_id: str,
    experiment_name: str,
    parent_run_id: str,
    trial_names: list[str],
    out_dir: Path,
    trial_run_id: str | None = None,
    trade_off_view: bool = False,
    timeout: float = 60.0,
) -> UiCheck:
    """Open the runs table and expand the search's run; with ``trade_off_view``, open the view
    :func:`.ui.set_runs_view` stored; open the search's Pareto artifacts (PNG and HTML) and,
    given ``trial_run_id``, a trial's artifacts. Record each check and save the screenshots
    ``mlflow_{runs,tradeoff,pareto,pareto_html,trial}.png`` in ``out_dir``."""
    from autocompress.reporting.ui import experiment_url
    from autocompress.search.figures import TRIAL_CHART

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = UiCheck()
    parent_name = f"search-{experiment_name}"
    browser.open(experiment_url(base_url, experiment_id))
    res.checks[f"experiment {experiment_name!r} and run {parent_name!r} listed"] = (
        browser.wait_for_text(experiment_name, parent_name, timeout=timeout)
    )
    browser.click(_CLOSE_ASSISTANT)
    shown = trial_names[: min(len(trial_names), 8)]
    expanded = browser.click(_expander(parent_name)) and browser.wait_for_text(
        *shown, timeout=timeout
    )
    res.checks[f"trial runs {', '.join(shown)} shown nested under {parent_name!r}"] = expanded
    time.sleep(0.5)
    res.screenshots.append(browser.screenshot(out_dir / "mlflow_runs.png"))

    if trade_off_view:
        browser.open(experiment_url(base_url, experiment_id, view=True))
        rows = (
            "document.querySelectorAll('.ag-center-cols-container [role=row]').length >= "
            f"{len(shown)} && document.body.innerText.includes('Sort: val_accuracy')"
        )
        res.checks["trade-off view: runs sorted by val_accuracy"] = browser.wait_for(rows, timeout)
        browser.click(_CLOSE_ASSISTANT)
        time.sleep(0.5)
        res.screenshots.append(browser.screenshot(out_dir / "mlflow_tradeoff.png"))

    base = f"{base_url}/#/experiments/{experiment_id}/runs/{parent_run_id}/artifacts/pareto"
    browser.open(f"{base}/pareto_front.png?workflowType=machine_learning")
    listed = browser.wait_for_text(
        "pareto_front.html", "pareto_front.png", "pareto_front.csv", timeout=timeout
    )
    res.checks["Pareto artifacts pareto/pareto_front.{csv,html,png} listed"] = listed
    img = (  # the viewer shows the fetched artifact as a blob: image
        "Array.from(document.images).some(i => (i.src.includes('pareto_front.png') || "
        "i.src.startsWith('blob:')) && i.complete && i.naturalWidth > 300)"
    )
    res.checks["Pareto plot image displayed"] = browser.wait_for(img, timeout)
    browser.click(_CLOSE_ASSISTANT)
    time.sleep(0.3)
    res.screenshots.append(browser.screenshot(out_dir / "mlflow_pareto.png"))

    browser.click(
        _artifact_node("pareto_front.html")
    )  # the viewer follows clicks, not hash changes
    frame = "document.querySelector('iframe.mlflow-html-iframe, iframe') !== null"
    res.checks["interactive Pareto plot (HTML) embedded"] = browser.wait_for(frame, timeout)
    time.sleep(2.0)  # plotly draws inside the frame
    browser.click(_CLOSE_ASSISTANT)
    res.screenshots.append(browser.screenshot(out_dir / "mlflow_pareto_html.png"))

    if trial_run_id:
        url = f"{base_url}/#/experiments/{experiment_id}/runs/{trial_run_id}/artifacts"
        browser.open(f"{url}/{TRIAL_CHART}.png?workflowType=machine_learning")
        res.checks["a trial's policy.json listed"] = browser.wait_for_text(
            "policy.json", timeout=timeout
        )
        if browser.wait_for_text(f"{TRIAL_CHART}.png", timeout=5):
            res.checks["a trial's per-layer chart displayed"] = browser.wait_for(img, timeout)
        browser.click(_CLOSE_ASSISTANT)
        time.sleep(0.3)
        res.screenshots.append(browser.screenshot(out_dir / "mlflow_trial.png"))
    return res


def pareto_hover_screenshot(
    browser: Chromium, html_path: Path, png_path: Path, *, trial: int | None = None
) -> bool:
    """Open a ``pareto_front.html`` file, hover one Pareto point (``trial``'s, else the
    middle one) and save the screenshot with its tooltip; True if the tooltip names a trial."""
    browser.open(Path(html_path).resolve().as_uri())
    if not browser.wait_for("document.querySelectorAll('.scatterlayer .point').length > 0", 30):
        return False
    # trace order per panel: trials, Pareto; hover the first panel's Pareto trace
    head = json.dumps(f"<b>trial {trial if trial is not None else -1}<")
    pos = browser.evaluate(
        f"""(() => {{
        const gd = document.querySelector('.js-plotly-plot');
        const tr = gd.data.findIndex(t => t.name === 'Pareto');
        const texts = gd.data[tr].text;
        let i = texts.findIndex(t => t.startsWith({head}));
        if (i < 0) i = Math.floor(texts.length / 2);
        const traces = document.querySelectorAll('.scatterlayer .trace');
        const r = traces[tr].querySelectorAll('.point')[i].getBoundingClientRect();
        return [r.x + r.width / 2, r.y + r.height / 2];
    }})()"""
    )
    browser.hover(pos[0], pos[1])
    ok = browser.wait_for("document.querySelector('.hoverlayer .hovertext') !== null", 5)
    browser.screenshot(png_path)
    return ok


def check_experiment_ui(
    cfg, out_dir: Path, *, port: int | None = None, log_path: Path | None = None
) -> UiCheck:
    """Store the trade-off view (:func:`.ui.set_runs_view`), start ``mlflow ui`` on a finished
    search's backend, open it in headless Chromium and run :func:`check_mlflow_ui`; the server
    is stopped afterwards."""
    import mlflow

    from autocompress.reporting.ui import set_runs_view, start_ui

    client = mlflow.MlflowClient(tracking_uri=cfg.tracking)
    exp = client.get_experiment_by_name(cfg.name)
    if exp is None:
        raise LookupError(f"no MLflow experiment {cfg.name!r} at {cfg.tracking}: search first")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("autocompress.role") == "search")
    trials = sorted(
        (r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda r: r.info.run_name,
    )
    # show the exported trial, else one on the front, else the first
    shown = sorted(
        trials,
        key=lambda r: (r.data.tags.get("exported") != "true", r.data.tags.get("pareto") != "true"),
    )
    view = set_runs_view(cfg.tracking, exp.experiment_id)
    server = start_ui(cfg.tracking, port=port, cwd=cfg.output_dir, log_path=log_path)
    try:
        with Chromium() as browser:
            return check_mlflow_ui(
                browser,
                server.url,
                experiment_id=exp.experiment_id,
                experiment_name=cfg.name,
                parent_run_id=parent.info.run_id,
                trial_names=[r.info.run_name for r in trials],
                trial_run_id=shown[0].info.run_id if shown else None,
                trade_off_view=view,
                out_dir=out_dir,
            )
    finally:
        server.stop()
