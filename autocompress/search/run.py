"""``search(config)``: baseline -> search space -> Optuna study (each trial an MLflow nested run)
-> Pareto front artifacts. The same config resumes the study; any number of processes may share
it and one MLflow parent run (``journal`` storage on one machine, PostgreSQL across machines;
``workers=N`` starts N here): the one that creates the study sets it up, the others find it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import yaml
from optuna.trial import TrialState

from .._files import check_output_dir
from ..baseline import Prepared, prepare
from ..config import ExperimentConfig
from ..errors import AutocompressError, ConfigError, ServiceUnavailable
from ..hardware.latency import make_latency_model
from ..policy import CompressionPolicy
from ..sensitivity.stage import SensitivityStage
from ..tracking import Tracker, mask_secrets
from .figures import log_search_figures, search_description, write_front
from .pareto import front_hypervolume
from .pick import SearchResult
from .screen import log_screen, open_screen, promote, run_screen
from .study import StudyInfo, open_study, run_once, shared_storage, storage_kind, wait_for_attr
from .trials import TrialEvaluator, make_stale_callback, reconcile_runs, run_trials

PARENT_ATTR = "mlflow_parent_run_id"


def _fail_leftovers(info: StudyInfo, on_stale, log) -> None:
    """SQLite (one process): fail the trials a killed run left RUNNING, and re-enqueue them."""
    storage = info.study._storage
    for t in info.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "fail_reason", "interrupted (left RUNNING)")
        if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            on_stale(info.study, storage.get_trial(t._trial_id))
            log(f"trial {t.number} was left RUNNING by an interrupted run: marked FAIL, re-queued")


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
    if bad := [c for c in codes if c != 0]:
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
    """Run, resume or join (``worker``: leave the front to the starter) the config's search;
    ``prepared`` replaces the config's model, data and space, ``sampler`` the screen's (or
    without a screen the trials') ``search.sampler``."""
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
    # The output folder, the storage and the tracking server, before any long work.
    check_output_dir(cfg.output_dir)
    shared_storage(cfg)
    mlartifacts, reconnect_s = cfg.output_dir / "mlartifacts", cfg.search.reconnect_s
    tracker = Tracker(cfg.tracking, cfg.name, mlartifacts, reconnect_s=reconnect_s, log=log)
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
    sens = SensitivityStage.start(prep, cfg.sensitivity, log=log)
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
    screen = None
    if screening:
        screen = open_screen(cfg, space_params, on_stale, evaluator, sampler)
    # One MLflow parent run per study: the first process makes it, the others find it (a
    # tag on the run, so a creator that died before recording it in the study is no loss).
    parent = None if created else wait_for_attr(study, PARENT_ATTR, 10 if not worker else 120)
    if parent is None and worker:
        raise AutocompressError(
            f"study {cfg.name!r} in {mask_secrets(cfg.optuna_storage)} has no MLflow "
            "parent run: start the search without --worker"
        )
    if not worker:
        run_id = tracker.start_search(
            parent, name=cfg.name, config=cfg.to_dict(), baseline=baseline, study=cfg.name
        )
        if run_id != parent:
            study.set_user_attr(PARENT_ATTR, run_id)
            study.set_user_attr("baseline", baseline)
        parent = run_id
    if storage_kind(cfg) == "sqlite":
        for each in (info, screen) if screen is not None else (info,):
            _fail_leftovers(each, on_stale, log)

    # The least aggressive policy, so the front reaches the accurate end.
    gentle, attrs = space.extreme(aggressive=False), {"anchor": True, "origin": "anchor"}
    run_once(
        study, "anchor", lambda: study.enqueue_trial(gentle, user_attrs=attrs, skip_if_exists=True)
    )
    if sens is not None and not worker:
        sens.log(tracker, parent)

    status, front, paths, hv = "FINISHED", [], [], 0.0
    try:
        if workers > 1:
            _spawn_workers(cfg, workers, log)
        else:
            if screen is not None:
                run_screen(screen, cfg, space, evaluator, deadline=deadline, log=log)
                drop = cfg.search.promote_max_drop
                promote(screen, info, cfg.search.n_trials, max_drop=drop, log=log)
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
                log_screen(screen, info, tracker, parent, cfg, log)
            front, paths = write_front(info, cfg, tracker, parent, baseline)
            hv = front_hypervolume([p.values for p in front], info.objectives, baseline)
            paths += log_search_figures(
                tracker, parent, info, baseline, cfg.output_dir / "pareto", title=cfg.name
            )
            n = {"n_complete": info.count(TrialState.COMPLETE)}
            n["n_failed"] = info.count(TrialState.FAIL)
            note = search_description(cfg.name, **n, front_size=len(front), hypervolume=hv)
            tracker.log(parent, tags={"mlflow.note.content": note})
            tracker.log(parent, metrics=n | {"pareto_size": len(front), "hypervolume": hv})
            tracker.end_run(parent, status)
    failures = [
        {"trial": t.number, "reason": t.user_attrs.get("fail_reason", "worker lost or killed")}
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    ]
    return SearchResult(
        study_name=cfg.name,
        n_complete=info.count(TrialState.COMPLETE),
        n_failed=len(failures),
        front=front,
        baseline=baseline,
        parent_run_id=parent,
        failures=failures,
        artifacts=paths,
        hypervolume=hv,
        seconds=time.perf_counter() - t_start,
        objectives=list(info.objectives),
        directions=list(info.directions),
        config=cfg,
        prepared=prep,
    )
