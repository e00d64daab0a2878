"""The trial loop of one worker: Optuna objective (policy → compressed model → metrics → MLflow
nested run), exact trial budget across workers, lost-worker handling, progress lines; and one
trial (:class:`TrialEvaluator`: compress the baseline, fine-tune briefly, measure)."""

from __future__ import annotations

import contextlib
import copy
import datetime
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from torch import nn
from torch.utils.data import Dataset, Subset

from ..baseline import Baseline
from ..compression.apply import (
    apply_policy,
    calibrate,
    gradual_policies,
    update_masks,
    weight_sparsity,
)
from ..compression.artifact import ModelRef, save_packed_model
from ..compression.batchnorm import batch_statistics, correct_batchnorm, fold_statistics
from ..config import ExperimentConfig, FinetuneConfig
from ..data import DataBundle
from ..errors import ServiceUnavailable
from ..hardware.latency import LatencyModel
from ..hardware.memory_model import MemoryModel
from ..metrics import TrialMetrics
from ..policy import CompressionPolicy
from ..search_space import SearchSpace
from ..size import size_bytes
from ..tracking import Tracker
from ..training import CLASSIFICATION, Task, evaluate, first_batches, train
from .figures import log_trial_chart, trial_description
from .study import StudyInfo, constraints_of, progress_tail, record_metrics, run_once, worker_id


def suggest_policy(trial: optuna.Trial, space: SearchSpace) -> CompressionPolicy:
    """Ask the trial for every searched parameter; record the policy and this worker on it."""
    params = {k: trial.suggest_categorical(k, list(v)) for k, v in space.choices().items()}
    policy = space.policy_from_params(params)
    trial.set_user_attr("worker", worker_id())
    trial.set_user_attr("policy", policy.to_dict())
    return policy


