"""Command line: one sub-command per stage, each a thin layer over a function of ``autocompress``.

Exit codes: 0 ok, 1 failure, 2 usage or configuration error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import AutocompressError, ConfigError, ModelError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _add(sub, name: str, help_text: str, func, *, experiment=True, json=False, description=None):
    """A sub-command that runs ``func(args)``: on an experiment file (``--set`` overrides) unless
    ``experiment`` is false, with ``--json`` output when ``json``."""
    p = sub.add_parser(name, help=help_text, description=description or help_text)
    p.set_defaults(func=func)
    if experiment:
        p.add_argument(
            "experiment", help="experiment YAML file, e.g. experiments/fashion_mnist_quick.yaml"
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set search.n_trials=40 (repeatable)",
        )
    if json:
        p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autocompress",
        description="Automated per-layer pruning + mixed-precision search, tracked in MLflow.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    storage = "Optuna storage URL (default: SQLite in output_dir)"

    _add(sub, "validate", "check an experiment config and its search space", _cmd_validate)
    p = _add(sub, "search", "run (or resume) the compression search", _cmd_search)
    p.add_argument("--storage", help=storage)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite in output_dir)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine (needs a shared "
        "storage: --storage journal or postgresql://...)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p = _add(
        sub, "status", "trials done/failed/running and the current front", _cmd_status, json=True
    )
    p.add_argument("--storage", help=storage)
    _selectors(_add(sub, "pick", "choose a model from the Pareto front", _cmd_pick, json=True))
    export_help = "fine-tune, export (ONNX + packed file), verify and register a picked model"
    p = _add(sub, "export", export_help, _cmd_export, json=True)
    _selectors(p)
    p.add_argument("--trial", type=int, help="export this trial instead of picking")
    unpack_help = "rebuild the deployed ONNX model from a packed model file (model.acpk) alone"
    p = _add(sub, "unpack", unpack_help, _cmd_unpack, experiment=False, json=True)
    p.add_argument("packed", help="packed model file written by export, e.g. .../model.acpk")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    sens_help = "per-layer sensitivity table (cached), heat map and shaped space"
    p = _add(sub, "sensitivity", sens_help, _cmd_sensitivity, json=True)
    p.add_argument("--force", action="store_true", help="measure again, ignoring the cache")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p = _add(sub, "ui", "start the MLflow UI on the experiment's tracking backend", _cmd_ui)
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
    p = _add(
        sub, "report", "write a self-contained HTML report of a search", _cmd_report, json=True
    )
    p.add_argument("--out", type=Path, help="folder (default: OUTPUT_DIR/report)")
    p.add_argument(
        "--no-mlflow", action="store_true", help="do not log the report on the MLflow parent run"
    )
    lsub = _group(
        sub,
        "latency",
        "hardware latency: profile the table, validate the model, list targets",
        "Hardware latency model of the experiment's latency.target.",
    )
    p = _add(lsub, "profile", "measure and store the latency table of the target", _cmd_latency)
    p.add_argument("--force", action="store_true", help="profile again even if cached")
    p.add_argument("--max-configs", type=int, help="configurations to measure at most")
    p.add_argument("--max-seconds", type=float, help="time budget of the profile")
    validate_help = "compare predicted with measured latency of random policies"
    p = _add(lsub, "validate", validate_help, _cmd_latency, json=True)
    _sample_args(p).add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p = lsub.add_parser("targets", help="list the target presets", description="Target presets.")
    p.set_defaults(func=_cmd_latency)
    msub = _group(
        sub,
        "memory",
        "resident memory of the deployed model: validate the memory model",
        "Resident memory of deployed ONNX models on this machine.",
    )
    memory_help = "fit the memory model to random policies' measured memory (K-fold CV)"
    _sample_args(_add(msub, "validate", memory_help, _cmd_memory, json=True))
    return parser


def _group(sub, name: str, help_text: str, description: str):
    """A command with sub-commands (``args.<name>_command``)."""
    p = sub.add_parser(name, help=help_text, description=description)
    return p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", required=True)


def _sample_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--samples", type=int, default=20, help="random policies (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policies")
    return p


def _selectors(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("selection (bounds apply to the search's validation metrics)")
    g.add_argument("--max-latency-ms", type=float, help="predicted latency at most this")
    g.add_argument("--min-accuracy", type=float, help="validation accuracy at least this (0-1)")
    g.add_argument("--max-size-kb", type=float, help="packed size at most this many KB")
    g.add_argument("--knee", action="store_true", help="the knee of the qualifying front")
    g.add_argument(
        "--prefer",
        choices=("accuracy", "latency", "size"),
        default="accuracy",
        help="among qualifying points, the best in this (default accuracy)",
    )


def _done(args: argparse.Namespace, out: dict, code: int = EXIT_OK) -> int:
    """``code``, after printing ``out`` as one JSON line with ``--json``."""
    if args.json:
        print(json.dumps(out, default=str))
    return code


def _criteria(args: argparse.Namespace):
    from .search.pick import PickCriteria

    if args.min_accuracy is not None and not 0 <= args.min_accuracy <= 1:
        raise ConfigError(f"--min-accuracy {args.min_accuracy}: give a fraction from 0 to 1")
    return PickCriteria(
        max_latency_ms=args.max_latency_ms,
        min_accuracy=args.min_accuracy,
        max_size_kb=args.max_size_kb,
        knee=args.knee,
        prefer=args.prefer,
        trial=getattr(args, "trial", None),
    )


def _cmd_pick(args: argparse.Namespace) -> int:
    from .search.pick import pick

    result = pick(_load(args), _criteria(args))
    print(result.message())
    if result.candidates:
        print("qualifying front points (choice first):")
        print(_front_table(result.candidates[:10]))
    keys = ("trial", "val_accuracy", "latency_ms", "size_kb", "compression_ratio")
    choice = {k: getattr(result.choice, k) for k in keys} if result.choice else None
    code = EXIT_OK if result.choice is not None else EXIT_FAILURE
    return _done(args, {"choice": choice, "qualifying": len(result.candidates)}, code)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export.run import export

    r = export(_load(args), _criteria(args))
    print(
        f"exported trial {r.trial}: test acc {r.test_accuracy:.4f} (baseline "
        f"{r.baseline_test_accuracy:.4f}), {r.measured_latency_ms:.3f} ms measured vs "
        f"{r.predicted_latency_ms:.3f} predicted (baseline {r.baseline_latency_ms:.3f}, "
        f"{r.speedup:.2f}x), {r.packed_bytes} bytes packed ({r.compression_ratio:.1f}x)"
    )
    print(
        f"deployed {r.deployed_form}: {r.onnx_bytes} bytes ONNX, resident memory "
        f"{r.memory_steady_mb:.2f} MB steady / {r.memory_peak_mb:.2f} MB peak (baseline "
        f"{r.baseline_memory_steady_mb:.2f} / {r.baseline_memory_peak_mb:.2f}), images/s "
        + ", ".join(f"b{b} {v:.0f}" for b, v in r.throughput.items())
    )
    print(f"report: {r.artifacts['report_md']}")
    return _done(args, r.to_dict())


def _cmd_unpack(args: argparse.Namespace) -> int:
    from .export.run import unpack

    if not Path(args.packed).is_file():
        raise ModelError(f"{args.packed}: file not found (give the model.acpk export wrote)")
    path = unpack(args.packed, args.output)
    size, packed = Path(path).stat().st_size, Path(args.packed).stat().st_size
    print(f"unpacked {args.packed} ({packed} bytes) -> {path} ({size} bytes)")
    return _done(args, {"onnx": str(path), "onnx_bytes": size})


def _load(args: argparse.Namespace, *, check_files: bool = True):
    from .config import load_experiment

    overrides = list(args.overrides)
    for key in ("storage", "tracking_uri"):  # the options that set a config key
        if getattr(args, key, None):
            overrides.append(f"{key}={getattr(args, key)}")
    return load_experiment(args.experiment, overrides, check_files=check_files)


def _cmd_validate(args: argparse.Namespace) -> int:
    from .api import validate

    print(validate(_load(args)).describe())
    return EXIT_OK


def _cmd_search(args: argparse.Namespace) -> int:
    from .search import search

    cfg = _load(args)
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give 1 or more")
    result = search(cfg, workers=args.workers, worker=args.worker)
    if args.worker:
        return EXIT_OK
    print(
        f"done: {result.n_complete} complete, {result.n_failed} failed trials in "
        f"{result.seconds:.0f} s; hypervolume {result.hypervolume:.4f}"
    )
    for f in result.failures[-10:]:
        print(f"  trial {f['trial']} failed: {f['reason'][:200]}")
    print(f"Pareto front ({len(result.front)} points):")
    print(_front_table(result.front))
    print(f"MLflow: autocompress ui {args.experiment}  (parent run {result.parent_run_id})")
    print(f"report: autocompress report {args.experiment}")
    return EXIT_OK


def _front_table(front) -> str:
    """Front points (``FrontPoint``) as a text table."""
    lines = [f"{'trial':>5}  {'val_acc':>7}  {'lat_ms':>7}  {'size_KB':>8}  {'ratio':>6}  policy"]
    for r in front:
        lines.append(
            f"{r.trial:>5}  {r.val_accuracy:>7.4f}  {r.latency_ms:>7.3f}  "
            f"{r.size_kb:>8.1f}  {r.compression_ratio:>5.1f}x  {r.summary}"
        )
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    from .api import status

    st = status(_load(args))
    print(
        f"{st['study']}: {st['complete']} complete / {st['n_trials']} wanted, "
        f"{st['failed']} failed, {st['running']} running; {st['elapsed_s']:.0f} s of trials"
    )
    for number, worker in sorted(st["running_on"].items()):
        print(f"  trial {number} running on {worker}")
    print(_front_table(st["front"]))
    keys = ("trial", "val_accuracy", "latency_ms", "size_kb")
    front = [{k: getattr(p, k) for k in keys} for p in st["front"]]
    return _done(args, {k: v for k, v in st.items() if k != "front"} | {"front": front})


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from .baseline import prepare
    from .sensitivity import SensitivityStage
    from .tracking import Tracker

    cfg = _load(args)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    prep = prepare(cfg)
    stage = SensitivityStage.start(prep, cfg.sensitivity.with_(enabled=True), force=args.force)
    table = stage.table
    metric = "drop" if table.has("drop") else "loss"
    scored = [(table.score(r.layer, r.dim, r.value, metric), r) for r in table.rows if r.measured]
    print("most sensitive levels (one layer compressed alone, no fine-tune):")
    for v, r in sorted((s for s in scored if math.isfinite(s[0])), key=lambda s: -s[0])[:8]:
        unit = "points" if metric == "drop" else "nats"
        print(f"  {r.layer:<24} {r.dim:<10} {r.value:<6g} {v:8.2f} {unit}")
    agree = table.meta.get("agreement", {})
    if agree:
        print(
            f"{table.meta.get('estimator')} estimate vs sweep: Spearman "
            f"{agree.get('spearman_drop', float('nan')):.3f} (accuracy drop), "
            f"{agree.get('spearman_loss', float('nan')):.3f} (loss increase)"
        )
    if args.no_mlflow:
        paths = stage.files()
    else:
        tracker = Tracker(cfg.tracking, cfg.name, cfg.output_dir / "mlartifacts")
        rid = tracker.side_run("sensitivity", f"sensitivity-{cfg.name}")
        paths = stage.log(tracker, rid)
        tracker.end_run(rid, "FINISHED")
        print(f"MLflow: run {rid} (experiment {cfg.name}, {cfg.tracking})")
    print(f"files: {stage.out_dir}/ ({', '.join(p.name for p in paths)})")
    summary = {
        "levels": len(table.rows),
        "seconds": table.meta.get("seconds"),
        "cached": bool(table.meta.get("cached")),
        "space_before": prep.space.cardinality,
        "space_after": stage.space.cardinality,
        "agreement": agree,
    }
    return _done(args, summary)


def _cmd_ui(args: argparse.Namespace) -> int:
    from .reporting.ui import serve

    cfg = _load(args, check_files=False)
    local = cfg.tracking.startswith(("sqlite:", "file:"))
    return serve(
        cfg.tracking,
        cfg.name,
        host=args.host,
        port=args.port,
        cwd=cfg.output_dir if local and cfg.output_dir.is_dir() else None,
        allowed_hosts=args.allowed_hosts,
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from .reporting.report import write_report

    files = write_report(_load(args, check_files=False), args.out, log_to_mlflow=not args.no_mlflow)
    print(f"report: {files.html}")
    if files.mlflow_logged:
        print("logged on the search's MLflow run as report/report.html")
    figures = {k: str(v) for k, v in files.figures.items()}
    return _done(
        args, {"html": str(files.html), "figures": figures, "mlflow_logged": files.mlflow_logged}
    )


def _cmd_latency(args: argparse.Namespace) -> int:
    from .hardware.targets import MeasuredTarget, available_targets, load_target

    if args.latency_command == "targets":
        for name in available_targets():
            t = load_target(name)
            print(f"{name:16s} {t.kind:9s} {t.description}")
        return EXIT_OK
    cfg = _load(args)
    if args.latency_command == "validate":
        from .hardware.validate import validate_latency

        r = validate_latency(cfg, args.samples, seed=args.seed, track=not args.no_track)
        print(
            f"{r.target}: {r.within_10pct:.0%} of {r.samples} predictions within ±10 %, MAPE "
            f"{r.mape:.1%}, Spearman {r.spearman:.3f} ({r.seconds:.0f} s); plot and pairs: "
            f"{', '.join(r.artifacts)}"
        )
        return _done(args, r.summary())
    from .hardware.latency import describe_fit, profile

    target = load_target(cfg.latency.target)
    budget = {"max_configs": args.max_configs, "max_seconds": args.max_seconds}
    budget = {k: v for k, v in budget.items() if v is not None}
    if budget and isinstance(target, MeasuredTarget):
        target = target.model_copy(update={"profile": target.profile.model_copy(update=budget)})
    result = profile(cfg, force=args.force, target=target)
    print(f"latency table for {cfg.name} on {result.name}: {describe_fit(result.table)}")
    print(f"stored in {result.path}")
    return EXIT_OK


def _cmd_memory(args: argparse.Namespace) -> int:
    from .baseline import prepare
    from .hardware.memory_model import validate_memory

    r = validate_memory(prepare(_load(args)), args.samples, seed=args.seed)
    for what, fit in (("steady", r.steady), ("peak", r.peak)):
        print(
            f"memory model ({what}): {fit['cv_within_10pct']:.0%} of {r.samples} cross-validated "
            f"predictions within ±10 %, MAPE {fit['cv_mape']:.1%}"
        )
    print(f"samples and fits: {', '.join(r.artifacts)} ({r.seconds:.0f} s)")
    return _done(args, r.summary())


def main(argv: Sequence[str] | None = None) -> int:
    # MLflow's database-migration chatter is not for users (set before mlflow is imported).
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines show up when piped
    parser = _build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("AUTOCOMPRESS_DEBUG") == "1"
    if os.environ.get("AUTOCOMPRESS_THREADS", "").isdigit():
        # Share the cores with other jobs: torch threads beyond the free cores spin and stall.
        import torch

        torch.set_num_threads(max(1, int(os.environ["AUTOCOMPRESS_THREADS"])))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted: the same command resumes the search", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        if debug:
            raise
        if isinstance(exc, AutocompressError):
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        print(
            f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
