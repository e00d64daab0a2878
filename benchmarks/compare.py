"""Benchmark of issue #8: autocompress against simple baselines at the same budget.

For each model and seed, four methods with the same trial budget, the same per-trial fine-tune,
the same latency target and the same size definition (``pack_model``):

- ``autocompress``: the default search (sensitivity-shaped NSGA-II, warm start, latency model);
- ``random``: Optuna's random sampler on the unshaped space (sensitivity off);
- ``uniform``: every layer the same sparsity and the same bits (keep_ratio 1), a grid with as
  many points as the budget (what a one-line config gives), evaluated by the same trial code;
- ``nni_uniform``: the same grid compressed by NNI 3.0: ``LevelPruner`` computes the masks and
  ``QATQuantizer`` (fused with the pruner) does the quantisation-aware fine-tune; the result is
  materialised into autocompress's form (NNI's masks and trained weights, per-channel codes at the
  same bit-width) so that size, latency and accuracy are measured exactly as for the others.

Every trial is also scored on the test split (``search.report_test_accuracy``; the samplers
never see it). Reported per model and method, over seeds: hypervolume of (1 - test accuracy,
latency / baseline, size / baseline) against the reference point fixed below, how many of each
baseline's points the autocompress front of the same seed dominates, the best test accuracy at
latency <= L and at size <= S, time per trial.

Runs go to ``runs/bench-compare/<model>/<method>-s<seed>`` (``--work-dir``); results are
appended to ``benchmarks/results/compare.json`` after every run (a re-run skips finished runs)
and summarised in ``benchmarks/results/compare-<model>.md`` and ``compare-<model>.png``.

    .venv/bin/python benchmarks/compare.py --model small_cnn resnet18
    .venv/bin/python benchmarks/compare.py --report          # only rewrite Markdown and plots
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXPERIMENTS, baseline_checkpoint, code_version  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "runs" / "bench-compare"  # --work-dir

# Fixed before any run. Points are normalised (1 - test accuracy, latency / baseline,
# size / baseline); the reference point is 5 accuracy points below the baseline's test accuracy
# and 1.1 x the baseline's latency and size (fronts are compared where a model is still useful).
REF_DROP_POINTS = 5.0
REF_COST = 1.1
# "Best test accuracy at latency <= L and at size <= S", relative to the baseline.
L_REL = 0.5
S_REL = 0.1

MODELS = {
    "small_cnn": {
        "trials": 20,
        "overrides": [
            "finetune.steps=60",
            "data.train_subset=6000",
            "data.val_subset=2000",
            "data.test_subset=2000",  # a fixed test subset: 10k images would cost 8 s per trial
        ],
        "latency": "cpu-onnxruntime",
        "sensitivity": {},  # the defaults
        # Quantised rows only: float weights pack at full size whatever their sparsity.
        "grid": {"sparsity": [0.0, 0.5, 0.7, 0.8, 0.9], "bits": [8, 6, 4, 3]},
    },
    "resnet18": {
        "trials": 10,
        "overrides": [
            "finetune.steps=20",
            "finetune.batch_size=64",
            "data.train_subset=4000",
            "data.val_subset=1000",
            "data.test_subset=2000",
        ],
        # Profiling ResNet-18's cpu-onnxruntime table took 929 s on this machine when it was
        # half idle (benchmarks/results/latency-resnet18.md): the analytic target instead.
        "latency": "edge-roofline",
        # The sensitivity benchmark's ResNet-18 settings: the default sweep over every level
        # of 21 layers on 1000 images does not fit the 2-core budget.
        "sensitivity": {"images": 500, "max_points": 4, "estimator_images": 64},
        "grid": {"sparsity": [0.0, 0.5, 0.7, 0.8, 0.9], "bits": [8, 4]},
    },
}
METHODS = ("autocompress", "random", "uniform", "nni_uniform")
COLORS = {"autocompress": "C0", "random": "C1", "uniform": "C2", "nni_uniform": "C3"}
NNI_VERSION = "3.0"
# NNI 3.0's own pins (numpy, filelock < 3.12, typeguard < 4.1.3) would downgrade the project's
# environment: it is installed with --no-deps into its own folder, with the few pure-Python
# packages it imports that the project does not already have.
NNI_EXTRA = [
    "astor",
    "colorama",
    "json_tricks",
    "psutil",
    "responses",
    "schema",
    "typeguard>=3.0.0,<4.1.3",
    "websockets",
    "PythonWebHDFS",
]


def _log(msg: str) -> None:
    print(msg, flush=True)


# -- configs and shared state ---------------------------------------------------------------
def _cfg(model: str, out: Path, ckpt: Path, extra: list[str] = ()):
    import autocompress as ac

    spec = MODELS[model]
    return ac.load_experiment(
        EXPERIMENTS[model],
        [
            *spec["overrides"],
            f"model.checkpoint={ckpt}",
            f"output_dir={out}",
            f"latency.target={spec['latency']}",
            "search.report_test_accuracy=true",
            *[f"sensitivity.{k}={json.dumps(v)}" for k, v in spec["sensitivity"].items()],
            *extra,
        ],
    )


def _shared(model: str, ckpt: Path, sensitivity: bool = True) -> dict:
    """Once per model: the latency table and the sensitivity table (both cached in
    ``<work>/<model>/shared/cache`` and copied into every run), the baseline on every axis."""
    from autocompress.hardware.latency import make_latency_model
    from autocompress.policy import CompressionPolicy
    from autocompress.search.run import prepare
    from autocompress.sensitivity import analyze
    from autocompress.sensitivity.settings import settings_for
    from autocompress.training import evaluate

    out = WORK / model / "shared"
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    import autocompress as ac

    # A latency table the experiment already profiled (same key = same model, space, target).
    default_out = ac.load_experiment(EXPERIMENTS[model]).output_dir / "cache"
    for f in default_out.glob("latency-*.json") if default_out.is_dir() else []:
        if not (cache / f.name).exists():
            shutil.copy(f, cache / f.name)
    cfg = _cfg(model, out, ckpt)
    prep = prepare(cfg, log=_log)
    bm = prep.baseline.metrics
    t0 = time.perf_counter()
    lat = make_latency_model(
        cfg,
        prep.baseline.model,
        prep.space,
        prep.data.example_input(cfg.latency.batch_size),
        reference_ms=bm.latency_ms,
        log=_log,
    )
    lat_s = time.perf_counter() - t0
    table = analyze(prep, settings_for(cfg), log=_log) if sensitivity else None
    test_acc, _ = evaluate(prep.baseline.model, prep.data.test)
    return {
        "cache": str(cache),
        "baseline": {
            "val_accuracy": bm.val_accuracy,
            "test_accuracy": test_acc,
            "latency_ms": lat.predict(prep.baseline.model, CompressionPolicy()),
            "size_kb": bm.size_bytes / 1024,
        },
        "latency_target": cfg.latency.target,
        "latency_table_seconds_this_call": lat_s,
        "sensitivity_seconds": table.meta.get("seconds") if table else None,
        "n_test": len(prep.data.test),
    }


def _new_run_dir(model: str, method: str, seed: int, shared: dict) -> Path:
    out = WORK / model / f"{method}-s{seed}"
    if out.exists():
        shutil.rmtree(out)
    (out / "cache").mkdir(parents=True)
    for f in Path(shared["cache"]).glob("*.json"):
        shutil.copy(f, out / "cache" / f.name)
    return out


# -- the uniform grid -----------------------------------------------------------------------
def uniform_policy(space, sparsity: float, bits: int):
    """Every layer at ``sparsity`` and ``bits`` (its nearest allowed choice), keep_ratio 1."""
    return space.uniform_policy(sparsity, bits)


def grid_points(model: str, n: int) -> list[tuple[float, int]]:
    g = MODELS[model]["grid"]
    pts = [(s, b) for b in g["bits"] for s in g["sparsity"]]
    return pts[:n]


# -- one run ----------------------------------------------------------------------------------
def _study_rows(cfg) -> list[dict]:
    from optuna.trial import TrialState

    from autocompress.search.study import load_study

    info = load_study(cfg)
    rows = []
    for t in info.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        m = t.user_attrs["metrics"]
        rows.append(
            {
                "trial": t.number,
                "val_accuracy": m["val_accuracy"],
                "test_accuracy": m["test_accuracy"],
                "latency_ms": m["latency_ms"],
                "size_kb": m["size_kb"],
                "compression_ratio": m["compression_ratio"],
                "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
                "summary": _summary(t.user_attrs.get("policy")),
            }
        )
    return rows


def _summary(policy: dict | None) -> str:
    from autocompress.policy import CompressionPolicy

    return CompressionPolicy.from_dict(policy).summary() if policy else ""


def _run_search(model: str, method: str, seed: int, trials: int, ckpt: Path, shared: dict):
    import autocompress as ac
    from autocompress.search.run import prepare
    from autocompress.search.study import open_study

    out = _new_run_dir(model, method, seed, shared)
    extra = [f"search.seed={seed}", f"search.n_trials={trials}", f"name=cmp-{method}-s{seed}"]
    if method != "autocompress":
        extra += ["sensitivity.enabled=false", "search.sampler=random"]
    cfg = _cfg(model, out, ckpt, extra)
    t0 = time.perf_counter()
    if method == "uniform":
        # The study made here with the grid enqueued; search() then finds and runs it.
        space = prepare(cfg, log=lambda *_: None).space
        info, _ = open_study(cfg, {k: list(v) for k, v in space.choices().items()})
        for s, b in grid_points(model, trials):
            pol = uniform_policy(space, s, b)
            info.study.enqueue_trial(
                space.params_from_policy(pol), user_attrs={"grid": [s, b]}, skip_if_exists=False
            )
    ac.search(cfg, log=_log)
    wall = time.perf_counter() - t0
    return _study_rows(cfg), wall


def _import_nni():
    try:
        import nni  # noqa: F401
    except ImportError:
        site = WORK / "nni-site"
        if not (site / "nni").is_dir():
            _log(f"installing nni=={NNI_VERSION} (--no-deps) into {site}")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--no-deps",
                    "--target",
                    str(site),
                    f"nni=={NNI_VERSION}",
                    *NNI_EXTRA,
                ],
                check=True,
            )
        sys.path.append(str(site))  # after the project's packages: theirs win
    import nni

    return nni


def nni_compress(prep, cfg, policy, seed: int):
    """The policy applied by NNI 3.0 (LevelPruner masks; QATQuantizer fused with the pruner for
    the quantisation-aware fine-tune), returned in autocompress's form: NNI's masks and trained
    weights under autocompress's weight parametrisation (per-channel codes at the same bits),
    8-bit input quantisers calibrated like every trial. Returns (model, NNI's own val acc)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.utils import parametrize

    nni = _import_nni()
    from nni.compression.pruning import LevelPruner
    from nni.compression.quantization import QATQuantizer
    from nni.compression.utils import TorchEvaluator

    from autocompress.compress.apply import CompressWeight, attach_input_quant, calibrate
    from autocompress.policy import compressible_layers
    from autocompress.training import batches, evaluate, train

    ft = cfg.finetune
    bs = ft.batch_size or cfg.data.batch_size
    model = copy.deepcopy(prep.baseline.model)
    prune = [
        {"op_names": [n], "sparse_ratio": lp.sparsity} for n, lp in policy.items() if lp.sparsity
    ]
    quant = []
    for n, lp in policy.items():
        if lp.quantized:
            # Weights per output channel (the grid autocompress packs), inputs per tensor.
            base = {"op_names": [n], "quant_scheme": "symmetric"}
            quant.append(
                {
                    **base,
                    "target_names": ["weight"],
                    "quant_dtype": f"int{lp.bits}",
                    "granularity": "out_channel",
                }
            )
            quant.append({**base, "target_names": ["_input_"], "quant_dtype": "int8"})
    masks: dict = {}
    pruner = None
    if prune:
        pruner = LevelPruner(model, prune)
        _, got = pruner.compress()
        masks = {n: v["weight"].detach().clone() for n, v in got.items()}
    nni_val = None
    if quant:

        def training_step(batch, m):
            return F.cross_entropy(m(batch[0]), batch[1])

        def training_func(m, optimizers, step_fn, lr_schedulers, max_steps, max_epochs):
            opt = optimizers[0] if isinstance(optimizers, list) else optimizers
            sched = lr_schedulers[0] if isinstance(lr_schedulers, list) else lr_schedulers
            torch.manual_seed(seed)
            m.train()
            done, epoch = 0, 0
            while done < max_steps:
                for batch in batches(prep.data.train, bs, shuffle=True, seed=seed + epoch):
                    loss = step_fn(batch, m)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    done += 1
                    if done >= max_steps:
                        break
                epoch += 1
            m.eval()

        opt = nni.trace(torch.optim.SGD)(
            model.parameters(), lr=ft.lr, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        sched = nni.trace(torch.optim.lr_scheduler.CosineAnnealingLR)(opt, T_max=ft.steps)
        ev = TorchEvaluator(
            training_func, opt, training_step, sched, dummy_input=prep.data.example_input(2)
        )
        if pruner is not None:
            q = QATQuantizer.from_compressor(pruner, quant, evaluator=ev)
        else:
            q = QATQuantizer(model, quant, ev)
        q.compress(ft.steps, None)
        model.eval()
        nni_val, _ = evaluate(model, prep.data.val)
        if pruner is not None:
            masks = {n: v["weight"].detach().clone() for n, v in pruner.get_masks().items()}
        # The weights NNI's model computes with (masked, fake-quantised, clamped to the tracked
        # range): the raw float weights drift outside that range during QAT.
        effective = {}
        with torch.no_grad():
            for name, layer in compressible_layers(model).items():
                wrapper = getattr(layer, "_nni_wrapper", None)
                ts = wrapper and wrapper.quantization_target_spaces.get("weight")
                if ts is not None:
                    effective[name] = wrapper.patch_params({"weight": ts.target})["weight"].clone()
        q.unwrap_model()
        with torch.no_grad():
            for name, w in effective.items():
                compressible_layers(model)[name].weight.copy_(w)
    elif pruner is not None:
        pruner.unwrap_model()
    layers = compressible_layers(model)
    for name, lp in policy.items():
        if lp.sparsity == 0.0 and not lp.quantized:
            continue
        layer = layers[name]
        mask = masks.get(name)
        mask = torch.ones_like(layer.weight) if mask is None else mask.to(layer.weight.dtype)
        parametrize.register_parametrization(layer, "weight", CompressWeight(mask, lp.bits))
        if lp.quantized:
            attach_input_quant(layer)
    calib = [x for x, _ in islice(batches(prep.data.train, bs, shuffle=True, seed=seed), 4)]
    calibrate(model, calib)
    if not quant:
        # Pruning only: NNI's masks, then the same fine-tune loop as every trial.
        train(model, prep.data.train, steps=ft.steps, lr=ft.lr, batch_size=bs, seed=seed,
              schedule="cosine")  # fmt: skip
    return model, nni_val


def _run_nni(model: str, seed: int, trials: int, ckpt: Path, shared: dict):
    import torch

    from autocompress.compress.apply import weight_sparsity
    from autocompress.export.artifact import ModelRef, pack_model
    from autocompress.hardware.latency import make_latency_model
    from autocompress.search.run import prepare
    from autocompress.training import evaluate

    out = _new_run_dir(model, "nni_uniform", seed, shared)
    cfg = _cfg(model, out, ckpt, [f"search.seed={seed}", f"search.n_trials={trials}"])
    t0 = time.perf_counter()
    prep = prepare(cfg, log=_log)
    bm = prep.baseline.metrics
    lat = make_latency_model(
        cfg,
        prep.baseline.model,
        prep.space,
        prep.data.example_input(cfg.latency.batch_size),
        reference_ms=bm.latency_ms,
        log=_log,
    )
    ref = ModelRef.from_config(cfg, prep.data.input_shape)
    rows = []
    for i, (s, b) in enumerate(grid_points(model, trials)):
        policy = uniform_policy(prep.space, s, b)
        t1 = time.perf_counter()
        torch.manual_seed(seed + i)
        m, nni_val = nni_compress(prep, cfg, policy, seed + i)
        val, _ = evaluate(m, prep.data.val)
        test, _ = evaluate(m, prep.data.test)
        size = len(pack_model(m, ref, policy, round_to=cfg.compression.round_to))
        row = {
            "trial": i,
            "val_accuracy": val,
            "test_accuracy": test,
            "latency_ms": lat.predict(m, policy),
            "size_kb": size / 1024,
            "compression_ratio": bm.fp32_state_dict_bytes / size,
            "nni_val_accuracy": nni_val,
            "weight_sparsity": weight_sparsity(m),
            "seconds": time.perf_counter() - t1,
            "summary": policy.summary(),
        }
        rows.append(row)
        _log(
            f"[nni {i + 1}/{trials}] s={s} b={b}: val {val:.4f} (NNI's own "
            f"{'-' if nni_val is None else f'{nni_val:.4f}'}) test {test:.4f} "
            f"lat {row['latency_ms']:.3f} size {row['size_kb']:.1f} KB ({row['seconds']:.1f} s)"
        )
    return rows, time.perf_counter() - t0


# -- metrics ----------------------------------------------------------------------------------
def _points(rows: list[dict], base: dict, acc: str = "test_accuracy") -> np.ndarray:
    return np.array(
        [
            [
                1.0 - r[acc],
                r["latency_ms"] / base["latency_ms"],
                r["size_kb"] / base["size_kb"],
            ]
            for r in rows
        ]
    ).reshape(-1, 3)


def _reference(base: dict, acc: str = "test_accuracy") -> list[float]:
    return [1.0 - (base[acc] - REF_DROP_POINTS / 100.0), REF_COST, REF_COST]


def _dominated(p: np.ndarray, front: np.ndarray) -> bool:
    return bool(np.any(np.all(front <= p, axis=1) & np.any(front < p, axis=1)))


def run_metrics(rows: list[dict], base: dict) -> dict:
    from autocompress.search.pareto import hypervolume, non_dominated

    pts = _points(rows, base)
    front = non_dominated(pts, ["minimize"] * 3)
    vpts = _points(rows, base, "val_accuracy")
    vfront = non_dominated(vpts, ["minimize"] * 3)
    lat_ok = [r["test_accuracy"] for r in rows if r["latency_ms"] <= L_REL * base["latency_ms"]]
    size_ok = [r["test_accuracy"] for r in rows if r["size_kb"] <= S_REL * base["size_kb"]]
    return {
        "hypervolume": hypervolume(pts[front], _reference(base)),
        "hypervolume_val": hypervolume(vpts[vfront], _reference(base, "val_accuracy")),
        "front": [int(i) for i in front],
        "best_test_acc_at_L": max(lat_ok, default=None),
        "best_test_acc_at_S": max(size_ok, default=None),
        "best_test_acc": max(r["test_accuracy"] for r in rows),
        "seconds_per_trial": statistics.mean(r["seconds"] for r in rows),
    }


def domination(runs: list[dict], base: dict) -> dict:
    """Per method: the share of its points (and of its front's points) that the autocompress
    front of the same seed dominates, and the share of autocompress front points it dominates."""
    by = {(r["method"], r["seed"]): r for r in runs}
    ref = np.array(_reference(base))
    out: dict = {}
    for method in METHODS[1:]:
        n = d = nf = df = na = da = nb = db = 0
        for (m, seed), r in by.items():
            ac = by.get(("autocompress", seed))
            if m != method or ac is None:
                continue
            acp = _points(ac["trials"], base)[ac["front"]]
            pts = _points(r["trials"], base)
            for i, p in enumerate(pts):
                hit = _dominated(p, acp)
                n, d = n + 1, d + hit
                if np.all(p < ref):  # inside the reference box: counts in the hypervolume
                    nb, db = nb + 1, db + hit
                if i in r["front"]:
                    nf, df = nf + 1, df + hit
            mine = pts[r["front"]]
            for p in acp:
                na, da = na + 1, da + _dominated(p, mine)
        if n:
            out[method] = {
                "points": n,
                "dominated": d,
                "box_points": nb,
                "box_dominated": db,
                "front_points": nf,
                "front_dominated": df,
                "autocompress_front_points": na,
                "autocompress_front_dominated_by_it": da,
            }
    return out


# -- report -----------------------------------------------------------------------------------
def _mean_sd(xs, spec: str = ".4f") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{format(statistics.mean(xs), spec)} ± {format(sd, spec)}"


def top_point(rows: list[dict], base: dict) -> dict:
    """The front's most accurate point at most L_REL x the baseline's latency and size (the
    anchor and other barely compressed points left out): its test accuracy, and the share of
    the run's hypervolume that its own box (up to the reference point) covers. With a reference
    5 points below the baseline and every compressed point at a small fraction of its cost,
    the hypervolume is nearly (best accuracy - reference) x (1.1 - latency) x (1.1 - size) of
    this one point, so fine-tune noise on it moves the whole number."""
    from autocompress.search.pareto import hypervolume, non_dominated

    pts, ref = _points(rows, base), _reference(base)
    front = [int(i) for i in non_dominated(pts, ["minimize"] * 3)]
    inside = [i for i in front if pts[i, 0] < ref[0] and np.all(pts[i, 1:] <= L_REL)]
    hv = hypervolume(pts[front], ref) if front else 0.0
    if not inside or hv <= 0:
        return {"top_test_accuracy": None, "top_share": None}
    top = min(inside, key=lambda i: pts[i, 0])
    alone = hypervolume(pts[[top]], ref)
    return {"top_test_accuracy": rows[top]["test_accuracy"], "top_share": alone / hv}


def summarise(data: dict) -> dict:
    hv_mean: dict = {}
    hv_std: dict = {}
    for model in MODELS:
        runs = [r for r in data["runs"] if r["model"] == model]
        for method in METHODS:
            hv = [r["hypervolume"] for r in runs if r["method"] == method]
            if hv:
                hv_mean.setdefault(model, {})[method] = statistics.mean(hv)
                hv_std.setdefault(model, {})[method] = statistics.stdev(hv) if len(hv) > 1 else 0.0
    winner = {m: max(v, key=v.get) for m, v in hv_mean.items()}
    return {"hypervolume_mean": hv_mean, "hypervolume_std": hv_std, "best_method": winner}


def _plot(model: str, runs: list[dict], base: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        pts = np.concatenate([_points(r["trials"], base) for r in rs])
        c = COLORS[method]
        axes[0].scatter(pts[:, 2], 100 * (1 - pts[:, 0]), s=14, c=c, alpha=0.6, label=method)
        axes[1].scatter(pts[:, 1], 100 * (1 - pts[:, 0]), s=14, c=c, alpha=0.6, label=method)
    for ax, xl in zip(axes[:2], ("size / baseline", "latency / baseline"), strict=True):
        ax.axhline(100 * base["test_accuracy"], ls=":", c="k", lw=0.8)
        ax.axhline(100 * base["test_accuracy"] - REF_DROP_POINTS, ls="--", c="grey", lw=0.8)
        ax.set_xlabel(xl)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(max(0, 100 * base["test_accuracy"] - 15), 100 * base["test_accuracy"] + 1.5)
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")
    axes[0].axvline(S_REL, ls="--", c="grey", lw=0.8)
    axes[1].axvline(L_REL, ls="--", c="grey", lw=0.8)
    axes[0].legend(fontsize=8)
    axes[0].set_title("all trials, all seeds (dotted: baseline, dashed: ref / S)")
    axes[1].set_title("dashed: L")
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    hv = [[r["hypervolume"] for r in runs if r["method"] == m] for m in methods]
    axes[2].bar(
        methods,
        [statistics.mean(h) for h in hv],
        yerr=[statistics.stdev(h) if len(h) > 1 else 0 for h in hv],
        color=[COLORS[m] for m in methods],
        capsize=4,
    )
    for i, h in enumerate(hv):
        axes[2].scatter([i] * len(h), h, c="k", s=10, zorder=3)
    axes[2].set_ylabel("hypervolume (test accuracy, latency, size)")
    axes[2].set_title("mean ± std over seeds (dots: seeds)")
    fig.suptitle(f"{model}: autocompress vs baselines, same budget")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _model_report(model: str, data: dict, results: Path) -> Path | None:
    runs = [r for r in data["runs"] if r["model"] == model]
    shared = data.get("shared", {}).get(model)
    notes = results / f"compare-{model}-notes.md"
    if not runs or not shared:
        if not notes.is_file():
            return None
        out = results / f"compare-{model}.md"
        head = f"# {model}: autocompress vs baselines at the same budget (issue #8)\n\n"
        out.write_text(head + "Not run yet (see below).\n\n" + notes.read_text())
        return out
    base = shared["baseline"]
    spec = MODELS[model]
    seeds = sorted({r["seed"] for r in runs})
    dom = domination(runs, base)
    threads = "/".join(str(t) for t in sorted({r.get("threads", 1) for r in runs}))
    lines = [
        f"# {model}: autocompress vs baselines at the same budget (issue #8)",
        "",
        f"Generated by `benchmarks/compare.py`. Protocol: `{EXPERIMENTS[model].relative_to(REPO)}` "
        f"with `{' '.join(spec['overrides'])}`, {spec['trials']} trials per run, seeds "
        f"{', '.join(map(str, seeds))}, latency target `{shared['latency_target']}`, "
        f"{threads} torch thread(s) per run. Test accuracy on {shared['n_test']} test images "
        "(every trial; the samplers only see validation accuracy).",
        "",
        f"Baseline: test accuracy {100 * base['test_accuracy']:.2f} %, latency "
        f"{base['latency_ms']:.3f} ms (the target's scale), {base['size_kb']:.1f} KB packed.",
        "",
        "Fixed in the script before the runs: hypervolume of (1 − test accuracy, latency / "
        f"baseline, size / baseline) with reference point ({REF_DROP_POINTS:g} points below the "
        f"baseline's test accuracy, {REF_COST:g}, {REF_COST:g}); L = {L_REL:g} × baseline latency "
        f"= {L_REL * base['latency_ms']:.3f} ms; S = {S_REL:g} × baseline size = "
        f"{S_REL * base['size_kb']:.1f} KB.",
        "",
        "| method | hypervolume | best test acc at latency ≤ L | best test acc at size ≤ S "
        "| best test acc | s per trial | runs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue

        def pct(key, rs=rs):
            vals = [r[key] for r in rs]
            got = [100 * v for v in vals if v is not None]
            miss = len(vals) - len(got)
            txt = _mean_sd(got, ".2f")
            return txt + (f" ({miss} run(s): none)" if miss and got else "") if got else "none"

        lines.append(
            f"| {method} | {_mean_sd([r['hypervolume'] for r in rs])} | {pct('best_test_acc_at_L')}"
            f" | {pct('best_test_acc_at_S')} | {pct('best_test_acc')} | "
            f"{_mean_sd([r['seconds_per_trial'] for r in rs], '.1f')} | {len(rs)} |"
        )
    lines += [
        "",
        "Accuracies in %, mean ± std over seeds. Seconds per trial: from the trial's start to its "
        "end (compress, fine-tune, validation and test scoring, packing; the searches also log "
        "each trial to MLflow).",
    ]
    if shared.get("sensitivity_seconds") is not None:
        lines.append(
            f"autocompress also measures the per-layer sensitivity once per checkpoint "
            f"({shared['sensitivity_seconds']:.0f} s, cached and shared by its seeds; not in the "
            "per-trial time)."
        )
    lines += [
        "",
        "Domination by the autocompress front of the same seed (test accuracy, latency, size):",
        "",
        "| baseline | its points dominated | of them inside the reference box "
        "| its front's points dominated | autocompress front points it dominates |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, d in dom.items():
        lines.append(
            f"| {method} | {d['dominated']}/{d['points']} | {d['box_dominated']}/"
            f"{d['box_points']} | {d['front_dominated']}/"
            f"{d['front_points']} | {d['autocompress_front_dominated_by_it']}/"
            f"{d['autocompress_front_points']} |"
        )
    lines += [
        "",
        "Where the hypervolume comes from: the front's most accurate point inside the reference "
        f"box at ≤ {L_REL:g} × the baseline's latency and size (mean over seeds), and the share "
        "of the hypervolume that its own box (up to the reference point) covers. "
        "One accuracy point on it moves the hypervolume by about 0.01 × (1.1 − its latency) "
        "× (1.1 − its size); on 2000 test images one accuracy has a standard error of about "
        "0.6 points.",
        "",
        "| method | its test accuracy | share of the hypervolume in its box |",
        "| --- | --- | --- |",
    ]
    for method in METHODS:
        tops = [top_point(r["trials"], base) for r in runs if r["method"] == method]
        acc = [100 * t["top_test_accuracy"] for t in tops if t["top_test_accuracy"] is not None]
        share = [100 * t["top_share"] for t in tops if t["top_share"] is not None]
        if tops:
            pc = _mean_sd(share, ".0f") + (" %" if share else "")
            lines.append(f"| {method} | {_mean_sd(acc, '.2f')} | {pc} |")
    lines += ["", "Per seed (hypervolume on test / on validation):", ""]
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    lines += ["| seed | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
    by = {(r["method"], r["seed"]): r for r in runs}
    for s in seeds:
        cells = [
            f"{by[(m, s)]['hypervolume']:.4f} / {by[(m, s)]['hypervolume_val']:.4f}"
            if (m, s) in by
            else "–"
            for m in methods
        ]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    nni = [t for r in runs if r["method"] == "nni_uniform" for t in r["trials"]]
    if nni:
        pairs = [
            (t["nni_val_accuracy"], t["val_accuracy"])
            for t in nni
            if t.get("nni_val_accuracy") is not None
        ]
        if pairs:
            diff = statistics.mean(100 * (b - a) for a, b in pairs)
            lines += [
                "",
                "`nni_uniform`: NNI 3.0 `LevelPruner` masks + `QATQuantizer` (fused) fine-tune, "
                "materialised as autocompress per-channel codes at the same bits. Validation "
                "accuracy of the materialised model minus NNI's own fake-quantised model: "
                f"{diff:+.2f} points on average over {len(pairs)} quantised trials.",
            ]
    png = results / f"compare-{model}.png"
    _plot(model, runs, base, png)
    lines += ["", f"![{model}](compare-{model}.png)", ""]
    if notes.is_file():
        lines += [notes.read_text()]
    out = results / f"compare-{model}.md"
    out.write_text("\n".join(lines))
    return out


def write_report(results: Path = RESULTS) -> list[Path]:
    path = results / "compare.json"
    data = json.loads(path.read_text())
    data["summary"] = summarise(data)
    path.write_text(json.dumps(data, indent=1))
    return [p for m in MODELS if (p := _model_report(m, data, results)) is not None] + [path]


# -- main -------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--trials", type=int, help="trials per run (default: the model's; smoke tests)")
    p.add_argument("--report", action="store_true", help="only rewrite the Markdown and plots")
    p.add_argument("--rerun", action="store_true", help="run again runs already in the JSON")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder for JSON, Markdown, PNG")
    p.add_argument("--work-dir", type=Path, help="folder for the runs (runs/bench-compare)")
    args = p.parse_args(argv)
    global WORK
    WORK = (args.work_dir or WORK).resolve()
    results = args.results
    if args.report:
        for out in write_report(results):
            print(out)
        return 0
    os.environ["AUTOCOMPRESS_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    results.mkdir(parents=True, exist_ok=True)
    path = results / "compare.json"
    data = json.loads(path.read_text()) if path.is_file() else {"runs": [], "shared": {}}
    data["settings"] = {
        "ref_drop_points": REF_DROP_POINTS,
        "ref_cost": REF_COST,
        "L_rel": L_REL,
        "S_rel": S_REL,
        "models": MODELS,
    }
    for model in args.model:
        trials = args.trials or MODELS[model]["trials"]
        ckpt = baseline_checkpoint(model, log=_log)
        shared = _shared(model, ckpt, sensitivity="autocompress" in args.methods)
        old = data["shared"].get(model, {})
        if shared["sensitivity_seconds"] is None:
            shared["sensitivity_seconds"] = old.get("sensitivity_seconds")
        data["shared"][model] = shared
        path.write_text(json.dumps(data, indent=1))
        for seed in args.seeds:
            for method in args.methods:
                key = (model, method, seed)
                done = {(r["model"], r["method"], r["seed"]) for r in data["runs"]}
                if key in done and not args.rerun:
                    continue
                _log(f"=== {model} seed {seed} {method} ({trials} trials)")
                commit = code_version()
                if method == "nni_uniform":
                    rows, wall = _run_nni(model, seed, trials, ckpt, shared)
                else:
                    rows, wall = _run_search(model, method, seed, trials, ckpt, shared)
                res = {
                    "model": model,
                    "method": method,
                    "seed": seed,
                    "n_trials": len(rows),
                    "wall_seconds": wall,
                    "threads": args.threads,
                    "commit": commit,
                    **run_metrics(rows, shared["baseline"]),
                    "trials": rows,
                }
                data["runs"] = [
                    r for r in data["runs"] if (r["model"], r["method"], r["seed"]) != key
                ] + [res]
                path.write_text(json.dumps(data, indent=1))
                _log(
                    f"=== {model} {method} seed {seed}: HV {res['hypervolume']:.4f}, "
                    f"{res['seconds_per_trial']:.1f} s/trial, {wall:.0f} s"
                )
    for out in write_report(results):
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
