"""Per-layer sensitivity analysis (issue #3), optional in a search (``sensitivity.enabled``).

- :func:`analyze`: every layer of the search space compressed alone at each level, no
  fine-tune, scored on a fixed validation subset (cached), plus a cheap estimator (Hessian trace
  or Fisher) and its rank agreement with the sweep;
- :func:`shape_space`: per layer, the choices within a tolerance of single-layer drop (the
  space the search's screen then samples);
- :class:`SensitivityStage`: the two calls a search makes.
"""

from ..config import SensitivityConfig as SensitivitySettings
from ..metrics import spearman
from .analysis import analyze, cache_key
from .stage import SensitivityStage, describe_shaping, shape_space, shaping_report
from .table import LevelResult, SensitivityTable

__all__ = ["LevelResult", "SensitivitySettings", "SensitivityStage", "SensitivityTable"]
__all__ += ["analyze", "cache_key", "describe_shaping", "shape_space", "shaping_report", "spearman"]
