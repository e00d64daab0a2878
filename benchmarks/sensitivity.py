"""Benchmark of issue #3: does per-layer sensitivity make the search better at the same budget?

For each model, seed and variant, one search of ``--trials`` trials:

- ``unshaped``: the plain search (sensitivity off);
- ``shaped``: sensitivity on: shaped space + warm-start trials (the defaults);
- ``two_stage``: shaped space, and the proxy front's candidates as the trials.

Reported per run: hypervolume of the validation front against the reference point fixed below,
the best compression ratio at <= 1 point validation drop, wall time; once per model: the sweep's
time, the cheap estimators' Spearman against the sweep, the additivity check (predicted vs
measured drop of sampled policies, no fine-tune), the size estimate's error; for the two-stage
runs, Spearman of the predicted drop vs the real (fine-tuned) drop over their trials.

Runs go to ``runs/bench-sensitivity/<model>/<variant>-s<seed>`` (``--work-dir``); results are
appended to ``benchmarks/results/sensitivity_<model>.json`` after every run (a re-run skips
finished runs; the whole-policy checks, identical for every seed, are cached across runs) and
summarised in ``benchmarks/results/sensitivity.md``.

    .venv/bin/python benchmarks/sensitivity.py --model small_cnn --seeds 0 1 2
    .venv/bin/python benchmarks/sensitivity.py --report          # only rewrite the Markdown
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "runs" / "bench-sensitivity"  # --work-dir

# The reference point, fixed before any run: normalised (1 - accuracy, latency / baseline,
# size / baseline), with the accuracy coordinate at 5 points below the baseline's validation
# accuracy (fronts are compared where a model is still useful), and 1.1 x the baseline's cost.
REF_DROP_POINTS = 5.0
REF_COST = 1.1

MODELS = {
    "small_cnn": {
        "experiment": "experiments/fashion_mnist_quick.yaml",
        "trials": 30,
        "overrides": [
            "finetune.steps=60",
            "data.train_subset=6000",
            "data.val_subset=2000",
            "latency.target=proxy",
        ],
        "sensitivity": {},
    },
    "resnet18": {
        "experiment": "experiments/fashion_mnist_resnet18.yaml",
        "trials": 12,
        "overrides": [
            "baseline.epochs=1",
            "finetune.steps=20",
            "finetune.batch_size=64",
            "data.train_subset=4000",
            "data.val_subset=1000",
            "latency.target=proxy",
        ],
        "sensitivity": {"images": 500, "max_points": 4, "estimator_images": 64},
        # Each table repeats the 206-level sweep (~15 min on 2 busy cores): only the default
        # estimator (fisher) is compared with the sweep here; small_cnn reports both.
        "one_estimator": True,
    },
}
_TRIAL_KEYS = ("trial", "val_accuracy", "latency_ms", "size_kb", "compression_ratio")
VARIANTS = {
    "unshaped": {"enabled": False},
    "shaped": {},
    "two_stage": {"two_stage": True},
}


def _settings_overrides(settings: dict) -> list[str]:
    return [f"sensitivity.{k}={json.dumps(v)}" for k, v in settings.items()]


def _front_metrics(rows: list[dict], baseline: dict) -> dict:
    """Hypervolumes and the best compression ratio at <= 1 point drop from complete trials."""
    from autocompress.search.pareto import hypervolume, non_dominated

    acc0 = baseline["val_accuracy"]
    pts = np.array(
        [
            [
                1.0 - r["val_accuracy"],
                r["latency_ms"] / baseline["latency_ms"],
                r["size_kb"] / baseline["size_kb"],
            ]
            for r in rows
        ]
    )
    front = non_dominated(pts, ["minimize"] * 3)
    ref = [1.0 - (acc0 - REF_DROP_POINTS / 100.0), REF_COST, REF_COST]
    ok = [r for r in rows if r["val_accuracy"] >= acc0 - 0.01]
    return {
        "hypervolume": hypervolume(pts[front], ref),
        "hypervolume_search_ref": hypervolume(pts[front], [1.0, REF_COST, REF_COST]),
        "front_size": int(len(front)),
        "best_ratio_1pt": max((r["compression_ratio"] for r in ok), default=None),
        "best_accuracy": max(r["val_accuracy"] for r in rows),
        "n_within_5pt": sum(r["val_accuracy"] >= acc0 - 0.05 for r in rows),
    }


def _baseline_checkpoint(model: str, spec: dict, log) -> Path:
    """The shared baseline of ``benchmarks/common.py``, copied into the benchmark's folder so
    that every run uses the same bytes."""
    from common import baseline_checkpoint

    dest = WORK / model / "baseline.pt"
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(baseline_checkpoint(model, log=log), dest)
    return dest


def _shared_table(model: str, spec: dict, ckpt: Path, log, old: dict) -> tuple[Path, dict]:
    """The sensitivity table computed once (copied into every run's cache), with the checks
    (taken from ``old``, the JSON's record, when it was made for the same table)."""
    import autocompress as ac
    from autocompress.search.run import prepare
    from autocompress.sensitivity import (
        SensitivitySettings,
        analyze,
        check_additivity,
        make_proxy,
        size_error,
    )

    out = WORK / model / "shared"
    cfg = ac.load_experiment(
        REPO / spec["experiment"],
        [*spec["overrides"], f"model.checkpoint={ckpt}", f"output_dir={out}"],
    )
    prep = prepare(cfg, log=log)
    settings = SensitivitySettings.from_mapping(spec["sensitivity"])
    table = analyze(prep, settings, log=log)
    path = out / "cache" / f"sensitivity-{table.meta['key']}.json"
    if old.get("key") == table.meta["key"] and "additivity_no_finetune" in old:
        log("sensitivity: table and its checks as recorded in the JSON (same table key)")
        return path, old
    extra: dict = {"key": table.meta["key"]}
    other = "hessian" if settings.estimator == "fisher" else "fisher"
    if not spec.get("one_estimator"):
        t = analyze(prep, settings.with_(estimator=other), log=log)
        extra[f"agreement_{other}"] = t.meta.get("agreement")
        extra[f"{other}_seconds"] = t.meta.get("estimator_seconds")
    extra[f"agreement_{settings.estimator}"] = table.meta.get("agreement")
    extra[f"{settings.estimator}_seconds"] = table.meta.get("estimator_seconds")
    extra["sweep_seconds"] = table.meta.get("sweep_seconds")
    extra["table_seconds"] = table.meta.get("seconds")
    extra["levels"] = len(table.rows)
    add = check_additivity(prep, table, settings, n=40, log=log)
    extra["additivity_no_finetune"] = {k: add[k] for k in ("n", "spearman", "metric")}
    extra["additivity_no_finetune_loss"] = add.get("spearman_loss")
    err = size_error(prep, make_proxy(prep, prep.space, table, settings), n=20)
    extra["size_estimate"] = {k: err[k] for k in ("mean_abs_rel_error", "max_abs_rel_error")}
    return path, extra


def run_one(
    model: str, seed: int, variant: str, ckpt: Path, table: Path, log, trials: int | None = None
) -> dict:
    import autocompress as ac
    from autocompress.search.study import load_study, trial_rows
    from autocompress.sensitivity import checks_path

    spec = MODELS[model]
    settings = {**spec["sensitivity"], **VARIANTS[variant]}
    out = WORK / model / f"{variant}-s{seed}"
    if out.exists():
        shutil.rmtree(out)
    (out / "cache").mkdir(parents=True)
    shutil.copy(table, out / "cache" / table.name)
    # The whole-policy checks (uniform corners, greedy chain) are deterministic for a table key:
    # measured once, reused by the other seeds and variants (recorded as ``checks_reused``).
    key = table.stem.removeprefix("sensitivity-")
    checks, run_checks = checks_path(table.parent.parent, key), checks_path(out, key)
    reused = 0
    if checks.is_file() and settings.get("enabled", True):
        shutil.copy(checks, run_checks)
        reused = len(json.loads(checks.read_text()).get("drops", {}))
    overrides = [
        *spec["overrides"],
        f"model.checkpoint={ckpt}",
        f"output_dir={out}",
        f"search.seed={seed}",
        f"search.n_trials={trials or spec['trials']}",
        f"name=bench-{model}-{variant}-s{seed}",
    ]
    overrides += _settings_overrides(settings)
    cfg = ac.load_experiment(REPO / spec["experiment"], overrides)
    from common import code_version

    commit = code_version()
    t0 = time.perf_counter()
    ac.search(cfg, log=log)
    wall = time.perf_counter() - t0
    if run_checks.is_file():
        shutil.copy(run_checks, checks)
    info = load_study(cfg)
    baseline = info.study.user_attrs["baseline"]
    rows = trial_rows(info)
    res = {
        "model": model,
        "seed": seed,
        "variant": variant,
        "wall_seconds": wall,
        "checks_reused": reused,
        "commit": commit,
        "n_complete": len(rows),
        "baseline": baseline,
        **_front_metrics(rows, baseline),
        "trials": [{k: r[k] for k in _TRIAL_KEYS} for r in rows],
    }
    agree = out / "sensitivity" / "sensitivity_proxy_vs_trials.json"
    if agree.is_file():
        a = json.loads(agree.read_text())
        res["proxy_spearman"] = a.get("spearman")
        res["proxy_spearman_n"] = a.get("n")
    return res


# -- report --------------------------------------------------------------------------------
def _mean_sd(xs: list[float], spec: str = ".4f") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):{spec}} ± {sd:{spec}}"


