"""Attribute the nodes of an ONNX Runtime profile to the model's layers. ORT renames the nodes
it optimises (``/features/features.3/Conv_token_9``, a Conv fused with its ReLU named after the
ReLU's output), so a layer's *aliases* are the name and outputs of its node and of the chain of
single-consumer element-wise nodes after it (what ORT may fuse into it); a profiled compute node
belongs to the layer whose alias starts its name. Every other node joins the *block* of the last
layer executed before it (its glue: activations, pooling, Q/DQ, layout changes).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ModelError
from .deploy import onnx_layer_nodes
from .measure import NodeTime

_FUSABLE = set(
    "Relu Clip Add Sum Sigmoid LeakyRelu HardSigmoid Mul QuantizeLinear DequantizeLinear "
    "BatchNormalization".split()
)
_COMPUTE_WORDS = ("Conv", "Gemm", "MatMul")


def is_compute(op_type: str) -> bool:
    return any(w in op_type for w in _COMPUTE_WORDS)


def layer_aliases(onnx_model, model: nn.Module, depth: int = 3) -> dict[str, list[list[str]]]:
    """``{layer: [aliases at depth 0, at depth 1, ...]}`` in the deployed ONNX graph."""
    graph = onnx_model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_name = {n.name: n for n in graph.node}
    out: dict[str, list[list[str]]] = {}
    for layer, node_name in onnx_layer_nodes(onnx_model, model).items():
        node = by_name[node_name]
        levels = [[node.name, *node.output]]
        frontier = node
        for _ in range(depth):
            users = [u for o in frontier.output for u in consumers.get(o, [])]
            if len(users) != 1 or users[0].op_type not in _FUSABLE:
                break
            frontier = users[0]
            levels.append([frontier.name, *frontier.output])
        out[layer] = levels
    return out


def _matches(node_name: str, alias: str) -> bool:
    return node_name == alias or (node_name.startswith(alias) and node_name[len(alias)] in "_:/")


@dataclass
class Block:
    """A layer's compute node and the glue nodes executed after it (``layer`` None: the nodes
    before the first layer)."""

    layer: str | None
    compute_us: float = 0.0
    glue_us: float = 0.0
    glue_nodes: int = 0


def attribute(nodes: list[NodeTime], aliases: dict[str, list[list[str]]]) -> list[Block]:
    """Blocks in execution order: a compute node goes to the layer with the longest (then
    shallowest) alias that starts its name; layers left without one take the remaining compute
    nodes in order when their numbers agree, else :class:`ModelError`."""
    compute = [i for i, n in enumerate(nodes) if is_compute(n.op_type)]
    best: dict[int, tuple[tuple[int, int], str]] = {}
    for layer, levels in aliases.items():
        for level, names in enumerate(levels):
            for alias in names:
                for i in compute:
                    score = (len(alias), -level)
                    if _matches(nodes[i].name, alias) and (i not in best or score > best[i][0]):
                        best[i] = (score, layer)
    owner: dict[int, str] = {}
    for i, (_, layer) in sorted(best.items(), key=lambda kv: kv[1][0], reverse=True):
        if layer not in owner.values():
            owner[i] = layer
    missing = [layer for layer in aliases if layer not in owner.values()]
    free = [i for i in compute if i not in owner]
    if missing and len(free) == len(missing):
        owner.update(zip(free, missing, strict=True))
    elif missing:
        raise ModelError(
            f"profile attribution: no ONNX Runtime node found for layer(s) {', '.join(missing)}"
        )
    blocks = [Block(None)]
    for i, node in enumerate(nodes):
        if i in owner:
            blocks.append(Block(owner[i], compute_us=node.us))
        else:
            blocks[-1].glue_us += node.us
            blocks[-1].glue_nodes += 1
    return blocks
