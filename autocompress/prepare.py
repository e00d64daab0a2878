"""What every stage starts from: the data, the baseline (trained once, cached) and the search
space resolved on the model, as one object (search, sensitivity, latency and memory validation,
export)."""

from __future__ import annotations

from dataclasses import dataclass

from .baseline import Baseline, get_baseline
from .config import ExperimentConfig
from .data import DataBundle, load_data
from .search_space import SearchSpace, load_search_space

__all__ = ["Prepared", "prepare"]


@dataclass
class Prepared:
    cfg: ExperimentConfig
    data: DataBundle
    baseline: Baseline
    space: SearchSpace

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


def prepare(cfg: ExperimentConfig, *, log=print) -> Prepared:
    """Data, baseline (trained once, cached) and the search space resolved on the model."""
    spec = load_search_space(cfg.search_space)
    data = load_data(cfg.data)
    baseline = get_baseline(cfg, data, log=log)
    space = spec.resolve(baseline.model)
    return Prepared(cfg, data, baseline, space)
