"""Latency models: the interface the search scores policies with, and the factory that builds
the one ``latency.target`` names: a latency table profiled on this machine for measured targets
(cached in ``output_dir/cache``), a per-layer roofline for analytic ones, or ``proxy`` (MACs x
weight bits scaled to the baseline's measured FP32 latency, a placeholder).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import ConfigError
from ..policy import FLOAT_BITS, CompressionPolicy, LayerPolicy
from .layers import LayerGeometry, channels, count_macs, layer_geometry, precisions
from .table import LatencyTable
from .targets import AnalyticTarget, MeasuredTarget, Runtime, load_target

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..search_space import SearchSpace


@runtime_checkable
class LatencyModel(Protocol):
    """Predicts milliseconds per inference of the deployed form of a compressed model
    (``model``: channels already removed; ``policy``: its per-layer bits)."""

    name: str

    def predict(self, model: nn.Module, policy: CompressionPolicy) -> float: ...


class ProxyLatencyModel:
    """``latency = reference_ms * sum(MACs_l * bits_l) / sum(MACs0_l * 32)``: MACs of the
    compressed model (removed channels count) times weight bits, relative to the uncompressed
    reference model whose latency is ``reference_ms``."""

    name = "proxy"

    def __init__(self, reference: nn.Module, example: torch.Tensor, reference_ms: float = 1.0):
        self.example = example
        self.reference_ms = reference_ms
        self._total = sum(count_macs(reference, example).values()) * FLOAT_BITS or 1

    def predict(self, model: nn.Module, policy: CompressionPolicy) -> float:
        bits = {n: lp.bits for n, lp in policy.layers.items()}
        # FP16 layers run as FP32 on the CPU targets: only integer bits are cheaper
        cost = sum(
            m * (b if (b := bits.get(n, FLOAT_BITS)) <= 8 else FLOAT_BITS)
            for n, m in count_macs(model, self.example).items()
        )
        return self.reference_ms * cost / self._total


class TableLatencyModel:
    """A measured target's predictor: the compressed model's channel counts and the policy's
    precisions (< 32 bits = INT8) looked up in the profiled table (no credit for sparsity or
    sub-8-bit weights: the CPU kernels give none)."""

    def __init__(self, name: str, table: LatencyTable, path: Path | None = None, runtime=None):
        self.name, self.table, self.path = name, table, path
        self.runtime = runtime or Runtime()
        self.threads = self.runtime.threads  # what measurements of this target must use

    def predict(self, model: nn.Module, policy: CompressionPolicy) -> float:
        chans = channels(model)
        return self.table.predict_ms(chans, precisions(policy, chans))


def _compute_seconds(target: AnalyticTarget, macs: int, w_bits: int, a_bits: int) -> float:
    c = target.compute
    if c.kind == "bit_serial":
        cycles = macs * math.ceil(w_bits / c.brick_bits) * math.ceil(a_bits / c.brick_bits)
        return cycles / (c.bricks * c.clock_hz)
    supported = sorted(c.macs_per_s)
    key = next((p for p in supported if p >= w_bits), supported[-1])
    return macs / c.macs_per_s[key]


def layer_seconds(
    target: AnalyticTarget, geo: LayerGeometry, cin: int, cout: int, lp: LayerPolicy
) -> float:
    """Seconds of one layer on ``target`` at ``cin``/``cout`` channels under ``lp``."""
    if not lp.quantized:
        w_bits = a_bits = target.precision.float_bits
    else:
        w_bits = lp.bits if target.credit.sub_8bit else max(lp.bits, 8)
        a_bits = target.precision.act_bits
    density = 1.0 - lp.sparsity if target.credit.unstructured_sparsity else 1.0
    compute = _compute_seconds(target, geo.macs(cin, cout), w_bits, a_bits)
    act = geo.activations(cin, cout)
    mem_bytes = (geo.weights(cin, cout) * density * w_bits + act * a_bits) / 8
    memory = mem_bytes / target.memory.bandwidth_bytes_per_s
    return max(compute, memory) + target.overhead.per_layer_us * 1e-6


class AnalyticLatencyModel:
    """The :class:`LatencyModel` of an analytic target (hardware the user does not have), in
    milliseconds: a per-layer roofline, ``t_layer = max(compute, memory) + per_layer``, ``t_model
    = sum(t_layer) + per_inference``. Compute is ``MACs * ceil(w/b) * ceil(a/b) / (bricks *
    clock)`` bit-serial (BitFusion / HAQ, brick width ``b``) or ``MACs / macs_per_s[p]`` (``p``
    the smallest listed precision >= the weight bits); memory is ``(weights * density * w +
    (inputs + outputs) * a) / 8 / bandwidth``. Float layers run at ``float_bits``; quantised ones
    at their weight bits (>= 8 without sub-8-bit credit) and ``act_bits``."""

    def __init__(self, target: AnalyticTarget, reference: nn.Module, example: torch.Tensor):
        self.target = target
        self.name = target.name
        self.geometry = layer_geometry(reference, example)

    def predict(self, model: nn.Module, policy: CompressionPolicy) -> float:
        total = self.target.overhead.per_inference_us * 1e-6
        for name, (cin, cout) in channels(model).items():
            if (geo := self.geometry.get(name)) is not None:
                lp = policy.layers.get(name, LayerPolicy())
                total += layer_seconds(self.target, geo, cin, cout, lp)
        return total * 1e3


WEAK_FIT = 0.8  # cross-validated fraction within ±10 % below which describe_fit warns


def describe_fit(table: LatencyTable) -> str:
    """One line on how well the table fits its own measurements (cross-validated)."""
    fit, meta = table.meta.get("fit", {}), table.meta
    head = f"{fit.get('configs', 0)} configurations"
    if "seconds" in meta:
        head += f" profiled in {meta['seconds']:.0f} s"
    if "cv_within_10pct" not in fit:
        return f"{head}, in-sample {fit.get('within_10pct', 0):.0%} within ±10 %"
    line = f"{head}, cross-validated {fit['cv_within_10pct']:.0%} within ±10 %, "
    line += f"MAPE {fit['cv_mape']:.1%}"
    if meta.get("cpu_steal"):
        line += f", {meta['cpu_steal']:.1%} of the CPU time stolen by the host while profiling"
    if fit["cv_within_10pct"] < WEAK_FIT:  # seen on a shared VM: 96 % once, 21-34 % under load
        line += (
            " -- warning: a weak fit (timings were noisy?): re-profile on a quiet machine "
            "with `autocompress latency profile EXP --force`"
        )
    return line


def profile(
    cfg: ExperimentConfig,
    model: nn.Module | None = None,
    space: SearchSpace | None = None,
    example: torch.Tensor | None = None,
    *,
    force: bool = False,
    target: MeasuredTarget | None = None,
    log: Callable[[str], None] = print,
) -> TableLatencyModel:
    """The measured target's table from ``output_dir/cache``, or profiled now and stored;
    without a ``model``, on the config's untrained one (latency does not depend on the weights),
    its space and input. ``target`` overrides the preset ``cfg.latency.target`` names (same
    key, e.g. a larger profiling budget)."""
    from .profiler import profile_model, table_key

    target = target or load_target(cfg.latency.target)
    if not isinstance(target, MeasuredTarget):
        raise ConfigError(
            f"latency target {target.name!r} is {target.kind}: nothing to measure "
            f"(profiling applies to measured targets such as cpu-onnxruntime)"
        )
    if model is None:
        from ..data import load_data
        from ..search_space import load_search_space

        data = load_data(cfg.data)
        model = cfg.model.build(data.input_shape[0]).eval()
        space = load_search_space(cfg.search_space).resolve(model)
        example = data.example_input(cfg.latency.batch_size)
    key = table_key(model, space, example, target, cfg.compression.round_to)
    path = cfg.output_dir / "cache" / f"latency-{target.name}-{key}.json"
    if path.is_file() and not force:
        try:
            table = LatencyTable.load(path)
            log(f"latency table: cached {path.name}: {describe_fit(table)}")
            return TableLatencyModel(target.name, table, path, target.runtime)
        except (ValueError, KeyError, TypeError) as exc:
            log(f"latency table: {path.name} unreadable ({exc}): profiling again")
    from .measure import cpu_times, steal_fraction

    before = cpu_times()
    table = profile_model(model, space, example, target, log=log, **cfg.compression.model_dump())
    table.meta["key"] = key
    steal = steal_fraction(before, cpu_times())
    if steal is not None:
        table.meta["cpu_steal"] = round(steal, 4)
    table.save(path)
    log(f"latency table: {describe_fit(table)} -> {path}")
    return TableLatencyModel(target.name, table, path, target.runtime)


def make_latency_model(
    cfg: ExperimentConfig,
    model: nn.Module,
    space: SearchSpace,
    example: torch.Tensor,
    *,
    reference_ms: float = 1.0,
    log=print,
) -> LatencyModel:
    """The latency model ``cfg.latency.target`` names for the uncompressed baseline ``model``
    over ``space`` (``reference_ms``: its measured FP32 latency; a measured target's table is
    loaded, or profiled and stored, here)."""
    target = load_target(cfg.latency.target)
    if isinstance(target, MeasuredTarget):
        return profile(cfg, model, space, example, log=log)
    if isinstance(target, AnalyticTarget):
        return AnalyticLatencyModel(target, model, example)
    return ProxyLatencyModel(model, example, reference_ms)
