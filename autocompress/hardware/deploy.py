"""The deployed form of a compressed model: FP32 ONNX, or QDQ INT8 ONNX where exactly the
quantised layers run as INT8 kernels (ONNX Runtime static quantisation, per-channel weights).
What the latency table profiles, ``latency validate`` measures and ``export`` ships are all
built by :func:`export_deployed`, so what is measured is what is deployed.

Linear layers searched at 2-4 bits may deploy as ONNX Runtime's 4-bit ``MatMulNBits``
(``com.microsoft``) instead: the layer's own integer codes and scales, written into the
operator's 4-bit blocks, so the deployed weights are exactly the searched ones (ONNX Runtime's
``MatMulNBitsQuantizer`` re-quantises float weights block-wise, which moves every weight of an
already-quantised layer off its grid). Only Linear (ONNX ``Gemm``) layers with symmetric uniform
weights qualify; ``Gemm`` becomes ``MatMulNBits`` + ``Add`` (the bias).

The forms a model ships in (:data:`FORMS`): ``fp32``, ``int8-qdq`` and ``fp16`` (float16
weights, float32 inputs and outputs). A :class:`DeploySpec` rebuilds one from the weights alone
(``autocompress unpack``); :func:`measure_forms` measures each one's file bytes, steady and peak
resident memory, latency and images/s.
"""

from __future__ import annotations

import logging
import platform
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from pydantic import TypeAdapter
from torch import nn

from ..compression.apply import materialize
from ..compression.quantizers import quantize_weight
from ..errors import ModelError
from ..policy import CompressionPolicy, compressible_layers
from .measure import cpu_info, export_onnx, make_session, measure_memory, measure_throughput

_LAYER_OPS = ("Conv", "Gemm", "MatMul")
BLOCK = 32  # MatMulNBits: elements of K per block (one scale per output channel, repeated)


def _scope_to_module(node_name: str) -> str | None:
    """``/layer2/layer2.0/downsample/downsample.0/Conv`` -> ``layer2.0.downsample.0`` (legacy
    exporter scopes; ``<container>.<index>`` replaces its container's component)."""
    comps = [p for p in node_name.split("/") if p][:-1]
    parts: list[str] = []
    for comp in comps:
        if parts and comp.startswith(parts[-1] + "."):
            parts[-1] = comp
        else:
            parts.append(comp)
    return ".".join(parts) or None


def _weight_shape(graph, node) -> tuple[int, ...] | None:
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    return inits.get(node.input[1]) if len(node.input) >= 2 else None


def _expected_shape(layer: nn.Module, op_type: str) -> set[tuple[int, ...]]:
    w = tuple(layer.weight.shape)
    if op_type == "MatMul":
        return {w[::-1]}
    return {w, w[::-1]}  # Gemm may carry the transposed weight


def onnx_layer_nodes(onnx_model, model: nn.Module) -> dict[str, str]:
    """``{torch layer name: ONNX node name}`` for every Conv2d/Linear of ``model``: matched by
    scope name and checked by weight shape (a mismatch raises :class:`ModelError`)."""
    graph = onnx_model.graph
    layers = compressible_layers(model)
    found: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in _LAYER_OPS:
            continue
        name = _scope_to_module(node.name)
        if name not in layers or name in found:
            continue
        shape = _weight_shape(graph, node)
        if shape is not None and shape not in _expected_shape(layers[name], node.op_type):
            raise ModelError(
                f"ONNX node {node.name} has weight shape {shape}, layer {name} has "
                f"{tuple(layers[name].weight.shape)}"
            )
        found[name] = node.name
    _match_by_shape(graph, layers, found)
    return found


