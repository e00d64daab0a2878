"""Typed experiment configuration: YAML loading, ``--set key=value`` overrides, validation.

Every error names the file, the key, the bad value and what is allowed, and is raised as
:class:`~autocompress.errors.ConfigError` (exit code 2 on the command line).
Relative paths in an experiment file are resolved against the folder of that file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_ref(value: str | None, what: str, allowed: tuple[str, ...]) -> str | None:
    if value is None or value in allowed or ":" in value:
        return value
    raise ValueError(
        f"unknown {what} {value!r}; allowed: {', '.join(allowed)} or 'module:callable'"
    )


class ModelConfig(_Strict):
    """Which model to compress."""

    name: str = Field(description="built-in model name or 'module:callable'")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    num_classes: int = Field(10, ge=2)
    checkpoint: Path | None = Field(None, description="state_dict file (loaded weights_only)")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from .models import model_names

        return _check_ref(v, "model", model_names())

    def build(self, in_channels: int):
        """The configured model (the checkpoint loaded when there is one)."""
        from .models import build_model

        return build_model(
            self.name,
            num_classes=self.num_classes,
            in_channels=in_channels,
            kwargs=self.kwargs,
            checkpoint=self.checkpoint,
        )


class DataConfig(_Strict):
    """Where the data comes from and how it is split."""

    dataset: str = Field(
        "fashion_mnist", description="fashion_mnist, image_folder or module:callable"
    )
    root: Path | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int = 0
    batch_size: int = Field(128, ge=1)
    train_subset: int | None = Field(None, ge=1, description="training images used per trial")
    val_subset: int | None = Field(None, ge=1, description="validation images scored per trial")
    test_subset: int | None = Field(None, ge=1)

    @field_validator("dataset")
    @classmethod
    def _known(cls, v: str) -> str:
        return _check_ref(v, "dataset", ("fashion_mnist", "image_folder"))


class TaskConfig(_Strict):
    """What the model is for, when it is not top-1 classification (``module:callable``)."""

    evaluate: str | None = Field(
        None, description="metric(model, batches) -> float, higher is better (default top-1)"
    )
    loss: str | None = Field(
        None, description="loss(outputs, targets) -> tensor for fine-tuning (default cross-entropy)"
    )

    @field_validator("evaluate", "loss")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        if v is not None and ":" not in v:
            raise ValueError(f"{v!r}: give 'module:callable'")
        return v


class BaselineConfig(_Strict):
    """Training of the uncompressed model when no checkpoint is given (cached)."""

    epochs: int = Field(3, ge=0)
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(5e-4, ge=0)


class FinetuneConfig(_Strict):
    """A fine-tune with masks and fake-quantisation in place (quantisation-aware, straight-through
    estimator), optionally distilled from the uncompressed model."""

    steps: int = Field(100, ge=0)
    lr: float = Field(0.01, gt=0)
    batch_size: int | None = Field(None, ge=1)
    distill_weight: float = Field(0.0, ge=0.0, le=1.0, description="weight of the teacher loss")
    temperature: float = Field(4.0, gt=0.0)
    full_train: bool = Field(False, description="use the whole training part, not train_subset")
    correct_batchnorm: bool = Field(
        True,
        description="before the fine-tune, move every BatchNorm layer's statistics by the shift "
        "compression causes on the calibration batches (as the sensitivity sweep does)",
    )
    schedule: Literal["oneshot", "gradual"] = Field(
        "oneshot",
        description="oneshot: prune to the policy, then fine-tune; gradual: reach its sparsity in "
        "prune_stages steps (cubic schedule, AGP), fine-tuning after each",
    )
    prune_stages: int = Field(5, ge=2, description="pruning steps of the gradual schedule")
    recovery_lr_factor: float = Field(
        0.1,
        gt=0,
        le=1,
        description="learning rate of the recovery fine-tunes between gradual "
        "steps, as a fraction of lr (the last stage runs at lr)",
    )


def _export_finetune() -> FinetuneConfig:
    return FinetuneConfig(steps=600, lr=0.01, distill_weight=0.5, full_train=True)


class ExportConfig(_Strict):
    """Materialising a picked policy: longer distilled fine-tune, ONNX, packed file, registry."""

    finetune: FinetuneConfig = Field(default_factory=_export_finetune)
    calibration_batches: int = Field(8, ge=1, description="training batches for INT8 calibration")
    int8_weight_range: Literal["auto", "full", "reduced"] = Field(
        "auto", description="INT8 weights on -127..127 or -64..64; auto: -64..64 if U8S8 saturates"
    )
    max_int8_gap: float = Field(
        0.5,
        ge=0,
        description="points of validation accuracy the INT8 ONNX model may lose against the "
        "FP32 ONNX model of the same weights before the FP32 one is deployed instead",
    )
    forms: list[Literal["fp32", "int8-qdq", "fp16"]] = Field(
        default_factory=lambda: ["fp32", "int8-qdq", "fp16"],
        description="ONNX forms built and measured (file, memory, throughput, accuracy); FP32 is "
        "always built; INT8 QDQ is deployed when listed and within max_int8_gap, else FP32",
    )
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 8, 32], description="batch sizes throughput is measured at"
    )
    throughput_threads: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="thread counts throughput is measured at (default: 1 and all cores)"
    )
    memory_repeats: int = Field(3, ge=1, description="fresh processes per memory measurement")
    sparse_initializers: bool = Field(
        True,
        description="store ONNX weights that are mostly zeros as sparse initializers where the "
        "file gets smaller (ONNX Runtime densifies them at load: same outputs, checked)",
    )
    registered_model: str | None = Field(None, description="Model Registry name (default: name)")
    alias: str = "picked"


class CompressionConfig(_Strict):
    """How policies are applied (not searched): channel importance and channel rounding."""

    importance: Literal["l1", "l2", "fpgm"] = "l1"
    round_to: int = Field(1, ge=1, description="kept channel counts are multiples of this")


class SearchConfig(_Strict):
    """Two fidelities: ``screen_trials`` policies scored without fine-tune (an Optuna study of
    their own), whose spread front is promoted into ``n_trials`` fine-tuned trials (the Pareto
    front, MLflow trial runs, what pick and export see)."""

    n_trials: int = Field(20, ge=1, description="fine-tuned trials (the anchor included)")
    screen_trials: int = Field(
        200, ge=0, description="policies screened without fine-tune first (0: no screen)"
    )
    screen_images: int = Field(1000, ge=10, description="validation images a policy is screened on")
    screen_steps: int = Field(
        0, ge=0, description="fine-tune steps per screened policy (a middle fidelity; 0: none)"
    )
    promote_max_drop: float | None = Field(
        50.0,
        ge=0,
        description="promotion ranks the screened front by the hypervolume each policy adds "
        "above this many points below the uncompressed model's screened accuracy (null: by "
        "spread only)",
    )
    budget_s: float | None = Field(
        None, gt=0, description="wall-clock seconds for the whole search, every stage charged"
    )
    screen_share: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="with budget_s: the share of the budget left after the baseline and the "
        "latency table that the screen may use at most",
    )
    sampler: str = Field(
        "nsga2", description="nsga2, tpe, random, a register_sampler name or 'module:callable'"
    )
    seed: int = 0
    population_size: int | None = Field(
        None, ge=2, description="NSGA-II population of the study that samples"
    )
    heartbeat_interval: int = Field(30, ge=1, description="seconds between worker heartbeats")
    grace_period: int | None = Field(
        None, ge=1, description="seconds without heartbeat before a trial counts as lost"
    )
    retries: int = Field(2, ge=0, description="re-runs of a trial whose worker was lost")
    reconnect_s: float = Field(
        120.0,
        ge=0,
        description="seconds a worker keeps retrying (with backoff) a storage or MLflow "
        "tracking server that went away before it stops with an error",
    )
    keep_models: bool = Field(
        False,
        description="write each fine-tuned trial's packed model to output_dir/models/"
        "trial-NNN.acpk (benchmarks score fronts on the test split from them afterwards)",
    )
    report_test_accuracy: bool = Field(
        False,
        description="also score each trial on the test split (metric test_accuracy; for "
        "benchmarks only: never an objective, the sampler does not see it)",
    )

    @field_validator("sampler")
    @classmethod
    def _known(cls, v: str) -> str:
        from .samplers import sampler_names

        return _check_ref(v, "sampler", sampler_names())


class ObjectiveConfig(_Strict):
    """One objective; ``bound`` turns into a constraint (min for accuracy, max otherwise)."""

    bound: float | None = None


class SizeObjectiveConfig(ObjectiveConfig):
    """Which size is the objective: ``packed`` (the entropy-coded transfer file, counted
    exactly without encoding), ``onnx`` (the deployed ONNX file: INT8 QDQ for quantised
    layers, zeros stored densely; written and counted, cached per layer structure) or
    ``memory`` (steady resident memory of the deployed model in ONNX Runtime, predicted by a
    model fitted to ``memory_samples`` measured policies on this machine; its cross-validated
    error is logged and cached with it)."""

    measure: Literal["packed", "onnx", "memory"] = "packed"
    memory_samples: int = Field(
        12, ge=4, description="with measure: memory, policies measured to fit the memory model"
    )


class ObjectivesConfig(_Strict):
    accuracy: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    latency: ObjectiveConfig | None = Field(default_factory=ObjectiveConfig)
    size: SizeObjectiveConfig | None = Field(default_factory=SizeObjectiveConfig)

    def enabled(self) -> list[str]:
        return [n for n in ("accuracy", "latency", "size") if getattr(self, n) is not None]


class LatencyConfig(_Strict):
    target: str = Field(
        "proxy", description="hardware target preset (a shipped name or a preset .yaml file)"
    )
    batch_size: int = Field(1, ge=1)

    @field_validator("target")
    @classmethod
    def _known(cls, v: str) -> str:
        from .hardware.targets import available_targets, is_target_file  # (imports no config)

        names = available_targets()
        if v not in names and not is_target_file(v):
            raise ValueError(
                f"unknown latency target {v!r}; allowed: {', '.join(names)} or a preset .yaml file"
            )
        return v


class SensitivityConfig(_Strict):
    """Per-layer sensitivity: measured once per checkpoint (cached), then it narrows the search
    space the screen samples. The sensitivity package uses this class as its settings
    (``autocompress.sensitivity.SensitivitySettings``), with or without an experiment."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise ConfigError(f"sensitivity: {where + ': ' if where else ''}{msg}") from None

    enabled: bool = Field(
        False,
        description="run before the search (cached per checkpoint); off by default: the "
        "screen explores the unshaped space at a fraction of the sweep's cost",
    )
    method: Literal["sweep", "hessian", "fisher"] = Field(
        "sweep", description="sweep: measured drops; hessian/fisher: estimated loss increases"
    )
    estimator: Literal["hessian", "fisher"] | None = Field(
        "fisher", description="cheap estimator reported next to the sweep (rank agreement)"
    )
    images: int = Field(1000, ge=10, description="fixed validation images of the sweep")
    bn_batches: int = Field(2, ge=0, description="BatchNorm re-estimation batches per level")
    max_points: int | None = Field(None, ge=2, description="levels per dimension (null: all)")
    estimator_images: int = Field(256, ge=1)
    estimator_samples: int = Field(16, ge=1, description="Hutchinson probes")
    seed: int = 0
    shape: bool = Field(True, description="narrow each layer's choices to the tolerance")
    max_drop: float = Field(2.0, ge=0, description="max single-layer accuracy drop (points)")
    max_loss_increase: float | None = Field(None, ge=0)
    fix_insensitive: bool = Field(
        False,
        description="fix free layers at their most aggressive (risky on residual networks: "
        "blocks harmless alone are not harmless together)",
    )
    fix_drop: float = Field(0.2, ge=0, description="'free': every level drops at most this")

    @model_validator(mode="after")
    def _consistent(self) -> SensitivityConfig:
        if self.method != "sweep" and self.shape and self.max_loss_increase is None:
            raise ValueError(
                f"method {self.method!r} predicts loss increases, not accuracy drops: "
                "set max_loss_increase (or shape: false)"
            )
        return self

    def cache_fields(self) -> dict[str, Any]:
        """The settings that change what the table holds (part of its cache key)."""
        keep = ["method", "estimator", "images", "bn_batches", "max_points", "seed"]
        if self.method != "sweep" or self.estimator is not None:
            keep += ["estimator_images", "estimator_samples"]
        return {k: getattr(self, k) for k in keep}

    def with_(self, **changes: Any) -> SensitivityConfig:
        return type(self)(**(self.model_dump() | changes))


