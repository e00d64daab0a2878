"""``export(config, criteria)``: materialise a picked policy as deployable, verified artifacts.

fine-tune (longer, quantisation-aware, distilled from the uncompressed model) → ONNX (FP32, and
INT8 QDQ for the quantised layers) → packed file → verification on the test split and on the
target (ONNX Runtime accuracy, measured vs predicted latency, packed bytes vs FP32 state_dict,
bit-exact reload of the packed file) → MLflow (under the trial's run) + Model Registry.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from ..compress.apply import materialize
from ..config import ExperimentConfig
from ..data import DataBundle
from ..errors import AutocompressError
from ..hardware.latency import make_latency_model
from ..hardware.measure import export_onnx, measure_onnx_latency
from ..policy import CompressionPolicy
from ..reporting.figures import log_export_figures
from ..search.objective import TrialEvaluator
from ..search.run import prepare
from ..tracking import Tracker
from ..training import batches, evaluate
from .artifact import ModelRef, load_packed_model, save_packed_model
from .pick import PickCriteria, pick

__all__ = ["ExportResult", "export", "onnx_accuracy"]


@dataclass
class ExportResult:
    trial: int
    policy: dict
    test_accuracy: float  # deployed ONNX model, test split
    torch_test_accuracy: float  # fine-tuned compressed torch model, test split
    baseline_test_accuracy: float
    val_accuracy_search: float
    measured_latency_ms: float
    predicted_latency_ms: float
    baseline_latency_ms: float
    packed_bytes: int
    fp32_state_dict_bytes: int
    compression_ratio: float
    speedup: float
    packed_reload_exact: bool
    int8_layers: list[str]
    seconds: float
    deployed_form: str = "fp32"  # "int8-qdq" or "fp32"
    int8_reduce_range: bool = False  # INT8 weights on -64..64 (U8S8 saturation workaround)
    int8_fallback: str = ""  # why the INT8 model was not deployed, when it was not
    artifacts: dict[str, str] = field(default_factory=dict)
    registered_model: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def onnx_accuracy(path: str | Path, ds, *, batch_size: int = 256, threads: int = 2) -> float:
    """Top-1 accuracy of an ONNX model on a data set, run by ONNX Runtime on the CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in batches(ds, batch_size):
        logits = sess.run(None, {name: x.numpy().astype(np.float32)})[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / max(total, 1)


@dataclass
class _Deployed:
    fp32: Path
    path: Path
    form: str
    reduce_range: bool = False
    fallback: str = ""


def _reduce_range(cfg: ExperimentConfig) -> bool:
    from ..hardware.deploy import u8s8_saturates

    mode = cfg.export.int8_weight_range
    return u8s8_saturates() if mode == "auto" else mode == "reduced"


def _deploy(
    plain: torch.nn.Module,
    int8: dict[str, int],
    data: DataBundle,
    out: Path,
    cfg: ExperimentConfig,
    *,
    log=print,
) -> _Deployed:
    """FP32 ONNX always; INT8 QDQ for the quantised layers, deployed only when its validation
    accuracy stays within ``export.max_int8_gap`` points of the FP32 ONNX model's."""
    example = data.example_input(cfg.latency.batch_size)
    fp32 = export_onnx(plain, example, out / "model_fp32.onnx")
    if not int8:
        return _Deployed(fp32, fp32, "fp32")
    from ..hardware.deploy import export_deployed

    bs = cfg.data.batch_size
    calib = [
        x
        for x, _ in islice(
            batches(data.train, bs, shuffle=True, seed=1), cfg.export.calibration_batches
        )
    ]
    reduce = _reduce_range(cfg)
    deployed = export_deployed(
        plain,
        example,
        out / "model_int8.onnx",
        int8_layers=sorted(int8),
        calibration=calib,
        reduce_range=reduce,
    )
    ref_acc = onnx_accuracy(fp32, data.val)
    int8_acc = onnx_accuracy(deployed, data.val)
    gap = 100 * (ref_acc - int8_acc)
    if gap > cfg.export.max_int8_gap:
        why = (
            f"INT8 ONNX model lost {gap:.2f} points of validation accuracy against the FP32 one "
            f"(export.max_int8_gap: {cfg.export.max_int8_gap}); deploying the FP32 ONNX model"
        )
        log(f"warning: {why}")
        return _Deployed(fp32, fp32, "fp32", reduce, why)
    return _Deployed(fp32, deployed, "int8-qdq", reduce)


def _form(r: ExportResult) -> str:
    if r.deployed_form != "int8-qdq":
        return f"FP32 ({r.int8_fallback})" if r.int8_fallback else "FP32"
    rng = "weights on -64..64 (U8S8 saturation workaround)" if r.int8_reduce_range else "-127..127"
    return f"INT8 QDQ, {rng}"


def _report_md(r: ExportResult, cfg: ExperimentConfig) -> str:
    pol = CompressionPolicy.from_dict(r.policy)
    lines = [
        f"# Export of {cfg.name}, trial {r.trial}",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| test accuracy (deployed ONNX) | {r.test_accuracy:.4f} |",
        f"| test accuracy (compressed torch model) | {r.torch_test_accuracy:.4f} |",
        f"| baseline test accuracy | {r.baseline_test_accuracy:.4f} |",
        f"| test accuracy drop | {100 * (r.baseline_test_accuracy - r.test_accuracy):.2f} points |",
        f"| measured latency (ONNX Runtime) | {r.measured_latency_ms:.4f} ms |",
        f"| predicted latency | {r.predicted_latency_ms:.4f} ms |",
        f"| baseline FP32 ONNX latency | {r.baseline_latency_ms:.4f} ms |",
        f"| speed-up | {r.speedup:.2f}x |",
        f"| packed bytes | {r.packed_bytes} |",
        f"| FP32 state_dict bytes | {r.fp32_state_dict_bytes} |",
        f"| compression ratio | {r.compression_ratio:.1f}x |",
        f"| packed file reloads bit-exact | {r.packed_reload_exact} |",
        f"| deployed ONNX form | {_form(r)} |",
        "",
        "## Policy",
        "",
        "| layer | sparsity | bits | keep ratio | deployed as |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, lp in pol.items():
        kind = "INT8 QDQ" if name in r.int8_layers else "FP32"
        lines.append(f"| {name} | {lp.sparsity:.2f} | {lp.bits} | {lp.keep_ratio:.2f} | {kind} |")
    lines += ["", "## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in r.artifacts.items()]
    return "\n".join(lines) + "\n"


def _register(tracker: Tracker, run_id: str, onnx_path: Path, data: DataBundle, cfg, trial: int):
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    example = data.example_input(1).numpy()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: example})[0]
    signature = infer_signature(example, out)
    name = cfg.export.registered_model or cfg.name
    mlflow.set_tracking_uri(tracker.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_path)),
            name="deployed_model",
            signature=signature,
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    tracker.client.set_registered_model_alias(name, cfg.export.alias, version)
    tracker.client.set_model_version_tag(name, version, "trial", str(trial))
    return {"name": name, "version": version, "alias": cfg.export.alias}


