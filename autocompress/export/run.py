"""``export(config, criteria)``: materialise a picked policy as deployable, verified artifacts.

fine-tune (longer, quantisation-aware, distilled from the uncompressed model) → ONNX (FP32, and
INT8 QDQ for the quantised layers) → packed file → verification on the test split and on the
target (ONNX Runtime accuracy, measured vs predicted latency, packed bytes vs FP32 state_dict,
bit-exact reload of the packed file, the ONNX model :func:`unpack` rebuilds from it alone equal
to the shipped one) → MLflow (under the trial's run) + Model Registry.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..baseline import Prepared, prepare
from ..compression.apply import activation_stats, materialize
from ..compression.artifact import ModelRef, load_packed_model, save_packed_model
from ..compression.quantizers import weight_format
from ..config import ExperimentConfig
from ..data import DataBundle
from ..errors import AutocompressError, ModelError
from ..hardware.deploy import (
    DeploySpec,
    FormMeasurement,
    build_form,
    measure_forms,
    nbits_candidates,
    sparse_initializer_count,
    u8s8_saturates,
)
from ..hardware.latency import make_latency_model
from ..hardware.measure import export_onnx, make_session, measure_onnx_latency
from ..policy import CompressionPolicy, compressible_layers
from ..search.figures import log_export_figures
from ..search.pick import PickCriteria, pick
from ..search.trials import TrialEvaluator
from ..tracking import Tracker
from ..training import CLASSIFICATION, Task, batches, evaluate, first_batches


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
    nbits_note: str = ""  # whether <= 4-bit Linear layers run as MatMulNBits, and why
    onnx_bytes: int = 0  # the deployed .onnx file on disk
    onnx_sparse_initializers: int = 0  # its weights stored in ONNX's sparse (COO) form
    memory_steady_mb: float = 0.0  # resident memory the deployed model adds to a process
    memory_peak_mb: float = 0.0  # peak (VmHWM) it adds: load and pre-pack transients
    baseline_memory_steady_mb: float = 0.0  # the same for the uncompressed FP32 ONNX model
    baseline_memory_peak_mb: float = 0.0
    baseline_onnx_bytes: int = 0
    throughput: dict[str, float] = field(default_factory=dict)  # batch -> images/s (deployed)
    throughput_threads: int = 0  # the target's threads, which ``throughput`` is measured at
    deployed_forms: dict[str, str] = field(default_factory=dict)  # layer -> what it runs as
    forms: dict[str, dict] = field(default_factory=dict)  # form -> asdict(FormMeasurement)
    unpack_exact: bool = False  # the ONNX rebuilt from the packed file alone gives equal outputs
    test_images: int = 0  # images the test accuracies were measured on
    activations: list[dict] = field(default_factory=list)  # ActivationStats.to_dict() per layer
    artifacts: dict[str, str] = field(default_factory=dict)
    registered_model: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def onnx_path(self) -> Path:
        """The deployed ONNX model."""
        return Path(self.artifacts["onnx_deployed"])

    @property
    def packed_path(self) -> Path:
        return Path(self.artifacts["packed"])

    @property
    def report_path(self) -> Path:
        """``verification.md``."""
        return Path(self.artifacts["report_md"])


class _OnnxModule(torch.nn.Module):
    """An ONNX model run by ONNX Runtime (CPU) behind ``nn.Module``'s call, so the task's
    metric scores the deployed file exactly as it scores the torch model."""

    def __init__(self, path: str | Path, threads: int) -> None:
        super().__init__()
        self.sess = make_session(path, threads=threads)
        self.input = self.sess.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.sess.run(None, {self.input: x.numpy().astype(np.float32)})[0])


def onnx_outputs_equal(a: str | Path, b: str | Path, x: np.ndarray) -> bool:
    """Whether two ONNX models give bit-identical outputs on ``x`` (ONNX Runtime, CPU)."""
    t = torch.from_numpy(x.astype(np.float32))
    return bool(torch.equal(_OnnxModule(a, 2)(t), _OnnxModule(b, 2)(t)))


def unpack(packed: str | Path, out: str | Path, *, model: torch.nn.Module | None = None) -> Path:
    """Write the ONNX model the packed file ``packed`` was deployed as to ``out``, from the file
    alone (the architecture reference, the entropy-coded weights and the deployed form's
    :class:`~autocompress.hardware.deploy.DeploySpec` it carries), so the small file is a transfer
    format; a file packed without a deployed form (before export) gives the FP32 model.
    ``model``: the architecture, for a file packed from a Python model object."""
    model, meta = load_packed_model(packed, model=model)
    deploy = meta.get("deploy") or {}
    spec = DeploySpec.from_dict(deploy)
    plain, _ = materialize(model)
    batch = int(deploy.get("example_batch", 1))
    example = torch.zeros((batch, *meta["model"]["input_shape"]))
    if spec.form == "int8-qdq" and spec.int8_layers and not spec.activation_qparams:
        raise ModelError(f"{packed}: INT8 form without activation parameters; cannot unpack")
    return build_form(plain, example, out, spec)[0]


def onnx_accuracy(
    path: str | Path, ds, *, batch_size: int = 256, threads: int = 2, task: Task = CLASSIFICATION
) -> float:
    """The task's metric (top-1 accuracy) of an ONNX model on a data set, in ONNX Runtime."""
    return evaluate(_OnnxModule(path, threads), ds, batch_size=batch_size, task=task)[0]


