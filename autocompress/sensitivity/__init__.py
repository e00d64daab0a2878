"""Per-layer sensitivity analysis (issue #3), optional in a search (``sensitivity.enabled``):
:func:`analyze` measures the table, :func:`shape_space` narrows the space, and
:class:`SensitivityStage` is what a search calls."""

from ..config import SensitivityConfig as SensitivitySettings
from ..metrics import spearman
from .analysis import LevelResult, SensitivityTable, analyze, cache_key
from .stage import SensitivityStage, describe_shaping, shape_space, shaping_report

__all__ = ["LevelResult", "SensitivitySettings", "SensitivityStage", "SensitivityTable"]
__all__ += ["analyze", "cache_key", "describe_shaping", "shape_space", "shaping_report", "spearman"]
