"""Dev-seed check of the screen's sampler (issue #19): the screened front's validation
hypervolume (reference 5 points below the uncompressed model's screened accuracy, 1.1 x its
latency and size) with ``plain`` NSGA-II, ``corr`` (LayerCorrelatedNSGAII as it is;
``corr16``: population 16) or ``indep`` (LayerCorrelatedNSGAII with independent uniform levels
per dimension, the sampler before the first generation was stratified). Dev seeds only; appends
to ``benchmarks/results/screen_prior.jsonl``. The rows ``seeds+plain`` there ran at 2215183,
which also enqueued 12 one-line configs into the screen; the ``corr`` rows before the
stratification (commit in each row) drew from the distribution ``indep`` draws from now, but
not the same random stream (compare rows of one commit only).

    .venv/bin/python benchmarks/screen_prior.py corr 100 120
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]

import compare as C  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402

import autocompress as ac  # noqa: E402
from autocompress.samplers import LayerCorrelatedNSGAII  # noqa: E402
from autocompress.search.pareto import hypervolume  # noqa: E402
from autocompress.search.screen import REFERENCE_ATTR  # noqa: E402


class _Independent(LayerCorrelatedNSGAII):
    """The first generation's levels drawn uniformly per dimension (no strata)."""

    def _level(self, trial_id: int, dim: str) -> float:
        return float(self._prior.random())


def main(variant: str, seed: int, n: int) -> dict:
    sh = C.shared("small_cnn")
    out = C.WORK / "small_cnn" / f"dev-{variant}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    (out / "cache").mkdir(parents=True)
    for f in Path(sh["cache"]).glob("*"):
        shutil.copy(f, out / "cache" / f.name)
    cfg = C._cfg(
        "small_cnn",
        out,
        [
            f"model.checkpoint={sh['checkpoint']}",
            f"search.seed={seed}",
            f"search.screen_trials={n}",
            "search.n_trials=1",
            f"name=dev-{variant}-s{seed}",
        ],
    )
    if variant == "plain":
        sampler = optuna.samplers.NSGAIISampler(population_size=24, seed=seed)
    elif variant == "indep":
        sampler = _Independent(population_size=24, seed=seed)
    else:
        sampler = LayerCorrelatedNSGAII(population_size=int(variant[4:] or 24), seed=seed)
    t0 = time.perf_counter()
    ac.search(cfg, sampler=sampler, log=lambda m: print(m, flush=True) if "screen" in m else None)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=cfg.name + "-screen", storage=cfg.optuna_storage)
    ref = study.user_attrs[REFERENCE_ATTR]
    trials = [t for t in study.get_trials() if t.state.name == "COMPLETE"]

    def hv(ts) -> float:
        m = [t.user_attrs["metrics"] for t in ts]
        pts = [
            [
                1 - x["val_accuracy"],
                x["latency_ms"] / ref["latency_ms"],
                x["size_kb"] / ref["size_kb"],
            ]
            for x in m
        ]
        return (
            hypervolume(np.array(pts), [1 - (ref["val_accuracy"] - 0.05), 1.1, 1.1]) if m else 0.0
        )

    res = {
        "variant": variant,
        "seed": seed,
        "n": len(trials),
        "wall": wall,
        "hv_all": hv(trials),
        "hv_first24": hv(trials[:24]),
        "hv_first60": hv(trials[:60]),
        "best_val_half_size": max(
            (
                t.user_attrs["metrics"]["val_accuracy"]
                for t in trials
                if t.user_attrs["metrics"]["size_kb"] <= 0.5 * ref["size_kb"]
            ),
            default=0.0,
        ),
        "commit": C.code_version(),
    }
    with open(REPO / "benchmarks" / "results" / "screen_prior.jsonl", "a") as fh:
        fh.write(json.dumps(res) + "\n")
    return res


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
