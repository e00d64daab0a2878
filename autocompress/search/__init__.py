"""The search: Optuna study over per-layer policies, objective, Pareto utilities."""

from .pareto import hypervolume, knee_index, non_dominated
from .pick import SearchResult
from .run import search
from .study import FrontPoint, TrialRecord, front_points, load_study, trial_records

__all__ = ["FrontPoint", "SearchResult", "TrialRecord", "front_points", "hypervolume"]
__all__ += ["knee_index", "load_study", "non_dominated", "search", "trial_records"]
