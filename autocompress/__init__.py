"""autocompress: automated per-layer pruning and mixed-precision search for PyTorch models.

Typical use, on a model and data sets of your own::

    import autocompress as ac
    space = ac.SearchSpace.from_rules(model, [{"type": "Conv2d", "sparsity": [0.0, 0.5],
                                               "bits": [8, 32]}], example=x[:1])
    result = ac.search(model, train=train, val=val, space=space, output_dir="runs/demo")
    point = result.pick(knee=True)               # a FrontPoint: .trial, .policy, .metrics
    art = ac.export(result, point, test=test)    # an ExportResult: .onnx_path, .test_accuracy
    cm = ac.compress(model, point.policy, example=x[:1], calibration=[x[:64]])
    cm.size_bytes(), cm.to_onnx("m.onnx")        # packed size; INT8 QDQ for quantised layers

or on an experiment file (what the CLI runs)::

    result = ac.search(ac.load_experiment("experiments/fashion_mnist_quick.yaml"))

Layers, lowest first: a module imports from its own layer and the ones before it, never from a
later one (``tests/test_layering.py`` checks every import, also those inside functions). A name
covers its sub-modules unless one is listed itself.

1. foundation: errors, _files, _retry, metrics, policy, models, samplers, training,
   config, plots, tracking, hardware.targets
2. compression and measurement: compression, search_space, data, size, hardware
3. stages before the search: baseline, sensitivity, hardware.validate
4. search: search
5. export: export
6. entry points: api, reporting, cli, autocompress, __main__
"""

from .api import CompressedModel, ValidationReport, compress, export, search, status, validate
from .compression.apply import apply_policy, compressed_state, materialize
from .compression.artifact import load_packed_model
from .compression.quantizers import WeightFormat, register_quantizer
from .config import ExperimentConfig, load_experiment
from .data import DataBundle, load_data
from .errors import AutocompressError, ConfigError, DataError, ModelError
from .export.run import ExportResult, unpack
from .metrics import TrialMetrics
from .models import build_model, register_model
from .policy import CompressionPolicy, LayerPolicy
from .samplers import register_sampler
from .search import FrontPoint, TrialRecord, front_points, hypervolume, load_study, trial_records
from .search.pick import PickCriteria, SearchResult
from .search_space import SearchSpace, load_search_space

__all__ = ["AutocompressError", "CompressedModel", "CompressionPolicy", "ConfigError"]
__all__ += ["DataBundle", "DataError", "ExportResult", "ExperimentConfig", "FrontPoint"]
__all__ += ["LayerPolicy", "ModelError", "PickCriteria", "SearchResult", "SearchSpace"]
__all__ += ["TrialMetrics", "ValidationReport", "apply_policy", "build_model", "compress"]
__all__ += ["compressed_state", "export", "front_points", "hypervolume", "load_data"]
__all__ += ["load_experiment", "load_search_space", "load_study", "materialize", "register_model"]
__all__ += ["load_packed_model", "register_sampler", "search", "status", "unpack", "validate"]
__all__ += ["TrialRecord", "WeightFormat", "register_quantizer", "trial_records"]

__version__ = "0.1.0"
