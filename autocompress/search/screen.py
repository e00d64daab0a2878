"""Fidelity 0 of the search: many policies scored without a fine-tune, and the promotion of
their front into the fine-tuned study.

Each screened policy is applied as a trial applies it (channels removed, masks, quantisers),
its activation ranges calibrated and its BatchNorm statistics corrected on fixed batches, then
scored on a fixed validation subset (``search.screen_images``) — optionally after a short
fine-tune (``search.screen_steps``, the middle fidelity for models whose screen ranks poorly).
Size is the exact packed byte count (counted from histograms, not encoded) and latency the
latency model's prediction, as for a fine-tuned trial.

The screen is its own Optuna study (``<name>-screen``) in the experiment's storage, so resume,
workers and heartbeats work as for the fine-tuned study; its trials carry ``fidelity = 0``.
Promotion enqueues the screened front's policies into the fine-tuned study, the one that adds
the most screened hypervolume first (then every other policy, non-dominated ranks and most
spread first), once per ``n_trials``: the storage's unique study names elect the one process
that does it.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from torch.utils.data import Subset

from ..config import ExperimentConfig
from ..metrics import OBJECTIVES, TrialMetrics, spearman
from ..policy import CompressionPolicy
from ..search_space import SearchSpace
from .objective import TrialEvaluator, suggest_policy
from .pareto import diverse_order, hypervolume_order, non_dominated
from .study import (
    CONSTRAINTS_ATTR,
    StudyInfo,
    constraints_of,
    front_rows,
    run_once,
    worker_id,
)
from .trials import _fmt_time

__all__ = [
    "Screener",
    "promote",
    "run_screen",
    "screen_agreement",
    "uniform_seeds",
    "write_screen_table",
]

PROMOTED_ATTR = "promoted_for_n_trials"
REFERENCE_ATTR = "reference_metrics"  # the uncompressed model, screened
_ORIGIN = "origin"
_UNIFORM_SPARSITY = (0.0, 0.5, 0.8)
_UNIFORM_BITS = (8, 4)
_UNIFORM_KEEP = (1.0, 0.5)


@dataclass
class Screener:
    """Scores a policy at fidelity 0 (see the module docstring)."""

    evaluator: TrialEvaluator
    val: Subset
    steps: int
    seed: int

    @classmethod
    def build(cls, evaluator: TrialEvaluator) -> Screener:
        s = evaluator.cfg.search
        val = evaluator.data.val
        n = min(s.screen_images, len(val))
        return cls(evaluator, Subset(val, range(n)), s.screen_steps, s.seed)

    def __call__(self, policy: CompressionPolicy) -> TrialMetrics:
        ev = self.evaluator
        recipe = ev.cfg.finetune.model_copy(
            update={"steps": self.steps, "full_train": False, "distill_weight": 0.0}
        )
        # One seed for every policy: the same calibration batches, so scores differ only by
        # the policy.
        model, loss = ev.compress(policy, recipe=recipe, seed=self.seed)
        return ev.measure(model, policy, loss, val=self.val, report_test=False)


def uniform_seeds(space: SearchSpace) -> list[dict]:
    """Params of the uniform policies (same sparsity, bits and kept channels everywhere) the
    screen starts from: what one-line configs give, for the sampler to improve on."""
    out, seen = [], set()
    for keep in _UNIFORM_KEEP:
        for bits in _UNIFORM_BITS:
            for sp in _UNIFORM_SPARSITY:
                params = space.params_from_policy(space.uniform_policy(sp, bits, keep_ratio=keep))
                key = tuple(sorted(params.items()))
                if key not in seen:
                    seen.add(key)
                    out.append(params)
    return out


def run_screen(
    info: StudyInfo,
    cfg: ExperimentConfig,
    space: SearchSpace,
    screener: Screener,
    *,
    deadline: float | None,
    log,
) -> None:
    """Screen policies until the screen study holds ``search.screen_trials`` complete ones
    (or the screen's share of the budget is spent)."""
    n_total = cfg.search.screen_trials
    bounds = {o: getattr(cfg.objectives, o).bound for o in info.objectives}
    remaining = n_total - info.count(TrialState.COMPLETE)
    if remaining <= 0:
        return
    every = max(1, n_total // 10)
    t0 = time.perf_counter()
    done = {"n": 0}

    def objective(trial: optuna.Trial):
        policy = suggest_policy(trial, space)
        trial.set_user_attr("fidelity", 0)
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("policy", policy.to_dict())
        try:
            metrics = screener(policy)
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise
        values = [metrics.value(o) for o in info.objectives]
        if not all(math.isfinite(v) for v in values):
            trial.set_user_attr("fail_reason", f"non-finite objective values {values}")
            return None  # Optuna marks the trial FAIL
        cons = [OBJECTIVES[o].violation(metrics.value(o), bounds[o]) for o in info.objectives]
        trial.set_user_attr(CONSTRAINTS_ATTR, cons)
        trial.set_user_attr("metrics", metrics.to_dict())
        return values

    def progress(study: optuna.Study, trial: FrozenTrial) -> None:
        done["n"] += 1
        complete = info.count(TrialState.COMPLETE)
        if done["n"] % every and complete < n_total:
            return
        elapsed = time.perf_counter() - t0
        per = elapsed / done["n"]
        front = front_rows(info)
        best = (
            f"front {len(front)} pts, best acc {front[0]['val_accuracy']:.4f}, "
            f"smallest {min(r['size_kb'] for r in front):.1f} KB"
            if front
            else "front empty"
        )
        eta = per * max(n_total - complete, 0)
        if deadline is not None:
            eta = min(eta, max(deadline - time.monotonic(), 0.0))
        log(
            f"[screen {complete}/{n_total}] {per:.2f} s/policy | {best} | "
            f"{_fmt_time(elapsed)} elapsed, ETA {_fmt_time(eta)}"
        )

    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    log(
        f"screening: {remaining} policies without fine-tune ({cfg.search.sampler}, "
        f"{len(screener.val)} validation images"
        + (f", {screener.steps} fine-tune steps each" if screener.steps else "")
        + ")"
    )
    info.study.optimize(
        objective,
        n_trials=None,
        timeout=timeout,
        catch=(Exception,),
        callbacks=[
            optuna.study.MaxTrialsCallback(n_total, states=(TrialState.COMPLETE,)),
            progress,
        ],
    )


def _screened(info: StudyInfo) -> list[FrozenTrial]:
    return [
        t
        for t in info.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(c <= 0 for c in constraints_of(t))
    ]


def promote(
    screen: StudyInfo,
    main: StudyInfo,
    n_trials: int,
    *,
    max_drop: float | None = None,
    log,
    wait_s: float = 3600.0,
) -> int:
    """Enqueue screened policies into the fine-tuned study so that it holds ``n_trials``
    trials (the anchor included), in :func:`_promotion_order`; once per ``n_trials``, by one
    process (:func:`run_once`; a promoter that dies half-way is taken over). Returns how many
    this call enqueued."""
    study = main.study
    if (study.user_attrs.get(PROMOTED_ATTR) or 0) >= n_trials:
        return 0
    # The screen's trials still running elsewhere finish first (their worker's heartbeat, or
    # its loss, ends them).
    deadline = time.monotonic() + wait_s
    while screen.count(TrialState.RUNNING) and time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(screen.study)
        time.sleep(1.0)
    chosen: list[FrozenTrial] = []

    def enqueue() -> None:
        trials = _screened(screen)
        known = {tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)}
        unique: list[FrozenTrial] = []
        for t in trials:
            key = tuple(sorted(t.params.items()))
            if key not in known:
                known.add(key)
                unique.append(t)
        room = max(n_trials - len(study.get_trials(deepcopy=False)), 0)
        ref = screen.study.user_attrs.get(REFERENCE_ATTR)
        chosen.extend(_promotion_order(unique, main, ref, max_drop)[:room])
        for t in chosen:
            study.enqueue_trial(
                t.params,
                user_attrs={
                    _ORIGIN: t.user_attrs.get(_ORIGIN, "screen"),
                    "screen_trial": t.number,
                    "screen_metrics": t.user_attrs.get("metrics", {}),
                },
                skip_if_exists=True,
            )
        study.set_user_attr(PROMOTED_ATTR, n_trials)
        log(
            f"promoted {len(chosen)} of {len(trials)} screened policies to fine-tuned trials "
            f"({len(unique)} new and feasible; by hypervolume contribution above "
            f"{max_drop} points below the uncompressed model, then most spread)"
        )

    run_once(study, f"promote-{n_trials}", enqueue)
    return len(chosen)


def screen_agreement(main: StudyInfo) -> dict:
    """Spearman rank correlation between screened and fine-tuned validation accuracy over the
    promoted trials: whether the screen can be trusted on this model."""
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
    """The screened non-dominated policies by how much screened hypervolume each adds (greedy),
    against a reference ``max_drop`` points below the uncompressed model's screened accuracy
    and 1.1 x its latency and size; then every other policy, non-dominated ranks first and most
    spread first. The screen's drops before fine-tune are large (on the small CNN a policy
    screened 45 points down fine-tuned to within 3 points), so the reference only keeps
    near-chance models back."""
    if not trials:
        return []
    values = np.array([t.values for t in trials])
    first: list[int] = []
    if ref is not None and max_drop is not None:
        pts, reference = [], []
        for j, o in enumerate(main.objectives):
            metric = OBJECTIVES[o].metric
            if o == "accuracy":
                pts.append(1.0 - values[:, j])
                reference.append(1.0 - (ref[metric] - max_drop / 100.0))
            else:
                pts.append(values[:, j] / max(ref[metric], 1e-12))
                reference.append(1.1)
        front = non_dominated(values, main.directions).tolist()
        first = [front[i] for i in hypervolume_order(np.stack(pts, 1)[front], reference)]
    rest = [i for i in range(len(trials)) if i not in set(first)]
    later = [rest[i] for i in diverse_order(values[rest], main.directions)] if rest else []
    return [trials[i] for i in first + later]


def write_screen_table(screen: StudyInfo, main: StudyInfo, path: Path) -> Path:
    """One CSV row per screened policy: metrics, origin, whether it was promoted (and the
    fine-tuned trial it became)."""
    promoted = {
        t.user_attrs["screen_trial"]: t.number
        for t in main.study.get_trials(deepcopy=False)
        if "screen_trial" in t.user_attrs
    }
    cols = ["screen_trial", "origin", "val_accuracy", "latency_ms", "size_kb", "feasible"]
    cols += ["promoted_to", "summary"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for t in screen.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            m = t.user_attrs.get("metrics", {})
            pol = t.user_attrs.get("policy")
            w.writerow(
                {
                    "screen_trial": t.number,
                    "origin": t.user_attrs.get(_ORIGIN, "sampler"),
                    **{k: m.get(k) for k in ("val_accuracy", "latency_ms", "size_kb")},
                    "feasible": all(c <= 0 for c in constraints_of(t)),
                    "promoted_to": promoted.get(t.number, ""),
                    "summary": CompressionPolicy.from_dict(pol).summary() if pol else "",
                }
            )
    return path
