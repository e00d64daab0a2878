"""The sensitivity stage of a search (``sensitivity.enabled``), behind two calls:
:meth:`SensitivityStage.start` (table from cache or measured, shaped space: the space the
screen samples) and :meth:`~SensitivityStage.log` (files and metrics to MLflow).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import SensitivityConfig as SensitivitySettings
from ..errors import ConfigError
from ..search_space import SearchSpace
from .analysis import analyze
from .report import heatmap_png, write_json, write_table
from .shaping import describe_shaping, shape_space, shaping_report
from .table import SensitivityTable

if TYPE_CHECKING:
    from ..prepare import Prepared


class SensitivityStage:
    """State shared by the sensitivity call sites of one search."""

    def __init__(
        self, prep: Prepared, settings: SensitivitySettings, table: SensitivityTable, log
    ) -> None:
        self.prep, self.settings, self.table, self._log = prep, settings, table, log
        self.space: SearchSpace = shape_space(prep.space, table, settings)
        self.out_dir: Path = prep.cfg.output_dir / "sensitivity"

    @classmethod
    def start(
        cls,
        prep: Prepared,
        settings: SensitivitySettings,
        *,
        force: bool = False,
        log: Callable[[str], None] = print,
    ) -> SensitivityStage | None:
        """Table (cached or measured) and shaped space; None when the stage is disabled."""
        if not settings.enabled:
            return None
        if prep.task.metric is not None or prep.task.loss is not None:
            raise ConfigError(
                "sensitivity.enabled: the per-layer table scores top-1 accuracy and "
                "cross-entropy only; with task.evaluate / task.loss set sensitivity.enabled: "
                "false (the screen scores whole policies with your metric)"
            )
        stage = cls(prep, settings, analyze(prep, settings, force=force, log=log), log)
        if settings.shape:
            for line in describe_shaping(prep.space, stage.space):
                log(f"  shaped {line}")
            log(
                f"sensitivity: shaped space {prep.space.cardinality:.3g} -> "
                f"{stage.space.cardinality:.3g} policies"
            )
        return stage

    # -- MLflow -------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Write the stage's files into ``output_dir/sensitivity`` and return them."""
        d = self.out_dir
        name = self.prep.cfg.name
        title = f"{name}: sensitivity per layer and level ({self.table.meta.get('images')} images)"
        paths = write_table(self.table, d)
        paths += [
            heatmap_png(self.table, d / "sensitivity_heatmap.png", title=title),
            write_json(
                d / "sensitivity_shaped_space.json",
                shaping_report(self.prep.space, self.space) | {"settings": self.settings.to_dict()},
            ),
        ]
        return paths

    def metrics(self) -> dict[str, float]:
        m = self.table.meta
        out = {
            "sensitivity_seconds": float(m.get("seconds", 0.0)),
            "sensitivity_cached": float(bool(m.get("cached"))),
            "sensitivity_levels": float(len(self.table.rows)),
            "sensitivity_space_before": float(self.prep.space.cardinality),
            "sensitivity_space_after": float(self.space.cardinality),
        }
        agree = m.get("agreement", {})
        if "spearman_drop" in agree:
            out["sensitivity_estimator_spearman"] = float(agree["spearman_drop"])
        return {k: v for k, v in out.items() if np.isfinite(v)}

    def log(self, tracker, run_id: str) -> list[Path]:
        """Files under ``sensitivity/`` and ``sensitivity_*`` metrics on the run; returns the
        files."""
        paths = self.files()
        tracker.log_artifacts(run_id, paths, "sensitivity")
        tracker.log_search_metrics(run_id, self.metrics())
        return paths