def export(cfg: ExperimentConfig, criteria: PickCriteria, *, log=print) -> ExportResult:
    """Pick (or take ``criteria.trial``), fine-tune, export, verify, log and register."""
    t0 = time.perf_counter()
    picked = pick(cfg, criteria)
    if picked.choice is None:
        raise AutocompressError(picked.message())
    row = picked.choice
    log(picked.message())
    policy = CompressionPolicy.from_dict(row["policy"])
    prep = prepare(cfg, log=log)
    data, baseline = prep.data, prep.baseline
    example = data.example_input(cfg.latency.batch_size)
    latency_model = make_latency_model(
        cfg, baseline.model, prep.space, example, reference_ms=baseline.metrics.latency_ms, log=log
    )
    evaluator = TrialEvaluator(cfg, baseline, data, latency_model)
    ft = cfg.export.finetune
    log(f"fine-tuning trial {row['trial']}: {ft.steps} steps, distillation {ft.distill_weight}")
    model, _ = evaluator.compress(policy, recipe=ft, seed=cfg.search.seed)
    model.eval()
    torch_acc, _ = evaluate(model, data.test)
    predicted = latency_model.predict(model, policy)

    out = cfg.output_dir / "export" / f"trial-{row['trial']:03d}"
    out.mkdir(parents=True, exist_ok=True)
    ref = ModelRef.from_config(cfg, data.input_shape)
    packed_path = out / "model.acpk"
    packed = save_packed_model(packed_path, model, ref, policy, round_to=cfg.compression.round_to)
    reloaded, _ = load_packed_model(packed_path)
    fixed = next(batches(data.test, 64))[0]
    with torch.no_grad():
        exact = bool(torch.equal(reloaded(fixed), model(fixed)))
    if not exact:
        raise AutocompressError(f"{packed_path}: reloaded model's logits differ from the original")

    plain, int8 = materialize(model)
    log(f"exporting ONNX ({len(int8)} INT8 layers) and measuring on the target")
    dep = _deploy(plain, int8, data, out, cfg, log=log)
    fp32_path, deployed = dep.fp32, dep.path
    onnx_acc = onnx_accuracy(deployed, data.test)
    threads = getattr(latency_model, "threads", 2)
    measured = measure_onnx_latency(deployed, tuple(example.shape), threads=threads, repeats=100)
    base_path = export_onnx(baseline.model, example, out / "baseline_fp32.onnx")
    base_ms = measure_onnx_latency(base_path, tuple(example.shape), threads=threads, repeats=100)

    result = ExportResult(
        trial=row["trial"],
        policy=policy.to_dict(),
        test_accuracy=onnx_acc,
        torch_test_accuracy=torch_acc,
        baseline_test_accuracy=baseline.metrics.test_accuracy,
        val_accuracy_search=row["val_accuracy"],
        measured_latency_ms=measured,
        predicted_latency_ms=predicted,
        baseline_latency_ms=base_ms,
        packed_bytes=packed,
        fp32_state_dict_bytes=baseline.metrics.fp32_state_dict_bytes,
        compression_ratio=baseline.metrics.fp32_state_dict_bytes / packed,
        speedup=base_ms / measured,
        packed_reload_exact=exact,
        int8_layers=sorted(int8) if dep.form == "int8-qdq" else [],
        seconds=0.0,
        deployed_form=dep.form,
        int8_reduce_range=dep.reduce_range,
        int8_fallback=dep.fallback,
        artifacts={
            "packed": str(packed_path),
            "onnx_fp32": str(fp32_path),
            "onnx_deployed": str(deployed),
        },
    )
    report_md = out / "verification.md"
    report_json = out / "verification.json"
    result.artifacts |= {"report_md": str(report_md), "report_json": str(report_json)}

    tracker = Tracker(cfg.tracking, cfg.name, cfg.output_dir / "mlartifacts")
    run_id = row.get("mlflow_run_id")
    if run_id:
        result.registered_model = _register(
            tracker, run_id, Path(deployed), data, cfg, row["trial"]
        )
    result.seconds = time.perf_counter() - t0
    report_md.write_text(_report_md(result, cfg))
    report_json.write_text(json.dumps(result.to_dict(), indent=2))
    if run_id:
        metrics = {
            f"export_{k}": getattr(result, k)
            for k in (
                "test_accuracy",
                "torch_test_accuracy",
                "measured_latency_ms",
                "predicted_latency_ms",
                "baseline_latency_ms",
                "packed_bytes",
                "compression_ratio",
                "speedup",
            )
        }
        tracker.end_trial(run_id, "FINISHED", metrics=metrics, tags={"exported": "true"})
        tracker.log_artifacts(run_id, [packed_path, fp32_path, report_md, report_json], "export")
        if deployed != fp32_path:
            tracker.log_artifacts(run_id, [Path(deployed)], "export")
    log_export_figures(tracker, run_id, result.to_dict(), out)
    return result
