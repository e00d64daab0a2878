"""Real latency: export to ONNX and time it with ONNX Runtime on the CPU (median after warm-up,
fixed thread count)."""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["export_onnx", "measure_onnx_latency", "measure_torch_model_latency"]


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch dimension."""
    path = Path(path)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def measure_onnx_latency(
    path: str | Path,
    input_shape: tuple[int, ...],
    *,
    threads: int = 2,
    warmup: int = 10,
    repeats: int = 50,
) -> float:
    """Median wall-clock milliseconds of one inference of the ONNX model at ``input_shape``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_torch_model_latency(
    model: nn.Module, example: torch.Tensor, *, threads: int = 2, repeats: int = 50
) -> float:
    """Export a plain (uncompressed) model to a temporary ONNX file and measure it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, example, Path(tmp) / "model.onnx")
        return measure_onnx_latency(path, tuple(example.shape), threads=threads, repeats=repeats)
