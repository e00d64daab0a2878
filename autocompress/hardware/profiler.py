"""The profiler: measure configurations (compression policies over the space's keep ratios and
FP32/INT8 precisions) of the model on a measured target and fit its latency table. Each one is
exported as deployed and run by ONNX Runtime with its profiler (every node's time inside the
whole-graph run, attributed to the layers' blocks) and timed end to end (the calibration). The
design covers every (in, out) channel pair of consecutive layers at both precisions, both
uniform precisions at every channel level, then random configurations.

Attribution of the profiled nodes to the model's layers: ORT renames the nodes it optimises
(``/features/features.3/Conv_token_9``, a Conv fused with its ReLU named after the ReLU's
output), so a layer's *aliases* are the name and outputs of its node and of the chain of
single-consumer element-wise nodes after it (what ORT may fuse into it); a profiled compute node
belongs to the layer whose alias starts its name. Every other node joins the *block* of the last
layer executed before it (its glue: activations, pooling, Q/DQ, layout changes).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._files import content_key
from ..compression.apply import apply_policy, materialize
from ..errors import ModelError
from ..policy import FLOAT_BITS, CompressionPolicy, LayerPolicy, compressible_layers
from ..search_space import SearchSpace
from .deploy import export_deployed, onnx_layer_nodes
from .layers import channels
from .measure import (
    MEASUREMENT_LOCK,
    NodeTime,
    machine_fingerprint,
    measure_passes,
    profile_onnx_nodes,
    warn_if_busy,
)
from .table import TABLE_VERSION, LatencyTable, fit_table
from .targets import MeasuredTarget

_FUSABLE = set(
    "Relu Clip Add Sum Sigmoid LeakyRelu HardSigmoid Mul QuantizeLinear DequantizeLinear "
    "BatchNormalization".split()
)
_COMPUTE_WORDS = ("Conv", "Gemm", "MatMul")  # in a compute node's op type (QLinearConv, ...)


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


_PASS_THROUGH = {"QuantizeLinear", "DequantizeLinear", "Relu", "Clip", "BatchNormalization"}


def layer_neighbours(onnx_model, model: nn.Module) -> dict[str, list[str]]:
    """``{layer: [layers next to it]}`` in the exported graph: the layers its output reaches
    through non-layer nodes (activations, adds, pooling, Q/DQ, reshapes), and the layers that
    read its input (through activations and Q/DQ only)."""
    graph = onnx_model.graph
    nodes = onnx_layer_nodes(onnx_model, model)
    layer_of = {node: layer for layer, node in nodes.items()}
    consumers: dict[str, list] = {}
    producer: dict[str, object] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    by_name = {n.name: n for n in graph.node}

    def reach(tensors: list[str], through) -> set[str]:
        """Layers reading ``tensors`` via nodes ``through`` admits, across one add at most (a
        residual add's output is the next block's input, not this layer's)."""
        found, seen = set(), set()
        todo = [(t, 0) for t in tensors]
        while todo:
            tensor, adds = todo.pop()
            for user in consumers.get(tensor, []):
                add = user.op_type in ("Add", "Sum")
                if user.name in layer_of:
                    found.add(layer_of[user.name])
                elif user.name not in seen and through(user) and adds + add <= 1:
                    seen.add(user.name)
                    todo.extend((o, adds + add) for o in user.output)
        return found

    out = {}
    for layer, node_name in nodes.items():
        node = by_name[node_name]
        source = node.input[0]  # the data input, before the Q/DQ pair an INT8 layer reads
        while (p := producer.get(source)) is not None and p.op_type in _PASS_THROUGH - {"Relu"}:
            source = p.input[0]
        feeds = reach(list(node.output), lambda n: True)
        shares = reach([source], lambda n: n.op_type in _PASS_THROUGH)
        out[layer] = sorted((feeds | shares) - {layer})
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
    compute = [i for i, n in enumerate(nodes) if any(w in n.op_type for w in _COMPUTE_WORDS)]
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


def _choices(space: SearchSpace, layers: list[str]) -> dict[str, tuple[list[float], list[int]]]:
    """Per layer: keep ratios and the deployed precisions (bits 8 = INT8, 32 = FP32)."""
    return {
        n: (list(ch.keep_ratio), sorted({8 if b <= 8 else FLOAT_BITS for b in ch.bits})[::-1])
        if (ch := space.layers.get(n)) is not None
        else ([1.0], [FLOAT_BITS])
        for n in layers
    }


def design_policies(
    space: SearchSpace, layers: list[str], *, seed: int = 0
) -> Iterator[CompressionPolicy]:
    """The baseline, the covering design (see the module docstring), then random configurations
    without end (drawn like the search draws policies)."""
    choices = _choices(space, layers)
    n_keep = max(len(k) for k, _ in choices.values())
    mixed = any(len(p) > 1 for _, p in choices.values())

    def build(d: dict[str, tuple[int, int]]) -> CompressionPolicy:
        return CompressionPolicy(
            {
                n: LayerPolicy(
                    keep_ratio=choices[n][0][k % len(choices[n][0])],
                    bits=choices[n][1][p % len(choices[n][1])],
                )
                for n, (k, p) in d.items()
            }
        )

    yield build({n: (0, 0) for n in layers})
    for q in range(2 if mixed else 1):
        for i in range(n_keep * n_keep):
            a, b = i % n_keep, i // n_keep
            yield build({n: ((a, b)[j % 2], (j + q) % 2) for j, n in enumerate(layers)})
    if mixed:
        for prec in (0, 1):
            for a in range(n_keep):
                yield build({n: (a, prec) for n in layers})
    # random configurations drawn as the search draws them: uniform over each layer's choices,
    # so a layer with bits [2..8, 32] is INT8 in 6 of 7 draws
    p_int8 = {
        n: sum(b <= 8 for b in ch.bits) / len(ch.bits) if ch is not None else 0.0
        for n, ch in ((n, space.layers.get(n)) for n in layers)
    }
    rng = random.Random(seed)
    while True:
        yield build(
            {n: (rng.randrange(len(choices[n][0])), int(rng.random() < p_int8[n])) for n in layers}
        )


def _profile_config(
    model: nn.Module, example: torch.Tensor, target: MeasuredTarget, int8_layers, path: Path
) -> list[list]:
    """Export a plain model as deployed to ``path``; its profiled blocks."""
    import onnx

    export_deployed(model, example, path, int8_layers=int8_layers)
    with MEASUREMENT_LOCK:
        nodes = profile_onnx_nodes(
            path, tuple(example.shape), threads=target.runtime.threads, runs=target.profile.runs
        )
    blocks = attribute(nodes, layer_aliases(onnx.load(str(path)), model))
    return [[b.layer, b.compute_us, b.glue_us, b.glue_nodes] for b in blocks]


def _probe_channels(
    model: nn.Module, space: SearchSpace, example: torch.Tensor, round_to: int
) -> list:
    """Channel counts two design policies produce (how pruning couples layers is part of what
    the table is valid for)."""
    layers = list(compressible_layers(model))
    design = design_policies(space, layers)
    probes = [next(design) for _ in range(3)][1:]
    return [
        sorted(channels(apply_policy(model, p, example=example, round_to=round_to)).items())
        for p in probes
    ]


def table_key(
    model: nn.Module,
    space: SearchSpace,
    example: torch.Tensor,
    target: MeasuredTarget,
    round_to: int,
) -> str:
    """Cache key: target settings, machine, architecture, input shape, the space's choices and
    the channel counts pruning gives for two probe policies."""
    layers = list(compressible_layers(model))
    payload = {
        "version": TABLE_VERSION,
        "target": [target.name, target.digest()],
        "machine": machine_fingerprint(),
        "arch": content_key(repr(model)),
        "input": list(example.shape),
        "choices": {n: list(map(list, c)) for n, c in _choices(space, layers).items()},
        "round_to": round_to,
        "probes": _probe_channels(model, space, example, round_to),
    }
    return content_key(payload)


def profile_model(
    model: nn.Module,
    space: SearchSpace,
    example: torch.Tensor,
    target: MeasuredTarget,
    *,
    log: Callable[[str], None] = print,
    seed: int = 0,
    **compression,
) -> LatencyTable:
    """Measure configurations on ``target`` within its budget and fit the table (no cache):
    export (design first) until ``max_configs`` or 65 % of ``max_seconds`` (at least
    ``min_configs``), profiling the design and every ``profile_every``-th random one; then time
    every exported model end to end in ``passes`` passes."""
    t0 = time.perf_counter()
    budget = target.profile
    model = model.eval()
    layers = list(compressible_layers(model))
    busy = warn_if_busy("latency profile", log)
    log(
        f"latency profile: {target.name} ({target.runtime.threads} thread(s)), {len(layers)} "
        f"layers, up to {budget.max_configs} configurations in ~{budget.max_seconds:.0f} s"
    )
    records, paths, seen = [], [], set()
    neighbours: dict[str, list[str]] = {}
    repeated = 0
    n_keep = max(len(space.layers[n].keep_ratio) if n in space.layers else 1 for n in layers)
    n_design = 1 + 2 * n_keep * n_keep + 2 * n_keep  # baseline, covering, uniform precision
    with tempfile.TemporaryDirectory() as tmp:
        for policy in design_policies(space, layers, seed=seed):
            elapsed = time.perf_counter() - t0
            full = len(records) >= budget.max_configs or repeated >= 50
            late = elapsed > 0.65 * budget.max_seconds and len(records) >= budget.min_configs
            if full or late:
                break
            compressed = apply_policy(model, policy, example=example, **compression)
            plain, bits = materialize(compressed)
            chans = channels(plain)
            signature = (tuple(sorted(chans.items())), tuple(sorted(bits)))
            if signature in seen:  # coupled layers: another policy gave the same deployed model
                repeated += 1
                continue
            seen.add(signature)
            repeated = 0
            path = Path(tmp) / f"config-{len(records)}.onnx"
            rec = {
                "channels": {n: list(c) for n, c in chans.items()},
                "precision": {n: ("int8" if n in bits else "fp32") for n in layers},
            }
            if len(records) < n_design or len(records) % budget.profile_every == 0:
                rec["blocks"] = _profile_config(plain, example, target, list(bits), path)
            else:  # timed end to end only: it informs the calibration, not the profile prior
                export_deployed(plain, example, path, int8_layers=list(bits))
            if not records:  # the uncompressed model's graph: which layers are neighbours
                import onnx

                neighbours = layer_neighbours(onnx.load(str(path)), plain)
            records.append(rec)
            paths.append(path)
            if len(records) % 50 == 0:
                log(f"latency profile: {len(records)} configurations profiled, {elapsed:.0f} s")
        log(
            f"latency profile: timing {len(records)} configurations end to end "
            f"({target.runtime.passes}+ passes over up to {target.runtime.span_seconds:.0f} s, "
            f"within the budget), {time.perf_counter() - t0:.0f} s"
        )
        walls = measure_passes(
            paths,
            tuple(example.shape),
            threads=target.runtime.threads,
            deadline=t0 + budget.max_seconds,
            **target.runtime.pass_settings(),
            **target.runtime.timing(),
        )
    for rec, wall in zip(records, walls, strict=True):
        rec["wall_ms"] = round(wall, 6)
    table = fit_table(records, ridge=budget.ridge, neighbours=neighbours)
    table.meta.update(
        {
            "target": target.name,
            "threads": target.runtime.threads,
            "machine": machine_fingerprint(),
            "input": list(example.shape),
            "cpu_busy_at_start": round(busy, 3),
            "seconds": round(time.perf_counter() - t0, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    return table
