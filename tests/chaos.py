"""Chaos for a shared search (used by tests/test_chaos.py and benchmarks/chaos.py).

Several ``autocompress search`` workers share one PostgreSQL study and one MLflow tracking
server. A seeded driver SIGKILLs random workers at random moments (and starts them again with
the same command), restarts PostgreSQL once and the MLflow server once mid-search, and waits
until every worker has ended by itself. :func:`verify` then checks that nothing was lost and
nothing was counted twice. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

CLI = [sys.executable, "-m", "autocompress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """An MLflow tracking server on a loopback port that can be restarted on the same port
    with the same backend store (a redeploy)."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
        cmd = [
            mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination", str(self.folder / "artifacts"),
        ]  # fmt: skip
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - lives with the process
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job workers
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"MLflow server did not start (see {log.name})") from None
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def postgres_restart_command(url: str, action: str = "restart") -> list[str] | None:
    """How to restart (or ``stop``, ``start``) the PostgreSQL server behind ``url`` on this
    machine: ``$AUTOCOMPRESS_TEST_PG_RESTART`` if set (restart only), else Debian's
    ``pg_ctlcluster`` for the cluster on the URL's port; None when neither is available."""
    if os.environ.get("AUTOCOMPRESS_TEST_PG_RESTART"):
        if action != "restart":
            return None
        return shlex.split(os.environ["AUTOCOMPRESS_TEST_PG_RESTART"])
    port = str(urlparse(url).port or 5432)
    try:
        out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == port:
            return ["pg_ctlcluster", parts[0], parts[1], action]
    return None


@dataclass
class Plan:
    seed: int = 0
    workers: int = 3
    n_trials: int = 30
    screen_trials: int = 0
    kills: int = 6
    kills_in_screen: int = 1
    postgres_restarts: int = 1
    mlflow_restarts: int = 1
    timeout_s: float = 1200.0
    max_starts_per_worker: int = 25


@dataclass
class Event:
    t: float
    what: str
    detail: str = ""


@dataclass
class WorkerExit:
    worker: int
    start: int
    code: int
    killed: bool
    last_line: str
    traceback: bool


@dataclass
class ChaosRun:
    plan: Plan
    events: list[Event] = field(default_factory=list)
    exits: list[WorkerExit] = field(default_factory=list)
    wall_s: float = 0.0
    hung: bool = False
    pending: list[str] = field(default_factory=list)

    def count(self, what: str) -> int:
        return sum(e.what == what for e in self.events)

    def to_dict(self) -> dict:
        return asdict(self)


_STORAGES: dict[str, object] = {}


def storage(url: str):
    """One Optuna storage per URL for this process (a new one per call would open a new
    connection pool each time and exhaust the server's connection slots)."""
    import optuna

    if url not in _STORAGES:
        _STORAGES[url] = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    return _STORAGES[url]


def _busy_pids(study_name: str, url: str, stage: str) -> set[int]:
    """Pids of the workers running a trial of the stage's study right now (each trial records
    its worker as ``host:pid``)."""
    import optuna
    from optuna.trial import TrialState

    name = f"{study_name}-screen" if stage == "screen" else study_name
    try:
        st = optuna.load_study(study_name=name, storage=storage(url))
        running = st.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    except Exception:  # noqa: BLE001 - not there yet, or the database is restarting
        return set()
    return {
        int(t.user_attrs["worker"].rpartition(":")[2]) for t in running if "worker" in t.user_attrs
    }