class ExperimentConfig(_Strict):
    """A whole experiment, as read from one YAML file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    objectives: ObjectivesConfig = Field(default_factory=ObjectivesConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    sensitivity: SensitivityConfig = Field(default_factory=SensitivityConfig)
    search_space: Path
    output_dir: Path
    tracking_uri: str | None = None
    storage: str | None = None
    source: Path | None = Field(None, exclude=True, description="file the config came from")

    # -- derived locations -------------------------------------------------------------
    @property
    def tracking(self) -> str:
        return self.tracking_uri or f"sqlite:///{(self.output_dir / 'mlflow.db').resolve()}"

    @property
    def optuna_storage(self) -> str:
        return self.storage or f"sqlite:///{(self.output_dir / 'optuna.db').resolve()}"

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


# ---------------------------------------------------------------------------------------
def read_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` a file; missing files and syntax errors become ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}:{where}: YAML syntax error: {problem}") from None


def _apply_override(raw: dict, item: str, source: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. search.n_trials=40")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or an empty section (``key:`` in YAML)
            node[part] = {}
        if not isinstance(node := node[part], dict):
            raise ConfigError(f"{source}: --set {key}: {part!r} is not a section")
    node[parts[-1]] = value


def _is_model(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, BaseModel)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    cls: Any = model
    for part in loc:
        if not _is_model(cls) or part not in cls.model_fields:
            return None
        ann = cls.model_fields[part].annotation
        cls = next((a for a in getattr(ann, "__args__", None) or (ann,) if _is_model(a)), ann)
    return sorted(cls.model_fields) if _is_model(cls) else None


def validation_message(exc: ValidationError, source: str, model: type[BaseModel]) -> str:
    """One line for the first error of a pydantic ValidationError."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        msg = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
    elif err["type"] == "missing":
        msg = "required key is missing"
    extra = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    got = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err.get('input')!r})"
    return f"{source}: {key}: {msg}{got}{extra}"


