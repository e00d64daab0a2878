"""CLI sub-commands of the hardware package: ``autocompress latency profile|validate|targets``
and ``autocompress memory validate``. ``add_commands(sub, experiment_parser)`` adds their parsers
and returns ``{command name: handler(args) -> exit code}``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

__all__ = ["add_commands"]


def _load(args: argparse.Namespace):
    from ..config import load_experiment

    return load_experiment(args.experiment, list(args.overrides))


def _profile(args: argparse.Namespace) -> int:
    from . import profile
    from .latency import describe_fit
    from .targets import MeasuredTarget, load_target

    cfg = _load(args)
    target = load_target(cfg.latency.target)
    budget = {
        k: v
        for k, v in (("max_configs", args.max_configs), ("max_seconds", args.max_seconds))
        if v is not None
    }
    if budget and isinstance(target, MeasuredTarget):
        target = target.model_copy(update={"profile": target.profile.model_copy(update=budget)})
    result = profile(cfg, force=args.force, target=target)
    print(f"latency table for {cfg.name} on {result.name}: {describe_fit(result.table)}")
    print(f"stored in {result.path}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .validate import validate_latency

    cfg = _load(args)
    report = validate_latency(cfg, args.samples, seed=args.seed, track=not args.no_track)
    print(
        f"{report.target}: {report.within_10pct:.0%} of {report.samples} predictions within "
        f"±10 %, MAPE {report.mape:.1%}, Spearman {report.spearman:.3f} "
        f"({report.seconds:.0f} s); plot and pairs: {', '.join(report.artifacts)}"
    )
    if args.json:
        print(json.dumps(report.summary()))
    return 0


def _memory_validate(args: argparse.Namespace) -> int:
    from ..prepare import prepare
    from .memory_model import validate_memory

    r = validate_memory(prepare(_load(args)), args.samples, seed=args.seed)
    for what, fit in (("steady", r.steady), ("peak", r.peak)):
        print(
            f"memory model ({what}): {fit['cv_within_10pct']:.0%} of {r.samples} cross-validated "
            f"predictions within ±10 %, MAPE {fit['cv_mape']:.1%}"
        )
    print(f"samples and fits: {', '.join(r.artifacts)} ({r.seconds:.0f} s)")
    if args.json:
        print(json.dumps(r.summary()))
    return 0


def _targets(args: argparse.Namespace) -> int:
    from .targets import available_targets, load_target

    for name in available_targets():
        t = load_target(name)
        print(f"{name:16s} {t.kind:9s} {t.description}")
    return 0


def _sample_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--samples", type=int, default=20, help="random policies (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policies")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p


def add_commands(sub, experiment_parser: Callable) -> dict[str, Callable]:
    parser = sub.add_parser(
        "latency",
        help="hardware latency: profile the table, validate the model, list targets",
        description="Hardware latency model of the experiment's latency.target.",
    )
    lsub = parser.add_subparsers(dest="latency_command", metavar="SUBCOMMAND", required=True)
    p = experiment_parser(lsub, "profile", "measure and store the latency table of the target")
    p.add_argument("--force", action="store_true", help="profile again even if cached")
    p.add_argument("--max-configs", type=int, help="configurations to measure at most")
    p.add_argument("--max-seconds", type=float, help="time budget of the profile")
    p = experiment_parser(
        lsub, "validate", "compare predicted with measured latency of random policies"
    )
    _sample_args(p).add_argument("--no-track", action="store_true", help="do not log to MLflow")
    lsub.add_parser("targets", help="list the target presets", description="Target presets.")
    handlers = {"profile": _profile, "validate": _validate, "targets": _targets}

    def dispatch(args: argparse.Namespace) -> int:
        return handlers[args.latency_command](args)

    mparser = sub.add_parser(
        "memory",
        help="resident memory of the deployed model: validate the memory model",
        description="Resident memory of deployed ONNX models on this machine.",
    )
    msub = mparser.add_subparsers(dest="memory_command", metavar="SUBCOMMAND", required=True)
    _sample_args(
        experiment_parser(
            msub, "validate", "fit the memory model to random policies' measured memory (K-fold CV)"
        )
    )
    return {"latency": dispatch, "memory": _memory_validate}