@dataclass
class TrialEvaluator:
    """Everything a trial needs, built once per search."""

    cfg: ExperimentConfig
    baseline: Baseline
    data: DataBundle
    latency_model: LatencyModel
    memory_model: MemoryModel | None = None  # objectives.size.measure: memory
    task: Task = CLASSIFICATION  # the metric and loss (default top-1, cross-entropy)
    _calibration: dict = field(default_factory=dict, init=False, repr=False)
    _onnx_sizes: dict = field(default_factory=dict, init=False, repr=False)
    uncharged_s: float = field(default=0.0, init=False)  # benchmark-only test scoring

    def compress(
        self, policy: CompressionPolicy, *, recipe: FinetuneConfig | None = None, seed: int = 0
    ):
        """``(model, mean final loss)``: compressed, fine-tuned by ``recipe`` (default: the
        per-trial fine-tune), masks and fake-quant in place. A ``gradual`` recipe prunes in
        ``prune_stages`` steps, ``steps / prune_stages`` fine-tune steps after each (at
        ``recovery_lr_factor * lr`` but the last). BatchNorm statistics end folded
        (:func:`~autocompress.compression.batchnorm.fold_statistics`)."""
        ft = recipe or self.cfg.finetune
        bs = ft.batch_size or self.cfg.data.batch_size
        train_ds = self.data.train_full if ft.full_train else self.data.train
        stages = gradual_policies(policy, ft.prune_stages) if ft.schedule == "gradual" else [policy]
        example, compression = self.data.example_input(2), self.cfg.compression.model_dump()
        model = apply_policy(self.baseline.model, stages[0], example=example, **compression)
        key = (ft.full_train, bs, seed, ft.correct_batchnorm)
        if key not in self._calibration:
            calib = first_batches(train_ds, bs, 4, shuffle=True, seed=seed)
            ref = None
            if ft.correct_batchnorm:  # the baseline's side of the correction, once per batches
                ref = batch_statistics(self.baseline.model.eval(), calib)
            self._calibration = {key: (calib, ref)}  # the latest only: screens reuse one seed
        calib, ref_stats = self._calibration[key]
        calibrate(model, calib)
        loss = float("nan")
        for k, stage in enumerate(stages):
            if k:
                update_masks(model, stage)  # the next gradual step, by today's magnitudes
            if ft.correct_batchnorm:
                # A short fine-tune does not repair the statistics alone (bn-finetune.md).
                correct_batchnorm(model, self.baseline.model, calib, reference_estimate=ref_stats)
            last = k == len(stages) - 1
            loss = train(
                model,
                train_ds,
                steps=ft.steps // len(stages) + (ft.steps % len(stages) if last else 0),
                lr=ft.lr if last else ft.lr * ft.recovery_lr_factor,
                batch_size=bs,
                seed=seed + k,
                schedule="cosine",
                teacher=self.baseline.model if ft.distill_weight > 0 else None,
                distill_weight=ft.distill_weight,
                temperature=ft.temperature,
                task=self.task,
            )
        fold_statistics(model, calib[0])  # finished: BatchNorm in inference form, as stored
        return model, loss

    def measure(
        self,
        model: nn.Module,
        policy: CompressionPolicy,
        ft_loss: float,
        *,
        val: Dataset | None = None,
        report_test: bool = True,
    ) -> TrialMetrics:
        """Accuracy on ``val`` (default: the validation split), predicted latency, size."""
        acc, val_loss = evaluate(model, self.data.val if val is None else val, task=self.task)
        cache = {"onnx_cache": self._onnx_sizes, "memory_model": self.memory_model}
        size = size_bytes(self.cfg, model, policy, self.data.input_shape, **cache)
        # Benchmarks only (search.report_test_accuracy): stored, never seen by the sampler.
        test_acc = None
        if report_test and self.cfg.search.report_test_accuracy:
            t0 = time.perf_counter()
            test_acc, _ = evaluate(model, self.data.test, task=self.task)
            self.uncharged_s += time.perf_counter() - t0  # not part of any search budget
        return TrialMetrics(
            val_accuracy=acc,
            val_loss=val_loss,
            latency_ms=self.latency_model.predict(model, policy),
            size_bytes=size,
            compression_ratio=self.baseline.metrics.fp32_state_dict_bytes / size,
            weight_sparsity=weight_sparsity(model),
            finetune_loss=ft_loss,
            test_accuracy=test_acc,
        )

    @property
    def screen_val(self) -> Subset:
        """The fixed validation subset policies are screened on (``search.screen_images``)."""
        return Subset(self.data.val, range(min(self.cfg.search.screen_images, len(self.data.val))))

    def screen(self, policy: CompressionPolicy) -> TrialMetrics:
        """Fidelity 0 (:mod:`.screen`): ``search.screen_steps`` of fine-tune, no distillation,
        one seed for every policy (the same calibration batches: scores differ by the policy)."""
        s = self.cfg.search
        update = {"steps": s.screen_steps, "full_train": False, "distill_weight": 0.0}
        model, loss = self.compress(
            policy, recipe=self.cfg.finetune.model_copy(update=update), seed=s.seed
        )
        return self.measure(model, policy, loss, val=self.screen_val, report_test=False)

    def __call__(
        self, policy: CompressionPolicy, *, seed: int = 0, save_to: Path | None = None
    ) -> TrialMetrics:
        """Compress, fine-tune and measure; with ``save_to`` also save the packed model there."""
        model, loss = self.compress(policy, seed=seed)
        metrics = self.measure(model, policy, loss)
        if save_to is not None:
            save_to.parent.mkdir(parents=True, exist_ok=True)
            ref = ModelRef.from_config(self.cfg, self.data.input_shape)
            save_packed_model(save_to, model, ref, policy, round_to=self.cfg.compression.round_to)
        return metrics


_POLL_S = 1.0
_RETRY_DUE_S = 30.0
# What a re-queued trial keeps of the original's user attributes (where it came from).
_KEEP_ON_REQUEUE = ("origin", "anchor", "screen_trial", "screen_metrics")


