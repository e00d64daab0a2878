"""Benchmark of issue #19: the multi-fidelity search against what a user gets otherwise, at
equal wall-clock compute.

Per model, seed and method, one search with the same wall-clock budget (``search.budget_s``,
every stage of the method charged: screening, fine-tunes, checks), the same per-trial fine-tune,
the same torch threads, the same latency table (``cpu-onnxruntime``, profiled once per model on
this machine, its cross-validated fit recorded) and the same size (packed bytes):

- ``autocompress``: the default search: screen (NSGA-II, no fine-tune) -> promoted front ->
  fine-tuned trials;
- ``uniform``: the best one-line config: a grid over sparsity x bits x keep_ratio (channel
  removal included), same per-trial fine-tune: the coarse grid first (its two ends alternately),
  then a finer grid in a random order, until the budget is spent;
- ``nsga2_plain``: NSGA-II with a fine-tune per trial on the same space (the first version);
- ``random``: Optuna's random sampler, fine-tune per trial;
- ``nni``: the uniform grid (sparsity x bits) compressed by NNI 3.0 (LevelPruner + QATQuantizer)
  with the same BatchNorm correction before its fine-tune (``nni_method.py``);
- ``tp_global``: Torch-Pruning's own global magnitude channel pruning at several ratios, INT8
  weights, the same fine-tune;
- ``ort_ptq``: ONNX Runtime's ``quantize_static`` INT8 of the uncompressed baseline (one point:
  what most users do first); no budget.

The search sees validation only. Every fine-tuned trial's packed model is kept
(``search.keep_models``); after the run, the points of the method's *validation* Pareto front
are loaded back and scored on the full 10,000-image test split (outside the budget). Reported:
hypervolume of (1 - test accuracy, latency / baseline, size / baseline) against the reference
point declared below; the paired difference autocompress - baseline per seed with its 95 % t
interval; the share of autocompress's hypervolume that policies found by the sampler contribute
(vs the anchor and the uniform seeds); best test accuracy at the declared size and latency
budgets.

Seeds, budgets and the reference point are fixed here before the final run: ``--seeds dev``
for development, ``--seeds final`` for the record (never used while developing).

Each run (model x method x seed) is appended to ``benchmarks/results/compare.json`` when it
ends; a re-run skips finished runs, so the benchmark resumes where a session stopped:

    .venv/bin/python benchmarks/compare.py --model small_cnn --seeds final
    .venv/bin/python benchmarks/compare.py --model small_cnn --seeds final --method uniform
    .venv/bin/python benchmarks/compare.py --model small_cnn --seeds final --measure-fronts
    .venv/bin/python benchmarks/compare.py --report          # only rewrite Markdown and plots

``--measure-fronts`` (after the runs, outside the budget) exports every validation-front point
as deployed (FP32, or INT8 QDQ of its quantised layers, built like ``latency validate`` builds
its samples; NNI and Torch-Pruning points are exported in their loop, uncharged) and times them
with the latency table's own protocol, the baseline's FP32 ONNX in the same batch: the
measured-front hypervolume (``summary.measured_hypervolume_mean``, ``measured_paired_diff_ci95``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXPERIMENTS, code_version  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
JSON = RESULTS / "compare.json"
WORK = REPO / "runs" / "bench-compare"

# -- fixed before the final run ---------------------------------------------------------------
# Seeds 1000-1004 were the final seeds until their test results were read (2026-12-02) while
# the method was still changing: they are retired (their rows stay in compare.json as history)
# and the record uses new ones, not run before this line was written.
# Seeds 2000-2004 are the complete record of the method at 2215183 (12 uniform configs enqueued
# into the screen, plain NSGA-II); the screen's sampler changed after it (2026-12-07: a layer-
# correlated first generation, nothing enqueued; decided on dev seed 100's screened front), so
# the next record uses 3000-3004, not run before this line was written.
# Seeds 3000-3004 are the complete record of the method at 2875618 (a tie with the uniform grid:
# on two seeds the first generation never drew the gentle corner); the first generation is now
# stratified along a gentle-to-aggressive axis (7f11223, decided on dev seeds 100-104 of
# screen_prior.py), so the next record uses 4000-4004, not run before this line was written.
# Seeds 4000-4004 are the complete record of the method at 7f11223 with the earlier protocol
# (uniform, nni and tp_global stopped after their coarse grids: 222, 101 and 21 s of 300 s).
# The protocol now makes every method fill its budget (17e4bfd, e99096d); the method is the
# package at ae82e10 (promotion in calibrated rounds was tried on dev seeds 100-102 and not
# kept: benchmarks/results/dev/), so the next record uses 5000-5004, not run before this line
# was written (2026-12-07).
SEEDS = {"dev": [100, 101, 102, 103, 104], "final": [5000, 5001, 5002, 5003, 5004]}
# Normalised points (1 - test accuracy, latency / baseline, size / baseline); the reference
# point is 5 accuracy points below the baseline's test accuracy and 1.1 x its latency and size.
REF_DROP_POINTS = 5.0
REF_COST = 1.1
# "Best test accuracy at size <= S and at latency <= L" (relative to the baseline).
SIZE_BUDGETS = (0.05, 0.1)
LATENCY_BUDGETS = (0.5, 0.75)
THREADS = 2
TABLE_MIN_CV = 0.8  # a latency profile below this (cross-validated within +-10 %) is re-done
TABLE_ATTEMPTS = 3
METHODS = ("autocompress", "uniform", "nsga2_plain", "random", "nni", "tp_global", "ort_ptq")
BASELINES = tuple(m for m in METHODS if m != "autocompress")
MODELS = {
    "small_cnn": {
        # Trained once with these settings (92.4 % test), cached under runs/bench-compare.
        "baseline": ["baseline.epochs=8", "baseline.lr=0.1"],
        "overrides": [
            "data.train_subset=12000",
            "data.val_subset=3000",
            "finetune.steps=60",
            "compression.round_to=4",
        ],
        "budget_s": 300,
        "grid": {
            "sparsity": [0.0, 0.5, 0.8],
            "bits": [32, 8, 4],
            "keep_ratio": [1.0, 0.75, 0.5],
        },
        "tp_ratios": [0.25, 0.5, 0.75],
        # What the budget left after the coarse grid is spent on (see ``grid``); decided
        # 2026-12-07 after the 4000-4004 record, for the records after it.
        "fine_grid": {
            "sparsity": [0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9],
            "bits": [32, 8, 6, 5, 4, 3, 2],
            "keep_ratio": [1.0, 0.75, 0.5, 0.25],
        },
        # about 7 s a ratio on the small CNN: 40 fill the 300 s
        "tp_fine_ratios": [round(0.05 + 0.0225 * i, 4) for i in range(41)],
    },
    "resnet18": {
        "baseline": ["baseline.epochs=4", "baseline.lr=0.1"],
        "overrides": [
            "data.train_subset=20000",
            "data.val_subset=2000",
            "finetune.steps=40",
            "finetune.batch_size=64",
            "search.screen_images=500",
        ],
        # 900 s (was 1800 s, never run at the final seeds): decided 2026-12-04 before any
        # ResNet-18 run of this script, so that 5 seeds x 7 methods fit in about 7 hours.
        "budget_s": 900,
        "grid": {
            "sparsity": [0.0, 0.5, 0.8],
            "bits": [32, 8, 4],
            "keep_ratio": [1.0, 0.5, 0.25],
        },
        "tp_ratios": [0.5, 0.75, 0.875],
        "fine_grid": {
            "sparsity": [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95],
            "bits": [32, 8, 6, 5, 4, 3, 2],
            "keep_ratio": [1.0, 0.75, 0.5, 0.25],
        },
        "tp_fine_ratios": [round(0.1 + 0.02 * i, 4) for i in range(44)],
    },
}
# What each method changes in the experiment (on top of the model's overrides).
METHOD_SETTINGS = {
    "autocompress": ["search.screen_trials=100000", "search.n_trials=10000"],
    "uniform": ["search.screen_trials=0", "search.n_trials=10000", "search.sampler=random"],
    # The first version's search: NSGA-II, a fine-tune per trial, a population small enough to
    # evolve within the budget (its default for ~24 trials).
    "nsga2_plain": [
        "search.screen_trials=0",
        "search.n_trials=10000",
        "search.sampler=nsga2",
        "search.population_size=8",
    ],
    "random": ["search.screen_trials=0", "search.n_trials=10000", "search.sampler=random"],
}


def _log(msg: str) -> None:
    print(msg, flush=True)


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                keep = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "amx")
                return " ".join(f for f in line.split(":", 1)[1].split() if f.startswith(keep))
    except OSError:
        pass
    return platform.processor()


# -- configs and shared state -------------------------------------------------------------------
def _cfg(model: str, out: Path, extra: list[str] = ()):
    import autocompress as ac

    spec = MODELS[model]
    return ac.load_experiment(
        EXPERIMENTS[model],
        [
            *spec["baseline"],
            *spec["overrides"],
            f"output_dir={out}",
            "latency.target=cpu-onnxruntime",
            "sensitivity.enabled=false",
            "data.test_subset=null",
            *extra,
        ],
    )


def shared(model: str) -> dict:
    """Once per model (cached): the baseline checkpoint, the latency table and its validation,
    the baseline on every axis (test accuracy on the full test split)."""
    import torch

    from autocompress.baseline import prepare
    from autocompress.hardware.latency import make_latency_model
    from autocompress.policy import CompressionPolicy
    from autocompress.training import evaluate

    torch.set_num_threads(THREADS)
    out = WORK / model / "shared"
    cfg = _cfg(model, out)
    prep = prepare(cfg, log=_log)
    bm = prep.baseline.metrics

    def table():
        lat = make_latency_model(
            cfg,
            prep.baseline.model,
            prep.space,
            prep.data.example_input(cfg.latency.batch_size),
            reference_ms=bm.latency_ms,
            log=_log,
        )
        return lat, getattr(getattr(lat, "table", None), "meta", {}).get("fit", {})

    # On this VM a profile's quality varies with the host's load (cross-validated within
    # +-10 %: 30-96 % on the same machine and settings): a profile below TABLE_MIN_CV is
    # re-done (at most TABLE_ATTEMPTS in all) and the best one kept.
    def files() -> list[Path]:
        return sorted((out / "cache").glob("latency-*.json"))

    attempts: list[dict] = []
    best: tuple[dict, dict] | None = None
    for attempt in range(TABLE_ATTEMPTS):
        if attempt:
            for f in files():
                f.unlink()
        lat, fit = table()
        attempts.append(fit)
        if best is None or fit.get("cv_within_10pct", 0) > best[0].get("cv_within_10pct", 0):
            best = (fit, {f: f.read_bytes() for f in files()})
        if fit.get("cv_within_10pct", 1.0) >= TABLE_MIN_CV:
            break
    if best is not None and fit is not best[0]:
        for f in files():
            f.unlink()
        for f, data in best[1].items():
            f.write_bytes(data)
        lat, fit = table()  # the best profile, loaded from its file
    test_acc, _ = evaluate(prep.baseline.model, prep.data.test)
    return {
        "cache": str(out / "cache"),
        "checkpoint": str(prep.baseline.checkpoint),
        "baseline": {
            "val_accuracy": bm.val_accuracy,
            "test_accuracy": test_acc,
            "latency_ms": lat.predict(prep.baseline.model, CompressionPolicy()),
            "measured_latency_ms": bm.latency_ms,
            "size_kb": bm.size_bytes / 1024,
            "trained_seconds": bm.trained_seconds,
        },
        "latency_validation": fit,
        "latency_attempts": attempts,
        "n_test": len(prep.data.test),
    }


def _run_dir(model: str, method: str, seed: int, sh: dict) -> Path:
    out = WORK / model / f"{method}-s{seed}"
    if out.exists():
        shutil.rmtree(out)
    (out / "cache").mkdir(parents=True)
    for f in Path(sh["cache"]).glob("*"):
        shutil.copy(f, out / "cache" / f.name)
    return out


def grid(model: str, space, seed: int) -> list:
    """The uniform grid's policies (the uncompressed corner left out: every search has it as
    its anchor): the coarse grid first, alternating between its gentle and its harsh end, then
    the fine grid's other points in a random order (``seed``), so the method uses its whole
    budget like the others (a user with time left tries more one-line configs)."""
    coarse = _uniform_points(space, MODELS[model]["grid"], channels=True)
    fine = _uniform_points(space, MODELS[model]["fine_grid"], channels=True)
    return _then_the_rest(_ends_first(coarse), fine, seed)


def _uniform_points(space, g: dict, *, channels: bool) -> list:
    """One-line configs over a grid, gentle to harsh, without repeats or the identity."""
    pols = []
    for k in g["keep_ratio"] if channels else [None]:
        for b in g["bits"]:
            for s in g["sparsity"]:
                pol = space.uniform_policy(s, b, keep_ratio=k)
                if pol not in pols and not all(lp.is_identity for lp in pol.values()):
                    pols.append(pol)
    return pols


def _then_the_rest(first: list, more: list, seed: int) -> list:
    """``first``, then the items of ``more`` not in it, in a random order."""
    rest = [p for p in more if p not in first]
    order = np.random.default_rng(seed).permutation(len(rest))
    return [*first, *(rest[i] for i in order)]


def _ends_first(items: list) -> list:
    """Alternately from the gentle and the harsh end of a list ordered gentle to harsh."""
    order, lo, hi = [], 0, len(items) - 1
    while lo <= hi:
        order.append(items[lo])
        if hi != lo:
            order.append(items[hi])
        lo, hi = lo + 1, hi - 1
    return order


# -- one run ----------------------------------------------------------------------------------
def _front_on_test(cfg, sh: dict) -> list[dict]:
    """Every complete trial with its metrics; the validation front's trials also scored on the
    test split from their kept packed models."""
    from optuna.trial import TrialState

    from autocompress.compression.artifact import load_packed_model
    from autocompress.data import load_data
    from autocompress.search.study import load_study, trial_records
    from autocompress.training import evaluate

    info = load_study(cfg)
    records = trial_records(info)
    front = {r.trial for r in records if r.pareto}
    rows = [{k: v for k, v in r.row().items() if k not in ("pareto", "policy")} for r in records]
    for r, rec in zip(rows, records, strict=True):
        r["policy"] = rec.policy.to_dict()
    data = load_data(cfg.data)
    trials = {t.number: t for t in info.study.get_trials(states=(TrialState.COMPLETE,))}
    for r in rows:
        t = trials[r["trial"]]
        r["origin"] = t.user_attrs.get("origin", "sampler")
        r["screen_val_accuracy"] = (t.user_attrs.get("screen_metrics") or {}).get("val_accuracy")
        r["on_val_front"] = r["trial"] in front
        r["seconds"] = (t.datetime_complete - t.datetime_start).total_seconds()
        r.pop("values", None)
        r.pop("mlflow_run_id", None)
        if r["on_val_front"]:
            path = cfg.output_dir / "models" / f"trial-{r['trial']:03d}.acpk"
            model, _ = load_packed_model(path)
            r["test_accuracy"], _ = evaluate(model, data.test)
    return rows


def run_search(model: str, method: str, seed: int, sh: dict) -> dict:
    import autocompress as ac
    from autocompress.baseline import prepare
    from autocompress.search.study import open_study

    out = _run_dir(model, method, seed, sh)
    extra = [
        f"model.checkpoint={sh['checkpoint']}",
        f"search.seed={seed}",
        f"search.budget_s={MODELS[model]['budget_s']}",
        "search.keep_models=true",
        f"name=cmp-{method}-s{seed}",
        *METHOD_SETTINGS[method],
    ]
    cfg = _cfg(model, out, extra)
    w0, c0 = time.perf_counter(), time.process_time()
    if method == "uniform":
        # The study made here with the grid enqueued; search() finds and runs it (the
        # enqueueing is charged: it is inside the measured time). The grid and the anchor are
        # all it runs: what a user of one-line configs does.
        space = prepare(cfg, log=lambda *_: None).space
        points = grid(model, space, seed)
        cfg.search.n_trials = len(points) + 1
        info, _ = open_study(cfg, {k: list(v) for k, v in space.choices().items()})
        # The anchor first (search() enqueues it too, after anything queued: skipped as a
        # repeat), so the uncompressed corner is fine-tuned before the budget can run out.
        anchor = space.extreme(aggressive=False)
        info.study.enqueue_trial(anchor, user_attrs={"anchor": True, "origin": "anchor"})
        for pol in points:
            info.study.enqueue_trial(space.params_from_policy(pol), user_attrs={"origin": "grid"})
    result = ac.search(cfg, log=_log)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    rows = _front_on_test(cfg, sh)
    extra_info = {}
    if method == "autocompress":
        import mlflow

        run = mlflow.MlflowClient(tracking_uri=cfg.tracking).get_run(result.parent_run_id)
        extra_info = {k: run.data.metrics.get(k) for k in ("screen_trials", "screen_rank_spearman")}
    return {"rows": rows, "wall_s": wall, "cpu_s": cpu, **extra_info}


def run_ort_ptq(model: str, seed: int, sh: dict) -> dict:
    """ORT's static INT8 (QDQ, per-channel) of the baseline, calibrated on training batches;
    test accuracy by ONNX Runtime; latency from the same table (an all-INT8 model), size the
    packed bytes of the same weights at 8 bits; the ONNX file's bytes recorded beside them."""
    from itertools import islice

    from autocompress.baseline import prepare
    from autocompress.compression.apply import apply_policy, calibrate, materialize
    from autocompress.compression.artifact import ModelRef, packed_model_size
    from autocompress.export.run import onnx_accuracy
    from autocompress.hardware.deploy import export_deployed
    from autocompress.hardware.latency import make_latency_model
    from autocompress.policy import compressible_layers
    from autocompress.training import batches

    out = _run_dir(model, "ort_ptq", seed, sh)
    cfg = _cfg(model, out, [f"model.checkpoint={sh['checkpoint']}"])
    w0, c0 = time.perf_counter(), time.process_time()
    prep = prepare(cfg, log=lambda *_: None)
    base = prep.baseline.model.eval()
    calib = [
        x
        for x, _ in islice(
            batches(prep.data.train, cfg.data.batch_size, shuffle=True, seed=seed), 8
        )
    ]
    path = export_deployed(
        base,
        prep.data.example_input(1),
        out / "model_int8.onnx",
        int8_layers=list(compressible_layers(base)),
        calibration=calib,
    )
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    policy = prep.space.uniform_policy(0.0, 8, keep_ratio=1.0)
    q = apply_policy(base, policy, example=prep.data.example_input(2))
    calibrate(q, calib[:4])
    lat = make_latency_model(cfg, base, prep.space, prep.data.example_input(1), log=_log)
    ref = ModelRef.from_config(cfg, prep.data.input_shape)
    size = packed_model_size(q, ref, policy, round_to=cfg.compression.round_to)
    row = {
        "trial": 0,
        "origin": "ort_ptq",
        "val_accuracy": onnx_accuracy(path, prep.data.val),
        "test_accuracy": onnx_accuracy(path, prep.data.test),
        "latency_ms": lat.predict(materialize(q)[0], policy),
        "size_kb": size / 1024,
        "onnx_bytes": path.stat().st_size,
        "on_val_front": True,
    }
    return {"rows": [row], "wall_s": wall, "cpu_s": cpu}


