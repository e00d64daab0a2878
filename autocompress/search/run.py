"""``search(config)``: baseline -> search space -> Optuna study, each trial logged to MLflow as a
nested run -> Pareto front artifacts. Re-running the same config resumes the study.

Scale-out: any number of ``search`` processes may share one study on a storage several
processes can use (``journal`` on one machine, PostgreSQL across machines) and one MLflow
parent run; ``workers=N`` starts N such processes here. The process that creates the study sets
it up (parent run, anchor trial); the others find it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from .._files import check_output_dir
from ..config import ExperimentConfig
from ..errors import AutocompressError, ConfigError, ServiceUnavailable
from ..hardware.latency import make_latency_model
from ..metrics import OBJECTIVES
from ..policy import CompressionPolicy
from ..prepare import Prepared, prepare
from ..reporting.figures import log_search_figures, search_description
from ..sensitivity.settings import settings_for
from ..sensitivity.stage import SensitivityStage
from ..tracking import Tracker, mask_secrets
from .front import write_front
from .objective import TrialEvaluator
from .pareto import front_hypervolume
from .result import FrontPoint, SearchResult
from .screen import (
    REFERENCE_ATTR,
    Screener,
    promote,
    run_screen,
    screen_agreement,
    uniform_seeds,
    write_screen_table,
)
from .study import StudyInfo, check_storage, open_study, run_once, storage_kind, wait_for_attr
from .trials import make_stale_callback, reconcile_runs, run_trials

__all__ = ["SearchResult", "search"]

PARENT_ATTR = "mlflow_parent_run_id"
_LOW_AGREEMENT = 0.5  # screen_rank_spearman below this: the screen is not to be trusted


def _fail_leftovers(info: StudyInfo, on_stale, log) -> None:
    """With SQLite only this process can use the study: a RUNNING trial at start-up was left
    by a killed run. Fail it now (MLflow run KILLED, parameters re-enqueued)."""
    storage = info.study._storage
    for t in info.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "fail_reason", "interrupted (left RUNNING)")
        if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            on_stale(info.study, storage.get_trial(t._trial_id))
            log(f"trial {t.number} was left RUNNING by an interrupted run: marked FAIL, re-queued")


def _log_screen(
    screen: StudyInfo, info: StudyInfo, tracker: Tracker, parent: str, cfg: ExperimentConfig, log
) -> None:
    """The screened table (``screen/screened.csv``) and how well the screen ranked the promoted
    policies' fine-tuned accuracy (metric ``screen_rank_spearman``) on the parent run."""
    path = write_screen_table(screen, info, cfg.output_dir / "screen" / "screened.csv")
    tracker.log_artifacts(parent, [path], "screen")
    agree = screen_agreement(info)
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
    tracker.log_search_metrics(parent, metrics)


