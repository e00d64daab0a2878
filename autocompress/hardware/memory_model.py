"""A model of the resident memory a deployed ONNX model adds to a process: a linear model with
non-negative coefficients (scikit-learn) over the bytes of INT8 weights, of float weights and of
the largest activation at batch 1, fitted to steady and peak resident memory measured on fresh
processes; ``autocompress memory validate EXP --samples K`` reports its K-fold cross-validated
accuracy (fraction within ±10 %, MAPE), as ``latency validate`` does for latency.

Here too are the random policies latency and memory validation (and the memory model's fit)
measure, and the inputs they are measured with.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._files import atomic_write, content_key
from ..compression.apply import apply_policy, calibrate, materialize
from ..errors import ConfigError
from ..models import evaluating
from ..policy import CompressionPolicy, LayerPolicy, compressible_layers
from ..training import first_batches
from .deploy import export_deployed
from .measure import machine_fingerprint, measure_memory
from .targets import MeasuredTarget, Runtime, load_target

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
    with torch.no_grad(), evaluating(plain, handles):
        plain(example[:1])
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

    from ..metrics import summarize

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
        fits = {w: {k: getattr(self, w)[k] for k in keys} for w in ("steady", "peak")}
        return (
            {"samples": self.samples, "threads": self.threads, "seconds": self.seconds}
            | fits
            | {"artifacts": self.artifacts}
        )


def measurement_inputs(prep, seed: int = 0):
    """``(runtime, example, calibration batches)`` of a prepared experiment; analytic and proxy
    targets are measured as this CPU's measured target times it."""
    target = load_target(prep.cfg.latency.target)
    runtime = target.runtime if isinstance(target, MeasuredTarget) else Runtime()
    example = prep.data.example_input(prep.cfg.latency.batch_size)
    calib = first_batches(prep.data.train, 16, 2, shuffle=True, seed=seed)
    return runtime, example, calib


def random_deployed(
    prep, inputs, samples: int, seed: int, folder: Path, *, reduce_range: bool | None = None
) -> Iterator[tuple[CompressionPolicy, nn.Module, nn.Module, dict[str, int], Path]]:
    """``(policy, compressed, plain, {INT8 layer: bits}, ONNX path)`` of ``samples`` random
    policies of ``prep``'s space (each layer's sparsity, bits and keep ratio drawn uniformly from
    its choices), applied as a trial applies them (channel removal, masks, quantisers, activation
    ranges calibrated) and exported as deployed to ``folder`` (``reduce_range``: see
    :func:`~.deploy.export_deployed`)."""
    _, example, calib = inputs
    cfg, model, rng = prep.cfg, prep.baseline.model.eval(), random.Random(seed)
    for i in range(samples):
        policy = CompressionPolicy(
            {
                name: LayerPolicy(
                    sparsity=rng.choice(ch.sparsity),
                    bits=rng.choice(ch.bits),
                    keep_ratio=rng.choice(ch.keep_ratio),
                )
                for name, ch in prep.space.layers.items()
            }
        )
        compressed = apply_policy(model, policy, example=example, **cfg.compression.model_dump())
        calibrate(compressed, calib)
        plain, bits = materialize(compressed)
        path = folder / f"sample-{i}.onnx"
        export_deployed(
            plain, example, path, int8_layers=bits, calibration=calib, reduce_range=reduce_range
        )
        yield policy, compressed, plain, bits, path


def _measured_samples(prep, inputs, samples: int, seed: int, log) -> list[dict]:
    """``samples`` random policies exported as deployed, resident memory measured on fresh
    processes; one row per policy (features, sizes, memory)."""
    runtime, example, _ = inputs
    rows, paths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (policy, _, plain, bits, path) in enumerate(
            random_deployed(prep, inputs, samples, seed, Path(tmp), reduce_range=False)
        ):
            paths.append(path)
            rows.append(
                {
                    "sample": i,
                    "summary": policy.summary(),
                    "onnx_bytes": path.stat().st_size,
                    **memory_features(plain, bits, example),
                }
            )
        log(f"memory: {samples} policies exported, measuring resident memory")
        mem = measure_memory(paths, tuple(example.shape), threads=runtime.threads, repeats=1)
    for row, m in zip(rows, mem, strict=True):
        row["steady_mb"], row["peak_mb"] = m.steady_mb, m.peak_mb
    return rows