def _grid_budget_loop(model: str, method: str, seed: int, sh: dict, make) -> dict:
    """A budgeted loop over candidates for the methods that are not Optuna searches (NNI,
    Torch-Pruning): ``make(prep, cfg, candidate, seed) -> (model, policy, loss)``; each result
    is measured like a trial, until the budget is spent. Test scoring is not charged."""
    from autocompress.baseline import prepare
    from autocompress.hardware.latency import make_latency_model
    from autocompress.search.pareto import non_dominated
    from autocompress.search.trials import TrialEvaluator
    from autocompress.training import evaluate

    out = _run_dir(model, method, seed, sh)
    cfg = _cfg(model, out, [f"model.checkpoint={sh['checkpoint']}", f"search.seed={seed}"])
    w0, c0 = time.perf_counter(), time.process_time()
    uncharged = 0.0
    prep = prepare(cfg, log=lambda *_: None)
    lat = make_latency_model(cfg, prep.baseline.model, prep.space, prep.data.example_input(1))
    ev = TrialEvaluator(cfg, prep.baseline, prep.data, lat)
    budget = MODELS[model]["budget_s"]
    rows = []
    for i, cand in enumerate(_candidates(model, method, prep.space, seed)):
        if time.perf_counter() - w0 - uncharged >= budget:
            break
        t0 = time.perf_counter()
        try:
            m, policy, loss = make(prep, cfg, cand, seed + i)
        except Exception as exc:  # noqa: BLE001 - a method that fails on a point: recorded
            rows.append({"trial": i, "origin": method, "failed": f"{type(exc).__name__}: {exc}"})
            _log(f"[{method} {i}] {cand}: failed ({type(exc).__name__}: {exc})")
            continue
        metrics = ev.measure(m, policy, loss, report_test=False)
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        test_acc, _ = evaluate(m, prep.data.test)
        # its deployed ONNX (as latency validate builds it), timed after the run
        onnx_path = _export_point(prep, m, out / "onnx" / f"point-{i:03d}.onnx", seed)
        uncharged += time.perf_counter() - t1
        rows.append(
            {
                "trial": i,
                "origin": method,
                "candidate": cand if isinstance(cand, float) else cand.summary(),
                **metrics.to_dict(),
                "test_accuracy": test_acc,
                "seconds": seconds,
                "onnx": str(onnx_path),
            }
        )
        _log(f"[{method} {i}] val {metrics.val_accuracy:.4f} {metrics.size_kb:.1f} KB")
    wall, cpu = time.perf_counter() - w0 - uncharged, time.process_time() - c0
    ok = [r for r in rows if "failed" not in r]
    if ok:
        vals = np.array([[r["val_accuracy"], r["latency_ms"], r["size_kb"]] for r in ok])
        front = set(non_dominated(vals, ["maximize", "minimize", "minimize"]).tolist())
        for j, r in enumerate(ok):
            r["on_val_front"] = j in front
    return {"rows": rows, "wall_s": wall, "cpu_s": cpu, "uncharged_test_s": uncharged}