@dataclass
class _Deployed:
    forms: dict[str, tuple[Path, DeploySpec]]  # every form built: path and what rebuilds it
    form: str  # the deployed one
    reduce_range: bool = False
    fallback: str = ""
    nbits_note: str = ""  # whether <= 4-bit Linear layers run as MatMulNBits, and why

    @property
    def path(self) -> Path:
        return self.forms[self.form][0]

    @property
    def spec(self) -> DeploySpec:
        return self.forms[self.form][1]


def _deploy(
    plain: torch.nn.Module,
    int8: dict[str, int],
    data: DataBundle,
    out: Path,
    cfg: ExperimentConfig,
    *,
    nbits: dict[str, tuple[int, str]] | None = None,
    threads: int = 2,
    task: Task = CLASSIFICATION,
    log=print,
) -> _Deployed:
    """Build the forms of ``export.forms`` (FP32 always). INT8 QDQ (the quantised layers) is
    deployed when it is built and its validation accuracy stays within ``export.max_int8_gap``
    points of the FP32 ONNX model's; otherwise FP32 is. ``nbits`` (Linear layers at <= 4 bits)
    run as ``MatMulNBits`` inside the INT8 form when that is at least as accurate on the
    validation split and not slower (measured, 5 % noise allowed) than INT8 QDQ for them."""
    example = data.example_input(cfg.latency.batch_size)
    sparse = cfg.export.sparse_initializers
    forms = {}
    for form in ("fp32", "fp16"):  # FP32 always
        if form == "fp32" or form in cfg.export.forms:
            spec = DeploySpec(form, sparse_initializers=sparse)
            forms[form] = build_form(plain, example, out / f"model_{form}.onnx", spec)
    if not int8:
        return _Deployed(forms, "fp32")
    if "int8-qdq" not in cfg.export.forms:
        why = "export.forms leaves out int8-qdq: the quantised layers are deployed as FP32"
        return _Deployed(forms, "fp32", fallback=why)
    n = cfg.export.calibration_batches
    calib = first_batches(data.train, cfg.data.batch_size, n, shuffle=True, seed=1)
    mode = cfg.export.int8_weight_range
    reduce = u8s8_saturates() if mode == "auto" else mode == "reduced"
    spec = DeploySpec("int8-qdq", tuple(sorted(int8)), reduce, sparse_initializers=sparse)
    forms["int8-qdq"] = build_form(plain, example, out / "model_int8.onnx", spec, calibration=calib)
    ref_acc = onnx_accuracy(forms["fp32"][0], data.val, task=task)
    int8_acc = onnx_accuracy(forms["int8-qdq"][0], data.val, task=task)
    note = ""
    if nbits:
        spec = replace(forms["int8-qdq"][1], nbits_layers=dict(nbits))
        path, spec = build_form(plain, example, out / "model_int8_nbits.onnx", spec)
        nb_acc = onnx_accuracy(path, data.val, task=task)
        shape = tuple(example.shape)
        int8_ms = measure_onnx_latency(forms["int8-qdq"][0], shape, threads=threads, repeats=100)
        nb_ms = measure_onnx_latency(path, shape, threads=threads, repeats=100)
        layers = ", ".join(sorted(nbits))
        facts = (
            f"validation accuracy {nb_acc:.4f} vs {int8_acc:.4f}, {nb_ms:.4f} vs {int8_ms:.4f} ms"
        )
        if nb_acc >= int8_acc and nb_ms <= 1.05 * int8_ms:
            forms["int8-qdq"], int8_acc = (path, spec), nb_acc
            note = f"MatMulNBits (4-bit) for {layers}: {facts} against INT8 QDQ"
        else:
            path.unlink(missing_ok=True)
            note = f"INT8 QDQ kept for {layers}: MatMulNBits gave {facts}"
        log(note)
    gap = 100 * (ref_acc - int8_acc)
    if gap > cfg.export.max_int8_gap:
        why = (
            f"INT8 ONNX model lost {gap:.2f} points of validation accuracy against the FP32 one "
            f"(export.max_int8_gap: {cfg.export.max_int8_gap}); deploying the FP32 ONNX model"
        )
        log(f"warning: {why}")
        return _Deployed(forms, "fp32", reduce, why, note)
    return _Deployed(forms, "int8-qdq", reduce, nbits_note=note)


