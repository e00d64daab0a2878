"""Chaos on a shared search against real components (tests/chaos.py): three workers on one
PostgreSQL study and one MLflow tracking server; random SIGKILLs (workers restarted with the
same command), a PostgreSQL restart and a tracking-server restart mid-search. Nothing may be
lost or counted twice, and no worker may hang."""

from __future__ import annotations

import os
import uuid

import chaos
import pytest
from conftest import tiny_config

PG = os.environ.get("AUTOCOMPRESS_TEST_PG")
pytestmark = pytest.mark.skipif(
    not PG, reason="set AUTOCOMPRESS_TEST_PG (scripts/start_postgres.sh prints a URL)"
)

N_TRIALS = 30


def test_kills_and_restarts_lose_nothing_and_count_nothing_twice(tmp_path, fmnist_root):
    if chaos.postgres_restart_command(PG) is None:
        pytest.skip("no way to restart PostgreSQL here (set AUTOCOMPRESS_TEST_PG_RESTART)")
    name = f"chaos_{uuid.uuid4().hex[:8]}"
    path = tiny_config(
        tmp_path,
        fmnist_root,
        name=name,
        search__n_trials=N_TRIALS,
        search__screen_trials=80,
        search__heartbeat_interval=1,
        search__grace_period=5,
        search__retries=10,
        search__reconnect_s=90,
        finetune__steps=40,
    )
    server = chaos.MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        plan = chaos.Plan(seed=7, workers=3, n_trials=N_TRIALS, screen_trials=80, kills=6)
        run = chaos.run(path, name, PG, server, plan, tmp_path / "logs")
        facts = chaos.verify(name, name, PG, server.url, N_TRIALS)
    finally:
        server.stop()
    detail = f"{run.to_dict()}\n{facts}"
    assert not run.hung, detail
    assert run.count("gave_up") == 0, detail
    assert run.count("kill") >= 6, detail
    assert run.count("restart_postgres") == 1, detail
    assert run.count("restart_mlflow") == 1, detail
    assert facts["problems"] == [], detail
    assert facts["failed"] >= 1 and facts["rerun"] >= 1, detail
    # Every worker that ended on its own without being killed either finished (0) or said why
    # in one line (and was started again by the same command).
    assert run.exits, detail
    for e in run.exits:
        if not e.killed and e.code != 0:
            assert e.last_line.startswith("error: ") and not e.traceback, detail
        assert not e.traceback, detail