def _fits(rows: list[dict], keys: tuple[str, ...], seed: int = 0) -> list[dict]:
    x = np.array([[r[f] for f in FEATURES] for r in rows])
    return [fit_cv(x, np.array([r[k] for r in rows]), seed=seed) for k in keys]


@dataclass
class MemoryModel:
    """Predicted steady resident memory (MB) of a compressed model's deployed form: the
    non-negative linear fit over :data:`FEATURES`, with its cross-validated error on this
    machine (what ``objectives.size.measure: memory`` minimises)."""

    intercept_mb: float
    coef: dict
    cv_within_10pct: float
    cv_mape: float
    samples: int
    threads: int = 1

    def predict_mb(self, model: nn.Module, example: torch.Tensor) -> float:
        """For a compressed model (masks and quantisers in place) or a plain one."""
        x = compressed_features(model, example)
        return self.intercept_mb + sum(self.coef[f] * x[f] for f in FEATURES)

    def describe(self) -> str:
        weak = " (weak: more objectives.size.memory_samples may help)"
        return (
            f"memory model: {self.cv_within_10pct:.0%} of {self.samples} cross-validated "
            f"predictions within ±10 %, MAPE {self.cv_mape:.1%}"
        ) + weak * (self.cv_within_10pct < 0.8)


def compressed_features(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """:func:`memory_features` of a compressed model without materialising it: the layers
    whose weights are quantised deploy as INT8."""
    from torch.nn.utils import parametrize

    int8 = [
        name
        for name, layer in compressible_layers(model).items()
        if parametrize.is_parametrized(layer, "weight")
        and layer.parametrizations["weight"][0].bits <= 8
    ]
    return memory_features(model, int8, example)


def get_memory_model(cfg, prep, *, force: bool = False, log: Callable[[str], None] = print):
    """The experiment's memory model from ``output_dir/cache``, or measured and fitted now
    (``objectives.size.memory_samples`` random policies) and cached."""
    inputs = measurement_inputs(prep)
    runtime, example, _ = inputs
    n = cfg.objectives.size.memory_samples
    key = content_key(
        {
            "version": 1,
            "arch": repr(prep.baseline.model),
            "checkpoint": str(prep.baseline.checkpoint),
            "choices": {k: list(v) for k, v in prep.space.choices().items()},
            "input": list(example.shape),
            "threads": runtime.threads,
            "machine": machine_fingerprint(),
            "samples": n,
            "compression": [cfg.compression.round_to, cfg.compression.importance],
        }
    )
    path = cfg.output_dir / "cache" / f"memory-{key}.json"
    if path.is_file() and not force:
        try:
            mm = MemoryModel(**json.loads(path.read_text()))
            log(f"{mm.describe()} (cached {path.name})")
            return mm
        except (ValueError, TypeError) as exc:
            log(f"memory: {path.name} unreadable ({exc}): measuring again")
    t0 = time.perf_counter()
    [fit] = _fits(_measured_samples(prep, inputs, n, 0, log), ("steady_mb",))
    keys = ("intercept_mb", "coef", "cv_within_10pct", "cv_mape")
    mm = MemoryModel(*(fit[k] for k in keys), n, runtime.threads)
    atomic_write(path, json.dumps(asdict(mm), indent=1))
    log(f"{mm.describe()} ({time.perf_counter() - t0:.0f} s)")
    return mm


def validate_memory(
    prep, samples: int, *, seed: int = 0, log: Callable[[str], None] = print
) -> MemoryValidation:
    """Measure the deployed form of ``samples`` random policies of ``prep``'s space (fresh
    processes, net of an empty model), fit the memory model by cross-validation, write
    ``output_dir/memory/``."""
    cfg = prep.cfg
    if samples < 4:
        raise ConfigError(f"--samples must be at least 4 (got {samples})")
    t0 = time.perf_counter()
    inputs = measurement_inputs(prep, seed)
    rows = _measured_samples(prep, inputs, samples, seed, log)
    steady, peak = _fits(rows, ("steady_mb", "peak_mb"), seed)
    report = MemoryValidation(
        samples, steady, peak, rows, inputs[0].threads, time.perf_counter() - t0
    )
    out = cfg.output_dir / "memory"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "validate.json"
    report.artifacts = [str(path)]
    path.write_text(json.dumps(asdict(report), indent=2))
    return report
