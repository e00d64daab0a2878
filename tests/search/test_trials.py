"""The trial budget across workers: the order trials are served in, re-runs of lost trials
keeping their slot, and a re-run whose enqueue was lost being enqueued after all."""

from __future__ import annotations

import datetime
import threading
import warnings

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from autocompress.search.trials import _retries_due, _same_policy, _wait_for_budget

warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.ERROR)
N = 5


@pytest.fixture
def study(tmp_path):
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'budget.db'}",
        heartbeat_interval=1,
        grace_period=2,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
    )
    s = optuna.create_study(storage=storage)
    for _ in range(N - 1):  # one trial short of the budget
        t = s.ask()
        t.suggest_float("x", 0, 1)
        s.tell(t, 1.0)
    return s


def _verdict(study, trial, queued, timeout=2.5):
    """The budget's verdict for ``trial``, or None while it is still waiting."""
    out = []
    th = threading.Thread(
        target=lambda: out.append(_wait_for_budget(study, trial.number, N, queued, 3)),
        daemon=True,
    )
    th.start()
    th.join(timeout)
    return out[0] if out else None


def _rerun(study, x: float, of: int):
    """A re-run of lost trial ``of`` as Optuna's retry callback enqueues it, then popped."""
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params={"x": x},
            distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            system_attrs={"failed_trial": of, "retry_history": [of]},
        )
    )


def test_a_rerun_popped_after_a_sampled_trial_still_comes_first(study):
    sampled = study.ask()  # a new policy from the sampler: number 4
    _rerun(study, 0.5, of=1)
    rerun = study.ask()  # the re-run, popped from the queue: number 5
    assert rerun.number > sampled.number and rerun.params == {"x": 0.5}
    # One slot is left: the re-run takes it although its number is higher.
    assert _verdict(study, rerun, queued=True) == "run"
    assert _verdict(study, sampled, queued=False) is None  # waits (the re-run may fail)


def test_a_sampled_trial_gives_way_to_a_queued_rerun(study):
    sampled = study.ask()
    _rerun(study, 0.5, of=1)  # queued, not yet picked up by any worker
    assert _verdict(study, sampled, queued=False) == "yield"


def test_a_sampled_trial_waits_while_a_lost_trials_rerun_is_due(study):
    lost = study.ask()
    lost.suggest_float("x", 0, 1)
    storage = study._storage
    storage.set_trial_state_values(lost._trial_id, TrialState.FAIL)  # failed by the heartbeat
    sampled = study.ask()
    # The retry is enqueued a moment after the FAIL: the slot stays the re-run's.
    assert _verdict(study, sampled, queued=False, timeout=1.5) is None


def test_a_rerun_lost_with_its_failing_worker_is_enqueued_once(study):
    lost = study.ask()
    lost.suggest_float("x", 0, 1)
    storage = study._storage
    storage.set_trial_state_values(lost._trial_id, TrialState.FAIL)
    # The worker that failed it died before enqueueing the re-run; time passes.
    old = datetime.datetime.now() - datetime.timedelta(seconds=120)
    from optuna.storages._rdb import models

    rdb = storage._backend
    with rdb.scoped_session() as session:
        session.get(models.TrialModel, lost._trial_id).datetime_complete = old
        session.commit()
    for _ in range(2):  # any number of workers looking: one re-run
        fresh = optuna.load_study(study_name=study.study_name, storage=rdb)
        _retries_due(fresh, fresh.get_trials(deepcopy=False), 3)
    reruns = [
        t
        for t in study.get_trials(deepcopy=False)
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == lost.number
    ]
    assert len(reruns) == 1 and reruns[0].params == lost.params
    assert reruns[0].state == TrialState.WAITING


def test_of_two_running_trials_with_one_policy_only_the_later_yields(tmp_path):
    s = optuna.create_study(storage=f"sqlite:///{tmp_path / 'dup.db'}")
    dist = {"l.bits": optuna.distributions.CategoricalDistribution([2, 4, 8])}

    def running(bits: int):
        s.enqueue_trial({"l.bits": bits})
        return s.ask(dist)

    first, second, other = running(4), running(4), running(8)  # two workers drew policy 4
    assert _same_policy(first, queued=False) is None  # the earlier one goes on
    assert _same_policy(second, queued=False) == first.number
    assert _same_policy(other, queued=False) is None
    # a queued re-run never yields to a running trial (it may be the one it re-runs) ...
    assert _same_policy(second, queued=True) is None
    s.tell(first, 1.0)
    # ... only to a complete one
    assert _same_policy(second, queued=True) == first.number
