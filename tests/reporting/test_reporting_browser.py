"""Issue #7's browser check: a real MLflow UI on a finished tiny search, in headless Chromium.

Needs Debian's ``chromium`` (``apt-get install -y chromium``; ``.ci/run`` installs it) and
skips without it. No browser download, no Python dependency beyond the project's.
"""

from __future__ import annotations

import pytest
from conftest import tiny_config
from PIL import Image
from uibrowser import Chromium, find_chromium
from uicheck import check_experiment_ui, pareto_hover_screenshot

from autocompress import load_experiment, search

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="chromium not installed (apt-get install -y chromium)"
)


def _looks_like_a_page(path) -> None:
    with Image.open(path) as im:
        assert im.size == (1400, 900)
        colours = im.convert("RGB").resize((140, 90)).getcolors(maxcolors=100_000)
        assert colours is not None and len(colours) > 20  # not a blank page


def test_mlflow_ui_shows_experiment_trials_and_pareto(tmp_path, fmnist_root):
    cfg = load_experiment(tiny_config(tmp_path, fmnist_root, search__n_trials=4))
    search(cfg, log=lambda *_: None)

    shots = tmp_path / "shots"
    result = check_experiment_ui(cfg, shots, log_path=tmp_path / "mlflow-ui.log")
    assert result.ok, "\n" + result.describe()
    names = " ".join(result.checks)
    for what in ("experiment 'tiny'", "trial-000", "trade-off view", "Pareto artifacts"):
        assert what in names
    assert {p.name for p in result.screenshots} >= {
        "mlflow_runs.png",
        "mlflow_tradeoff.png",
        "mlflow_pareto.png",
        "mlflow_pareto_html.png",
        "mlflow_trial.png",
    }
    for path in result.screenshots:
        _looks_like_a_page(path)

    with Chromium(width=1000, height=600) as browser:
        html = cfg.output_dir / "pareto" / "pareto_front.html"
        assert pareto_hover_screenshot(browser, html, tmp_path / "hover.png")
        assert browser.text().count("trial") >= 1
