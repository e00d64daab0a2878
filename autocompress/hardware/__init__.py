"""Hardware targets: measured latency (ONNX Runtime), the profiler and latency table of measured
targets, analytic targets, the deployed forms (FP32 / INT8 QDQ / FP16 ONNX) and what each one
costs (file bytes, resident memory, throughput). Latency validation (a stage above: it prepares
the experiment) is :func:`autocompress.hardware.validate.validate_latency`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .targets import MeasuredTarget, load_target

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from .latency import TableLatencyModel


def profile(
    cfg: ExperimentConfig,
    *,
    force: bool = False,
    target=None,
    log: Callable[[str], None] = print,
) -> TableLatencyModel:
    """Build (or load from the cache) the latency table of the experiment's measured target, on
    the untrained model (latency does not depend on the weights); ``target`` overrides the
    preset (same key, e.g. a larger profiling budget)."""
    from ..data import load_data
    from ..search_space import load_search_space
    from .latency import load_or_profile

    target = target or load_target(cfg.latency.target)
    if not isinstance(target, MeasuredTarget):
        raise ConfigError(
            f"latency target {target.name!r} is {target.kind}: nothing to measure "
            f"(profiling applies to measured targets such as cpu-onnxruntime)"
        )
    data = load_data(cfg.data)
    model = cfg.model.build(data.input_shape[0]).eval()
    space = load_search_space(cfg.search_space).resolve(model)
    example = data.example_input(cfg.latency.batch_size)
    return load_or_profile(cfg, model, space, example, force=force, target=target, log=log)
