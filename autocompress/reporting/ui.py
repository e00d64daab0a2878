"""``autocompress ui``: the MLflow UI on an experiment's tracking backend.

Starts the venv's ``mlflow ui`` (bound to 127.0.0.1 by default, one worker, MLflow's job runner
off: only GenAI features need it) and prints the URL of the experiment's runs table in a
trade-off view (:func:`runs_view_state`) until Ctrl-C. With an ``http(s)://`` tracking URI a
server exists already: it only prints the URL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import AutocompressError
from ..tracking import mask_secrets

LOCAL_HOST = "127.0.0.1"


def find_mlflow() -> str:
    """The ``mlflow`` executable of this Python environment (else the one on PATH)."""
    local = Path(sys.executable).parent / "mlflow"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("mlflow")
    if found is None:
        raise AutocompressError("mlflow executable not found next to Python or on PATH")
    return found


def free_port(host: str = LOCAL_HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("0.0.0.0", "") else "", 0))
        return int(s.getsockname()[1])


VIEW_KEY = "autocompress"
_VIEW_TAG = "mlflow.sharedViewState."
_DESCRIPTION = "attributes.`Description`"


def runs_view_state() -> dict:
    """An MLflow "shared view" of the runs table made for a search: trials sorted by validation
    accuracy (not nested under the search's run), their one-line description (metrics and
    policy) and the ``pareto`` tag as columns."""
    metrics = [f"metrics.`{m}`" for m in ("val_accuracy", "latency_ms", "size_kb")]
    return {
        "selectedColumns": [_DESCRIPTION, "tags.`pareto`", *metrics],
        "columnWidths": {_DESCRIPTION: 560},
        "orderByKey": "metrics.`val_accuracy`",
        "orderByAsc": False,
        "searchFilter": "",
    }


def set_runs_view(tracking_uri: str, experiment_id: str) -> bool:
    """Store :func:`runs_view_state` as the experiment tag the UI reads for
    ``?viewStateShareKey=autocompress``; False if the backend refused (e.g. read-only)."""
    import mlflow

    try:
        mlflow.MlflowClient(tracking_uri=tracking_uri).set_experiment_tag(
            experiment_id, _VIEW_TAG + VIEW_KEY, json.dumps(runs_view_state())
        )
    except Exception:  # noqa: BLE001 - the plain runs table still works
        return False
    return True


def experiment_url(base: str, experiment_id: str | None, *, view: bool = False) -> str:
    """The runs table of an experiment in the UI's model-training (not GenAI) mode; with
    ``view``, in the trade-off view that :func:`set_runs_view` stored."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/?workflowType=machine_learning"
    url = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return url + (f"&viewStateShareKey={VIEW_KEY}" if view else "")


def experiment_id(tracking_uri: str, name: str) -> str | None:
    """The id of experiment ``name`` in that backend, or None if there is none yet."""
    import mlflow

    try:
        exp = mlflow.MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(name)
    except Exception:  # noqa: BLE001 - unreachable or empty backend: the UI still starts
        return None
    return exp.experiment_id if exp else None


@dataclass
class UiServer:
    """A running ``mlflow ui`` process and where to reach it."""

    process: subprocess.Popen
    url: str

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server and its worker processes (its own process group)."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def ui_command(
    tracking_uri: str,
    *,
    host: str,
    port: int,
    workers: int = 1,
    allowed_hosts: str | None = None,
    executable: str | None = None,
) -> list[str]:
    """The ``mlflow ui`` command line."""
    cmd = [executable or find_mlflow(), "ui", "--backend-store-uri", tracking_uri]
    cmd += ["--host", host, "--port", str(port), "--workers", str(workers)]
    return cmd + (["--allowed-hosts", allowed_hosts] if allowed_hosts else [])


def _wait_until_up(proc: subprocess.Popen, url: str, timeout: float, log_path: Path | None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = ""
            if log_path and log_path.is_file():
                tail = ": " + " | ".join(log_path.read_text().strip().splitlines()[-3:])
            raise AutocompressError(f"mlflow ui exited with code {proc.returncode}{tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AutocompressError(f"mlflow ui did not answer at {url} within {timeout:.0f} s")


def start_ui(
    tracking_uri: str,
    *,
    host: str = LOCAL_HOST,
    port: int | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
    timeout: float = 120.0,
    **command,
) -> UiServer:
    """Start ``mlflow ui`` (``command``: :func:`ui_command`'s ``allowed_hosts``, ``executable``)
    in its own process group and wait until it answers ``/health``. Its output goes to
    ``log_path`` (else is discarded)."""
    port = port or free_port(host)
    cmd = ui_command(tracking_uri, host=host, port=port, **command)
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        if log_path:
            out.close()
    browse = LOCAL_HOST if host in ("0.0.0.0", "::", "") else host  # a wildcard: this machine
    server = UiServer(proc, f"http://{browse}:{port}")
    try:
        _wait_until_up(proc, server.url, timeout, log_path)
    except BaseException:
        server.stop()
        raise
    return server


def serve(tracking_uri: str, experiment: str, *, host: str = LOCAL_HOST, log=print, **ui) -> int:
    """Start the UI (``ui``: :func:`start_ui`'s options), print its URL, block until Ctrl-C;
    returns 130 then (0 if the server ends by itself)."""
    exp_id = experiment_id(tracking_uri, experiment)
    view = exp_id is not None and set_runs_view(tracking_uri, exp_id)
    if tracking_uri.startswith(("http://", "https://")):
        log(f"MLflow server: {experiment_url(mask_secrets(tracking_uri), exp_id, view=view)}")
        return 0
    log(f"starting the MLflow UI on {mask_secrets(tracking_uri)} ...")
    server = start_ui(tracking_uri, host=host, **ui)
    try:
        log(f"MLflow UI: {experiment_url(server.url, exp_id, view=view)}")
        if view:
            log(f"  (all runs, nested: {experiment_url(server.url, exp_id)})")
        if exp_id is None:
            log(f"(no experiment {experiment!r} there yet: run 'autocompress search' first)")
        if host != LOCAL_HOST:
            log(f"bound to {host}: reachable from other machines, without authentication")
        log("Ctrl-C to stop")
        while server.process.poll() is None:
            time.sleep(0.5)  # not a blocking wait(): Ctrl-C must get through at once
        log(f"the MLflow UI stopped by itself (exit code {server.process.returncode})")
        return 0
    except KeyboardInterrupt:
        log("stopping the MLflow UI")
        return 130
    finally:
        server.stop()
