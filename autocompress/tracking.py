"""MLflow tracking: one parent run per search, one nested run per trial, Pareto artifacts.

Uses ``MlflowClient`` with explicit run ids (no fluent global state), so a resumed search finds
its parent run again and trial runs can be ended FAILED or KILLED with their reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import AutocompressError

__all__ = ["Tracker", "mask_secrets", "flatten"]

_SECRET = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")
_MAX_BATCH = 100


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

    def __init__(self, tracking_uri: str, experiment: str, artifact_dir: Path | None = None):
        import mlflow
        from mlflow.entities import Metric, Param, RunTag

        self._Metric, self._Param, self._RunTag = Metric, Param, RunTag
        self.tracking_uri = tracking_uri
        if tracking_uri.startswith(("http://", "https://")):
            _check_server(tracking_uri)
        try:
            self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = None
                if artifact_dir is not None and not tracking_uri.startswith(("http", "databricks")):
                    location = Path(artifact_dir).resolve().as_uri()
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=location
                )
            else:
                self.experiment_id = exp.experiment_id
        except Exception as exc:  # noqa: BLE001 - unreachable server, bad URI, ...
            raise AutocompressError(
                f"MLflow tracking at {mask_secrets(tracking_uri)}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None

    # -- helpers ----------------------------------------------------------------------------
    def _log(self, run_id: str, params=None, metrics=None, tags=None) -> None:
        import time

        now = int(time.time() * 1000)
        params = [self._Param(k[:250], v) for k, v in (params or {}).items()]
        metrics = [self._Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        tags = [self._RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(params), len(metrics), len(tags), 1), _MAX_BATCH):
            self.client.log_batch(
                run_id,
                metrics=metrics[i : i + _MAX_BATCH],
                params=params[i : i + _MAX_BATCH],
                tags=tags[i : i + _MAX_BATCH],
            )

    def run_url_hint(self, run_id: str) -> str:
        return f"experiment {self.experiment_id}, run {run_id}"

    # -- the search's parent run ------------------------------------------------------------
    def start_search(
        self, run_id: str | None, *, name: str, config: Mapping[str, Any], baseline: Mapping
    ) -> str:
        """Reopen ``run_id`` when it exists (resume), else create the parent run."""
        if run_id:
            try:
                self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            except Exception:  # noqa: BLE001 - deleted or from another backend: start anew
                pass
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"search-{name}",
            tags={"autocompress.role": "search", "mlflow.note.content": f"search {name}"},
        )
        rid = run.info.run_id
        self._log(
            rid, params=flatten(config), metrics={f"baseline_{k}": v for k, v in baseline.items()}
        )
        self.client.log_dict(rid, json.loads(mask_secrets(json.dumps(config))), "config.json")
        return rid

    def finish_search(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def log_search_metrics(self, run_id: str, metrics: Mapping[str, float]) -> None:
        self._log(run_id, metrics=metrics)

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: str | None = None):
        for p in paths:
            self.client.log_artifact(run_id, str(p), artifact_path)

    # -- trials -----------------------------------------------------------------------------
    def start_trial(
        self, parent_id: str, number: int, params: Mapping[str, Any], policy: Mapping, summary: str
    ) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number:03d}",
            tags={
                "mlflow.parentRunId": parent_id,
                "autocompress.role": "trial",
                "trial_number": str(number),
                "mlflow.note.content": summary,
            },
        )
        rid = run.info.run_id
        self._log(rid, params={k: str(v) for k, v in params.items()})
        self.client.log_dict(rid, dict(policy), "policy.json")
        return rid

    def end_trial(
        self,
        run_id: str,
        status: str,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        self._log(run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(run_id, status=status)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._log(run_id, tags=tags)

    def trial_runs(self, parent_id: str) -> list:
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
            max_results=10000,
        )
