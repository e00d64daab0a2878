"""What a search returns: the typed Pareto front (:class:`FrontPoint`) and :class:`SearchResult`,
which picks from it (bounds, knee or a trial) for ``export``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AutocompressError
from ..metrics import TrialMetrics
from ..policy import CompressionPolicy
from .pick import PickCriteria, select
from .study import trial_row

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..prepare import Prepared


@dataclass(frozen=True)
class FrontPoint:
    """One non-dominated trial: its number, policy and measurements (validation accuracy)."""

    trial: int
    policy: CompressionPolicy
    metrics: TrialMetrics
    values: tuple[float, ...] = ()  # the objective values, in the study's order
    mlflow_run_id: str | None = None

    @classmethod
    def from_row(cls, row: dict) -> FrontPoint:
        """From a ``trial_rows`` row."""
        return cls(
            trial=int(row["trial"]),
            policy=CompressionPolicy.from_dict(row["policy"] or {}),
            metrics=TrialMetrics.from_dict(row["metrics"]),
            values=tuple(row["values"]),
            mlflow_run_id=row.get("mlflow_run_id"),
        )

    def row(self) -> dict[str, Any]:
        """The front table's row (``front_rows``' form) of this point."""
        m, p = self.metrics.to_dict(), self.policy.to_dict()
        return trial_row(self.trial, m, p, self.mlflow_run_id, self.values)


@dataclass
class SearchResult:
    study_name: str
    n_complete: int
    n_failed: int
    front: list[FrontPoint]
    baseline: dict
    parent_run_id: str
    failures: list[dict] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    hypervolume: float = 0.0
    seconds: float = 0.0
    objectives: list[str] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)
    # what export continues from (the same objects, not re-read from the config)
    config: ExperimentConfig | None = field(default=None, repr=False)
    prepared: Prepared | None = field(default=None, repr=False)

    def pick(
        self,
        *,
        knee: bool = False,
        min_accuracy: float | None = None,
        max_latency_ms: float | None = None,
        max_size_kb: float | None = None,
        prefer: str = "accuracy",
        trial: int | None = None,
    ) -> FrontPoint:
        """The front point meeting the bounds: the knee, or the best by ``prefer``; or the
        point of ``trial``."""
        if trial is not None:
            for p in self.front:
                if p.trial == trial:
                    return p
            raise AutocompressError(
                f"trial {trial} is not on the front (front: {[p.trial for p in self.front]})"
            )
        criteria = PickCriteria(max_latency_ms, min_accuracy, max_size_kb, knee, prefer)
        rows = [p.row() for p in self.front]
        choice, _ = select(rows, criteria, self.objectives, self.directions)
        if choice is None:
            raise AutocompressError(
                f"no front point meets {criteria.describe()} (front of {len(self.front)})"
            )
        return next(p for p in self.front if p.trial == choice["trial"])
