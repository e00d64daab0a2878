"""What a search returns, the typed Pareto front (``FrontPoint``: a
:class:`~.study.TrialRecord` on the front) in a :class:`SearchResult`, and choosing a model from
it: bounds (max latency, min accuracy, max size), the knee, or an explicit trial."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ExperimentConfig
from ..errors import AutocompressError
from .pareto import knee_index
from .study import FrontPoint, TrialRecord, front_points, load_study, trial_records

if TYPE_CHECKING:
    from ..baseline import Prepared

_BOUNDS = [  # (criterion, record attribute, sign of "better", description)
    ("min_accuracy", "val_accuracy", -1, "val accuracy >= {}"),
    ("max_latency_ms", "latency_ms", 1, "latency <= {} ms"),
    ("max_size_kb", "size_kb", 1, "size <= {} KB"),
]
_PREFER = {"accuracy": ("val_accuracy", -1), "latency": ("latency_ms", 1), "size": ("size_kb", 1)}


@dataclass(frozen=True)
class PickCriteria:
    """Bounds a picked model must meet, and how to choose among the points that meet them."""

    max_latency_ms: float | None = None
    min_accuracy: float | None = None
    max_size_kb: float | None = None
    knee: bool = False
    prefer: str = "accuracy"
    trial: int | None = None

    def __post_init__(self) -> None:
        if self.prefer not in _PREFER:
            raise AutocompressError(f"prefer must be one of {', '.join(_PREFER)}")

    def _bounds(self) -> list[tuple[float, str, int, str]]:
        out = [(getattr(self, name), *rest) for name, *rest in _BOUNDS]
        return [b for b in out if b[0] is not None]

    def describe(self) -> str:
        if self.trial is not None:
            return f"trial {self.trial}"
        parts = [text.format(bound) for bound, _, _, text in self._bounds()]
        return ", ".join([*parts, "knee" if self.knee else f"best {self.prefer}"])

    def admits(self, r: TrialRecord) -> bool:
        return all(sign * getattr(r, key) <= sign * bound for bound, key, sign, _ in self._bounds())


@dataclass
class PickResult:
    choice: TrialRecord | None
    candidates: list[TrialRecord]  # the front points meeting the bounds, best first
    front: list[FrontPoint]
    criteria: PickCriteria

    def message(self) -> str:
        if self.choice is not None:
            c = self.choice
            return (
                f"picked trial {c.trial}: val acc {c.val_accuracy:.4f}, "
                f"{c.latency_ms:.3f} ms, {c.size_kb:.1f} KB ({self.criteria.describe()})"
            )
        return (
            f"no Pareto point meets {self.criteria.describe()} "
            f"(front of {len(self.front)}: accuracy {_span(self.front, 'val_accuracy')}, "
            f"latency {_span(self.front, 'latency_ms')} ms, size {_span(self.front, 'size_kb')} KB)"
        )


def _span(records: list[TrialRecord], key: str) -> str:
    vals = [getattr(r, key) for r in records]
    return f"{min(vals):.4g}-{max(vals):.4g}" if vals else "n/a"


def select(
    front: list[FrontPoint], criteria: PickCriteria, directions: list[str]
) -> tuple[FrontPoint | None, list[FrontPoint]]:
    """(choice, candidates) from the front: bounds filter, then knee or preference."""
    cands = [r for r in front if criteria.admits(r)]
    if not cands:
        return None, []
    key, sign = _PREFER[criteria.prefer]
    cands.sort(key=lambda r: sign * getattr(r, key))
    if criteria.knee and len(cands) > 2:
        k = knee_index([r.values for r in cands], directions)
        cands.insert(0, cands.pop(k))
    return cands[0], cands


def _choose(
    records: list[TrialRecord],
    front: list[FrontPoint],
    criteria: PickCriteria,
    directions: list[str],
    what: str,
) -> tuple[TrialRecord | None, list[TrialRecord]]:
    """(choice, candidates): the record of ``criteria.trial`` among ``records`` (``what`` they
    are, for the error), else :func:`select` from ``front``."""
    if criteria.trial is None:
        return select(front, criteria, directions)
    match = [r for r in records if r.trial == criteria.trial]
    if not match:
        have = ", ".join(str(r.trial) for r in records[:20])
        raise AutocompressError(f"trial {criteria.trial} is not {what} (have {have})")
    return match[0], match


def pick(cfg: ExperimentConfig, criteria: PickCriteria) -> PickResult:
    """Pick from the experiment's stored study (``--trial N`` takes any complete trial)."""
    info = load_study(cfg)
    records = trial_records(info)
    front = front_points(info, records)
    choice, cands = _choose(records, front, criteria, info.directions, "a complete trial")
    return PickResult(choice, cands, front, criteria)


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
        criteria = PickCriteria(max_latency_ms, min_accuracy, max_size_kb, knee, prefer, trial)
        choice, _ = _choose(self.front, self.front, criteria, self.directions, "on the front")
        if choice is None:
            raise AutocompressError(
                f"no front point meets {criteria.describe()} (front of {len(self.front)})"
            )
        return choice