def _fp16_note(m: dict[str, FormMeasurement], threads: int, batch: int) -> str:
    """What FP16 buys on this target, from the measurements (vs FP32)."""
    a, b = m["fp16"], m["fp32"]
    la, lb = a.latency_ms(batch, threads), b.latency_ms(batch, threads)
    faster = la is not None and lb is not None and la < 0.97 * lb
    smaller = a.memory_steady_mb < 0.97 * b.memory_steady_mb
    if not faster and not smaller:
        return "storage only on this target (no speed or memory gain measured)"
    gains = (["faster"] if faster else []) + (["less memory"] if smaller else [])
    return " and ".join(gains) + " than FP32 on this target"


def _register(tracker: Tracker, run_id: str, onnx_path: Path, data: DataBundle, cfg, trial: int):
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    example = data.example_input(1)
    signature = infer_signature(example.numpy(), _OnnxModule(onnx_path, 1)(example).numpy())
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


def export(
    cfg: ExperimentConfig, criteria: PickCriteria, *, prepared: Prepared | None = None, log=print
) -> ExportResult:
    """Pick (or take ``criteria.trial``), fine-tune, export, verify, log and register.
    ``prepared``: a Python caller's model and data (else what the config names)."""
    t0 = time.perf_counter()
    picked = pick(cfg, criteria)
    if (point := picked.choice) is None:
        raise AutocompressError(picked.message())
    log(picked.message())
    policy = point.policy
    prep = prepared or prepare(cfg, log=log)
    data, baseline = prep.data, prep.baseline
    base_test = baseline.metrics.test_accuracy
    if math.isnan(base_test):  # searched without a test split
        base_test = evaluate(baseline.model, data.test, task=prep.task)[0]
    # A model object has no name to rebuild it by: the loaders start from a copy of it.
    template = baseline.model if cfg.model.name.startswith("object:") else None
    example = data.example_input(cfg.latency.batch_size)
    latency_model = make_latency_model(
        cfg, baseline.model, prep.space, example, reference_ms=baseline.metrics.latency_ms, log=log
    )
    evaluator = TrialEvaluator(
        cfg, baseline, data, latency_model, prep.memory_model, task=prep.task
    )
    ft = cfg.export.finetune
    log(f"fine-tuning trial {point.trial}: {ft.steps} steps, distillation {ft.distill_weight}")
    model, _ = evaluator.compress(policy, recipe=ft, seed=cfg.search.seed)
    model.eval()
    torch_acc, _ = evaluate(model, data.test, task=prep.task)
    predicted = latency_model.predict(model, policy)
    activations = activation_stats(baseline.model, model, first_batches(data.val, 128, 4))
    if flagged := [a.layer for a in activations if a.flagged]:
        log(f"warning: the activation quantiser clips > 1 % of the input of {', '.join(flagged)}")

    out = cfg.output_dir / "export" / f"trial-{point.trial:03d}"
    out.mkdir(parents=True, exist_ok=True)
    plain, int8 = materialize(model)
    log(f"exporting ONNX forms ({len(int8)} INT8 layers) and measuring them on the target")
    nbits = nbits_candidates(policy, plain)
    threads = getattr(latency_model, "threads", 2)
    dep = _deploy(
        plain, int8, data, out, cfg, nbits=nbits, threads=threads, task=prep.task, log=log
    )
    fp32_path, deployed = dep.forms["fp32"][0], dep.path

    ref = ModelRef.from_config(cfg, data.input_shape)
    packed_path = out / "model.acpk"
    deploy_meta = dep.spec.to_dict() | {"example_batch": int(example.shape[0])}
    packed = save_packed_model(
        packed_path, model, ref, policy, round_to=cfg.compression.round_to, deploy=deploy_meta
    )
    reloaded, _ = load_packed_model(packed_path, model=template)
    fixed = next(batches(data.test, 64))[0]
    with torch.no_grad():
        exact = bool(torch.equal(reloaded(fixed), model(fixed)))
    if not exact:
        raise AutocompressError(f"{packed_path}: reloaded model's logits differ from the original")
    unpacked = unpack(packed_path, out / "model_unpacked.onnx", model=template)
    unpack_exact = onnx_outputs_equal(unpacked, deployed, fixed.numpy())
    if not unpack_exact:
        raise AutocompressError(
            f"{unpacked}: the ONNX model unpacked from {packed_path.name} differs from {deployed}"
        )

    onnx_acc = onnx_accuracy(deployed, data.test, task=prep.task)
    base_path = export_onnx(baseline.model, example, out / "baseline_fp32.onnx")
    xc = cfg.export
    # all cores: this process's share (a container's), not the host's count
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    thread_counts = tuple(xc.throughput_threads or dict.fromkeys([1, cores or 1]))
    log(
        f"measuring {len(dep.forms) + 1} ONNX models: memory ({xc.memory_repeats} processes "
        f"each), throughput at batch {xc.batch_sizes} x threads {list(thread_counts)}"
    )
    paths = {name: p for name, (p, _) in dep.forms.items()} | {"baseline": base_path}
    measured_forms = measure_forms(
        paths,
        data.input_shape,
        threads=threads,
        batch_sizes=tuple(xc.batch_sizes),
        thread_counts=tuple(dict.fromkeys([*thread_counts, threads])),
        memory_repeats=xc.memory_repeats,
    )
    for name, m in measured_forms.items():
        m.deployed = name == dep.form
        m.test_accuracy = (
            onnx_acc if m.deployed else onnx_accuracy(m.path, data.test, task=prep.task)
        )
    if "fp16" in measured_forms:
        measured_forms["fp16"].note = _fp16_note(measured_forms, threads, min(xc.batch_sizes))
    if dep.fallback and "int8-qdq" in measured_forms:
        measured_forms["int8-qdq"].note = dep.fallback
    dm, bm_ = measured_forms[dep.form], measured_forms["baseline"]
    # the headline latencies are the forms table's (one measurement per model and setting)
    batch = int(example.shape[0])

    def latency(m, path: Path) -> float:
        ms = m.latency_ms(batch, threads)
        if ms is None:  # the search's batch size is not among export.batch_sizes
            ms = measure_onnx_latency(path, tuple(example.shape), threads=threads, repeats=100)
        return ms

    measured, base_ms = latency(dm, deployed), latency(bm_, base_path)

    result = ExportResult(
        trial=point.trial,
        policy=policy.to_dict(),
        test_accuracy=onnx_acc,
        torch_test_accuracy=torch_acc,
        baseline_test_accuracy=base_test,
        test_images=len(data.test),
        val_accuracy_search=point.val_accuracy,
        measured_latency_ms=measured,
        predicted_latency_ms=predicted,
        baseline_latency_ms=base_ms,
        packed_bytes=packed,
        fp32_state_dict_bytes=baseline.metrics.fp32_state_dict_bytes,
        compression_ratio=baseline.metrics.fp32_state_dict_bytes / packed,
        speedup=base_ms / measured,
        packed_reload_exact=exact,
        int8_layers=list(dep.spec.int8_layers) if dep.form == "int8-qdq" else [],
        seconds=0.0,
        deployed_form=dep.form,
        int8_reduce_range=dep.reduce_range,
        int8_fallback=dep.fallback,
        nbits_note=dep.nbits_note,
        onnx_bytes=Path(deployed).stat().st_size,
        onnx_sparse_initializers=sparse_initializer_count(deployed),
        memory_steady_mb=dm.memory_steady_mb,
        memory_peak_mb=dm.memory_peak_mb,
        baseline_memory_steady_mb=bm_.memory_steady_mb,
        baseline_memory_peak_mb=bm_.memory_peak_mb,
        baseline_onnx_bytes=bm_.onnx_bytes,
        throughput=dm.images_per_s(threads),
        throughput_threads=threads,
        deployed_forms=dep.spec.layer_forms(compressible_layers(plain)),
        forms={name: asdict(m) for name, m in measured_forms.items()},
        unpack_exact=unpack_exact,
        activations=[a.to_dict() for a in activations],
        artifacts={
            "packed": str(packed_path),
            "onnx_fp32": str(fp32_path),
            "onnx_deployed": str(deployed),
            "onnx_unpacked": str(unpacked),
            **{f"onnx_{n}": str(p) for n, (p, _) in dep.forms.items() if n not in ("fp32",)},
        },
    )
    report_md, report_json = out / "verification.md", out / "verification.json"
    result.artifacts |= {"report_md": str(report_md), "report_json": str(report_json)}

    tracker = Tracker(cfg.tracking, cfg.name, cfg.output_dir / "mlartifacts")
    run_id = point.mlflow_run_id
    if run_id:
        result.registered_model = _register(tracker, run_id, Path(deployed), data, cfg, point.trial)
    result.seconds = time.perf_counter() - t0
    report_md.write_text(verification_markdown(result.to_dict(), cfg.name))
    report_json.write_text(json.dumps(result.to_dict(), indent=2))
    if run_id:
        metrics = {
            f"export_{k}": getattr(result, k)
            for k in (
                "test_accuracy torch_test_accuracy measured_latency_ms predicted_latency_ms "
                "baseline_latency_ms packed_bytes onnx_bytes memory_steady_mb memory_peak_mb "
                "baseline_memory_steady_mb baseline_memory_peak_mb compression_ratio speedup"
            ).split()
        }
        metrics |= {f"export_images_per_s_b{b}": v for b, v in result.throughput.items()}
        tracker.end_run(run_id, "FINISHED", metrics=metrics, tags={"exported": "true"})
        files = [packed_path, report_md, report_json, *(p for p, _ in dep.forms.values())]
        tracker.log_artifacts(run_id, files, "export")
    log_export_figures(tracker, run_id, result.to_dict(), out)
    return result


