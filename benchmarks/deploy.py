"""Deployable-results benchmark (issue #5): best packed compression ratio and best measured
ONNX Runtime speed-up at <= 1 point test-accuracy drop.

For a model: run (or resume) its search, then export Pareto points in order of size (for the
ratio) and of predicted latency (for the speed-up) until one keeps the test drop within the
tolerance; every export is a full `autocompress export` (longer distilled fine-tune, ONNX, packed
file, verification on the test split and on the CPU). Results go to
benchmarks/results/deploy-<model>.{md,json}.

The search runs in the experiment's own output folder (so the README's default run is resumed,
not repeated) unless ``--output-dir`` is given; the baseline is the shared one of
``benchmarks/common.py``.

    python benchmarks/deploy.py --model small_cnn
    python benchmarks/deploy.py --model resnet18 --reduced
    python benchmarks/deploy.py --model small_cnn --deep   # issue #22's size target

``--deep`` searches ``search_spaces/<model>_deep.yaml`` (k-means weight sharing, fewer bits,
sparser and narrower layers) and exports with a longer fine-tune; its results go to
``deploy-<model>-deep.{md,json}`` with ``best_ratio_at_1pt``, ``test_images``, ``commit`` and the
techniques of the best policy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from common import EXPERIMENTS, REPO, baseline_checkpoint, code_version

import autocompress as ac
from autocompress.export.run import export
from autocompress.search.pick import PickCriteria

ROOT = REPO
TOLERANCE_POINTS = 1.0
MAX_VAL_DROP = 12.0  # below the front's best validation accuracy (short per-trial fine-tunes)


def cfg_baseline_val(front: list[dict]) -> float:
    """The front's best validation accuracy (its accurate end: the anchor trial)."""
    return max(r["val_accuracy"] for r in front)


# ResNet-18 on 2 CPU cores (a train step at batch 64 takes ~0.5 s): a short search with short
# per-trial fine-tunes; the picked models still get a longer distilled fine-tune at export.
REDUCED = {
    "resnet18": [
        "search.n_trials=10",
        "finetune.steps=40",
        "finetune.lr=0.005",
        "finetune.batch_size=64",
        "data.train_subset=4000",
        "data.val_subset=1000",
        "export.finetune.steps=400",
        "export.finetune.batch_size=64",
    ],
}


# Issue #22's size target: the Deep Compression search space, a longer export fine-tune
# (one-shot: at equal steps it beat gradual pruning by 0.7-1.1 points, results/techniques.md).
DEEP = {
    "small_cnn": [
        "search_space=../search_spaces/small_cnn_deep.yaml",
        "search.n_trials=20",
        "search.screen_trials=300",
        # 3000 steps left the ~40x candidates 1.5-2.2 points down (3422ff0): recovery needs more
        "export.finetune.steps=8000",
    ],
    "resnet18": [
        "search_space=../search_spaces/resnet18_deep.yaml",
        "export.finetune.steps=2000",
    ],
}


def _export_until_ok(cfg, front: list[dict], key: str, done: dict, max_exports: int, log, save):
    """Export front points ordered by ``key`` (smallest first) until one meets the tolerance;
    ``save`` records each finished export so an interrupted run resumes without redoing it."""
    tried = []
    base = cfg_baseline_val(front)
    # Exporting a point the search already scored far below the baseline wastes a long
    # fine-tune: only points within MAX_VAL_DROP validation points are candidates.
    cands = [r for r in front if 100 * (base - r["val_accuracy"]) <= MAX_VAL_DROP]
    for row in sorted(cands, key=lambda r: r[key])[:max_exports]:
        n = row["trial"]
        if n not in done:
            log(f"export trial {n} ({key} {row[key]:.4g})")
            done[n] = export(cfg, PickCriteria(trial=n), log=lambda *_: None).to_dict()
            save(done)
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
    p.add_argument("--max-exports", type=int, default=3, help="per criterion")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--output-dir", type=Path, help="default: the experiment's own output_dir")
    p.add_argument("--reduced", action="store_true", help="the 2-core budget of REDUCED")
    p.add_argument("--deep", action="store_true", help="the Deep Compression space and recipe")
    p.add_argument(
        "--summarize", action="store_true", help="rewrite the Markdown from the recorded JSON"
    )
    args = p.parse_args()
    stem = f"deploy-{args.model}" + ("-deep" if args.deep else "")
    if args.summarize:
        res = ROOT / "benchmarks" / "results"
        summary = json.loads((res / f"{stem}.json").read_text())
        summary["best_compression"] = _best(summary["exports"], "compression_ratio")
        summary["best_speedup"] = _best(summary["exports"], "speedup")
        _deep_fields(summary)
        (res / f"{stem}.json").write_text(json.dumps(summary, indent=2))
        (res / f"{stem}.md").write_text(_markdown(summary))
        print((res / f"{stem}.md").read_text())
        return
    if os.environ.get("AUTOCOMPRESS_THREADS", "").isdigit():
        import torch

        torch.set_num_threads(int(os.environ["AUTOCOMPRESS_THREADS"]))
    given = any(o.startswith("model.checkpoint=") for o in args.overrides)
    # The baseline is trained with the given baseline/data settings (e.g. more epochs) and
    # the run's output folder; its checkpoint then feeds the search like a user's own.
    base = [o for o in args.overrides if o.startswith(("baseline.", "data."))]
    if args.output_dir:
        base.append(f"output_dir={args.output_dir.resolve()}")
    overrides = [] if given else [f"model.checkpoint={baseline_checkpoint(args.model, base)}"]
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir.resolve()}")
    if args.reduced:
        overrides += REDUCED.get(args.model, [])
    if args.deep:
        overrides += DEEP[args.model]
    overrides += args.overrides
    if args.trials:
        overrides.append(f"search.n_trials={args.trials}")
    cfg = ac.load_experiment(EXPERIMENTS[args.model], overrides)
    t0 = time.perf_counter()
    result = ac.search(cfg)
    search_s = time.perf_counter() - t0
    done, save = _export_cache(Path(cfg.output_dir) / f"{stem}-exports.json")
    front = [p.row() for p in result.front]
    best_ratio, tried_ratio = _export_until_ok(
        cfg, front, "size_kb", done, args.max_exports, print, save
    )
    # --deep is issue #22's size target: its long exports are spent on the ratio only.
    best_speed, tried_speed = (
        (None, [])
        if args.deep
        else _export_until_ok(cfg, front, "latency_ms", done, args.max_exports, print, save)
    )
    # Every export counts for both criteria: the best-ratio search may have stopped at a
    # point that fails the tolerance while the speed-up search exported one that keeps it.
    best_ratio = _best(done, "compression_ratio") or best_ratio
    best_speed = _best(done, "speedup") or best_speed
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
        "commit": code_version(),
    }
    _deep_fields(summary)
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    (res / f"{stem}.md").write_text(_markdown(summary))
    print((res / f"{stem}.md").read_text())