def make_stale_callback(tracker: Tracker, retries: int) -> Callable:
    """For a trial whose worker lost its heartbeat: end its MLflow run KILLED, then let Optuna
    re-enqueue its parameters (up to ``retries`` times)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=retries)

    def on_stale(study: optuna.Study, trial: FrozenTrial) -> None:
        if run_id := trial.user_attrs.get("mlflow_run_id"):
            with contextlib.suppress(Exception):  # tracking must not stop the search
                tracker.end_run(run_id, "KILLED", tags={"fail_reason": "worker lost"})
        retry(study, trial)

    return on_stale


def reconcile_runs(info: StudyInfo, tracker: Tracker, parent: str, log) -> int:
    """End the trial runs left RUNNING whose Optuna trial (the source of truth) has ended:
    FINISHED with its metrics if it completed with this run, else KILLED. Returns how many."""
    trials = {t.number: t for t in info.study.get_trials(deepcopy=False)}
    fixed = 0
    for run in tracker.trial_runs(parent):
        if run.info.status != "RUNNING":
            continue
        number = run.data.tags.get("trial_number", "")
        t = trials.get(int(number)) if number.isdigit() else None
        if t is not None and t.state == TrialState.RUNNING:
            continue
        rid = run.info.run_id
        ours = t is not None and t.user_attrs.get("mlflow_run_id") == rid
        if ours and t.state == TrialState.COMPLETE:
            tracker.end_run(rid, "FINISHED", metrics=t.user_attrs.get("metrics", {}))
        else:
            reason = "worker lost" if t is None or t.state == TrialState.FAIL else t.state.name
            tracker.end_run(rid, "KILLED", tags={"fail_reason": reason})
        fixed += 1
    if fixed:
        log(f"MLflow: ended {fixed} trial run(s) left RUNNING by workers that stopped")
    return fixed


class _TakenOver(Exception):
    """This worker's trial was failed by another (its heartbeats lapsed) and re-queued."""


