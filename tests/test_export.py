from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import tiny_config

from autocompress import load_experiment, search
from autocompress.cli import main
from autocompress.compression.artifact import load_packed_model
from autocompress.data import load_data
from autocompress.export import run as export_run
from autocompress.models import TinyCNN
from autocompress.training import batches

KEYS = (
    "trial",
    "test_accuracy",
    "baseline_test_accuracy",
    "measured_latency_ms",
    "predicted_latency_ms",
    "baseline_latency_ms",
    "packed_bytes",
    "onnx_bytes",
    "memory_steady_mb",
    "memory_peak_mb",
    "baseline_memory_peak_mb",
    "throughput",
    "deployed_forms",
    "fp32_state_dict_bytes",
    "artifacts",
)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, fmnist_root):
    tmp = tmp_path_factory.mktemp("export")
    path = tiny_config(
        tmp,
        fmnist_root,
        search__n_trials=3,
        export__finetune={"steps": 10, "distill_weight": 0.5},
        export__memory_repeats=1,
    )
    search(load_experiment(path), log=lambda *_: None)
    return path


def test_export_json_artifacts_and_registry(searched, capsys):
    assert main(["export", str(searched), "--trial", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in KEYS:
        assert key in out, key
    assert out["trial"] == 1
    assert out["packed_reload_exact"] is True
    assert out["deployed_form"] in ("int8-qdq", "fp32")
    art = out["artifacts"]
    assert (out["deployed_form"] == "fp32") == (art["onnx_deployed"] == art["onnx_fp32"])
    # sizes, memory and throughput are measured on what ships
    assert out["onnx_bytes"] == Path(art["onnx_deployed"]).stat().st_size
    assert out["baseline_memory_steady_mb"] > 0 and out["baseline_memory_peak_mb"] > 0
    assert out["memory_peak_mb"] >= 0 and out["memory_steady_mb"] >= 0
    assert set(out["throughput"]) == {"1", "8", "32"}
    assert all(v > 0 for v in out["throughput"].values())
    assert set(out["forms"]) == {"fp32", "fp16", "baseline"} | (
        {"int8-qdq"} if any(lp["bits"] < 32 for lp in out["policy"]["layers"].values()) else set()
    )
    assert out["forms"][out["deployed_form"]]["deployed"] is True
    assert out["forms"]["fp16"]["onnx_bytes"] < out["forms"]["fp32"]["onnx_bytes"]
    assert out["forms"]["fp16"]["note"]
    assert set(out["deployed_forms"]) == {"conv1", "conv2", "fc"}
    assert set(out["deployed_forms"].values()) <= {"fp32", "int8-qdq", "matmul-nbits"}
    fc = out["policy"]["layers"].get("fc", {})
    if out["deployed_form"] == "int8-qdq" and fc.get("bits", 32) <= 4:  # a MatMulNBits candidate
        assert "MatMulNBits" in out["nbits_note"]
    # the packed file alone rebuilds the shipped ONNX model
    assert out["unpack_exact"] is True
    assert main(["unpack", art["packed"], "-o", str(Path(art["packed"]).with_suffix(".onnx"))]) == 0
    report = Path(art["report_md"]).read_text()
    assert "## Forms on the target" in report and "(deployed)" in report
    # activation monitoring: one row per layer, in the report and on the MLflow run
    assert [a["layer"] for a in out["activations"]] == ["conv1", "conv2", "fc"]
    assert "## Activations" in report
    assert (Path(art["report_md"]).parent / "activations.png").is_file()
    # the deployed ONNX model runs in ONNX Runtime and agrees with the packed torch model
    model, _ = load_packed_model(art["packed"])
    cfg = load_experiment(searched)
    x = next(batches(load_data(cfg.data).test, 64))[0]
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(art["onnx_fp32"], providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    if any(lp["bits"] < 32 for lp in out["policy"]["layers"].values()):
        # fp32 export drops activation fake-quant: close, not equal
        assert np.abs(got - ref).max() < 0.5 * np.abs(ref).max()
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    sess = ort.InferenceSession(art["onnx_deployed"], providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.8
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking)
    version = client.get_model_version_by_alias(cfg.name, "picked")
    assert str(version.version) == out["registered_model"]["version"]
    assert version.tags["trial"] == "1"
    logged = [a.path for a in client.list_artifacts(version.run_id, "export")]
    assert "export/activations.json" in logged and "export/activations.png" in logged


def test_pick_nothing_qualifies_exit_1(searched, capsys):
    assert main(["pick", str(searched), "--min-accuracy", "1.0", "--max-size-kb", "0.01"]) == 1
    assert "no Pareto point meets" in capsys.readouterr().out


def test_pick_json(searched, capsys):
    assert main(["pick", str(searched), "--knee", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["choice"]["trial"] in range(3) and out["qualifying"] >= 1


@pytest.mark.parametrize(("int8_acc", "form"), [(0.80, "fp32"), (0.898, "int8-qdq")])
def test_int8_model_that_loses_accuracy_is_not_deployed(
    tmp_path, fmnist_root, monkeypatch, int8_acc, form
):
    """The INT8 ONNX model is deployed only within ``export.max_int8_gap`` (0.5 points) of the
    FP32 ONNX model's validation accuracy; otherwise the FP32 model is, and the report says why."""
    cfg = load_experiment(tiny_config(tmp_path, fmnist_root))
    data = load_data(cfg.data)
    asked: list[tuple[str, bool]] = []

    def fake_accuracy(path, ds, **_):
        asked.append((Path(path).name, ds is data.val))
        return int8_acc if "int8" in Path(path).name else 0.90

    monkeypatch.setattr(export_run, "onnx_accuracy", fake_accuracy)
    said = []
    dep = export_run._deploy(TinyCNN().eval(), {"conv2": 4}, data, tmp_path, cfg, log=said.append)
    # both ONNX models were scored, on validation data, never on the test split
    assert {"int8" in name for name, _ in asked} == {True, False}, asked
    assert all(on_val for _, on_val in asked), asked
    assert dep.form == form
    if form == "fp32":
        assert dep.path == dep.forms["fp32"][0] and "10.00 points" in dep.fallback and said
    else:
        assert dep.path.name == "model_int8.onnx" and not dep.fallback and not said
