"""Settings of the sensitivity stage: how the per-layer table is measured and how it shapes the
search space.

:class:`SensitivitySettings` mirrors the ``sensitivity:`` section of an experiment config field
for field; :func:`settings_for` reads that section when the config has one (else defaults), so
this package works with configs that do not know the section yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from ..errors import ConfigError

__all__ = ["METHODS", "SensitivitySettings", "settings_for"]

METHODS = ("sweep", "hessian", "fisher")
ESTIMATORS = ("hessian", "fisher")


@dataclass(frozen=True)
class SensitivitySettings:
    """See the ``SensitivityConfig`` section of the experiment config for the meaning of each
    field; the defaults are the same."""

    enabled: bool = False
    method: Literal["sweep", "hessian", "fisher"] = "sweep"
    estimator: Literal["hessian", "fisher"] | None = "fisher"
    images: int = 1000
    bn_batches: int = 2
    max_points: int | None = None
    estimator_images: int = 256
    estimator_samples: int = 16
    seed: int = 0
    shape: bool = True
    max_drop: float = 2.0
    max_loss_increase: float | None = None
    fix_insensitive: bool = False
    fix_drop: float = 0.2

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method {self.method!r}: allowed {', '.join(METHODS)}")
        if self.estimator is not None and self.estimator not in ESTIMATORS:
            problems.append(f"estimator {self.estimator!r}: allowed {', '.join(ESTIMATORS)}")
        if self.images < 10:
            problems.append(f"images {self.images}: at least 10")
        if self.bn_batches < 0:
            problems.append(f"bn_batches {self.bn_batches}: at least 0 (0 = no re-estimation)")
        if self.max_points is not None and self.max_points < 2:
            problems.append(f"max_points {self.max_points}: at least 2 (or null for all)")
        if self.estimator_images < 1 or self.estimator_samples < 1:
            problems.append("estimator_images and estimator_samples must be at least 1")
        if self.max_drop < 0 or self.fix_drop < 0:
            problems.append("max_drop and fix_drop are accuracy points, at least 0")
        if self.max_loss_increase is not None and self.max_loss_increase < 0:
            problems.append(f"max_loss_increase {self.max_loss_increase}: at least 0")
        if self.method != "sweep" and self.shape and self.max_loss_increase is None:
            problems.append(
                f"method {self.method!r} predicts loss increases, not accuracy drops: "
                "set max_loss_increase (or shape: false)"
            )
        if problems:
            raise ConfigError(f"sensitivity: {problems[0]}")

    @property
    def measures_accuracy(self) -> bool:
        """Whether the table holds measured accuracy drops (only the sweep does)."""
        return self.method == "sweep"

    def cache_fields(self) -> dict[str, Any]:
        """The settings that change what the table holds (part of its cache key)."""
        keep = ("method", "estimator", "images", "bn_batches", "max_points", "seed")
        est = ("estimator_images", "estimator_samples")
        d = {k: getattr(self, k) for k in keep}
        if self.method != "sweep" or self.estimator is not None:
            d.update({k: getattr(self, k) for k in est})
        return d

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Any) -> SensitivitySettings:
        """From a dict, a pydantic section (``model_dump``) or another settings object."""
        if data is None:
            return cls()
        if isinstance(data, SensitivitySettings):
            return data
        if hasattr(data, "model_dump"):
            data = data.model_dump()
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"sensitivity: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(names))}"
            )
        data = dict(data)
        return cls(**data)

    def with_(self, **changes: Any) -> SensitivitySettings:
        return replace(self, **changes)


def settings_for(cfg: Any, overrides: dict[str, Any] | None = None) -> SensitivitySettings:
    """The experiment's sensitivity settings (``cfg.sensitivity`` when the config has that
    section, else the defaults), with ``overrides`` applied."""
    base = SensitivitySettings.from_mapping(getattr(cfg, "sensitivity", None))
    return base.with_(**overrides) if overrides else base
