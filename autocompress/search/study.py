"""The Optuna study behind a search: creation or resumption, samplers, constraints, and the
trial table / Pareto front read back from it (used by search, status, pick)."""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from operator import attrgetter
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._cached_storage import _CachedStorage  # Optuna's own cache, as for URLs
from optuna.trial import FrozenTrial, TrialState

from .._files import content_key
from .._retry import RetryingStorage
from ..config import ExperimentConfig
from ..errors import AutocompressError, ConfigError
from ..metrics import OBJECTIVES, TrialMetrics
from ..policy import CompressionPolicy
from ..samplers import make_sampler
from ..size import size_measure
from ..tracking import mask_secrets
from .pareto import non_dominated

CONSTRAINTS_ATTR = "constraints"
SCREEN_SUFFIX = "-screen"  # the screen's study: ``<name>-screen`` in the same storage
_ROW_METRICS = ("val_accuracy", "latency_ms", "size_kb", "compression_ratio", "weight_sparsity")
StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


def worker_id() -> str:
    """``host:pid`` of this process (user attribute ``worker`` of the trials it runs)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def constraints_of(trial: FrozenTrial) -> list[float]:
    """Optuna ``constraints_func``: the violations the objective stored on the trial."""
    return list(trial.user_attrs.get(CONSTRAINTS_ATTR, []))


def record_metrics(
    trial: optuna.Trial, info: StudyInfo, metrics: TrialMetrics, cfg: ExperimentConfig
) -> list[float]:
    """Store a trial's ``metrics`` and its constraint violations (the objectives' bounds) on it;
    returns its objective values. A value that is not finite raises ValueError: the trial fails."""
    values = [metrics.value(o) for o in info.objectives]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"non-finite objective values {values}")
    bounds = {o: getattr(cfg.objectives, o).bound for o in info.objectives}
    cons = [OBJECTIVES[o].violation(metrics.value(o), bounds[o]) for o in info.objectives]
    trial.set_user_attr(CONSTRAINTS_ATTR, cons)
    trial.set_user_attr("metrics", metrics.to_dict())
    return values


def _sampler(
    cfg: ExperimentConfig, n_trials: int, screen: bool = False
) -> optuna.samplers.BaseSampler:
    """The configured sampler (:mod:`autocompress.samplers`)."""
    s = cfg.search
    has_bounds = any(getattr(cfg.objectives, n).bound is not None for n in cfg.objectives.enabled())
    return make_sampler(
        s.sampler,
        seed=s.seed,
        n_trials=n_trials,
        screen=screen,
        population_size=s.population_size,
        constraints_func=constraints_of if has_bounds else None,
    )


def _space_fingerprint(cfg: ExperimentConfig, space_params: dict) -> str:
    payload = {"objectives": cfg.objectives.enabled(), "space": space_params}
    if size_measure(cfg) != "packed":  # (packed studies keep the fingerprint they had)
        payload["size_measure"] = size_measure(cfg)
    return content_key(payload)


@dataclass
class StudyInfo:
    study: optuna.Study
    objectives: list[str]

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o].direction for o in self.objectives]

    def count(self, *states: TrialState) -> int:
        return len(self.study.get_trials(deepcopy=False, states=states))


def storage_kind(cfg: ExperimentConfig) -> str:
    """``sqlite`` (one process), ``journal`` (processes on one machine) or ``rdb`` (server)."""
    url = cfg.optuna_storage
    if url.startswith("journal"):
        return "journal"
    return "sqlite" if url.startswith("sqlite:") else "rdb"


_OPEN: dict[tuple, object] = {}  # one storage (one connection pool) per URL and callback


def shared_storage(cfg: ExperimentConfig, on_stale: StaleCallback | None = None):
    """The config's storage: one per process and callback for a database server (a connection
    pool), files opened afresh (a folder may be deleted between). RDB storages get a heartbeat:
    a live worker fails (and retries) the trials of a killed one."""
    if storage_kind(cfg) != "rdb":
        return _new_storage(cfg, on_stale)
    s = cfg.search
    key = (cfg.optuna_storage, s.heartbeat_interval, s.grace_period, s.reconnect_s, on_stale)
    if key not in _OPEN:
        _OPEN[key] = _new_storage(cfg, on_stale)
    return _OPEN[key]


def _new_storage(cfg: ExperimentConfig, on_stale: StaleCallback | None):
    url = cfg.optuna_storage
    try:
        if storage_kind(cfg) == "journal":
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            rest = url.removeprefix("journal").removeprefix(":").removeprefix("//")
            path = Path(rest) if rest else cfg.output_dir / "optuna.journal"
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            cfg.output_dir.mkdir(parents=True, exist_ok=True)
        s = cfg.search
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True} if storage_kind(cfg) == "rdb" else None,
            heartbeat_interval=s.heartbeat_interval,
            grace_period=s.grace_period,
            heartbeat_stale_trial_callback=on_stale,
        )
        if storage_kind(cfg) != "rdb":
            return rdb
        # A database server may restart or drop connections: ride it out for a while.
        return RetryingStorage(
            _CachedStorage(rdb),
            timeout_s=s.reconnect_s,
            log=print,
            what=f"storage {mask_secrets(url)}",
        )
    except Exception as exc:  # noqa: BLE001 - bad URL, unreachable server, missing driver
        raise AutocompressError(
            f"storage {mask_secrets(url)}: cannot open ({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = mask_secrets(str(exc)).strip()
    return text.splitlines()[0] if text else ""


def open_study(
    cfg: ExperimentConfig,
    space_params: dict,
    on_stale: StaleCallback | None = None,
    *,
    screen: bool = False,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> tuple[StudyInfo, bool]:
    """Create the study (with ``screen`` the screen's) or load it to resume or join; refuse one
    made for another space. Returns ``(info, created)``: exactly one process creates it."""
    objectives = cfg.objectives.enabled()
    fp = _space_fingerprint(cfg, space_params)
    storage = shared_storage(cfg, on_stale)
    name = cfg.name + (SCREEN_SUFFIX if screen else "")
    n = cfg.search.screen_trials if screen else cfg.search.n_trials
    kw = {"study_name": name, "storage": storage, "sampler": sampler or _sampler(cfg, n, screen)}
    directions = [OBJECTIVES[o].direction for o in objectives]
    try:
        study, created = optuna.create_study(directions=directions, **kw), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(**kw), False
    except Exception as exc:  # noqa: BLE001 - the server went away between connect and use
        raise AutocompressError(
            f"storage {mask_secrets(cfg.optuna_storage)}: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if not created and sampler is None:
        # A process joining (or resuming) the study: its seeded sampler would otherwise propose
        # the same policies as every other worker started with that seed.
        study.sampler.reseed_rng()
    old = None if created else wait_for_attr(study, "space_fingerprint", 30.0)
    if old is None:  # new, or its creator died before setting the study up: do it here
        study.set_user_attr("objectives", objectives)
        study.set_user_attr("space_fingerprint", fp)
    elif old != fp:
        raise ConfigError(
            f"{cfg.source}: study {name!r} in {mask_secrets(cfg.optuna_storage)} "
            "was made for another search space or objectives; choose another name or "
            "output_dir"
        )
    return StudyInfo(study, objectives), created


def run_once(
    study: optuna.Study, key: str, fn: Callable[[], object], lease_s: float = 60.0
) -> bool:
    """Run ``fn`` in exactly one of the processes sharing ``study`` (the others wait); returns
    whether this one ran it. A lock study per attempt elects the runner; one that dies is
    replaced after ``lease_s``, so ``fn`` must tolerate a half-done attempt (``skip_if_exists``)."""
    done = f"done:{key}"
    attempt = 0
    while not study.user_attrs.get(done):
        lock = f"{study.study_name}-{key}-lock{attempt}"
        try:
            optuna.create_study(study_name=lock, storage=study._storage)
        except optuna.exceptions.DuplicatedStudyError:
            if wait_for_attr(study, done, lease_s):
                return False
            attempt += 1
            continue
        fn()
        study.set_user_attr(done, True)
        return True
    return False


def wait_for_attr(study: optuna.Study, key: str, timeout: float = 120.0):
    """A study user attribute another worker is about to set (polls the storage)."""
    deadline = time.monotonic() + timeout
    while True:
        if (value := study.user_attrs.get(key)) is not None or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def load_study(cfg: ExperimentConfig) -> StudyInfo:
    """Load an existing study (for status and pick) without changing it."""
    try:
        study = optuna.load_study(study_name=cfg.name, storage=shared_storage(cfg))
    except KeyError:
        raise AutocompressError(
            f"no search named {cfg.name!r} in {mask_secrets(cfg.optuna_storage)}: "
            "run 'autocompress search' first"
        ) from None
    return StudyInfo(study, list(study.user_attrs.get("objectives", cfg.objectives.enabled())))


@dataclass(frozen=True)
class TrialRecord:
    """One complete trial as the study stores it: its number, policy, measurements (accuracy on
    validation), objective values in the study's order, MLflow run, whether it meets the
    objectives' bounds (``feasible``) and is one of the feasible non-dominated trials
    (``pareto``). A :data:`FrontPoint` is one on the front."""

    trial: int
    policy: CompressionPolicy
    metrics: TrialMetrics
    values: tuple[float, ...] = ()
    mlflow_run_id: str | None = None
    feasible: bool = True
    pareto: bool = False

    # the metrics a front is read by, as the record's own attributes
    val_accuracy = property(attrgetter("metrics.val_accuracy"))
    latency_ms = property(attrgetter("metrics.latency_ms"))
    size_kb = property(attrgetter("metrics.size_kb"))
    compression_ratio = property(attrgetter("metrics.compression_ratio"))
    summary = property(lambda self: self.policy.summary())

    def row(self) -> dict[str, Any]:
        """The trial table's row (JSON, CSV and the reports)."""
        m = self.metrics.to_dict()
        return {"trial": self.trial, **{k: m.get(k) for k in _ROW_METRICS}} | {
            "summary": self.summary,
            "policy": self.policy.to_dict(),
            "mlflow_run_id": self.mlflow_run_id,
            "values": list(self.values),
            "feasible": self.feasible,
            "pareto": self.pareto,
            "metrics": m,
        }


FrontPoint = TrialRecord


def trial_records(info: StudyInfo) -> list[TrialRecord]:
    """Every complete trial, in trial order, ``pareto`` marking the feasible non-dominated ones."""
    out = [
        TrialRecord(
            t.number,
            CompressionPolicy.from_dict(t.user_attrs.get("policy") or {}),
            TrialMetrics.from_dict(t.user_attrs.get("metrics", {})),
            tuple(t.values),
            t.user_attrs.get("mlflow_run_id"),
            all(c <= 0 for c in constraints_of(t)),
        )
        for t in info.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]
    feasible = [i for i, r in enumerate(out) if r.feasible]
    on_front = non_dominated([out[i].values for i in feasible], info.directions)
    for j in on_front:
        out[feasible[j]] = replace(out[feasible[j]], pareto=True)
    return out


def front_points(info: StudyInfo, records: list[TrialRecord] | None = None) -> list[FrontPoint]:
    """The feasible non-dominated trials (of ``records``, default the study's), best validation
    accuracy first."""
    records = trial_records(info) if records is None else records
    return sorted((r for r in records if r.pareto), key=lambda r: -r.val_accuracy)


def fmt_time(seconds: float) -> str:
    """``42s``, ``3m07s`` or ``2h05m``."""
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_tail(info: StudyInfo, elapsed: float, eta: float, deadline: float | None) -> str:
    """The end of a progress line: the front so far, elapsed time and ETA (capped by the
    ``deadline``, ``time.monotonic()``, of the stage's budget)."""
    if deadline is not None:
        eta = min(eta, max(deadline - time.monotonic(), 0.0))
    front = front_points(info)
    best = (
        f"front {len(front)} pts, best acc {front[0].val_accuracy:.4f}, "
        f"smallest {min(p.size_kb for p in front):.1f} KB"
        if front
        else "front empty"
    )
    return f"{best} | {fmt_time(elapsed)} elapsed, ETA {fmt_time(eta)}"
