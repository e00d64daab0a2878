"""Deployable-results benchmark (issue #5): best packed compression ratio and best measured
ONNX Runtime speed-up at <= 1 point test-accuracy drop.

For a model: run (or resume) its search, then export Pareto points in order of size (for the
ratio) and of predicted latency (for the speed-up) until one keeps the test drop within the
tolerance; every export is a full `autocompress export` (longer distilled fine-tune, ONNX, packed
file, verification on the test split and on the CPU). Results go to
benchmarks/results/deploy-<model>.{md,json}.

    python benchmarks/deploy.py --model small_cnn
    python benchmarks/deploy.py --model resnet18 --trials 24 --max-exports 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import autocompress as ac
from autocompress.export.pick import PickCriteria
from autocompress.export.run import export

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = {
    "small_cnn": ROOT / "experiments" / "fashion_mnist_quick.yaml",
    "resnet18": ROOT / "experiments" / "fashion_mnist_resnet18.yaml",
}
TOLERANCE_POINTS = 1.0


def _export_until_ok(cfg, front: list[dict], key: str, done: dict, max_exports: int, log):
    """Export front points ordered by ``key`` (smallest first) until one meets the tolerance."""
    tried = []
    for row in sorted(front, key=lambda r: r[key])[:max_exports]:
        n = row["trial"]
        if n not in done:
            log(f"export trial {n} ({key} {row[key]:.4g})")
            done[n] = export(cfg, PickCriteria(trial=n), log=lambda *_: None).to_dict()
        r = done[n]
        drop = 100 * (r["baseline_test_accuracy"] - r["test_accuracy"])
        tried.append({"trial": n, "drop_points": drop})
        if drop <= TOLERANCE_POINTS:
            return r, tried
    return None, tried


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=sorted(EXPERIMENTS), default="small_cnn")
    p.add_argument("--trials", type=int, help="override search.n_trials")
    p.add_argument("--max-exports", type=int, default=4, help="per criterion")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    out_dir = ROOT / "benchmarks" / "runs" / f"deploy-{args.model}"
    overrides = [f"output_dir={out_dir}", *args.overrides]
    if args.trials:
        overrides.append(f"search.n_trials={args.trials}")
    cfg = ac.load_experiment(EXPERIMENTS[args.model], overrides)
    t0 = time.perf_counter()
    result = ac.search(cfg)
    search_s = time.perf_counter() - t0
    done: dict[int, dict] = {}
    best_ratio, tried_ratio = _export_until_ok(
        cfg, result.front, "size_kb", done, args.max_exports, print
    )
    best_speed, tried_speed = _export_until_ok(
        cfg, result.front, "latency_ms", done, args.max_exports, print
    )
    summary = {
        "model": args.model,
        "experiment": str(EXPERIMENTS[args.model].relative_to(ROOT)),
        "overrides": overrides,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "n_complete": result.n_complete,
        "search_seconds": search_s,
        "baseline": result.baseline,
        "tolerance_points": TOLERANCE_POINTS,
        "best_compression": best_ratio,
        "best_speedup": best_speed,
        "tried_for_compression": tried_ratio,
        "tried_for_speedup": tried_speed,
        "exports": done,
        "seconds": time.perf_counter() - t0,
    }
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"deploy-{args.model}.json").write_text(json.dumps(summary, indent=2))
    (res / f"deploy-{args.model}.md").write_text(_markdown(summary))
    print((res / f"deploy-{args.model}.md").read_text())


def _line(label: str, r: dict | None) -> str:
    if r is None:
        return f"| {label} | none within tolerance | | | | |"
    drop = 100 * (r["baseline_test_accuracy"] - r["test_accuracy"])
    return (
        f"| {label} | trial {r['trial']} | {r['compression_ratio']:.1f}x "
        f"({r['packed_bytes']} B) | {r['speedup']:.2f}x ({r['measured_latency_ms']:.3f} vs "
        f"{r['baseline_latency_ms']:.3f} ms) | {r['test_accuracy']:.4f} | {drop:.2f} |"
    )


def _markdown(s: dict) -> str:
    b = s["baseline"]
    rows = [
        f"# Deployable results: {s['model']}",
        "",
        f"Experiment `{s['experiment']}` with overrides `{' '.join(s['overrides'])}`; "
        f"{s['n_complete']} trials, search {s['search_seconds'] / 60:.1f} min, total "
        f"{s['seconds'] / 60:.1f} min on {s['machine']['cpu']} (2 cores).",
        f"Baseline: test accuracy {b['test_accuracy']:.4f}, FP32 state_dict "
        f"{b['fp32_state_dict_bytes']} B. Tolerance: {s['tolerance_points']} point test drop.",
        "",
        "| criterion | exported | packed ratio | measured speed-up (ONNX Runtime) | "
        "test acc | drop (points) |",
        "| --- | --- | --- | --- | --- | --- |",
        _line("best compression ratio", s["best_compression"]),
        _line("best speed-up", s["best_speedup"]),
        "",
        "All exports:",
        "",
        "| trial | ratio | speed-up | measured ms | predicted ms | test acc | INT8 layers |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in s["exports"].values():
        rows.append(
            f"| {r['trial']} | {r['compression_ratio']:.1f}x | {r['speedup']:.2f}x | "
            f"{r['measured_latency_ms']:.4f} | {r['predicted_latency_ms']:.4f} | "
            f"{r['test_accuracy']:.4f} | {len(r['int8_layers'])} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
