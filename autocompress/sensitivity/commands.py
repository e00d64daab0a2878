"""CLI sub-commands of this package.

``add_commands(sub, experiment_parser)`` adds parsers to the CLI's sub-parser set and returns
``{command name: handler(args) -> exit code}``; ``experiment_parser(sub, name, help)`` makes a
parser that already takes the experiment file and ``--set`` overrides.

``autocompress sensitivity EXPERIMENT.yaml`` measures (or loads from the cache) the per-layer
sensitivity table, prints the most sensitive levels and the shaped space, and logs the table,
heat maps and shaped space to an MLflow run ``sensitivity-<name>``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

__all__ = ["add_commands"]


def add_commands(sub, experiment_parser: Callable) -> dict[str, Callable]:
    p = experiment_parser(
        sub, "sensitivity", "per-layer sensitivity table (cached), heat map and shaped space"
    )
    p.add_argument("--force", action="store_true", help="measure again, ignoring the cache")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return {"sensitivity": _cmd_sensitivity}


def _top(table, n: int = 8) -> list[str]:
    metric = "drop" if table.has("drop") else "loss"
    scored = [(table.score(r.layer, r.dim, r.value, metric), r) for r in table.rows if r.measured]
    scored = sorted((s for s in scored if math.isfinite(s[0])), key=lambda s: -s[0])[:n]
    unit = "points" if metric == "drop" else "nats"
    return [f"  {r.layer:<24} {r.dim:<10} {r.value:<6g} {v:8.2f} {unit}" for v, r in scored]


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from ..config import load_experiment
    from ..prepare import prepare
    from ..tracking import Tracker
    from .settings import settings_for
    from .stage import SensitivityStage

    cfg = load_experiment(args.experiment, list(args.overrides))
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_for(cfg, {"enabled": True})
    prep = prepare(cfg)
    stage = SensitivityStage.start(prep, settings, force=args.force)
    table = stage.table
    print("most sensitive levels (one layer compressed alone, no fine-tune):")
    print("\n".join(_top(table)))
    summary = {
        "levels": len(table.rows),
        "seconds": table.meta.get("seconds"),
        "cached": bool(table.meta.get("cached")),
        "space_before": prep.space.cardinality,
        "space_after": stage.space.cardinality,
        "agreement": table.meta.get("agreement", {}),
    }
    agree = summary["agreement"]
    if agree:
        print(
            f"{table.meta.get('estimator')} estimate vs sweep: Spearman "
            f"{agree.get('spearman_drop', float('nan')):.3f} (accuracy drop), "
            f"{agree.get('spearman_loss', float('nan')):.3f} (loss increase)"
        )
    paths = stage.files()
    print(f"files: {stage.out_dir}/ ({', '.join(p.name for p in paths)})")
    if not args.no_mlflow:
        tracker = Tracker(cfg.tracking, cfg.name, cfg.output_dir / "mlartifacts")
        run = tracker.client.create_run(
            tracker.experiment_id,
            run_name=f"sensitivity-{cfg.name}",
            tags={"autocompress.role": "sensitivity"},
        )
        rid = run.info.run_id
        tracker.log_artifacts(rid, paths, "sensitivity")
        tracker.log_search_metrics(rid, stage.metrics())
        tracker.finish_search(rid, "FINISHED")
        print(f"MLflow: run {rid} (experiment {cfg.name}, {cfg.tracking})")
    if args.json:
        print(json.dumps(summary, default=str))
    return 0