def _export_point(prep, compressed, path: Path, seed: int, bits: dict | None = None) -> Path:
    """The deployed ONNX of a compressed model, built as ``autocompress latency validate``
    builds the ones it times (FP32, or static INT8 QDQ of its quantised layers calibrated on
    the same training batches); ``bits``: the quantised layers when the model no longer carries
    its quantisers (a packed model loaded back)."""
    from autocompress.compression.apply import materialize
    from autocompress.hardware.deploy import export_deployed
    from autocompress.hardware.memory_model import measurement_inputs

    _, example, calib = measurement_inputs(prep, seed)
    plain, found = materialize(compressed)
    return export_deployed(
        plain, example, path, int8_layers=found if bits is None else bits, calibration=calib
    )


def measure_fronts(data: dict, model: str, seeds: list[int]) -> None:
    """After the runs: every validation-front point of every run of ``seeds`` exported as
    deployed and timed on ONNX Runtime (the latency table's own timing protocol, the baseline's
    FP32 ONNX in the same batch), ``measured_latency_ms`` on each row, saved after each run."""
    import tempfile

    import torch

    from autocompress.baseline import prepare
    from autocompress.compression.artifact import load_packed_model
    from autocompress.hardware.measure import export_onnx, measure_passes
    from autocompress.hardware.memory_model import measurement_inputs
    from autocompress.policy import CompressionPolicy

    torch.set_num_threads(THREADS)
    md = data["models"][model]
    sh = md["baselines"][max(md["baselines"], key=lambda k: int(k[1:]))]
    cfg = _cfg(model, WORK / model / "shared", [f"model.checkpoint={sh['checkpoint']}"])
    prep = prepare(cfg, log=lambda *_: None)
    runtime, example, _ = measurement_inputs(prep, 0)
    for key, run in sorted(md["runs"].items()):
        method, _, seed = key.rpartition("-s")
        if int(seed) not in seeds or "measured_base_latency_ms" in run:
            continue
        out = WORK / model / key
        front = [r for r in run["rows"] if r.get("on_val_front") and "failed" not in r]
        paths = []
        for r in front:
            if method == "ort_ptq":
                paths.append(out / "model_int8.onnx")
            elif r.get("onnx"):
                paths.append(Path(r["onnx"]))
            else:
                packed, meta = load_packed_model(out / "models" / f"trial-{r['trial']:03d}.acpk")
                policy = CompressionPolicy.from_dict(meta["policy"])
                bits = {n: lp.bits for n, lp in policy.items() if lp.quantized and lp.bits <= 8}
                dest = out / "onnx" / f"trial-{r['trial']:03d}.onnx"
                paths.append(_export_point(prep, packed, dest, 0, bits=bits))
        with tempfile.TemporaryDirectory() as tmp:
            base_path = export_onnx(prep.baseline.model.eval(), example, Path(tmp) / "b.onnx")
            ms = measure_passes(
                [base_path, *paths],
                tuple(example.shape),
                threads=runtime.threads,
                **runtime.pass_settings(),
                **runtime.timing(),
            )
        run["measured_base_latency_ms"] = ms[0]
        for r, m in zip(front, ms[1:], strict=True):
            r["measured_latency_ms"] = m
        _log(f"{model} {key}: {len(front)} front points timed (baseline {ms[0]:.4f} ms)")
        _save(data)


