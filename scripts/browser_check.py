#!/usr/bin/env python
"""Browser check of the MLflow UI on a finished search, with screenshots.

    .venv/bin/python scripts/browser_check.py                      # tiny search in a temp dir
    .venv/bin/python scripts/browser_check.py experiments/fashion_mnist_quick.yaml --out docs

Starts ``mlflow ui`` on the experiment's backend (127.0.0.1, a free port), opens it in headless
Chromium (Debian's ``chromium``; no browser download), checks that the experiment, the trial
runs nested under the search's run and the Pareto artifacts are visible, and saves
``mlflow_runs.png``, ``mlflow_pareto.png``, ``mlflow_pareto_html.png``, ``mlflow_trial.png``;
also ``pareto_hover.png`` (the interactive plot with a tooltip) and ``report.png`` (the
``autocompress report`` page). Without an experiment it runs a tiny search on synthetic data
first (about 10 s). Exit code 0 when every check passed, 1 otherwise, 2 without Chromium.

Writes to the experiment's stores only what ``autocompress ui`` writes: the trade-off view (an
MLflow experiment tag). The report it screenshots goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # conftest, and the browser driver (uibrowser, uicheck)


def _tiny_experiment(tmp: Path) -> Path:
    """A finished tiny search (TinyCNN, synthetic Fashion-MNIST-like data, 6 trials)."""
    import numpy as np
    from conftest import _synthetic, tiny_config, write_idx

    from autocompress import load_experiment, search

    root = tmp / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 1500), ("t10k", 400)):
        images, labels = _synthetic(n, rng)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    path = tiny_config(tmp, root, search__n_trials=6)
    search(load_experiment(path), log=lambda *_: None)
    return path


def _extra_screenshots(cfg, out: Path, trial: int | None) -> list[Path]:
    from uibrowser import Chromium
    from uicheck import pareto_hover_screenshot

    from autocompress.reporting.report import write_report

    shots = []
    with Chromium(width=1280, height=720) as browser:
        html = cfg.output_dir / "pareto" / "pareto_front.html"
        if html.is_file() and pareto_hover_screenshot(
            browser, html, out / "pareto_hover.png", trial=trial
        ):
            shots.append(out / "pareto_hover.png")
        with tempfile.TemporaryDirectory() as tmp:
            files = write_report(cfg, Path(tmp), log_to_mlflow=False)
            browser.resize(1280, 1500)
            browser.open(files.html.as_uri())
            if browser.wait_for_text("Pareto front", timeout=20):
                shots.append(browser.screenshot(out / "report.png"))
    return shots


def _shrink(path: Path) -> None:
    """256-colour palette PNG: screenshots of a UI stay readable at about half the bytes."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", nargs="?", help="finished experiment (default: tiny search)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--out", type=Path, default=Path("browser_check"), help="screenshots")
    parser.add_argument("--trial", type=int, help="trial to hover in pareto_hover.png")
    args = parser.parse_args(argv)

    from uibrowser import find_chromium
    from uicheck import check_experiment_ui

    from autocompress import load_experiment

    if find_chromium() is None:
        print("chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="browser-check-") as tmp:
        path = args.experiment or _tiny_experiment(Path(tmp))
        cfg = load_experiment(path, args.overrides, check_files=False)
        print(f"checking the MLflow UI of {cfg.name} ({cfg.output_dir})")
        result = check_experiment_ui(cfg, args.out, log_path=Path(tmp) / "mlflow-ui.log")
        print(result.describe())
        shots = result.screenshots + _extra_screenshots(cfg, args.out, args.trial)
    for s in shots:
        _shrink(s)
        print(f"screenshot: {s} ({s.stat().st_size // 1024} KB)")
    print("browser check " + ("passed" if result.ok else "FAILED"))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