def fmt(v: Any, spec: str) -> str:
    """``v`` formatted with ``spec``, or ``–`` when it is missing."""
    return "–" if v is None else format(v, spec)


def deployed_form(e: dict) -> str:
    """``INT8 QDQ, -127..127`` / ``FP32 (why INT8 was not deployed)``."""
    if e.get("deployed_form") != "int8-qdq":
        return f"FP32 ({e['int8_fallback']})" if e.get("int8_fallback") else "FP32"
    rng = "weights on -64..64 (U8S8 saturation workaround)" if e.get("int8_reduce_range") else ""
    nbits = f"; {e['nbits_note']}" if e.get("nbits_note") else ""
    return f"INT8 QDQ, {rng or '-127..127'}{nbits}"


def export_rows(e: dict) -> list[tuple[str, str]]:
    """(label, value) of every headline number of an export."""
    drop = (e["baseline_test_accuracy"] - e["test_accuracy"]) * 100
    tput = ", ".join(f"b{b}: {v:.0f}/s" for b, v in (e.get("throughput") or {}).items())
    keys = ("memory_steady_mb", "memory_peak_mb")
    mem, base = (
        " / ".join(fmt(e.get(p + k), ".2f") for k in keys) + " MB" for p in ("", "baseline_")
    )
    reg = " ".join(f"{k}={v}" for k, v in (e.get("registered_model") or {}).items())
    return [
        ("test accuracy (deployed ONNX)", f"{e['test_accuracy']:.4f}"),
        ("test accuracy (compressed torch model)", f"{e['torch_test_accuracy']:.4f}"),
        ("baseline test accuracy", f"{e['baseline_test_accuracy']:.4f} (drop {drop:.2f} points)"),
        ("validation accuracy during the search", f"{e['val_accuracy_search']:.4f}"),
        (
            "latency measured / predicted (ONNX Runtime)",
            f"{e['measured_latency_ms']:.4f} / {e['predicted_latency_ms']:.4f} ms",
        ),
        (
            "baseline FP32 latency, speed-up",
            f"{e['baseline_latency_ms']:.4f} ms, {e['speedup']:.2f}x",
        ),
        ("packed bytes (model.acpk)", str(e["packed_bytes"])),
        (
            "FP32 state_dict bytes, ratio",
            f"{e['fp32_state_dict_bytes']}, {e['compression_ratio']:.1f}x",
        ),
        ("packed file reloads bit-exact", str(e["packed_reload_exact"])),
        ("deployed ONNX form", deployed_form(e)),
        (
            "deployed ONNX file bytes (baseline FP32)",
            f"{e.get('onnx_bytes') or '–'} ({e.get('baseline_onnx_bytes') or '–'})"
            + (f", {n} weights stored sparse" if (n := e.get("onnx_sparse_initializers")) else ""),
        ),
        (
            "resident memory steady / peak (baseline FP32)",
            f"{mem} ({base})",
        ),
        (f"throughput at {e.get('throughput_threads') or '–'} threads", tput or "–"),
        ("ONNX unpacked from the packed file equals the shipped one", str(e.get("unpack_exact"))),
        ("INT8 layers", ", ".join(e.get("int8_layers") or []) or "none"),
        ("registered model", reg or "–"),
    ]


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]