def _spawn_workers(cfg: ExperimentConfig, workers: int, log) -> None:
    """Start ``workers`` processes on the shared study and wait for them."""
    path = cfg.output_dir / "worker-config.yaml"
    data = cfg.to_dict()
    data["tracking_uri"], data["storage"] = cfg.tracking, cfg.optuna_storage
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = dict(os.environ, AUTOCOMPRESS_THREADS=str(max(1, (os.cpu_count() or 1) // workers)))
    cmd = [sys.executable, "-m", "autocompress", "search", str(path), "--worker"]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(workers)]
    log(f"started {workers} workers (pids {', '.join(str(p.pid) for p in procs)})")
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    bad = [c for c in codes if c not in (0,)]
    if bad:
        log(f"{len(bad)} worker(s) ended with exit codes {bad}: the same command resumes")


def search(
    cfg: ExperimentConfig,
    *,
    workers: int = 1,
    worker: bool = False,
    prepared: Prepared | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    log=print,
) -> SearchResult:
    """Run (or resume, or join) the search the config describes; see the module docstring.

    ``workers > 1`` starts that many worker processes on the shared storage and waits for them;
    ``worker=True`` marks such a process (it leaves the final front to its starter).
    ``prepared`` (a Python caller's own model, data and space) replaces what the config names;
    ``sampler`` replaces ``search.sampler`` for the screen (or, without one, the trials).
    """
    t_start = time.perf_counter()
    # The budget is charged from the start of this call: baseline, latency table included.
    budget = cfg.search.budget_s
    deadline = None if budget is None else time.monotonic() + budget
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if workers > 1 and prepared is not None:
        raise ConfigError(
            "workers: a search of Python objects runs in this process; for several workers, "
            "describe the experiment in YAML (model: module:callable) and run it from the CLI"
        )
    if workers > 1 and storage_kind(cfg) == "sqlite":
        raise ConfigError(
            f"{cfg.source}: --workers needs a storage several processes can share: "
            "--storage journal (one machine) or --storage postgresql://... (several machines)"
        )
    if os.environ.get("AUTOCOMPRESS_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["AUTOCOMPRESS_THREADS"]))
    # The output folder, the storage and the tracking server, before any long work.
    check_output_dir(cfg.output_dir)
    check_storage(cfg)
    tracker = Tracker(
        cfg.tracking,
        cfg.name,
        cfg.output_dir / "mlartifacts",
        reconnect_s=cfg.search.reconnect_s,
        log=log,
    )
    prep = prepared or prepare(cfg, log=log)
    baseline = prep.baseline_summary()
    bm = prep.baseline.metrics
    log(
        f"baseline: val acc {bm.val_accuracy:.4f}, test acc {bm.test_accuracy:.4f}, "
        f"{bm.latency_ms:.3f} ms (ONNX Runtime), {bm.size_bytes / 1024:.1f} KB packed, "
        f"{bm.params} params"
    )
    log(
        f"search space: {len(prep.space)} layers, {prep.space.cardinality:.3g} policies "
        f"({cfg.search_space})"
    )
    # Sensitivity (cached per checkpoint): the shaped space is the study's space.
    sens = SensitivityStage.start(prep, settings_for(cfg), log=log)
    space = sens.space if sens is not None else prep.space
    example = prep.data.example_input(cfg.latency.batch_size)
    # The latency table covers the whole (unshaped) space: export and validate reuse it.
    latency_model = make_latency_model(
        cfg, prep.baseline.model, prep.space, example, reference_ms=bm.latency_ms, log=log
    )
    # The baseline on the trials' scale (the target's threads), next to its direct measurement.
    baseline["measured_latency_ms"] = bm.latency_ms
    baseline["latency_ms"] = latency_model.predict(prep.baseline.model, CompressionPolicy())
    evaluator = TrialEvaluator(
        cfg, prep.baseline, prep.data, latency_model, prep.memory_model, task=prep.task
    )

    on_stale = make_stale_callback(tracker, cfg.search.retries)
    space_params = {k: list(v) for k, v in space.choices().items()}
    screening = cfg.search.screen_trials > 0
    info, created = open_study(cfg, space_params, on_stale, sampler=None if screening else sampler)
    study = info.study
    screen = screener = None
    if screening:
        screener = Screener.build(evaluator)
        screen, _ = open_study(cfg, space_params, on_stale, screen=True, sampler=sampler)

        def seed_screen() -> None:
            ref = screener(CompressionPolicy())
            screen.study.set_user_attr(
                REFERENCE_ATTR, {o.metric: ref.value(n) for n, o in OBJECTIVES.items()}
            )
            for params in uniform_seeds(space):
                screen.study.enqueue_trial(
                    params, user_attrs={"origin": "uniform"}, skip_if_exists=True
                )

        run_once(screen.study, "seed", seed_screen)
    # One MLflow parent run per study: the first process makes it, the others find it (a
    # tag on the run, so a creator that died before recording it in the study is no loss).
    parent = None if created else wait_for_attr(study, PARENT_ATTR, 10 if not worker else 120)
    if parent is None and worker:
        raise AutocompressError(
            f"study {cfg.study_name!r} in {mask_secrets(cfg.optuna_storage)} has no MLflow "
            "parent run: start the search without --worker"
        )
    if not worker:
        run_id = tracker.start_search(
            parent, name=cfg.name, config=cfg.to_dict(), baseline=baseline, study=cfg.study_name
        )
        if run_id != parent:
            study.set_user_attr(PARENT_ATTR, run_id)
            study.set_user_attr("baseline", baseline)
        parent = run_id
    if storage_kind(cfg) == "sqlite":
        for each in (info, screen) if screen is not None else (info,):
            _fail_leftovers(each, on_stale, log)

    def anchor() -> None:
        # The least aggressive policy, so the front reaches the accurate end.
        study.enqueue_trial(
            space.extreme(aggressive=False),
            user_attrs={"anchor": True, "origin": "anchor"},
            skip_if_exists=True,
        )

    run_once(study, "anchor", anchor)
    if sens is not None and not worker:
        sens.log(tracker, parent)

    status = "FINISHED"
    try:
        if workers > 1:
            _spawn_workers(cfg, workers, log)
        else:
            if screen is not None:
                screen_deadline = None
                if deadline is not None:  # a share of what the preparation left
                    left = max(deadline - time.monotonic(), 0.0)
                    screen_deadline = time.monotonic() + cfg.search.screen_share * left
                run_screen(screen, cfg, space, screener, deadline=screen_deadline, log=log)
                promote(
                    screen,
                    info,
                    cfg.search.n_trials,
                    max_drop=cfg.search.promote_max_drop,
                    log=log,
                )
            run_trials(info, cfg, space, evaluator, tracker, parent, deadline=deadline, log=log)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except ServiceUnavailable:
        # The storage or the tracking server is away: the front is written by the next run
        # (the same command), not half-written now.
        status = "UNAVAILABLE"
        raise
    finally:
        if not worker and status != "UNAVAILABLE":
            reconcile_runs(info, tracker, parent, log)
            if screen is not None:
                _log_screen(screen, info, tracker, parent, cfg, log)
            front, paths = write_front(info, cfg, tracker, parent, baseline)
            hv = front_hypervolume(front, info.objectives, info.directions, baseline)
            paths += log_search_figures(
                tracker, parent, info, baseline, cfg.output_dir / "pareto", title=cfg.name
            )
            note = search_description(
                cfg.name,
                n_complete=info.count(TrialState.COMPLETE),
                n_failed=info.count(TrialState.FAIL),
                front_size=len(front),
                hypervolume=hv,
            )
            tracker.set_tags(parent, {"mlflow.note.content": note})
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
    rows = front if not worker else []
    failures = [
        {"trial": t.number, "reason": t.user_attrs.get("fail_reason", "worker lost or killed")}
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    ]
    return SearchResult(
        study_name=cfg.study_name,
        n_complete=info.count(TrialState.COMPLETE),
        n_failed=len(failures),
        front=[FrontPoint.from_row(r) for r in rows],
        baseline=baseline,
        parent_run_id=parent,
        failures=failures,
        artifacts=paths if not worker else [],
        hypervolume=hv if not worker else 0.0,
        seconds=time.perf_counter() - t_start,
        objectives=list(info.objectives),
        directions=list(info.directions),
        config=cfg,
        prepared=prep,
    )
