"""What every stage starts from: the data, the baseline (trained once, cached) and the search
space resolved on the model, as one object (search, sensitivity, latency and memory validation,
export)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from torch import nn

from .baseline import Baseline, baseline_from_model, get_baseline
from .config import ExperimentConfig
from .data import DataBundle, load_data
from .models import load_callable
from .policy import CompressionPolicy
from .search_space import SearchSpace, load_search_space
from .size import size_bytes, size_measure
from .training import CLASSIFICATION, Task

if TYPE_CHECKING:
    from .hardware.memory_model import MemoryModel


@dataclass
class Prepared:
    cfg: ExperimentConfig
    data: DataBundle
    baseline: Baseline
    space: SearchSpace
    memory_model: MemoryModel | None = None  # with objectives.size.measure: memory
    task: Task = CLASSIFICATION  # the metric and loss every stage uses

    def size_bytes(self, model, policy: CompressionPolicy) -> int:
        """The experiment's size objective of ``model`` (compressed by ``policy``)."""
        return size_bytes(
            self.cfg, model, policy, self.data.input_shape, memory_model=self.memory_model
        )

    def baseline_summary(self) -> dict:
        bm = self.baseline.metrics
        return {
            "val_accuracy": bm.val_accuracy,
            "test_accuracy": bm.test_accuracy,
            "latency_ms": bm.latency_ms,
            "size_kb": bm.size_bytes / 1024,
            "fp32_state_dict_bytes": bm.fp32_state_dict_bytes,
            "params": bm.params,
        }


def task_from_config(cfg: ExperimentConfig) -> Task:
    """The ``task`` section's callables (``module:callable``), imported."""
    t = cfg.task
    return Task(
        metric=load_callable(t.evaluate, what="task.evaluate") if t.evaluate else None,
        loss=load_callable(t.loss, what="task.loss") if t.loss else None,
    )


def prepare(
    cfg: ExperimentConfig,
    *,
    model: nn.Module | None = None,
    data: DataBundle | None = None,
    space: SearchSpace | None = None,
    task: Task | None = None,
    log=print,
) -> Prepared:
    """Data, baseline (trained once, cached) and the search space resolved on the model. A
    Python caller's own ``model`` (used as the trained baseline, not trained again), ``data``
    ``space`` and ``task`` take the place of what the config names."""
    task = task or task_from_config(cfg)
    if data is None:
        data = load_data(cfg.data)
    if model is None:
        baseline = get_baseline(cfg, data, task=task, log=log)
    else:
        baseline = baseline_from_model(cfg, model, data, task=task, log=log)
    if space is None:
        example = data.example_input(1)
        space = load_search_space(cfg.search_space).resolve(baseline.model, example)
        if space.unprunable:
            log(
                f"search space: {len(space.unprunable)} layer(s) cannot lose output channels, "
                f"keep_ratio fixed at 1.0: {', '.join(space.unprunable)}"
            )
    prep = Prepared(cfg, data, baseline, space, task=task)
    if size_measure(cfg) == "memory":
        from .hardware.memory_model import get_memory_model

        prep.memory_model = get_memory_model(cfg, prep, log=log)
        size = prep.size_bytes(baseline.model, CompressionPolicy())
        prep.baseline = replace(baseline, metrics=replace(baseline.metrics, size_bytes=size))
    return prep