def hv_measured(run: dict, base: dict) -> float | None:
    """:func:`hv` with each front point's measured ONNX Runtime latency, relative to the
    baseline's measured in the same batch (``None`` until :func:`measure_fronts` ran)."""
    if "measured_base_latency_ms" not in run:
        return None
    rows = [
        r | {"latency_ms": r["measured_latency_ms"]}
        for r in run["rows"]
        if r.get("on_val_front") and "measured_latency_ms" in r
    ]
    return hv(rows, base | {"latency_ms": run["measured_base_latency_ms"]})


def _candidates(model: str, method: str, space, seed: int) -> list:
    """The points the budgeted loop goes through until its budget is spent: the coarse ones
    first, then the fine ones in a random order (``seed``)."""
    m = MODELS[model]
    if method == "tp_global":
        return _then_the_rest(list(m["tp_ratios"]), list(m["tp_fine_ratios"]), seed)
    # nni: sparsity x bits (NNI's pruner has no channel removal here)
    coarse = _uniform_points(space, m["grid"], channels=False)
    fine = _uniform_points(space, m["fine_grid"], channels=False)
    return _then_the_rest(_ends_first(coarse), fine, seed)


def _tp_make(prep, cfg, ratio: float, seed: int):
    """Torch-Pruning's global magnitude pruner (its high-level API) at ``ratio`` of the
    channels, every layer at 8 bits, then the per-trial fine-tune (BatchNorm corrected)."""
    import copy
    from itertools import islice

    import torch_pruning as tp

    from autocompress.compression.apply import apply_policy, calibrate
    from autocompress.compression.batchnorm import correct_batchnorm
    from autocompress.policy import CompressionPolicy, LayerPolicy, compressible_layers
    from autocompress.training import batches, train

    net = copy.deepcopy(prep.baseline.model).eval()
    layers = compressible_layers(net)
    last = list(layers.values())[-1]  # the classifier's outputs are the model's
    pruner = tp.pruner.MagnitudePruner(
        net,
        prep.data.example_input(2),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        global_pruning=True,
        ignored_layers=[last],
        round_to=cfg.compression.round_to,
    )
    pruner.step()
    policy = CompressionPolicy({n: LayerPolicy(bits=8) for n in compressible_layers(net)})
    model = apply_policy(net, policy)
    ft = cfg.finetune
    bs = ft.batch_size or cfg.data.batch_size
    calib = [x for x, _ in islice(batches(prep.data.train, bs, shuffle=True, seed=seed), 4)]
    calibrate(model, calib)
    correct_batchnorm(model, prep.baseline.model, calib)
    loss = train(
        model,
        prep.data.train,
        steps=ft.steps,
        lr=ft.lr,
        batch_size=bs,
        seed=seed,
        schedule="cosine",
    )
    return model, policy, loss


