"""Latency-model benchmark: profile the measured CPU target's table for a model, then validate
it on random policies of the model's search space (materialised, exported as deployed, measured
end to end). Writes ``benchmarks/results/latency-<model>.{md,json}``.

    .venv/bin/python benchmarks/latency.py small_cnn --samples 40
    .venv/bin/python benchmarks/latency.py resnet18 --samples 20 --max-configs 60

The model is randomly initialised and given as a checkpoint (latency does not depend on the
weights; no baseline training), validation and test subsets are small (accuracy is not what is
measured here). Output goes to ``runs/bench-latency-<model>`` (table cache, MLflow run
``latency-validate``, plot).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autocompress.config import load_experiment  # noqa: E402
from autocompress.hardware.latency import profile  # noqa: E402
from autocompress.hardware.latency import describe_fit  # noqa: E402
from autocompress.hardware.profiler import machine_fingerprint  # noqa: E402
from autocompress.hardware.targets import load_target  # noqa: E402
from autocompress.hardware.validate import validate_latency  # noqa: E402
from autocompress.models import build_model  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from common import code_version  # noqa: E402

EXPERIMENTS = {
    "small_cnn": REPO / "experiments" / "fashion_mnist_quick.yaml",
    "resnet18": REPO / "experiments" / "fashion_mnist_resnet18.yaml",
}


def _config(model: str, target: str):
    out = REPO / "runs" / f"bench-latency-{model}"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "random-init.pt"
    if not ckpt.is_file():
        torch.manual_seed(0)
        torch.save(build_model(model).state_dict(), ckpt)
    overrides = [
        f"latency.target={target}",
        f"output_dir={out}",
        f"model.checkpoint={ckpt}",
        f"name=bench-latency-{model}",
        "data.val_subset=512",
        "data.test_subset=512",
    ]
    return load_experiment(EXPERIMENTS[model], overrides), overrides


def _repeatability(previous: Path, res: dict) -> dict | None:
    """How the measurements of the same policies (same seed) moved since the previous run."""
    if not previous.is_file():
        return None
    old = json.loads(previous.read_text())
    if (
        old.get("model") != res["model"]
        or old.get("command", "").split("--seed")[1:] != res["command"].split("--seed")[1:]
    ):
        return None
    shifts = [
        b["measured_ms"] / a["measured_ms"] - 1
        for a, b in zip(old.get("pairs", []), res["pairs"], strict=False)
        if a.get("bits") == b.get("bits") and a.get("channels") == b.get("channels")
    ]
    if not shifts:
        return None
    arr = np.asarray(shifts)
    return {
        "previous_date": old.get("date", "?"),
        "samples": len(shifts),
        "median_shift": float(np.median(arr)),
        "median_abs_shift": float(np.median(np.abs(arr))),
        "max_abs_shift": float(np.abs(arr).max()),
    }


def _markdown(res: dict) -> str:
    v, t = res["validation"], res["table"]
    lines = [
        f"# Latency model benchmark: {res['model']} on {res['target']}",
        "",
        f"Recorded {res['date']} at `{res.get('commit')}` on {res['machine']['cpu']} "
        f"({res['machine']['cores']} cores, ISA {res['machine'].get('isa', '?')}, "
        f"ONNX Runtime {res['machine']['onnxruntime']}, torch {res['machine']['torch']}).",
        "",
        f"Experiment `{res['experiment']}`, search space `{res['search_space']}`, "
        f"batch {res['batch_size']}, target `{res['target']}` ({res['threads']} intra-op thread).",
        "",
        "| | value |",
        "| --- | --- |",
        f"| profiled configurations | {t['configs']} |",
        f"| profiling time | {t['seconds']:.0f} s |",
        f"| table fit, 5-fold cross-validated, within ±10 % | {t.get('cv_within_10pct', 0):.1%} |",
        f"| table fit, cross-validated MAPE | {t.get('cv_mape', 0):.1%} |",
        f"| **validation samples** (random policies, measured end to end) | {v['samples']} |",
        f"| **within ±10 %** | **{v['within_10pct']:.1%}** |",
        f"| **MAPE** | **{v['mape']:.1%}** |",
        f"| **Spearman** | **{v['spearman']:.3f}** |",
        f"| measured latency range | {v['min_ms']:.3f}–{v['max_ms']:.3f} ms |",
        f"| validation time | {v['seconds']:.0f} s |",
        f"| CPU busy with other processes at start (profile / validate) | "
        f"{res['busy']['profile']:.0%} / {res['busy']['validate']:.0%} |",
    ]
    rep = res.get("repeatability")
    if rep:
        lines.append(
            f"| the same {rep['samples']} policies measured in the previous run "
            f"({rep['previous_date']}): "
            f"median shift of this run | {rep['median_shift']:+.1%} "
            f"(absolute shift: median {rep['median_abs_shift']:.1%}, "
            f"max {rep['max_abs_shift']:.1%}) |"
        )
    lines += [
        "",
        "Latency is measured on a shared 2-core machine: when other processes load it, the "
        "absolute level of every measurement moves (the repeatability row shows by how much "
        "between two runs of the same policies), the ranking much less (Spearman).",
        "",
        "Commands:",
        "",
        "```",
        res["command"],
        "```",
        "",
        "Per-sample pairs (predicted, measured, error) are in the JSON file next to this one.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(EXPERIMENTS))
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--target", default="cpu-onnxruntime")
    ap.add_argument("--force", action="store_true", help="profile again even if cached")
    ap.add_argument("--max-configs", type=int, help="override the preset's profiling budget")
    ap.add_argument("--max-seconds", type=float, help="override the preset's profiling budget")
    args = ap.parse_args(argv)

    cfg, overrides = _config(args.model, args.target)
    target = load_target(args.target)
    budget = {
        k: v
        for k, v in (("max_configs", args.max_configs), ("max_seconds", args.max_seconds))
        if v is not None
    }
    if budget:
        target = target.model_copy(update={"profile": target.profile.model_copy(update=budget)})
    t0 = time.perf_counter()
    latency_model = profile(cfg, force=args.force, target=target)
    table = latency_model.table
    print(f"table: {describe_fit(table)}")
    report = validate_latency(cfg, args.samples, seed=args.seed)
    measured = [p["measured_ms"] for p in report.pairs]
    cmd = f".venv/bin/python benchmarks/latency.py {args.model} --samples {args.samples}"
    if args.seed != 1:
        cmd += f" --seed {args.seed}"
    for k, v in budget.items():
        cmd += f" --{k.replace('_', '-')} {v:g}"
    res = {
        "model": args.model,
        "target": args.target,
        "threads": target.runtime.threads,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": code_version(),
        "machine": machine_fingerprint(),
        "experiment": str(EXPERIMENTS[args.model].relative_to(REPO)),
        "overrides": overrides,
        "search_space": str(Path(cfg.search_space).resolve().relative_to(REPO)),
        "batch_size": cfg.latency.batch_size,
        "command": cmd,
        "table": {**table.meta.get("fit", {}), "seconds": table.meta.get("seconds", 0.0)},
        "busy": {
            "profile": table.meta.get("cpu_busy_at_start", 0.0),
            "validate": report.cpu_busy_at_start,
        },
        "validation": {
            **report.summary(),
            "min_ms": min(measured),
            "max_ms": max(measured),
        },
        "total_seconds": round(time.perf_counter() - t0, 1),
        "pairs": report.pairs,
    }
    res["validation"].pop("artifacts", None)
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    res["repeatability"] = _repeatability(out / f"latency-{args.model}.json", res)
    (out / f"latency-{args.model}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"latency-{args.model}.md").write_text(_markdown(res))
    print(_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
