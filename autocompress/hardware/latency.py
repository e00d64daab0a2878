"""Latency models: the interface the search scores policies with, and the factory that builds
the one an experiment's ``latency.target`` names.

- measured targets (``cpu-onnxruntime``): a latency table profiled on this machine, cached in
  ``output_dir/cache`` keyed by target, machine fingerprint, architecture and search space;
- analytic targets (``bitfusion``, ``edge-roofline``): a per-layer roofline formula;
- ``proxy``: MACs x weight bits scaled to the baseline's measured FP32 latency (a placeholder
  that credits fewer bits linearly, which CPU kernels do not).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

from ..policy import FLOAT_BITS, CompressionPolicy, compressible_layers
from .layers import channels, precisions
from .table import LatencyTable
from .targets import AnalyticTarget, MeasuredTarget, Runtime, available_targets, load_target

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..search_space import SearchSpace

__all__ = [
    "LatencyModel",
    "ProxyLatencyModel",
    "TableLatencyModel",
    "available_targets",
    "count_macs",
    "load_or_profile",
    "make_latency_model",
]


@runtime_checkable
class LatencyModel(Protocol):
    """Predicts milliseconds per inference of the deployed form of a compressed model.

    ``model`` is the compressed model (channels already removed), ``policy`` its per-layer bits.
    """

    name: str

    def predict(self, model: nn.Module, policy: CompressionPolicy) -> float: ...


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d/Linear layer for one forward pass of ``example``."""
    macs: dict[str, int] = {}
    hooks = []
    for name, layer in compressible_layers(model).items():

        def hook(mod: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
            per_out = mod.weight[0].numel()  # in_channels/groups * kh * kw, or in_features
            macs[name] = int(out.numel() // out.shape[0] * per_out)

        hooks.append(layer.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs


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
        cost = 0
        for name, m in count_macs(model, self.example).items():
            lp = policy.layers.get(name)
            cost += m * (lp.bits if lp is not None else FLOAT_BITS)
        return self.reference_ms * cost / self._total


class TableLatencyModel:
    """The predictor of a measured target: channel counts read off the compressed model,
    precision from the policy (< 32 bits = INT8), looked up in the profiled table. Unstructured
    sparsity and sub-8-bit weights get no credit (the CPU kernels give none)."""

    def __init__(
        self,
        name: str,
        table: LatencyTable,
        path: Path | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.name = name
        self.table = table
        self.path = path
        self.runtime = runtime or Runtime()
        self.threads = self.runtime.threads  # what measurements of this target must use

    def predict(self, model: nn.Module, policy: CompressionPolicy) -> float:
        chans = channels(model)
        return self.table.predict_ms(chans, precisions(policy, chans))


WEAK_FIT = 0.8  # cross-validated fraction within ±10 % below which describe_fit warns


def describe_fit(table: LatencyTable) -> str:
    """One line on how well the table fits its own measurements (cross-validated)."""
    fit = table.meta.get("fit", {})
    head = f"{fit.get('configs', 0)} configurations"
    if "seconds" in table.meta:
        head += f" profiled in {table.meta['seconds']:.0f} s"
    if "cv_within_10pct" in fit:
        line = (
            f"{head}, cross-validated {fit['cv_within_10pct']:.0%} within ±10 %, "
            f"MAPE {fit['cv_mape']:.1%}"
        )
        steal = table.meta.get("cpu_steal")
        if steal:
            line += f", {steal:.1%} of the CPU time stolen by the host while profiling"
        if fit["cv_within_10pct"] < WEAK_FIT:
            # Seen on a shared VM: the same profile fitted 96 % once and 21-34 % under host load.
            line += (
                " -- warning: a weak fit (timings were noisy?): re-profile on a quiet machine "
                "with `autocompress latency profile EXP --force`"
            )
        return line
    return f"{head}, in-sample {fit.get('within_10pct', 0):.0%} within ±10 %"


def _cache_path(cfg: ExperimentConfig, target: str, key: str) -> Path:
    return cfg.output_dir / "cache" / f"latency-{target}-{key}.json"


def load_or_profile(
    cfg: ExperimentConfig,
    model: nn.Module,
    space: SearchSpace,
    example: torch.Tensor,
    *,
    force: bool = False,
    target: MeasuredTarget | None = None,
    log: Callable[[str], None] = print,
) -> TableLatencyModel:
    """The measured target's table from ``output_dir/cache``, or profiled now and stored
    (``target`` overrides the preset ``cfg.latency.target`` names, e.g. a larger budget)."""
    from .profiler import profile_model, table_key

    target = target or load_target(cfg.latency.target)
    if not isinstance(target, MeasuredTarget):
        raise ValueError(f"latency target {target.name!r} is not measured")
    key = table_key(model, space, example, target, cfg.compression.round_to)
    path = _cache_path(cfg, target.name, key)
    if path.is_file() and not force:
        try:
            table = LatencyTable.load(path)
            log(f"latency table: cached {path.name}: {describe_fit(table)}")
            return TableLatencyModel(target.name, table, path, target.runtime)
        except (ValueError, KeyError, TypeError) as exc:
            log(f"latency table: {path.name} unreadable ({exc}): profiling again")
    from .measure import cpu_times, steal_fraction

    before = cpu_times()
    table = profile_model(
        model,
        space,
        example,
        target,
        round_to=cfg.compression.round_to,
        importance=cfg.compression.importance,
        log=log,
    )
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
    """Build the latency model ``cfg.latency.target`` names for ``model`` (the uncompressed
    baseline) over the choices of ``space``; ``reference_ms`` is the baseline's measured FP32
    latency. Measured targets load (or build and store) their latency table here."""
    from .analytic import AnalyticLatencyModel

    target = load_target(cfg.latency.target)
    if isinstance(target, MeasuredTarget):
        return load_or_profile(cfg, model, space, example, log=log)
    if isinstance(target, AnalyticTarget):
        return AnalyticLatencyModel(target, model, example)
    return ProxyLatencyModel(model, example, reference_ms)
