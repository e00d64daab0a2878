"""Scale-out and crash safety against real components: a PostgreSQL server (URL from
$AUTOCOMPRESS_TEST_PG; .ci/run starts one with scripts/start_postgres.sh) and an MLflow tracking
server these tests start on a loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import chaos
import mlflow
import optuna
import pytest
from conftest import tiny_config
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

PG = os.environ.get("AUTOCOMPRESS_TEST_PG")
pytestmark = pytest.mark.skipif(
    not PG, reason="set AUTOCOMPRESS_TEST_PG (scripts/start_postgres.sh prints a URL)"
)
CLI = [sys.executable, "-m", "autocompress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    cmd = [
        mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
        "--artifacts-destination", str(tmp / "artifacts"),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("MLflow server did not start")
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _config(tmp_path, fmnist_root, **kw) -> Path:
    return tiny_config(tmp_path, fmnist_root, name=f"scale_{uuid.uuid4().hex[:8]}", **kw)


def _study(path: Path) -> optuna.Study:
    import yaml

    return optuna.load_study(
        study_name=yaml.safe_load(path.read_text())["name"], storage=chaos.storage(PG)
    )


def _trial_runs(url: str, path: Path):
    import yaml

    client = mlflow.MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name(yaml.safe_load(path.read_text())["name"])
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("autocompress.role") == "search"]
    return parents, [r for r in runs if r.data.tags.get("autocompress.role") == "trial"]


def test_two_workers_share_one_study_and_parent_run(tmp_path, fmnist_root, mlflow_server):
    path = _config(tmp_path, fmnist_root, search__n_trials=6)
    args = ["search", str(path), "--storage", PG, "--tracking-uri", mlflow_server]
    done = subprocess.run([*CLI, *args, "--workers", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "started 2 workers" in done.stdout
    study = _study(path)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    parents, trials = _trial_runs(mlflow_server, path)
    assert len(parents) == 1
    evaluated = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    assert len(trials) == len(evaluated)
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    assert {r.info.run_id for r in trials} == {t.user_attrs["mlflow_run_id"] for t in evaluated}


def test_sigkill_mid_trial_then_resume(tmp_path, fmnist_root, mlflow_server):
    path = _config(tmp_path, fmnist_root, search__n_trials=4, finetune__steps=400)
    args = [
        "search", str(path), "--storage", PG, "--tracking-uri", mlflow_server,
        "--set", "search.heartbeat_interval=1", "--set", "search.grace_period=4",
    ]  # fmt: skip
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    victim = None
    while victim is None:
        assert time.monotonic() < deadline and proc.poll() is None, "no trial started"
        time.sleep(0.5)
        try:
            running = _study(path).get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            continue
        victim = next((t for t in running if "mlflow_run_id" in t.user_attrs), None)
    os.kill(proc.pid, signal.SIGKILL)  # at once: a trial ends in seconds, `status` takes seconds
    proc.wait()
    # `status` says which worker ran the trial (still RUNNING in the storage until a worker
    # finds its heartbeat stale).
    st = subprocess.run(
        [*CLI, "status", str(path), "--storage", PG], capture_output=True, text=True
    )
    assert f"trial {victim.number} running on" in st.stdout and f":{proc.pid}" in st.stdout

    done = subprocess.run([*CLI, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    study = _study(path)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in failed] == [victim.number]
    retried = [
        t for t in study.trials
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim.number
    ]  # fmt: skip
    assert retried and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == victim.params
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    killed = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert killed.info.status == "KILLED"
    _, trials = _trial_runs(mlflow_server, path)
    finished = [r for r in trials if r.info.status == "FINISHED"]
    assert len(finished) == 4