def forms_markdown(e: dict) -> list[str]:
    """What each ONNX form costs on the target, and images/s per batch size and thread count.
    Memory is what the model adds to a fresh process (net of an empty model)."""
    forms = e.get("forms") or {}
    if not forms:
        return []
    t = e["throughput_threads"]
    sizes = sorted({p["batch"] for m in forms.values() for p in m["throughput"]})
    lo, hi = sizes[0], sizes[-1]
    rows = []
    for name, m in forms.items():
        lat = {p["batch"]: p["ms"] for p in m["throughput"] if p["threads"] == t}
        acc = "" if m.get("test_accuracy") is None else f"{m['test_accuracy']:.4f}"
        label = f"**{name}** (deployed)" if m.get("deployed") else name
        mem = [f"{m[k]:.2f}" for k in ("memory_steady_mb", "memory_peak_mb")]
        ms = [f"{lat.get(b, float('nan')):.3f}" for b in (lo, hi)]
        rows.append([label, m["onnx_bytes"], *mem, *ms, acc, m.get("note", "")])
    header = ["form", "file bytes", "steady MB", "peak MB", f"ms at batch {lo}"]
    header += [f"ms at batch {hi}", "test accuracy", "note"]
    tput = [
        [name, p["threads"], p["batch"], f"{p['ms']:.3f}", f"{p['images_per_s']:.0f}"]
        for name, m in forms.items()
        for p in m["throughput"]
    ]
    return [
        "## Forms on the target",
        "",
        f"Memory: resident set a fresh ONNX Runtime process gains with the model ({t} "
        f"thread(s)); latency per call at {t} thread(s).",
        "",
        *_md_table(header, rows),
        "",
        "### Throughput",
        "",
        *_md_table(["form", "threads", "batch", "ms per call", "images/s"], tput),
        "",
    ]


