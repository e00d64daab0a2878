"""Throughput of the search with 1 and N worker processes on one machine (issue #6).

The quick experiment (small CNN) with its cached baseline, latency table and sensitivity table
copied in, on a shared JournalFileBackend storage; ``--workers N`` starts N processes that
share the cores (each gets cores / N torch threads). Trials/hour is counted from the trials'
own timestamps (first start to last completion), so set-up time is not included.

    .venv/bin/python benchmarks/workers.py                 # 1 and 2 workers, 16 trials each
    .venv/bin/python benchmarks/workers.py --workers 1 2 4 --trials 24

Results: benchmarks/results/workers.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time

from common import EXPERIMENTS, REPO, RESULTS

WORK = REPO / "runs" / "bench-workers"


def run(workers: int, trials: int) -> dict:
    from optuna.trial import TrialState

    import autocompress as ac
    from autocompress.search.study import load_study

    base = ac.load_experiment(EXPERIMENTS["small_cnn"])
    src = base.output_dir / "cache"
    if not any(src.glob("baseline-*.pt")):
        from autocompress.baseline import prepare

        prepare(base)  # trains the baseline once
    out = WORK / f"w{workers}"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out / "cache")
    cfg = ac.load_experiment(
        EXPERIMENTS["small_cnn"],
        [
            f"output_dir={out}",
            "storage=journal",
            f"search.n_trials={trials}",
            f"name=bench-workers-w{workers}",
        ],
    )
    t0 = time.perf_counter()
    ac.search(cfg, workers=workers, log=lambda *_: None)
    wall = time.perf_counter() - t0
    for f in (out / "cache").iterdir():  # tables this run built serve the next runs too
        if f.is_file() and not (src / f.name).exists():
            shutil.copy2(f, src / f.name)
    done = load_study(cfg).study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    span = (end - start).total_seconds()
    return {
        "workers": workers,
        "trials": len(done),
        "trial_span_seconds": span,
        "trials_per_hour": 3600.0 * len(done) / span,
        "wall_seconds": wall,
        "mean_trial_seconds": sum(
            (t.datetime_complete - t.datetime_start).total_seconds() for t in done
        )
        / len(done),
        "load_average_after": os.getloadavg(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--trials", type=int, default=16)
    args = p.parse_args()
    rows = []
    for n in args.workers:
        r = run(n, args.trials)
        print(json.dumps(r))
        rows.append(r)
    data = {
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()},
        "experiment": str(EXPERIMENTS["small_cnn"].relative_to(REPO)),
        "runs": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "workers.json").write_text(json.dumps(data, indent=2))
    lines = [
        "# Search throughput with N workers on one machine",
        "",
        f"`benchmarks/workers.py`: {data['experiment']} (baseline, latency and sensitivity "
        f"tables cached), journal storage, {args.trials} trials per run, "
        f"{data['machine']['cpus']} CPUs. Trials/hour from the trials' timestamps.",
        "",
        "| workers | trials | trials/hour | mean s per trial | wall s | load avg (1 min) after |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['trials']} | {r['trials_per_hour']:.0f} | "
            f"{r['mean_trial_seconds']:.1f} | {r['wall_seconds']:.0f} | "
            f"{r['load_average_after'][0]:.2f} |"
        )
    notes = RESULTS / "workers-notes.md"  # the reading, written by hand, survives re-runs
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    (RESULTS / "workers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