def _fmt(x, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def _shared_lines(extra: dict) -> list[str]:
    lines = [
        f"Sensitivity table: {extra.get('levels')} levels, sweep "
        f"{_fmt(extra.get('sweep_seconds'), '.1f')} s, whole table "
        f"{_fmt(extra.get('table_seconds'), '.1f')} s (once per checkpoint, cached).",
        "",
    ]
    for key, a in extra.items():
        if not key.startswith("agreement_") or not a:
            continue
        name = key.removeprefix("agreement_")
        dims = ", ".join(
            f"{d} {_fmt(a.get(f'spearman_drop_{d}'), '.2f')}"
            for d in ("sparsity", "bits", "keep_ratio")
        )
        lines.append(
            f"- {name} estimator vs sweep (Spearman over {int(a.get('n_levels', 0))} levels): "
            f"accuracy drop {_fmt(a.get('spearman_drop'))}, loss increase "
            f"{_fmt(a.get('spearman_loss'))}; per dimension {dims} "
            f"({_fmt(extra.get(name + '_seconds'), '.1f')} s)"
        )
    add = extra.get("additivity_no_finetune", {})
    lines.append(
        f"- Additivity (sum of per-layer drops vs measured drop of {add.get('n')} sampled "
        f"policies, no fine-tune): Spearman {_fmt(add.get('spearman'))} (summed loss "
        f"increases: {_fmt(extra.get('additivity_no_finetune_loss'))})."
    )
    se = extra.get("size_estimate", {})
    mean, top = se.get("mean_abs_rel_error"), se.get("max_abs_rel_error")
    lines.append(
        "- Size estimate vs real packed bytes (20 sampled policies): mean |error| "
        f"{_fmt(mean, '.2%')}, max {_fmt(top, '.2%')}."
    )
    return lines


def _model_section(model: str, data: dict) -> list[str]:
    runs = data.get("runs", [])
    extra = data.get("shared", {})
    spec = MODELS[model]
    lines = [f"## {model}", ""]
    lines.append(
        f"Protocol: `{spec['experiment']}` with `{' '.join(spec['overrides'])}`, "
        f"{spec['trials']} trials per search, NSGA-II, sensitivity settings "
        f"`{json.dumps(spec['sensitivity'])}`, {data.get('threads', '?')} torch thread(s)."
    )
    lines.append("")
    if not runs:
        return [*lines, "Not run (see the notes below).", ""]
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    seeds = sorted({r["seed"] for r in runs})
    lines += [
        "| variant | hypervolume (ref 5 pt) | hypervolume (ref 1-acc=1) | best ratio at ≤1 pt "
        "| trials within 5 pt | wall s | wins vs unshaped (HV) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    by = {(r["variant"], r["seed"]): r for r in runs}
    for v in variants:
        rs = [by[(v, s)] for s in seeds if (v, s) in by]
        wins = [
            by[(v, s)]["hypervolume"] > by[("unshaped", s)]["hypervolume"]
            for s in seeds
            if (v, s) in by and ("unshaped", s) in by
        ]
        win_txt = "–" if v == "unshaped" else f"{sum(wins)}/{len(wins)}"
        lines.append(
            f"| {v} | {_mean_sd([r['hypervolume'] for r in rs])} | "
            f"{_mean_sd([r['hypervolume_search_ref'] for r in rs])} | "
            f"{_mean_sd([r['best_ratio_1pt'] for r in rs], '.1f')} | "
            f"{_mean_sd([r['n_within_5pt'] for r in rs], '.1f')} | "
            f"{_mean_sd([r['wall_seconds'] for r in rs], '.0f')} | {win_txt} |"
        )
    lines += ["", "Per seed (hypervolume, ref 5 pt / best ratio at ≤1 pt):", ""]
    lines += ["| seed | " + " | ".join(variants) + " |", "| --- |" + " --- |" * len(variants)]
    for s in seeds:
        cells = []
        for v in variants:
            r = by.get((v, s))
            ratio = r and r["best_ratio_1pt"]
            cells.append("–" if r is None else f"{r['hypervolume']:.4f} / {ratio or 0:.1f}x")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    two = [r for r in runs if r.get("proxy_spearman") is not None and r["variant"] == "two_stage"]
    lines.append("")
    versions: dict[str, list[str]] = {}
    for r in runs:
        versions.setdefault(r.get("commit") or "not recorded", []).append(
            f"{r['variant']} s{r['seed']}"
        )
    lines += [
        "Code version per run: "
        + "; ".join(f"`{c}`: {', '.join(rs)}" for c, rs in versions.items())
        + ".",
        "",
    ]
    reused = [
        f"{r['variant']} s{r['seed']}"
        for r in runs
        if r.get("checks_reused") and VARIANTS[r["variant"]].get("enabled", True)
    ]
    if reused:
        lines += [
            "Wall time of "
            + ", ".join(reused)
            + " excludes the whole-policy checks (uniform corners, greedy chain): they are "
            "deterministic for the table and were taken from the cache of an earlier run, as "
            "a re-run of a search does.",
            "",
        ]
    if extra:
        lines += _shared_lines(extra)
    if two:
        rhos = ", ".join(f"{r['proxy_spearman']:.3f} (n={r['proxy_spearman_n']})" for r in two)
        lines.append(
            "- Predicted drop vs real fine-tuned drop over the two-stage searches' trials "
            f"(Spearman): {rhos}."
        )
    return [*lines, ""]


def write_report(results: Path = RESULTS) -> Path:
    parts = [
        "# Sensitivity-shaped search vs plain search (issue #3)",
        "",
        f"Generated by `benchmarks/sensitivity.py`. Hypervolume: validation fronts in "
        f"(1 - accuracy, latency / baseline, size / baseline), reference point fixed in the script "
        f"before the runs: accuracy {REF_DROP_POINTS:g} points below the baseline's validation "
        f"accuracy, {REF_COST:g} x the baseline's latency and size (the search's own reference, "
        f"accuracy 0, is the second column). Latency is the `proxy` model's prediction.",
        "",
    ]
    for model in MODELS:
        path = results / f"sensitivity_{model}.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        parts += _model_section(model, data)
    notes = results / "sensitivity_notes.md"
    if notes.is_file():
        parts += [notes.read_text()]
    out = results / "sensitivity.md"
    out.write_text("\n".join(parts))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=list(MODELS), default="small_cnn")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (leave a core free)")
    p.add_argument("--report", action="store_true", help="only rewrite the Markdown report")
    p.add_argument("--rerun", action="store_true", help="run again runs already in the JSON")
    p.add_argument("--trials", type=int, help="trials per search (default: the model's)")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder for JSON and Markdown")
    p.add_argument("--work-dir", type=Path, help="folder for the runs (runs/bench-sensitivity)")
    args = p.parse_args(argv)
    global WORK
    WORK = (args.work_dir or WORK).resolve()
    results = args.results
    if args.report:
        print(write_report(results))
        return 0
    os.environ["AUTOCOMPRESS_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"sensitivity_{args.model}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    data["threads"] = args.threads

    def log(msg: str) -> None:
        print(msg, flush=True)

    spec = MODELS[args.model]
    ckpt = _baseline_checkpoint(args.model, spec, log)
    table, extra = _shared_table(args.model, spec, ckpt, log, data.get("shared", {}))
    data["shared"] = extra
    path.write_text(json.dumps(data, indent=1))
    for seed in args.seeds:
        for variant in args.variants:
            done = {(r["variant"], r["seed"]) for r in data["runs"]}
            if (variant, seed) in done and not args.rerun:
                continue
            log(f"=== {args.model} seed {seed} {variant}")
            res = run_one(args.model, seed, variant, ckpt, table, log, args.trials)
            data["runs"] = [
                r for r in data["runs"] if (r["variant"], r["seed"]) != (variant, seed)
            ] + [res]
            path.write_text(json.dumps(data, indent=1))
            log(
                f"=== {variant} seed {seed}: HV {res['hypervolume']:.4f}, best ratio at 1 pt "
                f"{res['best_ratio_1pt']}, {res['wall_seconds']:.0f} s"
            )
    print(write_report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
