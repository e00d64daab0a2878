"""Linear layers searched at 2-4 bits, deployed as ONNX Runtime's 4-bit ``MatMulNBits``
(``com.microsoft``): the layer's own integer codes and scales, written into the operator's
4-bit blocks, so the deployed weights are exactly the searched ones (ONNX Runtime's
``MatMulNBitsQuantizer`` re-quantises float weights block-wise, which moves every weight of
an already-quantised layer off its grid). Only Linear (ONNX ``Gemm``) layers with symmetric
uniform weights qualify; ``Gemm`` becomes ``MatMulNBits`` + ``Add`` (the bias)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..compression.quantization import quantize_weight
from ..policy import CompressionPolicy, compressible_layers

BLOCK = 32  # elements of K per block (one scale per output channel, repeated per block)


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