def _nni_make(prep, cfg, policy, seed: int):
    from nni_method import nni_compress

    model, _ = nni_compress(prep, cfg, policy, seed)
    return model, policy, float("nan")


def run_one(model: str, method: str, seed: int, sh: dict) -> dict:
    if method == "ort_ptq":
        return run_ort_ptq(model, seed, sh)
    if method == "tp_global":
        return _grid_budget_loop(model, method, seed, sh, _tp_make)
    if method == "nni":
        return _grid_budget_loop(model, method, seed, sh, _nni_make)
    return run_search(model, method, seed, sh)


# -- scoring ----------------------------------------------------------------------------------
def _norm(rows: list[dict], base: dict) -> np.ndarray:
    return np.array(
        [
            [
                1.0 - r["test_accuracy"],
                r["latency_ms"] / base["latency_ms"],
                r["size_kb"] / base["size_kb"],
            ]
            for r in rows
        ]
    ).reshape(-1, 3)


def reference(base: dict) -> list[float]:
    return [1.0 - (base["test_accuracy"] - REF_DROP_POINTS / 100), REF_COST, REF_COST]


def hv(rows: list[dict], base: dict) -> float:
    """Hypervolume of the validation front's points, on their test accuracy."""
    from autocompress.search.pareto import hypervolume

    pts = [r for r in rows if r.get("on_val_front") and r.get("test_accuracy") is not None]
    return hypervolume(_norm(pts, base), reference(base)) if pts else 0.0


