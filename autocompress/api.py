"""Python entry points behind the CLI commands that are not a whole stage of their own."""

from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import TrialState

from ._files import check_output_dir
from .config import ExperimentConfig
from .data import check_available, load_data
from .errors import ConfigError
from .models import build_model, check_model_fits
from .search.study import front_rows, load_study
from .search_space import SearchSpace, load_search_space
from .training import batches

__all__ = ["ValidationReport", "status", "validate"]


@dataclass
class ValidationReport:
    config: ExperimentConfig
    space: SearchSpace
    params: int

    def describe(self) -> str:
        c = self.config
        lines = [
            f"{c.source}: OK",
            f"  model {c.model.name} ({self.params} params), data {c.data.dataset}",
            f"  objectives {', '.join(c.objectives.enabled())}; {c.search.n_trials} trials, "
            f"sampler {c.search.sampler}",
            f"  search space {c.search_space.name}: {len(self.space)} layers, "
            f"{self.space.cardinality:.3g} policies",
        ]
        for name, ch in self.space.layers.items():
            lines.append(f"    {name:<28} sparsity {list(ch.sparsity)} bits {list(ch.bits)}")
        lines.append(f"  output {c.output_dir}")
        return "\n".join(lines)


def validate(cfg: ExperimentConfig) -> ValidationReport:
    """Check everything short of training: the data (files, one batch, labels against
    ``model.num_classes``), the model (imports, checkpoint, one forward pass on that batch),
    the search space against the model, and that ``output_dir`` can be written."""
    spec = load_search_space(cfg.search_space)
    check_available(cfg.data)
    data = load_data(cfg.data)
    if data.num_classes > cfg.model.num_classes:
        raise ConfigError(
            f"model.num_classes is {cfg.model.num_classes} but the data has "
            f"{data.num_classes} classes: set model.num_classes: {data.num_classes}"
        )
    model = build_model(
        cfg.model.name,
        num_classes=cfg.model.num_classes,
        in_channels=data.input_shape[0],
        kwargs=cfg.model.kwargs,
        checkpoint=cfg.model.checkpoint,
    )
    x = next(batches(data.val, 8))[0]
    check_model_fits(model, x, cfg.model.num_classes, name=cfg.model.name)
    space = spec.resolve(model)
    check_output_dir(cfg.output_dir)
    return ValidationReport(cfg, space, sum(p.numel() for p in model.parameters()))


def status(cfg: ExperimentConfig) -> dict:
    """Trials done / failed / running, the current front, and time spent (safe during a search)."""
    info = load_study(cfg)
    trials = info.study.get_trials(deepcopy=False)
    elapsed = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete and t.datetime_start
    )
    return {
        "study": cfg.study_name,
        "n_trials": cfg.search.n_trials,
        "complete": info.count(TrialState.COMPLETE),
        "failed": info.count(TrialState.FAIL),
        "running": info.count(TrialState.RUNNING),
        # which worker (host:pid) runs each running trial
        "running_on": {
            t.number: t.user_attrs.get("worker", "?")
            for t in trials
            if t.state == TrialState.RUNNING
        },
        "elapsed_s": elapsed,
        "front": front_rows(info),
    }
