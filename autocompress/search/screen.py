"""Fidelity 0 of the search: many policies scored without a fine-tune (user attribute
``fidelity = 0``), and the promotion of their front into the fine-tuned study.

A screened policy is applied as a trial applies it, calibrated and BatchNorm-corrected on fixed
batches and scored on a fixed validation subset (``search.screen_images``), optionally after a
short fine-tune (``search.screen_steps``). The screen is its own Optuna study (``<name>-screen``)
in the experiment's storage, so resume, workers and heartbeats work as for the fine-tuned one.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import ExperimentConfig
from ..metrics import OBJECTIVES, spearman
from ..policy import CompressionPolicy
from ..search_space import SearchSpace
from ..tracking import Tracker
from .pareto import diverse_order, hypervolume_order, non_dominated, normalised
from .study import (
    StudyInfo,
    constraints_of,
    open_study,
    progress_tail,
    record_metrics,
    run_once,
    trial_records,
)
from .trials import TrialEvaluator, suggest_policy

PROMOTED_ATTR = "promoted_for_n_trials"
REFERENCE_ATTR = "reference_metrics"  # the uncompressed model, screened
_ORIGIN = "origin"
_LOW_AGREEMENT = 0.5  # screen_rank_spearman below this: the screen is not to be trusted


def open_screen(
    cfg: ExperimentConfig, space_params: dict, on_stale, evaluator, sampler
) -> StudyInfo:
    """The screen's study, seeded once with the uncompressed model's screened metrics (no
    policies are enqueued: the sampler's first generation covers the one-line configs, see
    :class:`~autocompress.samplers.LayerCorrelatedNSGAII`)."""
    screen, _ = open_study(cfg, space_params, on_stale, screen=True, sampler=sampler)

    def seed() -> None:
        ref = evaluator.screen(CompressionPolicy())
        metrics = {o.metric: ref.value(n) for n, o in OBJECTIVES.items()}
        screen.study.set_user_attr(REFERENCE_ATTR, metrics)

    run_once(screen.study, "seed", seed)
    return screen


def run_screen(
    info: StudyInfo,
    cfg: ExperimentConfig,
    space: SearchSpace,
    evaluator: TrialEvaluator,
    *,
    deadline: float | None,
    log,
) -> None:
    """Screen policies until the screen study holds ``search.screen_trials`` complete ones or
    its share (``search.screen_share``) of the time to the search's ``deadline`` is spent."""
    if deadline is not None:  # a share of what the preparation left
        deadline = time.monotonic() + cfg.search.screen_share * max(deadline - time.monotonic(), 0)
    n_total = cfg.search.screen_trials
    remaining = n_total - info.count(TrialState.COMPLETE)
    if remaining <= 0:
        return
    every = max(1, n_total // 10)
    t0 = time.perf_counter()
    done = {"n": 0}

    def objective(trial: optuna.Trial):
        policy = suggest_policy(trial, space)
        trial.set_user_attr("fidelity", 0)
        try:
            return record_metrics(trial, info, evaluator.screen(policy), cfg)
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise

    def progress(study: optuna.Study, trial: FrozenTrial) -> None:
        done["n"] += 1
        complete = info.count(TrialState.COMPLETE)
        if done["n"] % every and complete < n_total:
            return
        elapsed = time.perf_counter() - t0
        per = elapsed / done["n"]
        tail = progress_tail(info, elapsed, per * max(n_total - complete, 0), deadline)
        log(f"[screen {complete}/{n_total}] {per:.2f} s/policy | {tail}")

    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    log(
        f"screening: {remaining} policies without fine-tune ({cfg.search.sampler}, "
        f"{len(evaluator.screen_val)} validation images"
        + (f", {cfg.search.screen_steps} fine-tune steps each" if cfg.search.screen_steps else "")
        + ")"
    )
    enough = optuna.study.MaxTrialsCallback(n_total, states=(TrialState.COMPLETE,))
    info.study.optimize(
        objective, timeout=timeout, catch=(Exception,), callbacks=[enough, progress]
    )


def promote(
    screen: StudyInfo,
    main: StudyInfo,
    n_trials: int,
    *,
    max_drop: float | None = None,
    log,
    wait_s: float = 3600.0,
) -> int:
    """Enqueue screened policies (:func:`_promotion_order`) until the fine-tuned study holds
    ``n_trials`` trials; once per ``n_trials``, by one process. Returns how many it enqueued."""
    study = main.study
    if (study.user_attrs.get(PROMOTED_ATTR) or 0) >= n_trials:
        return 0
    # The screen's trials still running elsewhere finish (or their worker is lost) first.
    deadline = time.monotonic() + wait_s
    while screen.count(TrialState.RUNNING) and time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(screen.study)
        time.sleep(1.0)
    chosen: list[FrozenTrial] = []

    def enqueue() -> None:
        done = screen.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        trials = [t for t in done if all(c <= 0 for c in constraints_of(t))]
        known = {tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)}
        fresh: dict[tuple, FrozenTrial] = {}
        for t in trials:
            fresh.setdefault(tuple(sorted(t.params.items())), t)
        unique = [t for key, t in fresh.items() if key not in known]
        # Pruned trials (duplicates, surplus) and failed ones (re-run as queued trials) hold no
        # place in the budget.
        held = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        room = max(n_trials - len(study.get_trials(deepcopy=False, states=held)), 0)
        ref = screen.study.user_attrs.get(REFERENCE_ATTR)
        chosen.extend(_promotion_order(unique, main, ref, max_drop)[:room])
        for t in chosen:
            screened = {"screen_trial": t.number, "screen_metrics": t.user_attrs.get("metrics", {})}
            attrs = {_ORIGIN: t.user_attrs.get(_ORIGIN, "screen")} | screened
            study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=True)
        study.set_user_attr(PROMOTED_ATTR, n_trials)
        log(
            f"promoted {len(chosen)} of {len(trials)} screened policies to fine-tuned trials "
            f"({len(unique)} new and feasible; by hypervolume contribution above "
            f"{max_drop} points below the uncompressed model, then most spread)"
        )

    run_once(study, f"promote-{n_trials}", enqueue)
    return len(chosen)