def sampler_share(rows: list[dict], base: dict) -> float:
    """Share of the front's hypervolume that only policies the sampler found give: 1 - HV of
    the heuristic points alone (anchor, uniform seeds, grid) / HV of all."""
    total = hv(rows, base)
    if total <= 0:
        return 0.0
    heur = [r for r in rows if r.get("origin") in _HEURISTIC]
    return 1.0 - hv(heur, base) / total


_HEURISTIC = ("anchor", "uniform", "grid")


def sampler_rows(rows: list[dict]) -> list[dict]:
    """The rows of policies the sampler found (not the anchor, uniform seeds or grid)."""
    return [r for r in rows if r.get("origin") not in _HEURISTIC]


def best_at(rows: list[dict], base: dict, key: str, rel: float) -> float | None:
    scale = base["latency_ms"] if key == "latency_ms" else base["size_kb"]
    ok = [
        r["test_accuracy"]
        for r in rows
        if r.get("test_accuracy") is not None and r[key] <= rel * scale
    ]
    return max(ok) if ok else None


def paired_ci(diffs: list[float]) -> list[float] | None:
    from scipy import stats

    if len(diffs) < 2:
        return None
    d = np.asarray(diffs)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return [float(d.mean() - half), float(d.mean() + half)]


def summarise(data: dict) -> dict:
    s: dict = {
        "hypervolume_mean": {},
        "hypervolume_sd": {},
        "paired_diff_ci95": {},
        "paired_diff_mean": {},
        "seeds": {},
        "test_images": {},
        "budget_s": {},
        "wall_s": {},
        "cpu_s": {},
        "sampler_hv_share": {},
        "sampler_only_hv_mean": {},
        "screen_rank_spearman": {},
        # the same fronts with latency measured on ONNX Runtime (measure_fronts), over the
        # final seeds whose every run has been timed (measured_seeds)
        "measured_seeds": {},
        "measured_hypervolume_mean": {},
        "measured_paired_diff_ci95": {},
        "baselines": {},
        "commit": code_version(),
        "cpu_flags": cpu_flags(),
    }
    final_runs = [
        r
        for md in data.get("models", {}).values()
        for k, r in md.get("runs", {}).items()
        if int(k.rsplit("-s", 1)[1]) in SEEDS["final"]
    ]
    ran = {r.get("commit") for r in final_runs} - {None}
    if ran:  # the code the final runs ran at (the report may be rewritten later)
        s["commit"] = ",".join(sorted(ran))
    flags = {r.get("cpu_flags") for r in final_runs} - {None}
    # the machine the final runs ran on (runs from before flags were recorded: the summary's)
    if flags or not final_runs:
        s["cpu_flags"] = " | ".join(sorted(flags)) or s["cpu_flags"]
    else:
        s["cpu_flags"] = data.get("summary", {}).get("cpu_flags", s["cpu_flags"])
    for model, md in data.get("models", {}).items():
        _migrate(md)
        runs = md.get("runs", {})
        final = SEEDS["final"]
        s["seeds"][model] = final
        s["test_images"][model] = min(b["n_test"] for b in md["baselines"].values())
        s["baselines"][model] = {
            k: b["baseline"]["test_accuracy"] for k, b in md["baselines"].items()
        }
        s["budget_s"][model] = MODELS[model]["budget_s"]
        for key in ("hypervolume_mean", "hypervolume_sd", "wall_s", "cpu_s"):
            s[key][model] = {}
        for method in METHODS:
            got = [runs[f"{method}-s{x}"] for x in final if f"{method}-s{x}" in runs]
            if not got:
                continue
            hvs = [hv(r["rows"], _base(md, r)) for r in got]
            s["hypervolume_mean"][model][method] = float(np.mean(hvs))
            s["hypervolume_sd"][model][method] = float(np.std(hvs, ddof=1)) if len(hvs) > 1 else 0
            s["wall_s"][model][method] = float(np.mean([r["wall_s"] for r in got]))
            s["cpu_s"][model][method] = float(np.mean([r["cpu_s"] for r in got]))
        # the measured hypervolumes over the final seeds whose every run is timed (a seed whose
        # kept models were lost with a host before measure_fronts ran stays untimed; the seeds
        # used are in measured_seeds)
        timed = {}
        for x in final:
            got = [runs.get(f"{m}-s{x}") for m in METHODS]
            vals = [None if r is None else hv_measured(r, _base(md, r)) for r in got]
            if None not in vals:
                timed[x] = dict(zip(METHODS, vals, strict=True))
        s["measured_seeds"][model] = list(timed)
        s["measured_hypervolume_mean"][model] = (
            {m: float(np.mean([v[m] for v in timed.values()])) for m in METHODS} if timed else {}
        )
        s["measured_paired_diff_ci95"][model] = (
            {b: paired_ci([v["autocompress"] - v[b] for v in timed.values()]) for b in BASELINES}
            if len(timed) > 1
            else {}
        )
        s["paired_diff_ci95"][model], s["paired_diff_mean"][model] = {}, {}
        for b in BASELINES:
            pairs = [
                (runs[f"autocompress-s{x}"], runs[f"{b}-s{x}"])
                for x in final
                if f"autocompress-s{x}" in runs and f"{b}-s{x}" in runs
            ]
            diffs = [hv(a["rows"], _base(md, a)) - hv(o["rows"], _base(md, o)) for a, o in pairs]
            if diffs:
                s["paired_diff_mean"][model][b] = float(np.mean(diffs))
                s["paired_diff_ci95"][model][b] = paired_ci(diffs)
        ac_runs = [runs[f"autocompress-s{x}"] for x in final if f"autocompress-s{x}" in runs]
        if ac_runs:
            s["sampler_hv_share"][model] = float(
                np.mean([sampler_share(r["rows"], _base(md, r)) for r in ac_runs])
            )
            # Not the measure (that is the marginal share above): the front of the
            # sampler's policies alone, to set beside the uniform grid's hypervolume.
            s["sampler_only_hv_mean"][model] = float(
                np.mean([hv(sampler_rows(r["rows"]), _base(md, r)) for r in ac_runs])
            )
            rho = [r.get("screen_rank_spearman") for r in ac_runs]
            rho = [x for x in rho if x is not None]
            s["screen_rank_spearman"][model] = float(np.mean(rho)) if rho else None
    return s