def _match_by_shape(graph, layers: dict[str, nn.Module], found: dict[str, str]) -> None:
    """Fallback for nodes whose scope name did not resolve: a unique weight shape decides."""
    taken = set(found.values())
    free = [
        n
        for n in graph.node
        if n.op_type in _LAYER_OPS and n.name not in taken and _weight_shape(graph, n) is not None
    ]
    for name, layer in layers.items():
        if name in found:
            continue
        hits = [n for n in free if _weight_shape(graph, n) in _expected_shape(layer, n.op_type)]
        same = [m for m in layers.values() if tuple(m.weight.shape) == tuple(layer.weight.shape)]
        if len(hits) == 1 and len(same) == 1:
            found[name] = hits[0].name


def u8s8_saturates(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether ONNX Runtime's U8S8 integer kernels may saturate on this CPU.

    On x86-64 without VNNI, ORT multiplies uint8 activations by int8 weights with
    ``VPMADDUBSW``, which saturates int16 pair sums when both weights of a pair are large:
    exactly the coarse (sub-8-bit) layers a mixed-precision policy squeezes hardest (2.5 points
    of Fashion-MNIST accuracy measured). The workaround is ``reduce_range`` (7-bit weights).
    VNNI and non-x86 CPUs accumulate in int32; an x86 CPU whose flags cannot be read counts as
    affected (the workaround costs little accuracy, saturation can cost a lot).
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i686"):
        return False
    flags = set(cpu_info(cpuinfo).get("flags", "").split())
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & flags


def _calibration_reader(input_name: str, example: torch.Tensor, calibration) -> SimpleNamespace:
    """A ``CalibrationDataReader`` over the ``calibration`` batches (random ones when there are
    none: ranges only matter for accuracy, not timing)."""
    batches = [t.detach().cpu().float().numpy() for t in calibration]
    if not batches:
        gen = torch.Generator().manual_seed(0)
        batches = [torch.randn(example.shape, generator=gen).numpy() for _ in range(2)]
    feeds = iter([{input_name: x} for x in batches])
    return SimpleNamespace(get_next=lambda: next(feeds, None))


def export_deployed(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    int8_layers: Iterable[str] = (),
    calibration: Iterable[torch.Tensor] = (),
    reduce_range: bool | None = None,
    activation_qparams: dict[str, tuple[float, int]] | None = None,
    nbits_layers: dict[str, tuple[int, str]] | None = None,
) -> Path:
    """Export a plain model (``materialize(compressed)[0]``) to ``path`` as it is deployed.

    Without ``int8_layers``: FP32 ONNX. Otherwise static QDQ quantisation of exactly the
    Conv/Gemm/MatMul nodes of ``int8_layers`` (per-channel INT8 weights, UINT8 activations,
    MinMax calibration on ``calibration`` or random inputs). ``reduce_range``: INT8 weights on
    -64..64 (``None``: :func:`u8s8_saturates` decides). ``activation_qparams`` (``{tensor:
    (scale, zero point)}``) fixes the activations' quantisation instead of calibrating.
    ``nbits_layers`` (``{Linear layer: (bits, granularity)}``, not also in ``int8_layers``)
    become ``MatMulNBits`` nodes holding their own 4-bit codes (see the module docstring).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbits = dict(nbits_layers or {})
    int8 = [n for n in dict.fromkeys(int8_layers) if n not in nbits]
    if not int8 and not nbits:
        return export_onnx(model, example, path)
    unknown = [n for n in [*int8, *nbits] if n not in compressible_layers(model)]
    if unknown:
        raise ModelError(f"int8_layers names unknown layer(s): {', '.join(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, example, Path(tmp) / "fp32.onnx")
        prep = Path(tmp) / "prep.onnx"
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
            prepped = onnx.load(str(prep))
            graph, nodes = prepped.graph, onnx_layer_nodes(prepped, model)
            missing = [n for n in [*int8, *nbits] if n not in nodes]
            if missing:
                raise ModelError(
                    f"no ONNX Conv/Gemm/MatMul node found for layer(s) {', '.join(missing)}"
                )
            if nbits:  # a layer the rewrite cannot take (not a plain Gemm) stays INT8 QDQ
                by_name = {node.name: node for node in graph.node}
                inits = {t.name for t in graph.initializer}
                other = [n for n in nbits if not gemm_node(by_name[nodes[n]], inits)]
                int8 += other
                nbits = {n: v for n, v in nbits.items() if n not in other}
            if _unshare_initializers(prepped, {nodes[n] for n in [*int8, *nbits]}):
                onnx.save(prepped, str(prep))
            out = Path(tmp) / "int8.onnx"
            extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
            if activation_qparams:
                extra["TensorQuantOverrides"] = {
                    t: [{"scale": np.array(sc, np.float32), "zero_point": np.array(zp, np.uint8)}]
                    for t, (sc, zp) in activation_qparams.items()
                }
            if int8:
                quantize_static(
                    str(prep),
                    str(out),
                    _calibration_reader(graph.input[0].name, example, calibration),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    reduce_range=u8s8_saturates() if reduce_range is None else reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_quantize=[nodes[n] for n in int8],
                    extra_options=extra,
                )
            else:
                shutil.copy(prep, out)
            if nbits:
                proto = onnx.load(str(out))
                rewrite_matmul_nbits(proto, {nodes[n]: v for n, v in nbits.items()})
                onnx.save(proto, str(out))
        finally:
            logging.getLogger().setLevel(quiet)
        shutil.move(str(out), path)
    return path


def _unshare_initializers(proto, quantized: set[str]) -> int:
    """Give each node that reads an initializer also read by a quantised node its own copy.

    The ONNX exporter merges identical initializers (the all-zero biases of an untrained
    model's folded BatchNorms, tied weights), and the quantiser rewrites a shared one for
    every reader: an FP32 layer then reads its bias through ``DequantizeLinear`` (rounded at
    the INT8 layer's scale) and, since its bias is no longer a constant, ONNX Runtime does not
    run it in its blocked NCHWc layout -- a slower kernel no separately exported model has.
    Returns the number of copies made."""
    import copy

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list[tuple]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in inits:
                readers.setdefault(name, []).append((node, i))
    copies = 0
    for name, users in readers.items():
        if len(users) < 2 or not any(node.name in quantized for node, _ in users):
            continue
        for k, (node, i) in enumerate(users[1:], start=1):
            twin = copy.deepcopy(inits[name])
            twin.name = f"{name}__{k}"
            graph.initializer.append(twin)
            node.input[i] = twin.name
            copies += 1
    return copies


def activation_qparams(path: str | Path) -> dict[str, tuple[float, int]]:
    """``{activation tensor: (scale, zero point)}`` of a QDQ model's non-weight
    ``QuantizeLinear`` nodes: what :func:`export_deployed` needs to rebuild it from weights."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    out: dict[str, tuple[float, int]] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale, zp = inits.get(node.input[1]), inits.get(node.input[2])
        if scale is None or zp is None or scale.size != 1:
            continue
        # a graph output's quantised tensor is renamed; the override names the original
        name = node.input[0].removesuffix("_QuantizeLinear_Input")
        out[name] = (float(scale.reshape(())), int(zp.reshape(())))
    return out


def nbits_candidates(policy: CompressionPolicy, model: nn.Module) -> dict[str, tuple[int, str]]:
    """``{layer: (bits, granularity)}`` of the policy's Linear layers whose weights fit
    ``MatMulNBits`` exactly: uniform symmetric integers of at most 4 bits."""
    layers = compressible_layers(model)
    return {
        n: (lp.bits, lp.granularity)
        for n, lp in policy.items()
        if isinstance(layers.get(n), nn.Linear)
        and lp.quantized
        and lp.bits <= 4
        and lp.quantizer == "uniform"
        and lp.scheme == "symmetric"
    }


def _blocks(weight: np.ndarray, bits: int, granularity: str) -> tuple[np.ndarray, np.ndarray]:
    """(packed uint8 ``[N, blocks, BLOCK / 2]``, float32 scales ``[N * blocks]``) of a weight
    ``[N, K]`` that lies on its ``bits``-bit symmetric grid."""
    codes, scales = quantize_weight(torch.from_numpy(weight), bits, granularity=granularity)
    n, k = weight.shape
    blocks = -(-k // BLOCK)
    q = np.full((n, blocks * BLOCK), 8, np.uint8)  # 8 = the zero point: padding decodes to 0
    q[:, :k] = codes.numpy() + 8
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8).reshape(n, blocks, BLOCK // 2)
    per_row = np.broadcast_to(scales.numpy().reshape(-1, 1), (n, 1)).astype(np.float32)
    return packed, np.repeat(per_row, blocks, axis=1).reshape(-1)


def gemm_node(node, inits) -> bool:
    """Whether ``node`` is a ``Gemm`` the rewrite handles (constant weight, no transposed
    input, unit ``alpha``/``beta``); a Linear on 3-D inputs exports as ``MatMul`` instead."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (
        node.op_type == "Gemm"
        and not attrs.get("transA", 0)
        and attrs.get("alpha", 1.0) == 1.0
        and attrs.get("beta", 1.0) == 1.0
        and node.input[1] in inits
    )


def rewrite_matmul_nbits(onnx_model, nodes: dict[str, tuple[int, str]]) -> None:
    """Replace each named ``Gemm`` node (``{node name: (bits, granularity)}``, weight as an
    initializer, ``alpha = beta = 1``) by ``MatMulNBits`` + ``Add``, in place."""
    from onnx import helper, numpy_helper

    graph = onnx_model.graph
    inits = {t.name: t for t in graph.initializer}
    out = []
    for node in graph.node:
        if node.name not in nodes:
            out.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not gemm_node(node, inits):
            raise ValueError(f"{node.name}: not a Gemm with a constant weight")
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        w = w if attrs.get("transB", 0) else w.T  # -> [N, K]
        bits, granularity = nodes[node.name]
        packed, scales = _blocks(np.ascontiguousarray(w), bits, granularity)
        name = node.name
        graph.initializer.extend(
            [
                numpy_helper.from_array(packed, f"{name}_B"),
                numpy_helper.from_array(scales, f"{name}_S"),
            ]
        )
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{name}_mm" if has_bias else node.output[0]
        out.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], f"{name}_B", f"{name}_S"],
                [mm_out],
                name=f"{name}_MatMulNBits",
                domain="com.microsoft",
                K=int(w.shape[1]),
                N=int(w.shape[0]),
                bits=4,
                block_size=BLOCK,
            )
        )
        if has_bias:
            out.append(
                helper.make_node(
                    "Add", [mm_out, node.input[2]], [node.output[0]], name=f"{name}_Add"
                )
            )
    del graph.node[:]
    graph.node.extend(out)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in onnx_model.opset_import):
        onnx_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


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
    # initializers stored in ONNX's sparse (COO) form where that makes the file smaller
    sparse_initializers: bool = True

    def to_dict(self) -> dict:
        return _SPEC.dump_python(self, mode="json")

    @classmethod
    def from_dict(cls, d: dict) -> DeploySpec:
        """The inverse of :meth:`to_dict` (other keys of ``d`` are ignored)."""
        return _SPEC.validate_python(d)

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


_SPEC = TypeAdapter(DeploySpec)


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
    if spec.form == "fp32":
        export_onnx(plain, example, path)
    elif spec.form == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        with tempfile.TemporaryDirectory() as tmp:
            fp32 = onnx.load(str(export_onnx(plain, example, Path(tmp) / "fp32.onnx")))
        onnx.save(convert_float_to_float16(fp32, keep_io_types=True), str(path))
    elif spec.form == "int8-qdq":
        fields = ("int8_layers", "reduce_range", "activation_qparams", "nbits_layers")
        export_deployed(
            plain, example, path, calibration=calibration, **{k: getattr(spec, k) for k in fields}
        )
        if not spec.activation_qparams:
            spec = replace(spec, activation_qparams=activation_qparams(path))
    else:
        raise ValueError(f"unknown deployed form {spec.form!r} (one of {', '.join(FORMS)})")
    if spec.sparse_initializers:
        sparsify_initializers(path, example)
    return path, spec


_SPARSE_OVERHEAD = 32  # bytes a sparse initializer's proto adds beyond its two arrays, about
_SPARSE_MIN_BYTES = 1024  # smaller arrays (biases, scales, zero points) stay as they are


def sparsify_initializers(path: str | Path, example: torch.Tensor) -> int:
    """Rewrite the ONNX file ``path`` with every initializer that is smaller in ONNX's sparse
    (COO) form, its non-zero values and their int64 positions, stored that way: above about
    67 % zeros for float32 weights, 89 % for INT8 ones. ONNX Runtime densifies them when it
    loads the model, so the outputs stay the same, which is checked on ``example`` (the dense
    file is kept otherwise). Arrays under 1 KB are left dense. Returns the bytes saved."""
    import onnx
    from onnx import helper, numpy_helper

    path = Path(path)
    proto = onnx.load(str(path))
    graph, dense, sparse = proto.graph, [], []
    for t in graph.initializer:
        a = numpy_helper.to_array(t)
        nz = np.flatnonzero(a)
        if (
            a.nbytes < _SPARSE_MIN_BYTES
            or nz.size * (a.itemsize + 8) + _SPARSE_OVERHEAD >= a.nbytes
        ):
            dense.append(t)
            continue
        values = numpy_helper.from_array(a.reshape(-1)[nz], t.name)
        sparse.append(helper.make_sparse_tensor(values, numpy_helper.from_array(nz), a.shape))
    if not sparse:
        return 0
    before = path.stat().st_size
    del graph.initializer[:]
    graph.initializer.extend(dense)
    graph.sparse_initializer.extend(sparse)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "sparse.onnx"
        onnx.save(proto, str(candidate))
        x = {"input": example.numpy().astype(np.float32)}
        same = all(
            np.array_equal(a, b)
            for a, b in zip(
                *(make_session(p, threads=1).run(None, x) for p in (path, candidate)), strict=True
            )
        )
        if not same or candidate.stat().st_size >= before:
            return 0
        shutil.move(str(candidate), path)
    return before - path.stat().st_size


def sparse_initializer_count(path: str | Path) -> int:
    """How many initializers of the ONNX file are stored sparse."""
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.sparse_initializer)


def deployed_onnx_bytes(
    compressed: nn.Module,
    example: torch.Tensor,
    *,
    cache: dict | None = None,
    sparse_initializers: bool = True,
) -> int:
    """Bytes of the ONNX file a compressed model is deployed as (INT8 QDQ for its quantised
    layers), written and counted. It depends only on the layers' shapes and which are quantised
    (``cache`` holds it per such structure), up to a byte per quantised activation (a UINT8 zero
    point is a varint; ranges are calibrated here on random inputs, at export on training data).
    A model with a layer above 60 % zeros is written every time: sparse initializers make its
    bytes depend on the zeros."""
    plain, int8 = materialize(compressed)
    layers = compressible_layers(plain)
    shapes = tuple((n, tuple(m.weight.shape)) for n, m in layers.items())
    key = shapes, tuple(sorted(int8))
    # a layer mostly of zeros may be stored sparse: its bytes depend on its zeros, not cached
    sparse = sparse_initializers and any(
        float((m.weight == 0).float().mean()) > 0.6 for m in layers.values()
    )
    if cache is not None and key in cache and not sparse:
        return cache[key]
    form = ("int8-qdq", tuple(sorted(int8))) if int8 else ("fp32",)
    spec = DeploySpec(*form, sparse_initializers=sparse_initializers)
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = build_form(plain, example, Path(tmp) / "m.onnx", spec)
        size = path.stat().st_size
    if cache is not None and not sparse:
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
