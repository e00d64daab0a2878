"""CLI sub-commands of this package: ``ui`` (the MLflow UI on an experiment's backend) and
``report`` (a self-contained HTML + Markdown report in the output folder).

``add_commands(sub, experiment_parser)`` adds parsers to the CLI's sub-parser set and returns
``{command name: handler(args) -> exit code}``; ``experiment_parser(sub, name, help)`` makes a
parser that already takes the experiment file and ``--set`` overrides.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_commands"]


def _load(args: argparse.Namespace):
    from ..config import load_experiment

    return load_experiment(args.experiment, list(args.overrides), check_files=False)


def _ui(args: argparse.Namespace) -> int:
    from .ui import serve

    cfg = _load(args)
    local = cfg.tracking.startswith("sqlite:") or cfg.tracking.startswith("file:")
    return serve(
        cfg.tracking,
        cfg.name,
        host=args.host,
        port=args.port,
        cwd=cfg.output_dir if local and cfg.output_dir.is_dir() else None,
        allowed_hosts=args.allowed_hosts,
    )


def _report(args: argparse.Namespace) -> int:
    from .html_report import write_report

    files = write_report(_load(args), args.out, log_to_mlflow=not args.no_mlflow)
    print(f"report: {files.html}")
    if files.mlflow_logged:
        print("logged on the search's MLflow run as report/report.html")
    if args.json:
        print(
            json.dumps(
                {
                    "html": str(files.html),
                    "figures": {k: str(v) for k, v in files.figures.items()},
                    "mlflow_logged": files.mlflow_logged,
                }
            )
        )
    return 0


def add_commands(sub, experiment_parser: Callable) -> dict[str, Callable]:
    p = experiment_parser(sub, "ui", "start the MLflow UI on the experiment's tracking backend")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the UI, unauthenticated)",
    )
    p.add_argument("--port", type=int, help="port (default: a free one)")
    p.add_argument(
        "--allowed-hosts",
        help="Host headers MLflow accepts, passed to 'mlflow ui' (default: localhost, private IPs)",
    )
    p = experiment_parser(sub, "report", "write a self-contained HTML report of a search")
    p.add_argument("--out", type=Path, help="folder (default: OUTPUT_DIR/report)")
    p.add_argument(
        "--no-mlflow", action="store_true", help="do not log the report on the MLflow parent run"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return {"ui": _ui, "report": _report}