def _export_cache(path: Path):
    """Exports finished at this commit (by trial), and the function that records one more."""
    commit = code_version()
    old = json.loads(path.read_text()) if path.exists() else {}
    done = (
        {int(k): v for k, v in old.get("exports", {}).items()}
        if old.get("commit") == commit
        else {}
    )
    if done:
        print(f"resuming: exports of trials {sorted(done)} done at {commit}")

    def save(d: dict) -> None:
        path.write_text(json.dumps({"commit": commit, "exports": d}, indent=2))

    return done, save


def techniques(policy: dict) -> dict:
    """What a policy uses: counts of layers per technique."""
    from autocompress.policy import CompressionPolicy

    pol = CompressionPolicy.from_dict(policy)
    out = {
        "channel_removal": sum(lp.keep_ratio < 1 for lp in pol.values()),
        "unstructured_sparsity": sum(lp.sparsity > 0 for lp in pol.values()),
        "kmeans": sum(lp.quantized and lp.quantizer == "kmeans" for lp in pol.values()),
        "uniform_int": sum(lp.quantized and lp.quantizer == "uniform" for lp in pol.values()),
        "fp16": sum(lp.half for lp in pol.values()),
        "bits": sorted({lp.bits for lp in pol.values()}),
        "scope": pol.scope,
    }
    return out


def _deep_fields(summary: dict) -> None:
    """The issue #22 fields: best packed ratio within the tolerance, test images, techniques."""
    best = summary.get("best_compression")
    summary["best_ratio_at_1pt"] = best["compression_ratio"] if best else None
    summary["test_images"] = min(
        (r.get("test_images", 0) for r in summary["exports"].values()), default=0
    )
    if best:
        summary["best_techniques"] = techniques(best["policy"])


def _within(r: dict) -> bool:
    return 100 * (r["baseline_test_accuracy"] - r["test_accuracy"]) <= TOLERANCE_POINTS


def _best(done: dict, key: str) -> dict | None:
    ok = [r for r in done.values() if _within(r)]
    return max(ok, key=lambda r: r[key]) if ok else None


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
        f"{s['seconds'] / 60:.1f} min on {s['machine']['cpu']} (2 cores), commit "
        f"{s.get('commit', 'unknown')}.",
        f"Baseline: test accuracy {b['test_accuracy']:.4f}, FP32 state_dict "
        f"{b['fp32_state_dict_bytes']} B. Tolerance: {s['tolerance_points']} point test drop.",
        "",
        "| criterion | exported | packed ratio | measured speed-up (ONNX Runtime) | "
        "test acc | drop (points) |",
        "| --- | --- | --- | --- | --- | --- |",
        _line("best compression ratio", s["best_compression"]),
        _line("best speed-up", s["best_speedup"]),
        "",
        "All exports (sizes: packed file, deployed ONNX file; memory: resident set a fresh ONNX "
        "Runtime process gains with the model, steady / peak; throughput of the deployed form "
        "at the target's threads):",
        "",
        "| trial | form | packed B | ONNX B | memory MB | ratio | speed-up | measured ms | "
        "predicted ms | images/s by batch | test acc | INT8 layers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in s["exports"].values():
        mem = (
            f"{r['memory_steady_mb']:.2f} / {r['memory_peak_mb']:.2f}"
            if "memory_steady_mb" in r
            else "–"
        )
        tput = ", ".join(f"{b}: {v:.0f}" for b, v in (r.get("throughput") or {}).items()) or "–"
        rows.append(
            f"| {r['trial']} | {r.get('deployed_form', '–')} | {r['packed_bytes']} | "
            f"{r.get('onnx_bytes', '–')} | {mem} | {r['compression_ratio']:.1f}x | "
            f"{r['speedup']:.2f}x | {r['measured_latency_ms']:.4f} | "
            f"{r['predicted_latency_ms']:.4f} | {tput} | {r['test_accuracy']:.4f} | "
            f"{len(r['int8_layers'])} |"
        )
    first = next(iter(s["exports"].values()), {})
    if "baseline_memory_steady_mb" in first:
        rows += [
            "",
            f"Baseline FP32 ONNX: {first['baseline_onnx_bytes']} B, memory "
            f"{first['baseline_memory_steady_mb']:.2f} / "
            f"{first['baseline_memory_peak_mb']:.2f} MB.",
        ]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
