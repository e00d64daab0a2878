"""Compression techniques head to head (issue #22): the same policy fine-tuned the same number of
steps, one technique changed at a time, test accuracy on the full 10k test split.

- ``schedule``: one-shot pruning vs gradual (AGP cubic, ``prune_stages`` steps, recovery
  fine-tunes at 0.1 x lr) — ``export.finetune.schedule``;
- ``quantizer``: the uniform integer grid vs k-means weight sharing at the same bits;
- ``scheme``: symmetric vs asymmetric integer weights; ``granularity``: per channel vs per tensor.

Everything below (models, policies, steps, seeds) is declared before the run and not changed
after reading results. Each (model, comparison, policy, variant, seed) is one resumable piece,
appended to ``benchmarks/results/techniques.json``; rows of another code version are re-run.

    python benchmarks/techniques.py --model small_cnn     # ~25 min on 2 cores
    python benchmarks/techniques.py --report
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from common import REPO, RESULTS, code_version
from compare import _cfg, cpu_flags, paired_ci

OUT = RESULTS / "techniques.json"
WORK = REPO / "runs" / "bench-compare"  # the compare benchmark's baselines (trained once)
SEEDS = (0, 1, 2)
STEPS = {"small_cnn": 400, "resnet18": 400}
BATCH = {"small_cnn": 128, "resnet18": 64}
# (comparison, policy name, uniform policy settings, variants: {name: layer options / recipe})
COMPARISONS = [
    ("schedule", "s80-4b", {"sparsity": 0.8, "bits": 4}, {"oneshot": {}, "gradual": {}}),
    ("schedule", "s95-fp32", {"sparsity": 0.95, "bits": 32}, {"oneshot": {}, "gradual": {}}),
    *(
        (
            "quantizer",
            f"s50-{b}b",
            {"sparsity": 0.5, "bits": b},
            {"uniform": {}, "kmeans": {"quantizer": "kmeans"}},
        )
        for b in (2, 3, 4)
    ),
    ("scheme", "s0-3b", {"sparsity": 0.0, "bits": 3}, {"symmetric": {}, "asymmetric": {}}),
    ("granularity", "s0-4b", {"sparsity": 0.0, "bits": 4}, {"per_channel": {}, "per_tensor": {}}),
]


def _log(msg: str) -> None:
    print(msg, flush=True)


def _load() -> dict:
    if OUT.exists():
        return json.loads(OUT.read_text())
    return {"rows": []}


def _policy(space, settings: dict, comparison: str, variant: str):
    from dataclasses import replace

    from autocompress.policy import CompressionPolicy

    base = space.uniform_policy(settings["sparsity"], settings["bits"])
    options = {comparison: variant} if comparison in ("quantizer", "scheme", "granularity") else {}
    return CompressionPolicy({n: replace(lp, **options) for n, lp in base.items()})


def run(model: str) -> None:
    import torch

    from autocompress.compression.apply import weight_sparsity
    from autocompress.compression.artifact import ModelRef, packed_model_size
    from autocompress.baseline import prepare
    from autocompress.search.trials import TrialEvaluator
    from autocompress.training import evaluate

    torch.set_num_threads(2)
    cfg = _cfg(model, WORK / model / "shared")
    prep = prepare(cfg, log=_log)
    base_test, _ = evaluate(prep.baseline.model, prep.data.test)
    version = code_version()
    data = _load()
    data.setdefault("baselines", {})[model] = {
        "test_accuracy": base_test,
        "fp32_state_dict_bytes": prep.baseline.metrics.fp32_state_dict_bytes,
        "checkpoint": str(prep.baseline.checkpoint),
    }
    done = {
        (r["model"], r["comparison"], r["policy"], r["variant"], r["seed"])
        for r in data["rows"]
        if r["commit"] == version
    }
    data["rows"] = [r for r in data["rows"] if r["commit"] == version or r["model"] != model]
    ref = ModelRef.from_config(cfg, prep.data.input_shape)
    pieces = [
        (comp, name, settings, variant, seed)
        for comp, name, settings, variants in COMPARISONS
        for variant in variants
        for seed in SEEDS
        if (model, comp, name, variant, seed) not in done
    ]
    t_start = time.perf_counter()
    for i, (comp, name, settings, variant, seed) in enumerate(pieces, 1):
        recipe = cfg.export.finetune.model_copy(
            update={"steps": STEPS[model], "batch_size": BATCH[model], "full_train": True}
        )
        if comp == "schedule":
            recipe = recipe.model_copy(update={"schedule": variant})
        policy = _policy(prep.space, settings, comp, variant)
        evaluator = TrialEvaluator(cfg, prep.baseline, prep.data, None)
        t0, c0 = time.perf_counter(), time.process_time()
        compressed, _ = evaluator.compress(policy, recipe=recipe, seed=seed)
        compressed.eval()
        test_acc, _ = evaluate(compressed, prep.data.test)
        packed = packed_model_size(compressed, ref, policy, round_to=cfg.compression.round_to)
        row = {
            "model": model,
            "comparison": comp,
            "policy": name,
            "variant": variant,
            "seed": seed,
            "test_accuracy": test_acc,
            "test_images": len(prep.data.test),
            "packed_bytes": packed,
            "ratio": prep.baseline.metrics.fp32_state_dict_bytes / packed,
            "weight_sparsity": weight_sparsity(compressed),
            "steps": recipe.steps,
            "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
            "commit": version,
        }
        data["rows"].append(row)
        data["meta"] = {"cpu_flags": cpu_flags(), "python": platform.python_version()}
        OUT.write_text(json.dumps(data, indent=1))
        eta = (time.perf_counter() - t_start) / i * (len(pieces) - i)
        _log(
            f"[{i}/{len(pieces)}] {model} {comp} {name} {variant} seed {seed}: test "
            f"{test_acc:.4f}, {row['ratio']:.1f}x, {row['wall_s']:.0f} s (ETA {eta / 60:.0f} min)"
        )
    report()


def report() -> None:
    data = _load()
    lines = [
        "# Compression techniques head to head",
        "",
        "Same policy, same fine-tune steps (distilled, full training split), one technique "
        "changed; test accuracy on the full test split; packed bytes vs the FP32 `state_dict`. "
        "Paired difference = second variant - first, per fine-tune seed, with its 95 % t "
        "interval (`benchmarks/techniques.py`, results in `techniques.json`).",
        "",
        "| model | comparison | policy | variant | test acc (mean ± sd) | ratio | "
        "paired diff (points) | 95 % CI | seeds | commit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = data["rows"]
    summary: dict = {}
    keys = dict.fromkeys((r["model"], r["comparison"], r["policy"]) for r in rows)
    for model, comp, name in keys:
        group = [
            r for r in rows if (r["model"], r["comparison"], r["policy"]) == (model, comp, name)
        ]
        variants = list(dict.fromkeys(r["variant"] for r in group))
        by = {v: {r["seed"]: r for r in group if r["variant"] == v} for v in variants}
        first = variants[0]
        for v in variants:
            accs = [r["test_accuracy"] for r in by[v].values()]
            ratio = np.mean([r["ratio"] for r in by[v].values()])
            diff_txt = ci_txt = ""
            if v != first:
                seeds = sorted(set(by[v]) & set(by[first]))
                diffs = [
                    100 * (by[v][s]["test_accuracy"] - by[first][s]["test_accuracy"]) for s in seeds
                ]
                ci = paired_ci(diffs)
                diff_txt = f"{np.mean(diffs):+.2f}" if diffs else ""
                ci_txt = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "n/a"
                summary.setdefault(model, {})[f"{comp}:{name}:{v}-{first}"] = {
                    "mean_points": float(np.mean(diffs)) if diffs else None,
                    "ci95_points": ci,
                    "seeds": seeds,
                }
            commits = ",".join(sorted({r["commit"] or "?" for r in by[v].values()}))
            lines.append(
                f"| {model} | {comp} | {name} | {v} | {np.mean(accs):.4f} ± "
                f"{np.std(accs, ddof=1) if len(accs) > 1 else 0:.4f} | {ratio:.1f}x | {diff_txt} "
                f"| {ci_txt} | {len(accs)} | {commits} |"
            )
    for model, b in data.get("baselines", {}).items():
        lines.append(f"\nBaseline {model}: test accuracy {b['test_accuracy']:.4f}.")
    data["summary"] = summary
    OUT.write_text(json.dumps(data, indent=1))
    (RESULTS / "techniques.md").write_text("\n".join(lines) + "\n")
    _log("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=sorted(STEPS))
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)
    if args.report:
        report()
    elif args.model:
        run(args.model)
    else:
        p.error("give --model or --report")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
