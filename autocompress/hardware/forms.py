"""The deployed forms of a compressed model on ONNX Runtime (CPU), and what each one costs.

A form is one ONNX model of the same weights: ``fp32`` (masks and quantised values baked into
float32 weights), ``int8-qdq`` (INT8 QDQ for the quantised Conv/Gemm layers, FP32 elsewhere) or
``fp16`` (float16 weights, float32 inputs and outputs). A :class:`DeploySpec` rebuilds a form
from the weights alone (``autocompress unpack``); :func:`measure_forms` measures each form's
file bytes, steady and peak resident memory, latency and images/s.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..compression.apply import materialize
from ..policy import compressible_layers
from .deploy import activation_qparams, export_deployed
from .measure import export_onnx, measure_memory, measure_throughput

FORMS = ("fp32", "int8-qdq", "fp16")


@dataclass(frozen=True)
class DeploySpec:
    """How the ONNX model of one form is built from a plain model's weights."""

    form: str = "fp32"  # one of FORMS
    int8_layers: tuple[str, ...] = ()
    reduce_range: bool = False
    activation_qparams: dict[str, tuple[float, int]] = field(default_factory=dict)
    # Linear layers at <= 4 bits deployed as MatMulNBits: {layer: (bits, granularity)}
    nbits_layers: dict[str, tuple[int, str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["int8_layers"] = list(self.int8_layers)
        d["activation_qparams"] = {k: list(v) for k, v in self.activation_qparams.items()}
        d["nbits_layers"] = {k: list(v) for k, v in self.nbits_layers.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DeploySpec:
        return cls(
            form=d.get("form", "fp32"),
            int8_layers=tuple(d.get("int8_layers", ())),
            reduce_range=bool(d.get("reduce_range", False)),
            activation_qparams={
                k: (float(v[0]), int(v[1])) for k, v in d.get("activation_qparams", {}).items()
            },
            nbits_layers={k: (int(v[0]), str(v[1])) for k, v in d.get("nbits_layers", {}).items()},
        )

    def layer_forms(self, layers: Iterable[str]) -> dict[str, str]:
        """``{layer: deployed form}``: what each Conv2d/Linear runs as."""
        if self.form == "int8-qdq":
            return {
                n: "matmul-nbits"
                if n in self.nbits_layers
                else ("int8-qdq" if n in self.int8_layers else "fp32")
                for n in layers
            }
        return {n: self.form for n in layers}


def build_form(
    plain: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    spec: DeploySpec,
    *,
    calibration: Iterable[torch.Tensor] = (),
) -> tuple[Path, DeploySpec]:
    """Write the ONNX model of ``spec.form`` for ``plain`` to ``path``; an ``int8-qdq`` spec
    without activation parameters is calibrated on ``calibration`` and returned with them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.form == "fp32" or (
        spec.form == "int8-qdq" and not spec.int8_layers and not spec.nbits_layers
    ):
        return export_onnx(plain, example, path), spec
    if spec.form == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        with tempfile.TemporaryDirectory() as tmp:
            fp32 = onnx.load(str(export_onnx(plain, example, Path(tmp) / "fp32.onnx")))
        onnx.save(convert_float_to_float16(fp32, keep_io_types=True), str(path))
        return path, spec
    if spec.form != "int8-qdq":
        raise ValueError(f"unknown deployed form {spec.form!r} (one of {', '.join(FORMS)})")
    export_deployed(
        plain,
        example,
        path,
        int8_layers=spec.int8_layers,
        calibration=calibration,
        reduce_range=spec.reduce_range,
        activation_qparams=spec.activation_qparams or None,
        nbits_layers=spec.nbits_layers,
    )
    if not spec.activation_qparams:
        spec = replace(spec, activation_qparams=activation_qparams(path))
    return path, spec


def deployed_onnx_bytes(
    compressed: nn.Module, example: torch.Tensor, *, cache: dict | None = None
) -> int:
    """Bytes of the ONNX file a compressed model is deployed as (INT8 QDQ for its quantised
    layers), written and counted. It depends only on the layers' shapes and which are quantised
    (``cache`` holds it per such structure), up to a byte per quantised activation (a UINT8 zero
    point is a varint; ranges are calibrated here on random inputs, at export on training data).
    """
    plain, int8 = materialize(compressed)
    shapes = tuple((n, tuple(m.weight.shape)) for n, m in compressible_layers(plain).items())
    key = shapes, tuple(sorted(int8))
    if cache is not None and key in cache:
        return cache[key]
    spec = DeploySpec("int8-qdq", tuple(sorted(int8))) if int8 else DeploySpec("fp32")
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = build_form(plain, example, Path(tmp) / "m.onnx", spec)
        size = path.stat().st_size
    if cache is not None:
        cache[key] = size
    return size


@dataclass
class FormMeasurement:
    """One form as measured on the target: file, memory, latency/throughput, accuracy."""

    form: str
    path: str
    onnx_bytes: int
    memory_steady_mb: float
    memory_peak_mb: float
    throughput: list[dict]  # ThroughputPoint.to_dict() per batch size and thread count
    test_accuracy: float | None = None
    deployed: bool = False
    note: str = ""

    def latency_ms(self, batch: int, threads: int) -> float | None:
        ms = [p["ms"] for p in self.throughput if (p["batch"], p["threads"]) == (batch, threads)]
        return ms[0] if ms else None

    def images_per_s(self, threads: int) -> dict[str, float]:
        """``{batch size: images/s}`` at ``threads``."""
        return {
            str(p["batch"]): p["images_per_s"] for p in self.throughput if p["threads"] == threads
        }

    def to_dict(self) -> dict:
        return asdict(self)


def measure_forms(
    paths: dict[str, Path],
    sample_shape: tuple[int, ...],
    *,
    threads: int,
    batch_sizes: tuple[int, ...],
    thread_counts: tuple[int, ...],
    memory_repeats: int = 3,
) -> dict[str, FormMeasurement]:
    """File bytes, steady/peak memory (fresh process, batch 1, ``threads``), latency and images/s
    per batch size and thread count of every ONNX model of ``paths`` (``{form: path}``)."""
    mem = measure_memory(
        list(paths.values()), (1, *sample_shape), threads=threads, repeats=memory_repeats
    )
    return {
        name: FormMeasurement(
            name,
            str(path),
            Path(path).stat().st_size,
            m.steady_mb,
            m.peak_mb,
            [
                p.to_dict()
                for p in measure_throughput(
                    path, sample_shape, batch_sizes=batch_sizes, threads=thread_counts
                )
            ],
        )
        for (name, path), m in zip(paths.items(), mem, strict=True)
    }