def screen_agreement(main: StudyInfo) -> dict:
    """Spearman correlation of screened and fine-tuned validation accuracy (promoted trials)."""
    pairs = [
        (t.user_attrs["screen_metrics"]["val_accuracy"], t.user_attrs["metrics"]["val_accuracy"])
        for t in main.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("screen_metrics") and t.user_attrs.get("metrics")
    ]
    a, b = zip(*pairs, strict=True) if pairs else ((), ())
    return {"n": len(pairs), "spearman": spearman(a, b)}


def _promotion_order(
    trials: list[FrozenTrial], main: StudyInfo, ref: dict | None, max_drop: float | None
) -> list[FrozenTrial]:
    """The screened front by greedy hypervolume contribution against a reference ``max_drop``
    points below the uncompressed model's screened accuracy and 1.1 x its latency and size (the
    screen's drops are large: it only keeps near-chance models back); then every other policy,
    by non-domination rank and spread."""
    if not trials:
        return []
    values = np.array([t.values for t in trials])
    first: list[int] = []
    if ref is not None and max_drop is not None:
        pts = normalised(values, main.objectives, {k: max(v, 1e-12) for k, v in ref.items()})
        acc = 1.0 - (ref["val_accuracy"] - max_drop / 100.0)
        reference = [acc if o == "accuracy" else 1.1 for o in main.objectives]
        front = non_dominated(values, main.directions).tolist()
        first = [front[i] for i in hypervolume_order(pts[front], reference)]
    rest = [i for i in range(len(trials)) if i not in set(first)]
    later = [rest[i] for i in diverse_order(values[rest], main.directions)] if rest else []
    return [trials[i] for i in first + later]


def write_screen_table(screen: StudyInfo, main: StudyInfo, path: Path) -> Path:
    """One CSV row per screened policy: metrics, origin, the fine-tuned trial it became."""
    promoted = {
        t.user_attrs["screen_trial"]: t.number
        for t in main.study.get_trials(deepcopy=False)
        if "screen_trial" in t.user_attrs
    }
    cols = ["screen_trial", "origin", "val_accuracy", "latency_ms", "size_kb", "feasible"]
    cols += ["promoted_to", "summary"]
    origin = {
        t.number: t.user_attrs.get(_ORIGIN, "sampler")
        for t in screen.study.get_trials(deepcopy=False)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in trial_records(screen):
            n = r.trial
            w.writerow(
                r.row()
                | {"screen_trial": n, "origin": origin[n], "promoted_to": promoted.get(n, "")}
            )
    return path


def log_screen(
    screen: StudyInfo, main: StudyInfo, tracker: Tracker, parent: str, cfg: ExperimentConfig, log
) -> None:
    """The screened table (``screen/screened.csv``) and how well the screen ranked the promoted
    policies' fine-tuned accuracy (metric ``screen_rank_spearman``) on the parent run."""
    path = write_screen_table(screen, main, cfg.output_dir / "screen" / "screened.csv")
    tracker.log_artifacts(parent, [path], "screen")
    agree = screen_agreement(main)
    metrics = {"screen_trials": float(screen.count(TrialState.COMPLETE))}
    if np.isfinite(agree["spearman"]):
        metrics["screen_rank_spearman"] = agree["spearman"]
        hint = ""
        if agree["spearman"] < _LOW_AGREEMENT:
            hint = (
                ": the screen ranks poorly on this model; a short fine-tune per screened "
                "policy (search.screen_steps, e.g. 20) or more search.screen_images may help"
            )
        log(
            f"screen vs fine-tuned accuracy over {agree['n']} promoted trials: "
            f"Spearman {agree['spearman']:.2f}{hint}"
        )
    tracker.log(parent, metrics=metrics)
