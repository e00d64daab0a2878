"""Validation of a latency model against real latency: random policies of the search space, each
exported as deployed and timed end to end, compared to the prediction (fraction within ±10 %,
MAPE, Spearman); writes the pairs as JSON and a plot, logged to MLflow as ``latency-validate``.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..metrics import summarize
from ..plots import _figure, _save


@dataclass
class ValidationReport:
    target: str
    samples: int
    within_10pct: float
    mape: float
    spearman: float
    pairs: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    cpu_busy_at_start: float = 0.0
    artifacts: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "pairs"}


def _plot(pairs: list[dict], path: Path, title: str) -> Path:
    meas, pred = (np.array([p[k] for p in pairs]) for k in ("measured_ms", "predicted_ms"))
    lo, hi = min(meas.min(), pred.min()) * 0.9, max(meas.max(), pred.max()) * 1.1
    fig = _figure(5.5, 5, dpi=120)
    ax = fig.subplots()
    line = np.linspace(lo, hi, 50)
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="±10 %")
    ax.plot(line, line, color="tab:green", lw=1)
    int8 = np.array([p["int8_layers"] > 0 for p in pairs])
    ax.scatter(meas[~int8], pred[~int8], s=18, label="all FP32")
    ax.scatter(meas[int8], pred[int8], s=18, marker="^", label="with INT8 layers")
    ax.set(xlabel="measured latency (ms)", ylabel="predicted latency (ms)", xlim=(lo, hi))
    ax.set(ylim=(lo, hi))
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def _log_mlflow(cfg, report: ValidationReport, paths: list[Path]) -> str:
    from ..tracking import Tracker

    tracker = Tracker(cfg.tracking, cfg.name, cfg.output_dir / "mlartifacts")
    rid = tracker.side_run(
        "latency-validate", "latency-validate", {"latency.target": report.target}
    )
    keys = ("within_10pct", "mape", "spearman", "seconds")
    metrics = {k: getattr(report, k) for k in keys if np.isfinite(getattr(report, k))}
    tracker.log(rid, {"target": report.target, "samples": report.samples}, metrics)
    tracker.log_artifacts(rid, paths, "latency")
    tracker.end_run(rid)
    return rid


def validate_latency(
    cfg,
    samples: int,
    *,
    seed: int = 0,
    track: bool = True,
    log: Callable[[str], None] = print,
) -> ValidationReport:
    """Compare the experiment's latency model with measurements of ``samples`` random policies
    (measured on the CPU with ONNX Runtime, the deployed form: FP32 / INT8 QDQ)."""
    from ..baseline import prepare
    from .latency import make_latency_model
    from .layers import channels
    from .measure import measure_passes, warn_if_busy
    from .memory_model import measurement_inputs, random_deployed

    if samples < 2:
        raise ConfigError(f"--samples must be at least 2 (got {samples})")
    t0 = time.perf_counter()
    prep = prepare(cfg, log=log)
    inputs = measurement_inputs(prep, seed)
    runtime, example, _ = inputs
    model = prep.baseline.model.eval()
    latency_model = make_latency_model(
        cfg, model, prep.space, example, reference_ms=prep.baseline.metrics.latency_ms, log=log
    )
    busy = warn_if_busy("latency validate", log)
    pairs, paths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        deployed = random_deployed(prep, inputs, samples, seed, Path(tmp))
        for i, (policy, compressed, plain, bits, path) in enumerate(deployed):
            paths.append(path)
            pairs.append(
                {
                    "sample": i,
                    "predicted_ms": round(latency_model.predict(compressed, policy), 5),
                    "int8_layers": len(bits),
                    "summary": policy.summary(),
                    "channels": {n: list(c) for n, c in channels(plain).items()},
                    "bits": {n: lp.bits for n, lp in policy.items() if lp.quantized},
                    "sparsity": {n: lp.sparsity for n, lp in policy.items()},
                }
            )
        log(
            f"latency validate: {samples} policies exported, timing them ({runtime.passes} "
            f"passes or more, over at least {runtime.span_seconds:.0f} s)"
        )
        measured = measure_passes(
            paths,
            tuple(example.shape),
            threads=runtime.threads,
            **runtime.pass_settings(),
            **runtime.timing(),
        )
    for pair, ms in zip(pairs, measured, strict=True):
        pair["measured_ms"] = round(ms, 5)
        pair["error"] = round((pair["predicted_ms"] - ms) / ms, 4)
        log(
            f"[{pair['sample'] + 1}/{samples}] predicted {pair['predicted_ms']:.4f} ms, measured "
            f"{ms:.4f} ms ({pair['error']:+.1%}), {pair['int8_layers']} INT8 layers"
        )
    scores = summarize(*([p[k] for p in pairs] for k in ("predicted_ms", "measured_ms")))
    seconds = time.perf_counter() - t0
    report = ValidationReport(latency_model.name, samples, *scores, pairs, seconds, round(busy, 3))
    out = cfg.output_dir / "latency"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"validate-{latency_model.name}"
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(asdict(report), indent=2))
    title = (
        f"{cfg.name} on {report.target}\n{report.within_10pct:.0%} of {samples} within ±10 %, "
        f"MAPE {report.mape:.1%}, Spearman {report.spearman:.2f}"
    )
    png = _plot(pairs, out / f"{stem}.png", title)
    report.artifacts = [str(json_path), str(png)]
    if track:
        report.mlflow_run_id = _log_mlflow(cfg, report, [json_path, png])
    json_path.write_text(json.dumps(asdict(report), indent=2))
    return report
