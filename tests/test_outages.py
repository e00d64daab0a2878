"""A tracking server or database that stays away longer than ``search.reconnect_s``: the worker
stops with one line and a non-zero code, the trial it could not log is re-queued, and the
same command, once the server is back, finishes the search with nothing lost or doubled."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import chaos
import optuna
import pytest
from conftest import tiny_config
from optuna.trial import TrialState

PG = os.environ.get("AUTOCOMPRESS_TEST_PG")
pytestmark = pytest.mark.skipif(
    not PG, reason="set AUTOCOMPRESS_TEST_PG (scripts/start_postgres.sh prints a URL)"
)
CLI = [sys.executable, "-m", "autocompress"]
N_TRIALS = 5


def _running_with_run(name: str):
    try:
        study = optuna.load_study(study_name=name, storage=chaos.storage(PG))
    except KeyError:
        return None
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return next((t for t in running if "mlflow_run_id" in t.user_attrs), None)


def _setup(tmp_path, fmnist_root, prefix: str, **extra):
    """A search on PostgreSQL whose outages show quickly (``reconnect_s`` 3), an MLflow
    server, the command, and the process started and running a trial with an MLflow run."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    path = tiny_config(
        tmp_path,
        fmnist_root,
        name=name,
        search__n_trials=N_TRIALS,
        search__screen_trials=0,
        search__reconnect_s=3,
        search__heartbeat_interval=1,
        finetune__steps=300,
        **extra,
    )
    server = chaos.MlflowServer(tmp_path / "mlflow")
    server.start()
    cmd = [*CLI, "search", str(path), "--storage", PG, "--tracking-uri", server.url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while _running_with_run(name) is None:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            server.stop()
            pytest.fail("no trial started")
        time.sleep(0.3)
    return name, server, cmd, proc


def _last_error_line(proc, out: str, err: str) -> str:
    """The worker stopped with exit 3 and one error line, no traceback."""
    assert proc.returncode == 3, (out[-2000:], err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    return [ln for ln in err.splitlines() if ln.strip()][-1]


def _finish_and_verify(name: str, server, cmd) -> dict:
    """The same command, once the server is back, finishes the search; the chaos checks."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return chaos.verify(name, name, PG, server.url, N_TRIALS)


def test_tracking_server_away_too_long_then_back(tmp_path, fmnist_root):
    name, server, cmd, proc = _setup(tmp_path, fmnist_root, "outage")
    try:
        server.stop()  # while the trial fine-tunes: its results cannot be logged
        out, err = proc.communicate(timeout=240)
        line = _last_error_line(proc, out, err)
        assert line.startswith("error: MLflow tracking server") and "unreachable" in line
        study = optuna.load_study(study_name=name, storage=chaos.storage(PG))
        failed = study.get_trials(states=(TrialState.FAIL,))
        assert len(failed) == 1 and "unreachable" in failed[0].user_attrs["fail_reason"]
        t = failed[0]
        requeued = [x for x in study.trials if x.user_attrs.get("requeued_from") == t.number]
        assert len(requeued) == 1 and requeued[0].system_attrs["fixed_params"] == t.params
        server.start()  # back (same port, same store)
        facts = _finish_and_verify(name, server, cmd)
    finally:
        server.stop()
    assert facts["problems"] == [], facts
    assert facts["failed"] == 1


def test_database_away_too_long_then_back(tmp_path, fmnist_root):
    stop, start = (chaos.postgres_restart_command(PG, a) for a in ("stop", "start"))
    if stop is None:
        pytest.skip("no way to stop PostgreSQL here")
    name, server, cmd, proc = _setup(tmp_path, fmnist_root, "dbout", search__grace_period=3)
    try:
        subprocess.run(stop, check=True, capture_output=True)
        try:
            out, err = proc.communicate(timeout=240)
        finally:
            subprocess.run(start, check=True, capture_output=True)
            _wait_for_postgres()
        line = _last_error_line(proc, out, err)
        assert line.startswith("error: storage postgresql://") and "unreachable" in line
        assert "***" in line  # the password stays masked
        facts = _finish_and_verify(name, server, cmd)
    finally:
        server.stop()
    assert facts["problems"] == [], facts
    assert facts["failed"] == 1


def _wait_for_postgres(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chaos.storage(PG).get_all_studies()  # (the shared pool reconnects)
            return
        except Exception:  # noqa: BLE001 - still starting
            time.sleep(0.5)
