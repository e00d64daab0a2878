"""``search(config)``: baseline -> search space -> Optuna study, each trial logged to MLflow as a
nested run -> Pareto front artifacts. Re-running the same config resumes the study."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from ..baseline import Baseline, get_baseline
from ..config import ExperimentConfig
from ..data import DataBundle, load_data
from ..hardware.latency import make_latency_model
from ..metrics import OBJECTIVES
from ..plots import pareto_html, pareto_png
from ..search_space import SearchSpace, load_search_space
from ..tracking import Tracker
from .objective import TrialEvaluator, suggest_policy
from .pareto import hypervolume, to_minimization
from .study import CONSTRAINTS_ATTR, StudyInfo, front_rows, open_study, trial_rows

__all__ = ["SearchResult", "prepare", "search"]


@dataclass
class SearchResult:
    study_name: str
    n_complete: int
    n_failed: int
    front: list[dict]
    baseline: dict
    parent_run_id: str
    artifacts: list[Path] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Prepared:
    cfg: ExperimentConfig
    data: DataBundle
    baseline: Baseline
    space: SearchSpace


def prepare(cfg: ExperimentConfig, *, log=print) -> Prepared:
    """Data, baseline (trained once, cached) and the search space resolved on the model."""
    spec = load_search_space(cfg.search_space)
    data = load_data(cfg.data)
    baseline = get_baseline(cfg, data, log=log)
    space = spec.resolve(baseline.model)
    return Prepared(cfg, data, baseline, space)


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Progress:
    """Prints one line per finished trial: counter, metrics, front size, best, ETA."""

    def __init__(self, info: StudyInfo, n_trials: int, log) -> None:
        self.info, self.n_trials, self.log = info, n_trials, log
        self.t0 = time.perf_counter()
        self.done_here = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        complete = self.info.count(TrialState.COMPLETE)
        self.done_here += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done_here * max(self.n_trials - complete, 0)
        head = f"[trial {trial.number:3d} | {complete}/{self.n_trials} done]"
        if trial.state == TrialState.COMPLETE:
            m = trial.user_attrs["metrics"]
            body = (
                f"acc {m['val_accuracy']:.4f}  lat {m['latency_ms']:.3f} ms  "
                f"size {m['size_kb']:.1f} KB ({m['compression_ratio']:.1f}x)"
            )
        else:
            body = f"{trial.state.name}: {trial.user_attrs.get('fail_reason', 'see log')}"
        front = front_rows(self.info)
        best = (
            f"front {len(front)} pts, best acc {front[0]['val_accuracy']:.4f}, "
            f"smallest {min(r['size_kb'] for r in front):.1f} KB"
            if front
            else "front empty"
        )
        self.log(f"{head} {body} | {best} | {_fmt_time(elapsed)} elapsed, ETA {_fmt_time(eta)}")


def _fail_stale(info: StudyInfo, cfg: ExperimentConfig, tracker: Tracker, log) -> None:
    """With the single-process SQLite default, a RUNNING trial at start-up was left by a killed
    run: mark it FAIL (and its MLflow run KILLED) so the search goes on."""
    if not cfg.optuna_storage.startswith("sqlite:"):
        return
    storage = info.study._storage
    for t in info.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "fail_reason", "interrupted (stale RUNNING trial)")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id:
            tracker.end_trial(run_id, "KILLED", tags={"fail_reason": "interrupted"})
        log(f"trial {t.number} was left RUNNING by an interrupted run: marked FAIL")


def _write_front(
    info: StudyInfo, cfg: ExperimentConfig, tracker: Tracker, parent: str, baseline: dict
) -> tuple[list[dict], list[Path]]:
    rows = trial_rows(info)
    front = front_rows(info, rows)
    on_front = {r["trial"] for r in front}
    for r in rows:
        r["pareto"] = r["trial"] in on_front
        if r["mlflow_run_id"]:
            tracker.set_tags(r["mlflow_run_id"], {"pareto": str(r["pareto"]).lower()})
    out = cfg.output_dir / "pareto"
    out.mkdir(parents=True, exist_ok=True)
    cols = [
        "trial",
        "val_accuracy",
        "latency_ms",
        "size_kb",
        "compression_ratio",
        "weight_sparsity",
        "summary",
        "mlflow_run_id",
    ]
    csv_path = out / "pareto_front.csv"
    with csv_path.open("w") as fh:
        fh.write(",".join(cols) + "\n")
        for r in front:
            fh.write(
                ",".join(json.dumps(r[c]) if isinstance(r[c], str) else str(r[c]) for c in cols)
            )
            fh.write("\n")
    json_path = out / "pareto_front.json"
    json_path.write_text(
        json.dumps({"objectives": info.objectives, "baseline": baseline, "front": front}, indent=2)
    )
    title = f"{cfg.name}: {len(rows)} trials, {len(front)} on the Pareto front"
    figs = [
        pareto_html(rows, out / "pareto_front.html", title=title),
        pareto_png(rows, out / "pareto_front.png", title=title),
    ]
    paths = [csv_path, json_path, *figs]
    tracker.log_artifacts(parent, paths, "pareto")
    return front, paths


def _hypervolume(front: list[dict], info: StudyInfo, baseline: dict) -> float:
    """Hypervolume of the front normalised by the baseline: (1-acc, latency/base, size/base),
    reference (1, 1.1, 1.1) — comparable between runs of the same experiment."""
    if not front:
        return 0.0
    scale = {"accuracy": 1.0, "latency": baseline["latency_ms"], "size": baseline["size_kb"]}
    pts = to_minimization([r["values"] for r in front], info.directions)
    ref = []
    for j, o in enumerate(info.objectives):
        if o == "accuracy":
            pts[:, j] = 1.0 + pts[:, j]  # -acc -> 1 - acc
            ref.append(1.0)
        else:
            pts[:, j] = pts[:, j] / scale[o]
            ref.append(1.1)
    return hypervolume(pts, ref)


def search(cfg: ExperimentConfig, *, log=print) -> SearchResult:
    """Run (or resume) the search the config describes; see the module docstring."""
    t_start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    prep = prepare(cfg, log=log)
    bm = prep.baseline.metrics
    baseline = {
        "val_accuracy": bm.val_accuracy,
        "test_accuracy": bm.test_accuracy,
        "latency_ms": bm.latency_ms,
        "size_kb": bm.size_bytes / 1024,
        "fp32_state_dict_bytes": bm.fp32_state_dict_bytes,
        "params": bm.params,
    }
    log(
        f"baseline: val acc {bm.val_accuracy:.4f}, test acc {bm.test_accuracy:.4f}, "
        f"{bm.latency_ms:.3f} ms (ONNX Runtime), {bm.size_bytes / 1024:.1f} KB packed, "
        f"{bm.params} params"
    )
    space = prep.space
    log(f"search space: {len(space)} layers, {space.cardinality:.3g} policies ({cfg.search_space})")
    example = prep.data.example_input(cfg.latency.batch_size)
    latency_model = make_latency_model(
        cfg, prep.baseline.model, space, example, reference_ms=bm.latency_ms, log=log
    )
    evaluator = TrialEvaluator(cfg, prep.baseline, prep.data, latency_model)
    space_params = {k: list(v) for k, v in space.choices().items()}
    info = open_study(cfg, space_params)
    tracker = Tracker(cfg.tracking, cfg.name, cfg.output_dir / "mlartifacts")
    parent = tracker.start_search(
        info.study.user_attrs.get("mlflow_parent_run_id"),
        name=cfg.name,
        config=cfg.to_dict(),
        baseline=baseline,
    )
    info.study.set_user_attr("mlflow_parent_run_id", parent)
    info.study.set_user_attr("baseline", baseline)
    _fail_stale(info, cfg, tracker, log)

    if not info.study.trials:
        # Anchor: the least aggressive policy, so the front reaches the accurate end.
        info.study.enqueue_trial(space.extreme(aggressive=False), user_attrs={"anchor": True})

    bounds = {o: getattr(cfg.objectives, o).bound for o in info.objectives}

    def objective(trial: optuna.Trial):
        policy = suggest_policy(trial, space)
        trial.set_user_attr("policy", policy.to_dict())
        run_id = tracker.start_trial(
            parent,
            trial.number,
            space.params_from_policy(policy),
            policy.to_dict(),
            policy.summary(),
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        try:
            metrics = evaluator(policy, seed=cfg.search.seed + trial.number)
        except KeyboardInterrupt:
            tracker.end_trial(run_id, "KILLED", tags={"fail_reason": "interrupted"})
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason)
            tracker.end_trial(run_id, "FAILED", tags={"fail_reason": reason[:5000]})
            raise
        values = [metrics.value(o) for o in info.objectives]
        if not all(math.isfinite(v) for v in values):
            reason = f"non-finite objective values {values}"
            trial.set_user_attr("fail_reason", reason)
            tracker.end_trial(run_id, "FAILED", tags={"fail_reason": reason})
            raise ValueError(reason)
        cons = [OBJECTIVES[o].violation(metrics.value(o), bounds[o]) for o in info.objectives]
        trial.set_user_attr(CONSTRAINTS_ATTR, cons)
        trial.set_user_attr("metrics", metrics.to_dict())
        tracker.end_trial(
            run_id,
            "FINISHED",
            metrics=metrics.to_dict(),
            tags={"feasible": str(all(c <= 0 for c in cons)).lower()},
        )
        return values

    n_total = cfg.search.n_trials
    remaining = n_total - info.count(TrialState.COMPLETE)
    progress = _Progress(info, n_total, log)
    failures = {"n": 0}

    def stop_on_failures(study: optuna.Study, trial: FrozenTrial) -> None:
        failures["n"] = failures["n"] + 1 if trial.state == TrialState.FAIL else 0
        if failures["n"] >= max(5, n_total // 2):
            log(f"stopping: {failures['n']} trials in a row failed")
            study.stop()

    status = "FINISHED"
    try:
        if remaining > 0:
            log(f"searching: {remaining} more trials to reach {n_total} ({cfg.search.sampler})")
            info.study.optimize(
                objective,
                n_trials=None,
                timeout=cfg.search.timeout,
                catch=(Exception,),
                callbacks=[
                    MaxTrialsCallback(n_total, states=(TrialState.COMPLETE,)),
                    progress,
                    stop_on_failures,
                ],
            )
        else:
            log(f"study already has {n_total} complete trials: nothing to run")
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        front, paths = _write_front(info, cfg, tracker, parent, baseline)
        hv = _hypervolume(front, info, baseline)
        tracker.log_search_metrics(
            parent,
            {
                "n_complete": info.count(TrialState.COMPLETE),
                "n_failed": info.count(TrialState.FAIL),
                "pareto_size": len(front),
                "hypervolume": hv,
            },
        )
        tracker.finish_search(parent, status)
    return SearchResult(
        study_name=cfg.study_name,
        n_complete=info.count(TrialState.COMPLETE),
        n_failed=info.count(TrialState.FAIL),
        front=front,
        baseline=baseline,
        parent_run_id=parent,
        artifacts=paths,
        seconds=time.perf_counter() - t_start,
    )