def load_experiment(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, check_files: bool = True
) -> ExperimentConfig:
    """Load, override and validate an experiment file; resolve its relative paths."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    for item in overrides:
        _apply_override(raw, item, str(path))
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, str(path), ExperimentConfig)) from None
    base = path.resolve().parent
    from . import models

    models.add_search_dir(base)  # module:callable references may name modules beside the file

    def _abs(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p).resolve())

    cfg.search_space = _abs(cfg.search_space)
    cfg.output_dir = _abs(cfg.output_dir)
    cfg.model.checkpoint = _abs(cfg.model.checkpoint)
    cfg.data.root = _abs(cfg.data.root)
    from .hardware.targets import is_target_file, load_target

    if is_target_file(cfg.latency.target):
        cfg.latency.target = str(_abs(Path(cfg.latency.target)))
    cfg.source = path.resolve()
    if check_files:
        load_target(cfg.latency.target)  # a preset file: exists and parses, before any work
        if ":" in cfg.search.sampler:
            models.load_callable(cfg.search.sampler, what="search.sampler")
        if not cfg.search_space.is_file():
            raise ConfigError(f"{path}: search_space: file not found: {cfg.search_space}")
        if cfg.model.checkpoint is not None and not cfg.model.checkpoint.is_file():
            raise ConfigError(f"{path}: model.checkpoint: file not found: {cfg.model.checkpoint}")
    return cfg