def _counts(study_name: str, url: str) -> tuple[int, int]:
    """(complete screened, complete fine-tuned) trials; (-1, -1) while the database is away."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = []
    for name in (f"{study_name}-screen", study_name):
        try:
            st = optuna.load_study(study_name=name, storage=storage(url))
            out.append(len(st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))))
        except KeyError:
            out.append(0)
        except Exception:  # noqa: BLE001 - the database is restarting
            return -1, -1
    return out[0], out[1]


def _schedule(plan: Plan, rng: random.Random) -> list[tuple[str, int, str]]:
    """(stage, count, action) triggers: an action fires once that stage has ``count`` complete
    trials (then after a random delay, so it lands at a random moment of the next trials).

    Every main-stage trigger lies in the first half of the main stage: tiny trials end in about
    a second each, and the actions fire one after another (a kill waits for a busy worker, a
    restart takes seconds), so the second half is the margin that lets all of them fire before
    the workers are done."""
    actions: list[tuple[str, int, str]] = []
    n = plan.n_trials
    half = max(2, n // 2)
    in_screen = min(plan.kills_in_screen, plan.kills) if plan.screen_trials > 0 else 0
    for _ in range(in_screen):
        actions.append(("screen", rng.randint(2, max(2, plan.screen_trials - 8)), "kill"))
    for _ in range(plan.kills - in_screen):
        actions.append(("main", rng.randint(1, half), "kill"))
    for i in range(plan.postgres_restarts):
        lo = max(1, (i + 1) * half // (plan.postgres_restarts + 1) - 1)
        actions.append(("main", rng.randint(lo, lo + 2), "restart_postgres"))
    for i in range(plan.mlflow_restarts):
        lo = max(1, (i + 1) * half // (plan.mlflow_restarts + 1))
        actions.append(("main", rng.randint(lo, lo + 2), "restart_mlflow"))
    order = {"screen": 0, "main": 1}
    return sorted(actions, key=lambda a: (order[a[0]], a[1]))


def run(
    config: Path,
    study_name: str,
    pg: str,
    server: MlflowServer,
    plan: Plan,
    log_dir: Path,
    *,
    extra: list[str] | None = None,
    log=print,
) -> ChaosRun:
    """Run the search on ``plan.workers`` workers under the plan's chaos until every worker
    ended by itself (or ``plan.timeout_s``: then ``hung``)."""
    rng = random.Random(plan.seed)
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*CLI, "search", str(config), "--storage", pg, "--tracking-uri", server.url]
    cmd += extra or []
    pg_restart = postgres_restart_command(pg)
    result = ChaosRun(plan)
    t0 = time.monotonic()

    def event(what: str, detail: str = "") -> None:
        result.events.append(Event(round(time.monotonic() - t0, 2), what, detail))
        log(f"[chaos {time.monotonic() - t0:6.1f}s] {what} {detail}")

    procs: dict[int, subprocess.Popen | None] = {}
    starts = {w: 0 for w in range(plan.workers)}
    killed: set[int] = set()  # pids we killed
    restart_at: dict[int, float] = {}
    done: set[int] = set()

    def start(w: int) -> None:
        starts[w] += 1
        err = open(log_dir / f"worker{w}-{starts[w]}.err", "wb")  # noqa: SIM115
        out = open(log_dir / f"worker{w}-{starts[w]}.out", "wb")  # noqa: SIM115
        procs[w] = subprocess.Popen(cmd, stdout=out, stderr=err, env=_worker_env())
        event("start", f"worker {w} (#{starts[w]}, pid {procs[w].pid})")

    for w in range(plan.workers):
        start(w)
    actions = _schedule(plan, rng)
    fire_at: float | None = None
    tries = 0
    while True:
        now = time.monotonic()
        if now - t0 > plan.timeout_s:
            result.hung = True
            event("timeout", f"{plan.timeout_s:.0f} s: killing every worker")
            for p in procs.values():
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
            break
        # Workers that ended.
        for w, p in list(procs.items()):
            if p is None or p.poll() is None:
                continue
            err = (log_dir / f"worker{w}-{starts[w]}.err").read_text(errors="replace")
            lines = [ln for ln in err.splitlines() if ln.strip()]
            was_killed = p.pid in killed
            result.exits.append(
                WorkerExit(
                    w,
                    starts[w],
                    p.returncode,
                    was_killed,
                    lines[-1] if lines else "",
                    "Traceback" in err,
                )  # fmt: skip
            )
            procs[w] = None
            if p.returncode == 0 and not was_killed:
                done.add(w)
                event("exit", f"worker {w} done")
            else:
                if not was_killed:
                    event("exit", f"worker {w} code {p.returncode}: {lines[-1] if lines else ''}")
                if starts[w] < plan.max_starts_per_worker:
                    restart_at[w] = now + rng.uniform(0.5, 3.0)
        for w, t in list(restart_at.items()):
            if now >= t:
                del restart_at[w]
                start(w)
        exhausted = {w for w in range(plan.workers) if starts[w] >= plan.max_starts_per_worker}
        idle = {w for w in exhausted if procs[w] is None and w not in restart_at}
        if len(done | idle) == plan.workers:
            if idle:
                event(
                    "gave_up", f"workers {sorted(idle)} failed {plan.max_starts_per_worker} starts"
                )
            break
        # The next chaos action, once its trigger count is reached (and its delay passed).
        if actions:
            stage, count, what = actions[0]
            if fire_at is None:
                screened, complete = _counts(study_name, pg)
                reached = (screened if stage == "screen" else complete) >= count
                if stage == "screen" and complete > 0:
                    reached = True  # the screen is over: fire now
                if reached:  # behind schedule (the count is past the trigger): no delay
                    late = (screened if stage == "screen" else complete) > count + 1
                    fire_at = now + (0.0 if late else rng.uniform(0.0, 1.5))
            elif now >= fire_at:
                fire_at = None
                actions.pop(0)
                if what == "kill":
                    live = [w for w, p in procs.items() if p is not None and p.poll() is None]
                    # A worker in the middle of a trial (at a random moment of it); one that is
                    # still starting up only when no worker runs a trial for a while.
                    busy = _busy_pids(study_name, pg, "screen") | _busy_pids(study_name, pg, "main")
                    if any(procs[w].pid in busy for w in live):
                        live = [w for w in live if procs[w].pid in busy]
                    elif tries < 8:
                        tries += 1
                        actions.insert(0, (stage, count, what))
                        fire_at = now + 0.3
                        time.sleep(0.2)
                        continue
                    tries = 0
                    if live:
                        w = rng.choice(live)
                        killed.add(procs[w].pid)
                        os.kill(procs[w].pid, signal.SIGKILL)
                        event("kill", f"worker {w} (pid {procs[w].pid}) at {stage} {count}")
                    else:
                        actions.insert(0, (stage, count, what))  # nobody to kill yet
                elif what == "restart_postgres" and pg_restart is not None:
                    t = time.monotonic()
                    subprocess.run(pg_restart, check=True, capture_output=True)
                    event("restart_postgres", f"{time.monotonic() - t:.1f} s")
                elif what == "restart_mlflow":
                    t = time.monotonic()
                    server.restart()
                    event("restart_mlflow", f"{time.monotonic() - t:.1f} s")
        time.sleep(0.2)
    result.pending = [f"{a[2]} at {a[0]} {a[1]}" for a in actions]
    result.wall_s = round(time.monotonic() - t0, 1)
    return result


def _worker_env() -> dict:
    env = dict(os.environ, AUTOCOMPRESS_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("AUTOCOMPRESS_DEBUG", None)
    return env


def verify(study_name: str, experiment: str, pg: str, tracking: str, n_trials: int) -> dict:
    """What the chaos must not have broken; returns the facts and a list of ``problems``."""
    import mlflow
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    problems: list[str] = []
    study = optuna.load_study(study_name=study_name, storage=storage(pg))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if len(complete) != n_trials:
        problems.append(f"{len(complete)} COMPLETE trials, expected {n_trials}")
    if running:
        problems.append(f"trials left RUNNING: {[t.number for t in running]}")
    numbers = [t.number for t in trials]
    if len(numbers) != len(set(numbers)):
        problems.append("a trial number appears twice in the study")

    client = mlflow.MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [
        r for r in runs
        if r.data.tags.get("autocompress.role") == "search"
        and r.data.tags.get("autocompress.study", study_name) == study_name
    ]  # fmt: skip
    if len(parents) != 1:
        problems.append(f"{len(parents)} parent runs, expected 1")
    parent = parents[0] if parents else None
    trial_runs = [
        r for r in runs
        if r.data.tags.get("autocompress.role") == "trial"
        and parent is not None and r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]  # fmt: skip
    by_number: dict[int, list] = {}
    for r in trial_runs:
        by_number.setdefault(int(r.data.tags["trial_number"]), []).append(r)
    still = [r.data.tags["trial_number"] for r in trial_runs if r.info.status == "RUNNING"]
    if still:
        problems.append(f"MLflow trial runs left RUNNING: trials {sorted(still)}")

    for t in complete:
        fin = [r for r in by_number.get(t.number, []) if r.info.status == "FINISHED"]
        if len(fin) != 1:
            problems.append(f"trial {t.number}: {len(fin)} FINISHED runs, expected 1")
            continue
        r = fin[0]
        if r.info.run_id != t.user_attrs.get("mlflow_run_id"):
            problems.append(f"trial {t.number}: its FINISHED run is not the one it recorded")
        if not r.data.params:
            problems.append(f"trial {t.number}: FINISHED run has no params")
        if "val_accuracy" not in r.data.metrics:
            problems.append(f"trial {t.number}: FINISHED run has no val_accuracy metric")
        if "policy.json" not in {a.path for a in client.list_artifacts(r.info.run_id)}:
            problems.append(f"trial {t.number}: FINISHED run has no policy.json")
    finished_trials = {t.number for t in complete}
    for n, rs in by_number.items():
        if n not in finished_trials and any(r.info.status == "FINISHED" for r in rs):
            problems.append(f"trial {n} is not COMPLETE but has a FINISHED run")

    def key(params: dict) -> str:
        return json.dumps(params, sort_keys=True)

    complete_params: dict[str, int] = {}
    for t in complete:
        k = key(t.params)
        if k in complete_params:
            problems.append(f"trials {complete_params[k]} and {t.number}: the same policy twice")
        complete_params[k] = t.number
    rerun = 0
    for t in failed:
        statuses = {r.info.status for r in by_number.get(t.number, [])}
        if statuses - {"KILLED", "FAILED"}:
            problems.append(f"failed trial {t.number}: MLflow runs {sorted(statuses)}")
        if key(t.params) not in complete_params and t.params:
            problems.append(f"failed trial {t.number}: its parameters were never re-run")
    for t in complete:
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is not None:
            rerun += 1
        elif t.user_attrs.get("requeued_from") is not None:
            rerun += 1

    front_numbers: list[int] = []
    if parent is not None:
        client2 = mlflow.MlflowClient(tracking_uri=tracking)
        if parent.info.status != "FINISHED":
            problems.append(f"parent run is {parent.info.status}")
        arts = {a.path for a in client2.list_artifacts(parent.info.run_id, "pareto")}
        if "pareto/pareto_front.json" not in arts:
            problems.append("parent run has no pareto/pareto_front.json")
        else:
            path = client2.download_artifacts(parent.info.run_id, "pareto/pareto_front.json")
            front_numbers = sorted(r["trial"] for r in json.loads(Path(path).read_text())["front"])
            expected = _front_of(study, complete)
            if front_numbers != expected:
                problems.append(f"parent's front {front_numbers} is not the final front {expected}")
    lost_s = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in failed
        if t.datetime_complete and t.datetime_start
    )
    return {
        "complete": len(complete),
        "failed": len(failed),
        "rerun": rerun,
        "trial_runs": len(trial_runs),
        "front": front_numbers,
        "failed_trial_seconds": round(lost_s, 1),
        "problems": problems,
    }


def _front_of(study, complete) -> list[int]:
    import numpy as np

    from autocompress.search.pareto import non_dominated

    feasible = [t for t in complete if all(c <= 0 for c in t.user_attrs.get("constraints", []))]
    if not feasible:
        return []
    dirs = [d.name.lower() for d in study.directions]
    idx = non_dominated(np.array([t.values for t in feasible]), dirs)
    return sorted(feasible[i].number for i in idx)
