"""autocompress: automated per-layer pruning and mixed-precision search for PyTorch models.

Typical use::

    import autocompress as ac
    cfg = ac.load_experiment("experiments/fashion_mnist_quick.yaml")
    result = ac.search(cfg)          # Optuna study, every trial in MLflow, Pareto front
"""

from .api import ValidationReport, status, validate
from .compressed import CompressedModel, compress
from .compression.apply import apply_policy, compressed_state, materialize
from .config import ExperimentConfig, load_experiment
from .data import DataBundle, load_data
from .errors import AutocompressError, ConfigError, DataError, ModelError
from .export.unpack import unpack
from .metrics import TrialMetrics
from .models import build_model, register_model
from .policy import CompressionPolicy, LayerPolicy
from .search import SearchResult, front_rows, hypervolume, load_study, search
from .search_space import SearchSpace, load_search_space

__all__ = [
    "AutocompressError",
    "CompressedModel",
    "CompressionPolicy",
    "ConfigError",
    "DataBundle",
    "DataError",
    "ExperimentConfig",
    "LayerPolicy",
    "ModelError",
    "SearchResult",
    "SearchSpace",
    "TrialMetrics",
    "ValidationReport",
    "apply_policy",
    "build_model",
    "compress",
    "compressed_state",
    "front_rows",
    "hypervolume",
    "load_data",
    "load_experiment",
    "load_search_space",
    "load_study",
    "materialize",
    "register_model",
    "search",
    "status",
    "unpack",
    "validate",
]

__version__ = "0.1.0"
