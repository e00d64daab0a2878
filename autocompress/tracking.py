"""MLflow tracking: one parent run per search, one nested run per trial, Pareto artifacts.

Uses ``MlflowClient`` with explicit run ids (no fluent global state), so a resumed search finds
its parent run again and trial runs can be ended FAILED or KILLED with their reason.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._retry import retry_call
from .errors import AutocompressError, ServiceUnavailable

_SECRET = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")
_STUDY_TAG = "autocompress.study"


def mask_secrets(text: str) -> str:
    """Hide passwords in URLs: ``postgresql://u:secret@h`` -> ``postgresql://u:***@h``."""
    return _SECRET.sub(r"\1***\3", text)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = mask_secrets(str(v))[:6000]
    return out


def _check_server(uri: str, timeout: float = 10.0) -> None:
    """Fail fast (instead of MLflow's minutes of retries) when a tracking server is not there."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout)
    except urllib.error.HTTPError:
        return  # something answers; MLflow will say what is wrong
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AutocompressError(
            f"MLflow tracking server {mask_secrets(uri)} is not reachable ({reason})"
        ) from None


class Tracker:
    """Thin wrapper over ``mlflow.MlflowClient`` for the search's runs."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        artifact_dir: Path | None = None,
        *,
        reconnect_s: float = 120.0,
        log=print,
    ):
        import mlflow
        from mlflow.entities import Metric, Param, RunTag

        self._Metric, self._Param, self._RunTag = Metric, Param, RunTag
        self.tracking_uri = tracking_uri
        self.reconnect_s, self._log_line = reconnect_s, log
        if tracking_uri.startswith(("http://", "https://")):
            _check_server(tracking_uri)
            # Our own bounded retry (below) replaces MLflow's minutes of retries per request.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        try:
            self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = None
                if artifact_dir is not None and not tracking_uri.startswith(("http", "databricks")):
                    location = Path(artifact_dir).resolve().as_uri()
                try:
                    self.client.create_experiment(experiment, artifact_location=location)
                except Exception:  # another worker created it just now: it is there
                    if self.client.get_experiment_by_name(experiment) is None:
                        raise
                exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = exp.experiment_id
        except Exception as exc:  # noqa: BLE001 - unreachable server, bad URI, ...
            raise AutocompressError(
                f"MLflow tracking at {mask_secrets(tracking_uri)}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None

    # -- helpers ----------------------------------------------------------------------------
    def _retry(self, fn, on_retry=None):
        """``fn()`` retried while the tracking server is unreachable (``reconnect_s``)."""
        return retry_call(
            fn,
            what=f"MLflow tracking server {mask_secrets(self.tracking_uri)}",
            timeout_s=self.reconnect_s,
            log=self._log_line,
            on_retry=on_retry,
        )

    def log(self, run_id: str, params=None, metrics=None, tags=None) -> None:
        """One ``log_batch`` (MLflow splits it into requests within the server's limits)."""
        if not (params or metrics or tags):
            return
        now = int(time.time() * 1000)
        batch = {
            "params": [self._Param(k[:250], v) for k, v in (params or {}).items()],
            "metrics": [self._Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            "tags": [self._RunTag(k, str(v)) for k, v in (tags or {}).items()],
        }
        self._retry(lambda: self.client.log_batch(run_id, **batch))

    # -- the search's parent run ------------------------------------------------------------
    def start_search(
        self,
        run_id: str | None,
        *,
        name: str,
        config: Mapping[str, Any],
        baseline: Mapping,
        study: str,
    ) -> str:
        """Reopen ``run_id`` when it exists (resume), else the parent run of ``study`` another
        process made, else create it (concurrent creators agree on the oldest)."""
        if run_id:
            try:
                self._retry(lambda: self.client.get_run(run_id))
                self._retry(lambda: self.client.update_run(run_id, status="RUNNING"))
                return run_id
            except ServiceUnavailable:
                raise
            except Exception:  # noqa: BLE001 - deleted or from another backend: start anew
                pass
        found = self._search_runs_of(study)  # another process may have made it (or be making it)
        if not found:
            tags = {"autocompress.role": "search", "mlflow.note.content": f"search {name}"}
            run = self._retry(
                lambda: self.client.create_run(
                    self.experiment_id, run_name=f"search-{name}", tags=tags | {_STUDY_TAG: study}
                )
            )
            rid = run.info.run_id
            # Two processes that created one each at once keep the older; the other goes.
            found = self._search_runs_of(study)
            if not found or found[0] == rid:
                baseline_metrics = {f"baseline_{k}": v for k, v in baseline.items()}
                self.log(rid, params=flatten(config), metrics=baseline_metrics)
                masked = json.loads(mask_secrets(json.dumps(config)))
                self._retry(lambda: self.client.log_dict(rid, masked, "config.json"))
                return rid
            self._retry(lambda: self.client.delete_run(rid))
        self._retry(lambda: self.client.update_run(found[0], status="RUNNING"))
        return found[0]

    def _search_runs_of(self, study: str) -> list[str]:
        """Parent runs tagged with ``study``, oldest first."""
        runs = self._retry(
            lambda: self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{_STUDY_TAG}` = '{study}' "
                "and tags.`autocompress.role` = 'search'",
                max_results=100,
            )
        )
        runs = sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
        return [r.info.run_id for r in runs]

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: str | None = None):
        for p in paths:
            self._retry(lambda p=p: self.client.log_artifact(run_id, str(p), artifact_path))

    def log_table(self, run_id: str, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        """Rows of equal keys as an MLflow table (shown in the run's artifacts)."""
        data = {k: [r[k] for r in rows] for k in rows[0]} if rows else {}
        self._retry(lambda: self.client.log_table(run_id, data=data, artifact_file=artifact_file))

    # -- trials -----------------------------------------------------------------------------
    def start_trial(
        self, parent_id: str, number: int, params: Mapping[str, Any], policy: Mapping, summary: str
    ) -> str:
        run = self._retry(
            lambda: self.client.create_run(
                self.experiment_id,
                run_name=f"trial-{number:03d}",
                tags={
                    "mlflow.parentRunId": parent_id,
                    "autocompress.role": "trial",
                    "trial_number": str(number),
                    "mlflow.note.content": summary,
                },
            ),
            # The run may have been created before the connection dropped: reuse it.
            on_retry=lambda: next(iter(self.trial_runs(parent_id, number)), None),
        )
        rid = run.info.run_id
        self.log(rid, params={k: str(v) for k, v in params.items()})
        self._retry(lambda: self.client.log_dict(rid, dict(policy), "policy.json"))
        return rid

    def end_run(
        self,
        run_id: str,
        status: str = "FINISHED",
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """Log the last ``metrics`` and ``tags`` and end the run (a trial's or the search's)."""
        self.log(run_id, metrics=metrics, tags=tags)
        self._retry(lambda: self.client.set_terminated(run_id, status=status))

    def trial_runs(self, parent_id: str, number: int | None = None) -> list:
        """The trial runs under ``parent_id`` (of trial ``number`` only, if given)."""
        query = f"tags.mlflow.parentRunId = '{parent_id}'"
        if number is not None:
            query += f" and tags.trial_number = '{number}'"
        return self._retry(
            lambda: self.client.search_runs(
                [self.experiment_id], filter_string=query, max_results=10000
            )
        )

    def side_run(self, role: str, name: str, tags: Mapping[str, str] | None = None) -> str:
        """A run outside the search (a stage run alone, e.g. the sensitivity table): its id."""
        tags = {"autocompress.role": role, **(tags or {})}
        run = self._retry(
            lambda: self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        )
        return run.info.run_id
