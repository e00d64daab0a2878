"""``autocompress ui``: the command line it runs, the URL it prints, Ctrl-C, the stored view."""

from __future__ import annotations

import _thread
import json
import signal
import sys
import threading

import mlflow
import pytest
from conftest import tiny_config

from autocompress.cli import main
from autocompress.errors import AutocompressError
from autocompress.reporting import ui

# Stands in for the mlflow executable: answers /health on the --port it is given.
FAKE_MLFLOW = """#!{python}
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")
    def log_message(self, *a):
        pass
open(sys.argv[0] + ".args", "w").write(" ".join(sys.argv[1:]))
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


@pytest.fixture()
def fake_mlflow(tmp_path):
    exe = tmp_path / "mlflow"
    exe.write_text(FAKE_MLFLOW.format(python=sys.executable))
    exe.chmod(0o755)
    return exe


def test_command_line_binds_localhost_with_one_worker():
    cmd = ui.ui_command("sqlite:////x/mlflow.db", host="127.0.0.1", port=5123, executable="m")
    assert cmd == [
        "m",
        "ui",
        "--backend-store-uri",
        "sqlite:////x/mlflow.db",
        "--host",
        "127.0.0.1",
        "--port",
        "5123",
        "--workers",
        "1",
    ]
    cmd = ui.ui_command("u", host="0.0.0.0", port=1, allowed_hosts="a.b", executable="m")
    assert cmd[-2:] == ["--allowed-hosts", "a.b"]
    assert ui.find_mlflow().endswith("mlflow")  # the venv's, next to this Python
    assert 1024 < ui.free_port() < 65536


def test_experiment_url_opens_runs_in_model_training_mode():
    base = "http://127.0.0.1:5000"
    assert ui.experiment_url(base, "3") == (
        f"{base}/#/experiments/3/runs?workflowType=machine_learning"
    )
    assert ui.experiment_url(base + "/", "3", view=True).endswith(
        "workflowType=machine_learning&viewStateShareKey=autocompress"
    )
    assert ui.experiment_url(base, None) == f"{base}/#/?workflowType=machine_learning"


def test_set_runs_view_stores_the_shared_view(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    assert ui.set_runs_view(uri, exp_id)
    tag = client.get_experiment(exp_id).tags["mlflow.sharedViewState.autocompress"]
    state = json.loads(tag)
    assert state["orderByKey"] == "metrics.`val_accuracy`" and state["orderByAsc"] is False
    assert "tags.`pareto`" in state["selectedColumns"]
    assert not ui.set_runs_view(uri, "999")  # unknown experiment: refused, not raised


def test_serve_prints_url_masks_secrets_and_stops_on_ctrl_c(fake_mlflow, monkeypatch):
    monkeypatch.setattr(ui, "experiment_id", lambda uri, name: None)  # no database to ask
    lines: list[str] = []

    def log(text: str) -> None:
        lines.append(text)
        if text.startswith("MLflow UI:"):  # the user presses Ctrl-C once the URL is shown
            threading.Timer(0.2, _thread.interrupt_main).start()

    uri = "postgresql://user:s3cret@127.0.0.1:1/db"
    # interrupt_main() does nothing where SIGINT is ignored (a background job of a shell
    # without job control): give the test the handler an interactive user has.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = ui.serve(uri, "exp", port=ui.free_port(), executable=str(fake_mlflow), log=log)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    text = "\n".join(lines)
    assert "s3cret" not in text and "postgresql://user:***@127.0.0.1:1/db" in text
    url = next(x for x in lines if x.startswith("MLflow UI:")).split(": ", 1)[1]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/#/?workflowType=machine_learning")
    args = (fake_mlflow.parent / "mlflow.args").read_text()
    assert "--host 127.0.0.1" in args and f"--backend-store-uri {uri}" in args


def test_start_ui_reports_a_server_that_dies(tmp_path):
    exe = tmp_path / "mlflow"
    exe.write_text(f"#!{sys.executable}\nimport sys\nprint('boom: bad store')\nsys.exit(3)\n")
    exe.chmod(0o755)
    with pytest.raises(AutocompressError, match="exited with code 3.*boom"):
        ui.start_ui("sqlite:///x", executable=str(exe), log_path=tmp_path / "log", timeout=30)


def test_http_tracking_uri_only_prints_the_url(monkeypatch):
    monkeypatch.setattr(ui, "experiment_id", lambda uri, name: None)
    lines: list[str] = []
    assert ui.serve("http://u:pw@127.0.0.1:1", "exp", log=lines.append) == 0
    assert lines == ["MLflow server: http://u:***@127.0.0.1:1/#/?workflowType=machine_learning"]


def test_cli_ui_and_report_are_registered(tmp_path, fmnist_root, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ui", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--host" in out and "--port" in out and "127.0.0.1" in out
    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0
    assert "--out" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["ui", str(tiny_config(tmp_path, fmnist_root)), "--port", "notanumber"])
    assert exc.value.code == 2