def _weights(lp) -> str:
    """How a layer's weights are stored, e.g. ``4-bit kmeans``, ``3-bit asymmetric per_tensor``,
    ``fp16``, ``fp32``."""
    return weight_format(lp).label(lp)


def activations_markdown(stats: list[dict]) -> list[str]:
    """The activation table: each layer's output before and after compression, and the share
    of its input the 8-bit activation quantiser clips (flagged above 1 %)."""
    if not stats:
        return []
    rows = []
    for s in stats:  # before and after compression
        ms = [f"{s[f'{w}_mean']:.3g} / {s[f'{w}_std']:.3g}" for w in ("before", "after")]
        span = [f"[{s[f'{w}_min']:.3g}, {s[f'{w}_max']:.3g}]" for w in ("before", "after")]
        clip = "–" if s["clipped"] is None else f"{100 * s['clipped']:.2f} %"
        rows.append([s["layer"], *ms, *span, clip, "**clips > 1 %**" if s["flagged"] else ""])
    flagged = [s["layer"] for s in stats if s["flagged"]]
    note = (
        f"Layers whose activation quantiser clips more than 1 % of its input: "
        f"{', '.join(flagged)} (a wider calibration set or 16-bit activations there would help)."
        if flagged
        else "No layer's activation quantiser clips more than 1 % of its input."
    )
    header = ["layer", "mean / std before", "mean / std after", "range before", "range after"]
    return [
        "",
        "## Activations",
        "",
        "Each layer's output on validation batches, uncompressed vs compressed; clipped: share "
        "of the layer's input outside the 8-bit activation quantiser's range.",
        "",
        *_md_table([*header, "clipped", ""], rows),
        "",
        note,
    ]


def verification_markdown(e: dict, name: str) -> str:
    """``verification.md``: the headline rows, the forms, the per-layer policy, the files."""
    forms = e.get("deployed_forms") or {}
    policy = [
        [n, f"{lp.sparsity:.2f}", _weights(lp), f"{lp.keep_ratio:.2f}", forms.get(n, "fp32")]
        for n, lp in CompressionPolicy.from_dict(e["policy"]).items()
    ]
    lines = [f"# Export of {name}, trial {e['trial']}", ""]
    lines += _md_table(["metric", "value"], [list(r) for r in export_rows(e)]) + [""]
    lines += forms_markdown(e) + ["## Policy", ""]
    lines += _md_table(["layer", "sparsity", "weights", "keep ratio", "deployed as"], policy)
    lines += activations_markdown(e.get("activations") or [])
    lines += ["", "## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in e["artifacts"].items()]
    return "\n".join(lines) + "\n"
