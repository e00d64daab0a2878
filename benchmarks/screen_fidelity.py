"""Dev check of the screen's fidelity (issue #19): how well does a screened accuracy with
``steps`` fine-tune steps (0: the default screen) rank the accuracy the same policy reaches
after the per-trial fine-tune, overall and in the compressed half (packed size below the
median)? And what does each fidelity cost per policy?

Policies: every ``--every``-th screened policy of the dev studies ``dev-corr-s100..s104``
(``screen_prior.py``), small CNN, the compare benchmark's settings. Dev seeds only; writes
``benchmarks/results/screen_fidelity.json``.

    .venv/bin/python benchmarks/screen_fidelity.py --steps 0 5 10 20 --every 12
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]

import compare as C  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "screen_fidelity.json"


def _policies(every: int) -> list[dict]:
    params = []
    for seed in (100, 101, 102, 103, 104):
        d = C.WORK / "small_cnn" / f"dev-corr-s{seed}"
        st = optuna.load_study(
            study_name=f"dev-corr-s{seed}-screen", storage=f"sqlite:///{d / 'optuna.db'}"
        )
        done = [t for t in st.get_trials() if t.state.name == "COMPLETE"]
        params += [t.params for t in done[::every]]
    return params


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 5, 10, 20])
    ap.add_argument("--every", type=int, default=12)
    args = ap.parse_args()

    import torch

    from autocompress.baseline import prepare
    from autocompress.hardware.latency import make_latency_model
    from autocompress.search.trials import TrialEvaluator

    torch.set_num_threads(C.THREADS)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sh = C.shared("small_cnn")
    out = C.WORK / "small_cnn" / "dev-fidelity"
    shutil.rmtree(out, ignore_errors=True)
    (out / "cache").mkdir(parents=True)
    for f in Path(sh["cache"]).glob("*"):
        shutil.copy(f, out / "cache" / f.name)
    cfg = C._cfg("small_cnn", out, [f"model.checkpoint={sh['checkpoint']}", "search.seed=100"])
    prep = prepare(cfg, log=lambda m: None)
    lat = make_latency_model(
        cfg,
        prep.baseline.model,
        prep.space,
        prep.data.example_input(cfg.latency.batch_size),
        reference_ms=prep.baseline.metrics.latency_ms,
        log=lambda m: None,
    )
    ev = TrialEvaluator(cfg, prep.baseline, prep.data, lat, prep.memory_model, task=prep.task)
    rows = []
    plist = _policies(args.every)
    for i, params in enumerate(plist):
        policy = prep.space.policy_from_params(params)
        row = {"params": params, "screen": {}, "screen_s": {}}
        for s in args.steps:
            c = cfg.model_copy(deep=True)
            c.search.screen_steps = s
            ev.cfg = c
            t0 = time.perf_counter()
            m = ev.screen(policy)
            row["screen_s"][s] = time.perf_counter() - t0
            row["screen"][s] = m.val_accuracy
        ev.cfg = cfg
        t0 = time.perf_counter()
        m = ev(policy)
        row["finetuned_s"] = time.perf_counter() - t0
        row["finetuned"] = m.val_accuracy
        row["size_kb"] = m.size_kb
        rows.append(row)
        print(
            f"[{i + 1}/{len(plist)}] {m.size_kb:.1f} KB ft {m.val_accuracy:.3f} "
            + " ".join(f"s{s}={row['screen'][s]:.3f}" for s in args.steps),
            flush=True,
        )
    size = np.array([r["size_kb"] for r in rows])
    ft = np.array([r["finetuned"] for r in rows])
    small = size <= np.median(size)
    summary = {}
    for s in args.steps:
        sc = np.array([r["screen"][s] for r in rows])
        summary[str(s)] = {
            "spearman_all": float(spearmanr(sc, ft).statistic),
            "spearman_compressed_half": float(spearmanr(sc[small], ft[small]).statistic),
            "mean_s_per_policy": float(np.mean([r["screen_s"][s] for r in rows])),
        }
    res = {
        "commit": C.code_version(),
        "n": len(rows),
        "finetuned_s_per_policy": float(np.mean([r["finetuned_s"] for r in rows])),
        "summary": summary,
        "rows": rows,
    }
    OUT.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
