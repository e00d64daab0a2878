"""Riding out a database or tracking server that goes away for a while (a restart, a
redeploy, a network blip): calls are retried with exponential backoff for a bounded time
(``search.reconnect_s``), then :class:`~autocompress.errors.ServiceUnavailable` says so in one
line. Only connection-level failures are retried; every other error passes straight through.

The Optuna side is a storage wrapper (:class:`RetryingStorage`), so every access Optuna makes
(ask, tell, attributes, the heartbeat thread) is covered, not only ours.
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from .errors import ServiceUnavailable

T = TypeVar("T")
_FIRST_WAIT_S, _MAX_WAIT_S = 0.5, 8.0
_CONNECTION_WORDS = (
    "connection refused|max retries exceeded|server closed the connection|connection reset|"
    "could not connect|connection aborted|remotedisconnected|terminating connection|"
    "the database system is starting up|the database system is shutting down|"
    "connection already closed|connection timed out|read timed out|temporarily_unavailable|"
    "status code 502|status code 503|status code 504"
).split("|")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_connection_error(exc: BaseException) -> bool:
    """True for a failure to reach a server (refused, reset, restarting, gateway errors)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError  # (Optuna's)

    for e in _chain(exc):
        if isinstance(e, ServiceUnavailable):
            return False  # already given up below us
        if isinstance(e, (ConnectionError, TimeoutError, OperationalError, InterfaceError)):
            return True
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
        text = str(e).lower()
        if any(w in text for w in _CONNECTION_WORDS):
            return True
    return False


def retry_call(
    fn: Callable[[], T],
    *,
    what: str,
    timeout_s: float,
    log: Callable[[str], None] | None = None,
    on_retry: Callable[[], T | None] | None = None,
) -> T:
    """``fn()``, retried on connection errors for up to ``timeout_s`` seconds.

    ``on_retry`` runs before each new attempt; a non-None result is returned instead of
    calling ``fn`` again (for calls that may have succeeded although the answer was lost, e.g.
    a run that was created before the connection dropped)."""
    start = time.monotonic()
    wait = _FIRST_WAIT_S
    attempt = 0
    while True:
        try:
            if attempt and on_retry is not None:
                if (found := on_retry()) is not None:
                    return found
            return fn()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            spent = time.monotonic() - start
            if spent >= timeout_s:
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                raise ServiceUnavailable(
                    f"{what} unreachable for {spent:.0f} s ({type(exc).__name__}: {first}); "
                    "run the same command again when it is back (search.reconnect_s sets how "
                    "long to wait)"
                ) from None
            if attempt == 0 and log is not None:
                log(
                    f"{what} unreachable ({type(exc).__name__}): retrying for up to "
                    f"{timeout_s:.0f} s"
                )
            time.sleep(min(wait, max(timeout_s - spent, 0.05)))
            wait = min(wait * 2, _MAX_WAIT_S)
            attempt += 1


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """An Optuna storage that retries the wrapped one's calls on connection errors.

    After an outage, stale-trial detection holds off for one grace period: other workers'
    heartbeats stopped during the outage too, and their trials are not lost.
    """

    def __init__(self, inner: BaseStorage, *, timeout_s: float, log=None, what="storage"):
        self._inner = inner
        self._timeout_s = timeout_s
        self._log = log
        self._what = what
        self._recovered_at = -float("inf")

    def _call(self, name: str, *args, **kwargs):
        method = getattr(self._inner, name)
        failed = {"n": 0}

        def attempt():
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if is_connection_error(exc):
                    failed["n"] += 1
                elif (
                    failed["n"]
                    and name == "set_trial_state_values"
                    and isinstance(exc, optuna.exceptions.UpdateFinishedTrialError)
                ):
                    # The first attempt was committed; only its answer was lost.
                    state = kwargs.get("state", args[1] if len(args) > 1 else None)
                    if self._inner.get_trial(args[0]).state == state:
                        return state != TrialState.RUNNING
                raise

        out = retry_call(attempt, what=self._what, timeout_s=self._timeout_s, log=self._log)
        if failed["n"]:
            self._recovered_at = time.monotonic()
            if self._log is not None:
                self._log(f"{self._what} is back")
        return out

    # -- heartbeat --------------------------------------------------------------------------
    def record_heartbeat(self, trial_id: int) -> None:
        # Runs in Optuna's heartbeat thread: a beat that cannot be sent is skipped (the main
        # thread meets the same outage and reports it), never a traceback from the thread.
        with contextlib.suppress(ServiceUnavailable):
            self._call("record_heartbeat", trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = getattr(self._inner, "_backend", self._inner)
        grace_s = getattr(grace, "grace_period", None) or 2 * (self.get_heartbeat_interval() or 0)
        if time.monotonic() - self._recovered_at < grace_s:
            return []
        stale = self._call("_get_stale_trial_ids", study_id)
        return stale + self._call_silent_deaths(study_id, grace_s, set(stale))

    def _call_silent_deaths(self, study_id: int, grace_s: float, known: set[int]) -> list[int]:
        """RUNNING trials that never sent a heartbeat (their worker died between Optuna's
        ``ask`` and the first beat): Optuna's own check skips them, and they would block the
        trial budget for ever. Counted stale ``max(3 grace, 60 s)`` after they started."""
        engine = getattr(getattr(self._inner, "_backend", self._inner), "engine", None)
        if engine is None:
            return []
        cutoff = datetime.datetime.now() - datetime.timedelta(seconds=max(3 * grace_s, 60.0))
        running = [
            t
            for t in self._call("get_all_trials", study_id, False, (TrialState.RUNNING,))
            if t._trial_id not in known
            and t.datetime_start is not None
            and t.datetime_start < cutoff
        ]
        if not running:
            return []
        import sqlalchemy

        def beating() -> set[int]:
            with engine.connect() as conn:
                rows = conn.execute(
                    sqlalchemy.text(
                        "SELECT trial_id FROM trial_heartbeats WHERE trial_id IN "
                        f"({','.join(str(int(t._trial_id)) for t in running)})"
                    )
                )
                return {int(r[0]) for r in rows}

        alive = retry_call(beating, what=self._what, timeout_s=self._timeout_s, log=self._log)
        return [t._trial_id for t in running if t._trial_id not in alive]

    def get_heartbeat_interval(self) -> int | None:
        return self._inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self):
        return self._inner.get_heartbeat_stale_trial_callback()

    def __getattr__(self, name: str) -> Any:  # anything else (engine, url, ...) as is
        return getattr(self._inner, name)


def _delegate(name: str):
    def method(self, *args, **kwargs):
        return self._call(name, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


# not delegated: defined above, or inherited (Optuna's deprecated get_failed_trial_callback)
_PASSTHROUGH = {"record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval"}
_PASSTHROUGH |= {"get_heartbeat_stale_trial_callback", "get_failed_trial_callback"}
for _name in [
    n
    for cls in (BaseStorage, BaseHeartbeat)
    for n, v in vars(cls).items()
    if callable(v) and not n.startswith("__") and n not in _PASSTHROUGH
]:
    setattr(RetryingStorage, _name, _delegate(_name))
abc.update_abstractmethods(RetryingStorage)
