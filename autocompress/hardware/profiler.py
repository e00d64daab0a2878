"""The profiler: measure configurations (compression policies over the space's keep ratios and
FP32/INT8 precisions) of the model on a measured target and fit its latency table. Each one is
exported as deployed and run by ONNX Runtime with its profiler (every node's time inside the
whole-graph run, attributed to the layers' blocks) and timed end to end (the calibration). The
design covers every (in, out) channel pair of consecutive layers at both precisions, both
uniform precisions at every channel level, then random configurations.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..cache_key import content_key
from ..policy import FLOAT_BITS, CompressionPolicy, LayerPolicy, compressible_layers
from ..search_space import SearchSpace
from .measure import (
    cpu_busy_fraction,
    machine_fingerprint,
    measure_passes,
    measurement_lock,
    profile_onnx_nodes,
)
from .table import TABLE_VERSION, LatencyTable, fit_table
from .targets import MeasuredTarget


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

    from .attribution import attribute, layer_aliases
    from .deploy import export_deployed

    export_deployed(model, example, path, int8_layers=int8_layers)
    with measurement_lock():
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
    from ..compression.apply import apply_policy
    from .layers import channels

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
    round_to: int = 1,
    importance: str = "l1",
    log: Callable[[str], None] = print,
    seed: int = 0,
) -> LatencyTable:
    """Measure configurations on ``target`` within its budget and fit the table (no cache):
    export (design first) until ``max_configs`` or 65 % of ``max_seconds`` (at least
    ``min_configs``), profiling the design and every ``profile_every``-th random one; then time
    every exported model end to end in ``passes`` passes."""
    from ..compression.apply import apply_policy, materialize
    from .deploy import export_deployed
    from .layers import channels

    t0 = time.perf_counter()
    budget = target.profile
    model = model.eval()
    layers = list(compressible_layers(model))
    busy = cpu_busy_fraction(0.5)
    if busy > 0.3:
        log(f"latency profile: other processes keep the CPU {busy:.0%} busy: timings may be noisy")
    log(
        f"latency profile: {target.name} ({target.runtime.threads} thread(s)), {len(layers)} "
        f"layers, up to {budget.max_configs} configurations in ~{budget.max_seconds:.0f} s"
    )
    records, paths, seen = [], [], set()
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
            compressed = apply_policy(
                model, policy, example=example, round_to=round_to, importance=importance
            )
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
            records.append(rec)
            paths.append(path)
            if len(records) % 50 == 0:
                log(f"latency profile: {len(records)} configurations profiled, {elapsed:.0f} s")
        log(
            f"latency profile: timing {len(records)} configurations end to end "
            f"({target.runtime.passes} passes), {time.perf_counter() - t0:.0f} s"
        )
        walls = measure_passes(
            paths,
            tuple(example.shape),
            threads=target.runtime.threads,
            passes=target.runtime.passes,
            deadline=t0 + budget.max_seconds,
            **target.runtime.timing(),
        )
    for rec, wall in zip(records, walls, strict=True):
        rec["wall_ms"] = round(wall, 6)
    table = fit_table(records, layers, ridge=budget.ridge)
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