def _progress(info: StudyInfo, n_trials: int, log, deadline: float | None) -> Callable:
    """A callback printing one line per finished trial: counter, metrics, front, ETA."""
    t0, done_here = time.perf_counter(), [0]

    def progress(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.PRUNED:
            return  # a surplus trial: nothing was evaluated
        complete = info.count(TrialState.COMPLETE)
        done_here[0] += 1
        elapsed = time.perf_counter() - t0
        eta = elapsed / done_here[0] * max(n_trials - complete, 0)
        head = f"[trial {trial.number:3d} | {complete}/{n_trials} done]"
        if trial.state == TrialState.COMPLETE:
            m = trial.user_attrs["metrics"]
            body = (
                f"acc {m['val_accuracy']:.4f}  lat {m['latency_ms']:.3f} ms  "
                f"size {m['size_kb']:.1f} KB ({m['compression_ratio']:.1f}x)"
            )
        else:
            body = f"{trial.state.name}: {trial.user_attrs.get('fail_reason', 'see log')}"
        log(f"{head} {body} | {progress_tail(info, elapsed, eta, deadline)}")

    return progress


def _retries_due(study: optuna.Study, trials: list[FrozenTrial], retries: int) -> int:
    """Trials failed for a lost worker whose re-run Optuna has not enqueued yet (a new trial must
    not take the slot); one process enqueues those still missing after ``_RETRY_DUE_S``."""
    callback = study._storage.get_heartbeat_stale_trial_callback()
    if callback is None:  # no heartbeat: nothing is re-run for a lost worker
        return 0
    now = datetime.datetime.now()
    rerun = {
        t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")
    }
    due = [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and "fail_reason" not in t.user_attrs  # failed by the heartbeat check, not by an error
        and t.number not in rerun
        and len(t.system_attrs.get("retry_history", [])) < retries
        and t.datetime_complete is not None
    ]
    for t in due:
        if (now - t.datetime_complete).total_seconds() > _RETRY_DUE_S:
            run_once(study, f"rerun-{t.number}", lambda t=t: callback(study, copy.deepcopy(t)), 10)
    return len(due)


def _same_policy(trial: optuna.Trial, queued: bool) -> int | None:
    """The number of a complete trial, or for a sampled ``trial`` an earlier running one (two
    workers drawing the same policy: the later one yields; a queued re-run starts while the
    trial it re-runs may still be running), with ``trial``'s parameters, if any."""
    live = (TrialState.COMPLETE,) if queued else (TrialState.COMPLETE, TrialState.RUNNING)
    for t in trial.study.get_trials(deepcopy=False, states=live):
        earlier = t.state == TrialState.COMPLETE or t.number < trial.number
        if t.number != trial.number and earlier and t.params == trial.params:
            return t.number
    return None


def _queued(trial: FrozenTrial) -> bool:
    """Enqueued (seeds, promoted policies, re-runs of lost trials) rather than sampled."""
    attrs = trial.system_attrs
    return bool(attrs.get("fixed_params")) or "failed_trial" in attrs


def _order(trial: FrozenTrial) -> tuple[bool, int]:
    """The order trials are served in: queued ones first, then by number."""
    return (not _queued(trial), trial.number)


def _wait_for_budget(
    study: optuna.Study, number: int, n_total: int, queued: bool, retries: int, log=None
) -> str:
    """Whether trial ``number`` is needed for ``n_total`` complete trials: ``"run"``,
    ``"surplus"`` or ``"yield"`` (to queued trials). It runs when the complete trials, those
    running before it (:func:`_order`) and, for a sampled one, the queued and due re-runs are
    fewer than the budget; while trials before it may still fail, it waits."""
    said = None
    while True:
        trials = study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        ahead = sum(
            t.state == TrialState.RUNNING and _order(t) < (not queued, number) for t in trials
        )
        waiting = due = 0
        if not queued:
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            due = _retries_due(study, trials, retries)
        verdict = "wait"
        if complete >= n_total:
            verdict = "surplus"
        elif complete + ahead + waiting + due < n_total:
            verdict = "run"
        elif waiting and complete + ahead < n_total:
            verdict = "yield"
        state = (complete, ahead, waiting, due, verdict)
        if log is not None and state != said and (said is not None or verdict != "run"):
            log(
                f"[trial {number:3d}] {verdict}: {complete} complete, {ahead} running before it, "
                f"{waiting} queued, {due} re-runs due, of {n_total}"
            )
        said = state
        if verdict != "wait":
            return verdict
        fail_stale_trials(study)
        time.sleep(_POLL_S)


def run_trials(
    info: StudyInfo,
    cfg: ExperimentConfig,
    space: SearchSpace,
    evaluator: TrialEvaluator,
    tracker: Tracker,
    parent: str,
    *,
    deadline: float | None = None,
    log,
) -> None:
    """Run trials until the study holds ``cfg.search.n_trials`` complete ones or the budget's
    ``deadline`` (``time.monotonic()``) passes."""
    n_total = cfg.search.n_trials
    unavailable: list[ServiceUnavailable] = []

    def objective(trial: optuna.Trial):
        try:
            return _objective(trial)
        except ServiceUnavailable as exc:
            # The tracking server stayed away: this trial's results cannot be logged. Re-queue
            # its parameters (the storage is up) and stop this worker with the error.
            unavailable.append(exc)
            trial.set_user_attr("fail_reason", str(exc))
            trial.study.enqueue_trial(
                trial.params,
                user_attrs={k: v for k, v in trial.user_attrs.items() if k in _KEEP_ON_REQUEUE}
                | {"requeued_from": trial.number},
            )
            trial.study.stop()
            raise

    duplicates = {"n": 0}

    def _objective(trial: optuna.Trial):
        queued = _queued(trial.study._storage.get_trial(trial._trial_id))
        verdict = _wait_for_budget(
            trial.study, trial.number, n_total, queued, cfg.search.retries, log
        )
        if verdict == "surplus":
            trial.study.stop()
            raise optuna.TrialPruned("surplus: the study already has its trials")
        if verdict == "yield":
            raise optuna.TrialPruned("yields to a re-queued trial")
        policy = suggest_policy(trial, space)
        same = _same_policy(trial, queued)
        if same is not None:
            # A sampler (or a warm start) drew a policy already fine-tuned or fine-tuning: no
            # second fine-tune; a search space with no new policy left stops.
            duplicates["n"] += 1
            trial.set_user_attr("duplicate_of", same)
            if duplicates["n"] >= max(20, n_total):
                log(f"stopping: {duplicates['n']} policies in a row were already tried")
                trial.study.stop()
            raise optuna.TrialPruned(f"the policy of trial {same}: not fine-tuned twice")
        duplicates["n"] = 0
        params = space.params_from_policy(policy)
        run_id = tracker.start_trial(
            parent, trial.number, params, policy.to_dict(), policy.summary()
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        log_trial_chart(
            tracker, run_id, policy.to_dict(), title=f"trial {trial.number}: {policy.summary()}"
        )
        try:
            keep = cfg.output_dir / "models" / f"trial-{trial.number:03d}.acpk"
            metrics = evaluator(
                policy,
                seed=cfg.search.seed + trial.number,
                save_to=keep if cfg.search.keep_models else None,
            )
            values = record_metrics(trial, info, metrics, cfg)
        except KeyboardInterrupt:
            tracker.end_run(run_id, "KILLED", tags={"fail_reason": "interrupted"})
            raise
        except ServiceUnavailable:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason)
            tracker.end_run(run_id, "FAILED", tags={"fail_reason": reason[:5000]})
            raise
        if trial.study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
            # Another worker failed this trial (our heartbeats lapsed) and re-queued it: the
            # re-run is the one that counts, this run must not be a second FINISHED one.
            tracker.end_run(run_id, "KILLED", tags={"fail_reason": "taken over: heartbeat lapsed"})
            raise _TakenOver(f"trial {trial.number}")
        screened = trial.user_attrs.get("screen_metrics", {})
        extra = {"screen_val_accuracy": screened["val_accuracy"]} if screened else {}
        tracker.end_run(
            run_id,
            "FINISHED",
            metrics=metrics.to_dict() | extra,
            tags={
                "origin": trial.user_attrs.get("origin", "sampler"),
                "feasible": str(all(c <= 0 for c in constraints_of(trial))).lower(),
                "mlflow.note.content": trial_description(policy.to_dict(), metrics.to_dict()),
            },
        )
        return values

    failures = {"n": 0}

    def stop_on_failures(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.PRUNED:  # a duplicate or a surplus trial: no verdict
            return
        failures["n"] = failures["n"] + 1 if trial.state == TrialState.FAIL else 0
        if failures["n"] >= max(5, n_total // 2):
            log(f"stopping: {failures['n']} trials in a row failed")
            study.stop()

    remaining = n_total - info.count(TrialState.COMPLETE)
    if remaining <= 0:
        log(f"study already has {n_total} complete trials: nothing to run")
        return
    if deadline is not None and deadline <= time.monotonic():
        log("budget spent: no fine-tuned trial runs")
        return
    log(f"fine-tuning: {remaining} more trials to reach {n_total}")

    def stop_at_deadline(study: optuna.Study, trial: FrozenTrial) -> None:
        # Benchmark-only test scoring (search.report_test_accuracy) is not charged.
        if deadline is not None and time.monotonic() - evaluator.uncharged_s >= deadline:
            log("budget spent: stopping the fine-tuned stage")
            study.stop()

    callbacks = [
        MaxTrialsCallback(n_total, states=(TrialState.COMPLETE,)),
        _progress(info, n_total, log, deadline),
        stop_on_failures,
        stop_at_deadline,
    ]
    while True:
        try:
            info.study.optimize(objective, n_trials=None, catch=(Exception,), callbacks=callbacks)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Our trial was taken over by another worker (see _TakenOver): go on with the next.
            log("a trial of this worker was re-queued by another (heartbeats lapsed): continuing")
            if info.count(TrialState.COMPLETE) < n_total and (
                deadline is None or time.monotonic() < deadline
            ):
                continue
        break
    if unavailable:
        raise unavailable[0]
