"""Per-layer sensitivity analysis that shapes and warm-starts the search (issue #3).

- :func:`analyze`: every layer of the search space compressed alone at each level, no
  fine-tune, scored on a fixed validation subset (cached), plus a cheap estimator (Hessian trace
  or Fisher) and its rank agreement with the sweep;
- :func:`shape_space`: per layer, the choices within a tolerance of single-layer drop;
- :func:`warm_start` / :func:`proxy_front`: knapsack allocations under size or latency
  budgets, checked by the measured drop of the whole policy (:func:`policy_drop`), the
  checked uniform corners (:func:`uniform_corners`), and the two-stage search's proxy front
  (predicted drop as accuracy objective);
- :class:`SensitivityStage`: the four calls a search makes.
"""

from .allocate import Candidate, knapsack, proxy_front, spread, uniform_corners, warm_start
from .analysis import (
    analyze,
    cache_key,
    check_additivity,
    checks_path,
    make_proxy,
    policy_drop,
    real_costs,
    size_error,
)
from .proxy import PolicyCodec, ProxyModel
from .settings import SensitivitySettings, settings_for
from .shaping import describe_shaping, shape_space, shaping_report
from .stage import SensitivityStage
from .table import LevelResult, SensitivityTable, spearman

__all__ = [
    "Candidate",
    "LevelResult",
    "PolicyCodec",
    "ProxyModel",
    "SensitivitySettings",
    "SensitivityStage",
    "SensitivityTable",
    "analyze",
    "cache_key",
    "check_additivity",
    "checks_path",
    "describe_shaping",
    "knapsack",
    "make_proxy",
    "proxy_front",
    "policy_drop",
    "real_costs",
    "settings_for",
    "shape_space",
    "shaping_report",
    "size_error",
    "spearman",
    "spread",
    "uniform_corners",
    "warm_start",
]
