"""A model of the resident memory a deployed ONNX model adds to a process, and its validation.

Memory is predicted from what a policy leaves of the model: bytes of INT8 weights, bytes of
float weights (biases included) and the largest activation at batch 1 — a linear model with
non-negative coefficients (scikit-learn), fitted to steady and to peak resident memory measured
on fresh processes (:func:`autocompress.hardware.memory.measure_memory`).
``autocompress memory validate EXP --samples K`` measures K random policies of the search space,
fits the model by K-fold cross-validation and reports the fraction of cross-validated
predictions within ±10 % and the MAPE (as ``latency validate`` does for latency).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..policy import compressible_layers

__all__ = ["FEATURES", "MemoryValidation", "fit_cv", "memory_features", "validate_memory"]

FEATURES = ("int8_weight_mb", "float_weight_mb", "activation_mb")


def memory_features(plain: nn.Module, int8_layers, example: torch.Tensor) -> dict[str, float]:
    """What the deployed model holds: INT8 weight bytes (the quantised layers), float weight
    bytes (everything else, biases included) and the largest module output at ``example``."""
    int8 = set(int8_layers)
    layers = compressible_layers(plain)
    int8_b = sum(layers[n].weight.numel() for n in int8)
    total_float = sum(p.numel() for p in plain.parameters()) * 4
    float_b = total_float - 4 * int8_b
    largest = [0]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in plain.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            plain.eval()(example[:1])
    finally:
        for h in handles:
            h.remove()
    return {
        "int8_weight_mb": int8_b / 1e6,
        "float_weight_mb": float_b / 1e6,
        "activation_mb": largest[0] / 1e6,
    }


def fit_cv(x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0) -> dict:
    """Non-negative linear fit of ``y`` on ``x``: coefficients on all samples and
    cross-validated predictions (``folds``-fold) with their fraction within ±10 % and MAPE."""
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import KFold, cross_val_predict

    from .validate import summarize

    model = LinearRegression(positive=True)
    k = max(2, min(folds, len(y)))
    cv = cross_val_predict(model, x, y, cv=KFold(k, shuffle=True, random_state=seed))
    within, mape, rho = summarize(cv, y)
    model.fit(x, y)
    return {
        "intercept_mb": float(model.intercept_),
        "coef": dict(zip(FEATURES, map(float, model.coef_), strict=True)),
        "cv_predicted_mb": [float(v) for v in cv],
        "cv_within_10pct": within,
        "cv_mape": mape,
        "cv_spearman": rho,
    }


@dataclass
class MemoryValidation:
    samples: int
    steady: dict  # fit_cv() of steady memory
    peak: dict  # fit_cv() of peak memory
    rows: list[dict] = field(default_factory=list)  # per sample: features, measured, policy
    threads: int = 1
    seconds: float = 0.0
    artifacts: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        keys = ("cv_within_10pct", "cv_mape", "cv_spearman", "intercept_mb", "coef")
        return {
            "samples": self.samples,
            "threads": self.threads,
            "seconds": self.seconds,
            "steady": {k: self.steady[k] for k in keys},
            "peak": {k: self.peak[k] for k in keys},
            "artifacts": self.artifacts,
        }


def validate_memory(
    cfg, samples: int, *, seed: int = 0, log: Callable[[str], None] = print
) -> MemoryValidation:
    """Measure the deployed form of ``samples`` random policies (fresh processes, net of an
    empty model), fit the memory model by cross-validation, write ``output_dir/memory/``."""
    from itertools import islice

    from ..compression.apply import materialize
    from ..prepare import prepare
    from ..training import batches
    from .forms import DeploySpec, build_form
    from .memory import measure_memory
    from .targets import MeasuredTarget, Runtime, load_target
    from .validate import random_compressed

    if samples < 4:
        raise ConfigError(f"--samples must be at least 4 (got {samples})")
    t0 = time.perf_counter()
    prep = prepare(cfg, log=log)
    target = load_target(cfg.latency.target)
    threads = (target.runtime if isinstance(target, MeasuredTarget) else Runtime()).threads
    example = prep.data.example_input(cfg.latency.batch_size)
    model = prep.baseline.model.eval()
    calib = [x for x, _ in islice(batches(prep.data.train, 16, shuffle=True, seed=seed), 2)]
    rng = random.Random(seed)
    rows, paths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(samples):
            policy, compressed = random_compressed(cfg, model, prep.space, example, calib, rng)
            plain, bits = materialize(compressed)
            spec = DeploySpec("int8-qdq", tuple(sorted(bits))) if bits else DeploySpec("fp32")
            path, _ = build_form(plain, example, Path(tmp) / f"s{i}.onnx", spec, calibration=calib)
            paths.append(path)
            rows.append(
                {
                    "sample": i,
                    "summary": policy.summary(),
                    "onnx_bytes": path.stat().st_size,
                    **memory_features(plain, bits, example),
                }
            )
        log(f"memory validate: {samples} policies exported, measuring resident memory")
        mem = measure_memory(paths, tuple(example.shape), threads=threads, repeats=1)
    for row, m in zip(rows, mem, strict=True):
        row["steady_mb"], row["peak_mb"] = m.steady_mb, m.peak_mb
    x = np.array([[r[f] for f in FEATURES] for r in rows])
    steady = fit_cv(x, np.array([r["steady_mb"] for r in rows]), seed=seed)
    peak = fit_cv(x, np.array([r["peak_mb"] for r in rows]), seed=seed)
    report = MemoryValidation(samples, steady, peak, rows, threads, time.perf_counter() - t0)
    out = cfg.output_dir / "memory"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "validate.json"
    report.artifacts = [str(path)]
    path.write_text(json.dumps(asdict(report), indent=2))
    return report