# -- report -----------------------------------------------------------------------------------
def _fmt(x, spec=".4f") -> str:
    return "–" if x is None else format(x, spec)


def write_report(data: dict) -> list[Path]:
    s = data["summary"]
    paths = []
    for model, md in data.get("models", {}).items():
        _migrate(md)
        runs = md.get("runs", {})
        lines = [
            f"# compare: {model} (issue #19)",
            "",
            f"Generated by `benchmarks/compare.py` from `compare.json`; commit {s['commit']}, "
            f"CPU flags `{s['cpu_flags']}`, {THREADS} torch threads.",
            "",
            "Baselines (trained with the same settings; a fresh checkout re-trains and "
            "re-profiles, and seeds are paired within one baseline):",
            "",
            *[
                f"- `{bid}`: test {b['baseline']['test_accuracy']:.4f} ({b['n_test']} images), "
                f"val {b['baseline']['val_accuracy']:.4f}, latency "
                f"{b['baseline']['latency_ms']:.3f} ms (table; measured "
                f"{b['baseline']['measured_latency_ms']:.3f}), {b['baseline']['size_kb']:.1f} KB "
                f"packed; latency table `{json.dumps(b.get('latency_validation', {}))}`"
                for bid, b in md["baselines"].items()
            ],
            "",
            f"Budget {MODELS[model]['budget_s']} s wall clock per method and seed.",
            "",
            "Reference point: 5 test points below the baseline, 1.1 x its latency and size. "
            "Hypervolume of the validation front's points, scored on the test split.",
            "",
            "## Per run",
            "",
            "| method | seed | baseline | HV (test) | fine-tuned pts | val front | wall s "
            "| cpu s | "
            + " | ".join(f"best acc @size≤{x}" for x in SIZE_BUDGETS)
            + " | "
            + " | ".join(f"best acc @lat≤{x}" for x in LATENCY_BUDGETS)
            + " |",
            "| --- " * (8 + len(SIZE_BUDGETS) + len(LATENCY_BUDGETS)) + "|",
        ]
        for key, r in sorted(runs.items()):
            method, _, seed = key.rpartition("-s")
            rows, base = r["rows"], _base(md, r)
            cells = [
                method,
                seed,
                r.get("baseline_id", "b0"),
                _fmt(hv(rows, base)),
                str(sum("failed" not in x for x in rows)),
                str(sum(bool(x.get("on_val_front")) for x in rows)),
                f"{r['wall_s']:.0f}",
                f"{r['cpu_s']:.0f}",
                *[_fmt(best_at(rows, base, "size_kb", x)) for x in SIZE_BUDGETS],
                *[_fmt(best_at(rows, base, "latency_ms", x)) for x in LATENCY_BUDGETS],
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "## Summary over the final seeds", ""]
        lines.append("| method | HV mean ± sd | autocompress − method, 95 % CI |")
        lines.append("| --- | --- | --- |")
        for method, m in s["hypervolume_mean"].get(model, {}).items():
            ci = s["paired_diff_ci95"].get(model, {}).get(method)
            ci_txt = "–" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"
            sd = s["hypervolume_sd"][model][method]
            lines.append(f"| {method} | {m:.4f} ± {sd:.4f} | {ci_txt} |")
        measured = s.get("measured_hypervolume_mean", {}).get(model, {})
        if measured:
            lines += [
                "",
                "Measured fronts (every front point exported as deployed and timed on ONNX "
                "Runtime, latency relative to the baseline timed in the same batch; seeds "
                f"{', '.join(map(str, s['measured_seeds'][model]))}):",
                "",
                "| method | measured HV mean | autocompress − method, 95 % CI |",
                "| --- | --- | --- |",
            ]
            for method, m in measured.items():
                ci = s["measured_paired_diff_ci95"].get(model, {}).get(method)
                ci_txt = "–" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"
                lines.append(f"| {method} | {m:.4f} | {ci_txt} |")
        lines += [
            "",
            f"Sampler's share of autocompress's HV (what the front loses without the "
            f"sampler's policies): {_fmt(s['sampler_hv_share'].get(model), '.2f')}; HV of the "
            f"sampler's policies alone: {_fmt(s['sampler_only_hv_mean'].get(model))}; "
            f"screen vs fine-tuned rank agreement (Spearman): "
            f"{_fmt(s['screen_rank_spearman'].get(model), '.2f')}.",
        ]
        png = _plot(model, runs, _base(md, next(iter(runs.values())))) if runs else None
        if png is not None:
            lines += ["", f"![fronts]({png.name})"]
            paths.append(png)
        p = RESULTS / f"compare-{model}.md"
        p.write_text("\n".join(lines) + "\n")
        paths.append(p)
    return paths


