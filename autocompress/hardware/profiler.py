"""The profiler: measure a grid of configurations of the model on a measured target and build
its latency table (cached per target, machine fingerprint, architecture and search space).

Each configuration is a compression policy over the space's channel counts (keep ratios) and
precisions (FP32 / INT8): it is applied to the model, materialised, exported as deployed
(:func:`~autocompress.hardware.deploy.export_deployed`) and run by ONNX Runtime twice: once
with its profiler, which gives every node's time inside the whole-graph run (attributed to the
layers' blocks), and once plainly, timed end to end (the calibration of the table against
whole-model runs). The design covers every (in, out) channel pair of consecutive layers at both
precisions, both uniform precisions at every channel level, and random configurations.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..policy import FLOAT_BITS, CompressionPolicy, LayerPolicy, compressible_layers
from ..search_space import SearchSpace
from .measure import (
    cpu_busy_fraction,
    make_session,
    measurement_lock,
    onnx_fingerprint_env,
    profile_onnx_nodes,
    time_session,
)
from .table import TABLE_VERSION, LatencyTable, fit_table
from .targets import MeasuredTarget

__all__ = ["design_policies", "machine_fingerprint", "measure_config", "profile_model"]


def machine_fingerprint() -> dict[str, str]:
    """What makes a latency table valid only on this kind of machine."""
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                keep = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "avx_vnni")
                flags = ",".join(f for f in keep if f in have)
                break
    except OSError:
        pass
    import os

    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "cores": str(os.cpu_count()),
        "isa": flags,
        **onnx_fingerprint_env(),
    }


def _choices(space: SearchSpace, layers: list[str]) -> dict[str, tuple[list[float], list[int]]]:
    """Per layer: keep ratios and the deployed precisions (bits 8 = INT8, 32 = FP32)."""
    out = {}
    for name in layers:
        ch = space.layers.get(name)
        if ch is None:
            out[name] = ([1.0], [FLOAT_BITS])
            continue
        precs = sorted({8 if b != FLOAT_BITS else FLOAT_BITS for b in ch.bits}, reverse=True)
        out[name] = (list(ch.keep_ratio), precs)
    return out


def design_policies(
    space: SearchSpace, layers: list[str], *, n_random: int, seed: int = 0
) -> list[CompressionPolicy]:
    """The profiling design (see the module docstring); the first policy is the baseline."""
    choices = _choices(space, layers)
    n_keep = max(len(k) for k, _ in choices.values())
    mixed = any(len(p) > 1 for _, p in choices.values())
    designs: list[dict[str, tuple[int, int]]] = []  # layer -> (keep index, precision index)
    designs.append({n: (0, 0) for n in layers})
    for q in range(2 if mixed else 1):
        for i in range(n_keep * n_keep):
            a, b = i % n_keep, i // n_keep
            designs.append({n: ((a, b)[j % 2], (j + q) % 2) for j, n in enumerate(layers)})
    if mixed:
        for prec in (0, 1):
            for a in range(n_keep):
                designs.append({n: (a, prec) for n in layers})
    rng = random.Random(seed)
    for _ in range(n_random):
        designs.append({n: (rng.randrange(n_keep), rng.randrange(2)) for n in layers})
    policies, seen = [], set()
    for d in designs:
        pol = CompressionPolicy(
            {
                n: LayerPolicy(
                    keep_ratio=choices[n][0][k % len(choices[n][0])],
                    bits=choices[n][1][p % len(choices[n][1])],
                )
                for n, (k, p) in d.items()
            }
        )
        if pol not in seen:
            seen.add(pol)
            policies.append(pol)
    return policies


def measure_config(
    model: nn.Module, example: torch.Tensor, target: MeasuredTarget, int8_layers, tmp: Path
) -> dict:
    """Export a plain model as deployed; its profiled blocks and its end-to-end latency."""
    import onnx

    from .attribution import attribute, layer_aliases
    from .deploy import export_deployed

    path = export_deployed(model, example, tmp / "config.onnx", int8_layers=int8_layers)
    rt = target.runtime
    shape = tuple(example.shape)
    with measurement_lock():
        busy = cpu_busy_fraction(0.05)
        nodes = profile_onnx_nodes(path, shape, threads=rt.threads, runs=target.profile.runs)
        sess = make_session(path, threads=rt.threads)
        feed = {sess.get_inputs()[0].name: example.detach().numpy().astype("float32")}
        wall = time_session(
            sess,
            feed,
            warmup=rt.warmup,
            repeats=rt.repeats,
            rounds=rt.rounds,
            tolerance=rt.tolerance,
        )
    blocks = attribute(nodes, layer_aliases(onnx.load(str(path)), model))
    return {
        "wall_ms": wall,
        "busy": round(busy, 3),
        "blocks": [[b.layer, b.compute_us, b.glue_us, b.glue_nodes] for b in blocks],
    }


def table_key(
    model: nn.Module,
    space: SearchSpace,
    example: torch.Tensor,
    target: MeasuredTarget,
    round_to: int,
) -> str:
    """Cache key: target settings, machine, architecture, input shape, the space's choices."""
    layers = list(compressible_layers(model))
    payload = {
        "version": TABLE_VERSION,
        "target": [target.name, target.digest()],
        "machine": machine_fingerprint(),
        "arch": hashlib.sha256(repr(model).encode()).hexdigest()[:16],
        "input": list(example.shape),
        "choices": {n: list(map(list, c)) for n, c in _choices(space, layers).items()},
        "round_to": round_to,
    }
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    """Measure the design on ``target`` and fit the latency table (no caching here)."""
    from ..compress.apply import apply_policy, materialize
    from .layers import channels, layer_geometry

    t0 = time.perf_counter()
    model = model.eval()
    layers = list(compressible_layers(model))
    policies = design_policies(space, layers, n_random=target.profile.random_configs, seed=seed)
    n_design = len(policies) - target.profile.random_configs
    busy = cpu_busy_fraction(0.5)
    if busy > 0.25:
        log(f"latency profile: the CPU is {busy:.0%} busy with other work: timings will be noisy")
    log(
        f"latency profile: {len(policies)} configurations of {len(layers)} layers on "
        f"{target.name} ({target.runtime.threads} threads)"
    )
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, policy in enumerate(policies):
            late = time.perf_counter() - t0 > target.profile.max_seconds
            if i >= n_design and late and len(records) >= n_design:
                log(f"latency profile: time budget reached after {i} configurations")
                break
            compressed = apply_policy(
                model, policy, example=example, round_to=round_to, importance=importance
            )
            plain, bits = materialize(compressed)
            rec = measure_config(plain, example, target, list(bits), Path(tmp))
            rec["channels"] = {n: list(c) for n, c in channels(plain).items()}
            rec["precision"] = {n: ("int8" if n in bits else "fp32") for n in layers}
            records.append(rec)
            if (i + 1) % 10 == 0 or i + 1 == len(policies):
                log(
                    f"latency profile: {i + 1}/{len(policies)} configurations, "
                    f"{time.perf_counter() - t0:.0f} s"
                )
    geometry = layer_geometry(model, example)
    table = fit_table(records, geometry, layers)
    table.meta.update(
        {
            "target": target.name,
            "machine": machine_fingerprint(),
            "input": list(example.shape),
            "seconds": round(time.perf_counter() - t0, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    return table
