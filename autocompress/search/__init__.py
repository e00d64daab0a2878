"""The search: Optuna study over per-layer policies, objective, Pareto utilities."""

from .pareto import hypervolume, knee_index, non_dominated
from .pick import FrontPoint, SearchResult
from .run import search
from .study import front_rows, load_study, trial_rows

__all__ = ["FrontPoint", "SearchResult", "front_rows", "hypervolume", "knee_index"]
__all__ += ["load_study", "non_dominated", "search", "trial_rows"]