def _plot(model: str, runs: dict, base: dict) -> Path | None:
    """Test accuracy against size and latency of every method's validation-front points
    (final seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = {f"-s{x}" for x in SEEDS["final"]}
    pts: dict[str, list[dict]] = {}
    for key, r in runs.items():
        method, _, seed = key.rpartition("-s")
        if f"-s{seed}" in final:
            pts.setdefault(method, []).extend(
                x for x in r["rows"] if x.get("on_val_front") and "test_accuracy" in x
            )
    if not pts:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in (
        (axes[0], "size_kb", "size (KB, packed)"),
        (axes[1], "latency_ms", "latency (ms, table)"),
    ):
        for i, (method, rows) in enumerate(sorted(pts.items())):
            ax.scatter(
                [x[key] for x in rows],
                [100 * x["test_accuracy"] for x in rows],
                s=14,
                alpha=0.7,
                color=f"C{i}",
                label=method,
            )
        ax.axhline(100 * base["test_accuracy"] - REF_DROP_POINTS, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(label)
        if key == "size_kb":
            ax.set_xscale("log")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_ylim(100 * base["test_accuracy"] - 2 * REF_DROP_POINTS, None)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{model}: validation fronts on the test split (final seeds)")
    fig.tight_layout()
    path = RESULTS / f"compare-{model}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- main -------------------------------------------------------------------------------------
def _load() -> dict:
    if JSON.is_file():
        data = json.loads(JSON.read_text())
        if data.get("schema") == 2:
            return data
    return {"schema": 2, "models": {}}


def _save(data: dict) -> None:
    old = data.get("summary") or {}
    if old.get("seeds") and set(map(tuple, old["seeds"].values())) != {tuple(SEEDS["final"])}:
        # the final seeds changed (the method did): the previous record stays, by its commit
        data.setdefault("retired_summaries", {})[str(old.get("commit"))] = old
    data["summary"] = summarise(data)
    tmp = JSON.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, JSON)


def _migrate(md: dict) -> None:
    """Records from before baselines were versioned: one ``shared`` baseline for all runs."""
    if "baselines" not in md:
        md["baselines"] = {"b0": {**md.pop("shared"), "id": "b0"}} if "shared" in md else {}
        for r in md.get("runs", {}).values():
            r.setdefault("baseline_id", "b0")
    md.pop("shared", None)


def current_baseline(md: dict, model: str) -> dict:
    """The baseline (checkpoint, latency table, metrics) this session's runs use.

    Training is not bit-reproducible across machines, and a fresh checkout has no cache: when
    the last baseline's checkpoint is gone, it is trained and the table profiled again with the
    same settings and recorded under a new baseline id. Every run records its baseline id and
    the baseline metrics it is scored against (``base``); seeds are paired only within one
    baseline (:func:`retire_mixed_seed`)."""
    _migrate(md)
    if md["baselines"]:
        last = md["baselines"][max(md["baselines"], key=lambda k: int(k[1:]))]
        if _sha256(last["checkpoint"]) == last.get("checkpoint_sha256"):
            return last
    sh = shared(model)
    sh["checkpoint_sha256"] = _sha256(sh["checkpoint"])
    sh["id"] = f"b{len(md['baselines'])}"
    sh["built"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": code_version()}
    md["baselines"][sh["id"]] = sh
    return sh


def _sha256(path: str) -> str | None:
    """The checkpoint's content hash: its cache file name depends only on the settings, so a
    re-trained baseline lands under the same name."""
    import hashlib

    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def retire_mixed_seed(md: dict, seed: int, baseline_id: str, methods) -> None:
    """A seed whose recorded runs used another baseline and which is not complete is re-run
    whole on the current one (its old runs are kept under ``superseded``), so that every
    paired difference compares methods on the same baseline."""
    keys = [f"{m}-s{seed}" for m in METHODS]
    done = [k for k in keys if k in md["runs"]]
    if not done or len(done) == len(keys):
        return
    if all(md["runs"][k].get("baseline_id") == baseline_id for k in done):
        return
    if set(methods) != set(METHODS):
        raise SystemExit(f"seed {seed} must be re-run whole on baseline {baseline_id}: no --method")
    for k in done:
        old = md["runs"].pop(k)
        md.setdefault("superseded", {})[f"{k}@{old.get('baseline_id')}"] = old
        _log(f"{k}: recorded on baseline {old.get('baseline_id')}, re-run on {baseline_id}")


def _base(md: dict, r: dict) -> dict:
    """The baseline metrics a run is scored against."""
    return r.get("base") or md["baselines"][r.get("baseline_id", "b0")]["baseline"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--method", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", default="dev", choices=list(SEEDS))
    ap.add_argument("--only", type=int, nargs="+", metavar="SEED", help="these of the seeds only")
    ap.add_argument("--report", action="store_true", help="only rewrite the reports")
    ap.add_argument(
        "--measure-fronts",
        action="store_true",
        help="after the runs: time every front point of the seeds' runs on ONNX Runtime",
    )
    ap.add_argument(
        "--smoke",
        type=float,
        metavar="S",
        help="smoke test: budget S seconds, results in runs/bench-compare-smoke (not recorded)",
    )
    ap.add_argument(
        "--dev",
        metavar="NAME",
        help="a development variant on the dev seeds: its own results in "
        "benchmarks/results/dev/NAME/ (summarised over the dev seeds), never the record",
    )
    args = ap.parse_args(argv)
    global JSON, RESULTS, WORK
    if args.smoke:
        for spec in MODELS.values():
            spec["budget_s"] = args.smoke
        WORK = REPO / "runs" / "bench-compare-smoke"
        RESULTS = WORK / "results"
    elif args.dev:
        if args.seeds != "dev":
            raise SystemExit("--dev runs on the dev seeds only")
        SEEDS["final"] = SEEDS["dev"]  # what the summary and the report are over
        WORK = REPO / "runs" / "bench-compare-dev" / args.dev
        RESULTS = REPO / "benchmarks" / "results" / "dev" / args.dev
    if args.smoke or args.dev:
        RESULTS.mkdir(parents=True, exist_ok=True)
        JSON = RESULTS / "compare.json"
        shutil.copytree(
            REPO / "runs" / "bench-compare" / "small_cnn" / "shared",
            WORK / "small_cnn" / "shared",
            dirs_exist_ok=True,
        )
    os.environ["AUTOCOMPRESS_THREADS"] = str(THREADS)
    seeds = [x for x in SEEDS[args.seeds] if not args.only or x in args.only]
    data = _load()
    if not args.report:
        for model in args.model:
            md = data["models"].setdefault(model, {"runs": {}})
            sh = current_baseline(md, model)
            _save(data)
            for seed in seeds:
                retire_mixed_seed(md, seed, sh["id"], args.method)
                for method in args.method:
                    key = f"{method}-s{seed}"
                    if key in md["runs"]:
                        continue
                    _log(f"== {model} {key} (baseline {sh['id']})")
                    res = run_one(model, method, seed, sh)
                    res["commit"] = code_version()
                    res["cpu_flags"] = cpu_flags()
                    res["baseline_id"] = sh["id"]
                    res["base"] = sh["baseline"]
                    md["runs"][key] = res
                    _save(data)
    if args.measure_fronts and not args.report:
        for model in args.model:
            measure_fronts(data, model, seeds)
    _save(data)
    for p in write_report(data):
        _log(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
