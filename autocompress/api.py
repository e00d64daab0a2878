"""The Python entry points: ``search`` and ``export`` on a user's own model and data sets (or an
experiment config: the CLI's path), ``validate``, ``status``, and ``compress``: a policy applied
to any ``nn.Module``, as a typed object a notebook can use without an experiment file
(examples: the package docstring).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from optuna.trial import TrialState
from pydantic import ValidationError
from torch import nn
from torch.utils.data import Dataset

from ._files import check_output_dir
from .baseline import prepare
from .compression.apply import apply_policy, calibrate, compressed_state, materialize
from .compression.packing import packed_size
from .config import (
    DataConfig,
    ExperimentConfig,
    ExportConfig,
    FinetuneConfig,
    SearchConfig,
    validation_message,
)
from .data import DataBundle, check_available, load_data
from .errors import ConfigError
from .export.run import ExportResult
from .export.run import export as _export_config
from .hardware.deploy import DeploySpec, build_form, u8s8_saturates
from .models import check_model_fits
from .policy import CompressionPolicy
from .search.pick import PickCriteria, SearchResult
from .search.run import search as _search_config
from .search.study import FrontPoint, front_points, load_study
from .search_space import SearchSpace, load_search_space
from .training import Task, batches


def _deep_merge(base: dict, extra: dict) -> dict:
    return base | {
        k: _deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        for k, v in extra.items()
    }


def _object_config(
    model: nn.Module,
    data: DataBundle,
    space: SearchSpace,
    output_dir: Path,
    name: str | None,
    search: dict[str, Any],
    settings: dict[str, Any],
) -> ExperimentConfig:
    """The experiment a Python search of objects is: the config's defaults, the caller's
    ``settings`` (the YAML file's keys, as nested dicts), the model and data by content hash."""
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", output_dir.name) or "search"
    # Budgets sized to the caller's data (the config's defaults are for 50k images): a few
    # epochs per trial, ten for the exported model, ten screened policies per trial.
    per_epoch = max(1, -(-len(data.train) // DataConfig().batch_size))
    n = search.get("n_trials", SearchConfig().n_trials)
    search = {"screen_trials": min(SearchConfig().screen_trials, max(20, 10 * n))} | search
    sized = {
        "finetune": {"steps": min(FinetuneConfig().steps, 3 * per_epoch)},
        "export": {
            "finetune": ExportConfig().finetune.model_dump()
            | {"steps": min(ExportConfig().finetune.steps, 10 * per_epoch)}
        },
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    # What was searched, as a search-space file of exact layer names (the record, not an input).
    space_path = output_dir / "search_space.yaml"
    rules = [
        {"name": n, **{k: list(v) for k, v in asdict(c).items()}} for n, c in space.layers.items()
    ]
    space_path.write_text(yaml.safe_dump({"layers": rules, "scope": space.scope}, sort_keys=False))
    raw = {
        "name": name,
        "model": {
            "name": f"object:{type(model).__name__}",
            "num_classes": max(2, data.num_classes),
        },
        "data": {"dataset": "object:datasets", "kwargs": {"digest": data.digest()}},
        "search": search,
        **sized,
        "sensitivity": {"enabled": False},
        "search_space": str(space_path),
        "output_dir": str(output_dir),
    }
    try:
        return ExperimentConfig.model_validate(_deep_merge(raw, settings))
    except ValidationError as exc:  # one line naming the key
        raise ConfigError(validation_message(exc, "settings", ExperimentConfig)) from None


def search(
    model: nn.Module | ExperimentConfig,
    *,
    train: Dataset | None = None,
    val: Dataset | None = None,
    test: Dataset | None = None,
    space: SearchSpace | None = None,
    n_trials: int | None = None,
    screen_trials: int | None = None,
    output_dir: str | Path = "runs/search",
    name: str | None = None,
    seed: int = 0,
    sampler=None,
    evaluate: Callable | None = None,
    loss: Callable | None = None,
    settings: dict[str, Any] | None = None,
    workers: int = 1,
    log=print,
) -> SearchResult:
    """Search per-layer compression policies for ``model`` (a trained ``nn.Module``, used as
    the baseline as it is) on the caller's ``train`` (fine-tunes) and ``val`` (every score)
    data sets; or run the experiment an :class:`ExperimentConfig` describes.

    ``space`` defaults to every Conv2d/Linear layer at 8 or 32 bits, sparsity 0-75 %.
    ``settings`` takes the experiment file's keys as nested dicts (e.g.
    ``{"finetune": {"steps": 30}, "latency": {"target": "proxy"}}``); ``sampler`` an Optuna
    sampler instance. ``evaluate(model, batches) -> float`` (higher is better; ``batches``
    yields ``(inputs, targets)``) replaces top-1 accuracy and ``loss(outputs, targets)``
    cross-entropy, for tasks other than classification. Everything is logged under
    ``output_dir`` (Optuna study, MLflow)."""
    if isinstance(model, ExperimentConfig):
        return _search_config(model, workers=workers, sampler=sampler, log=log)
    if train is None or val is None:
        raise ConfigError("search: pass the model's train= and val= data sets")
    task = Task(metric=evaluate, loss=loss)
    data = DataBundle.from_datasets(train, val, test)
    x = next(batches(val, 2))[0]
    # (another task's outputs need not be class scores)
    check_model_fits(model, x, None if evaluate else data.num_classes, name=type(model).__name__)
    if space is None:
        present = {type(m).__name__ for m in model.modules()}
        rule = {"sparsity": [0.0, 0.5, 0.75], "bits": [8, 32]}
        rules = [{"type": t, **rule} for t in ("Conv2d", "Linear") if t in present]
        space = SearchSpace.from_rules(model, rules)
    counts = {"n_trials": n_trials, "screen_trials": screen_trials}
    search_keys = {"seed": seed} | {k: v for k, v in counts.items() if v is not None}
    cfg = _object_config(
        model, data, space, Path(output_dir).resolve(), name, search_keys, settings or {}
    )
    prep = prepare(cfg, model=model, data=data, space=space, task=task, log=log)
    return _search_config(cfg, prepared=prep, sampler=sampler, workers=workers, log=log)


def export(
    result: SearchResult | ExperimentConfig,
    point: FrontPoint | PickCriteria | None = None,
    *,
    test: Dataset | None = None,
    log=print,
) -> ExportResult:
    """Fine-tune, export and verify a front point: ``export(result, result.pick(knee=True),
    test=test)`` after a Python search (on the caller's ``test`` split), or
    ``export(config, PickCriteria(...))`` for an experiment that was searched before."""
    if isinstance(result, ExperimentConfig):
        return _export_config(result, point or PickCriteria(knee=True), log=log)
    if result.config is None or result.prepared is None:
        raise ConfigError("export: this SearchResult was made by a worker; export from its starter")
    point = point or result.pick(knee=True)
    criteria = point if isinstance(point, PickCriteria) else PickCriteria(trial=point.trial)
    prep = result.prepared
    if test is not None:
        prep = replace(prep, data=replace(prep.data, test=test))
    if prep.data.test is None:
        raise ConfigError("export: pass test= (the split the exported model is verified on)")
    return _export_config(result.config, criteria, prepared=prep, log=log)


@dataclass
class ValidationReport:
    config: ExperimentConfig
    space: SearchSpace
    params: int

    def describe(self) -> str:
        c = self.config
        lines = [
            f"{c.source}: OK",
            f"  model {c.model.name} ({self.params} params), data {c.data.dataset}",
            f"  objectives {', '.join(c.objectives.enabled())}; {c.search.n_trials} trials, "
            f"sampler {c.search.sampler}",
            f"  search space {c.search_space.name}: {len(self.space)} layers, "
            f"{self.space.cardinality:.3g} policies",
        ]
        for name, ch in self.space.layers.items():
            dims = " ".join(f"{k} {list(v)}" for k, v in ch.options().items())
            lines.append(f"    {name:<28} {dims}")
        if self.space.unprunable:
            lines.append(
                "  keep_ratio fixed at 1.0 (these layers cannot lose output channels): "
                + ", ".join(self.space.unprunable)
            )
        lines.append(f"  output {c.output_dir}")
        return "\n".join(lines)


def validate(cfg: ExperimentConfig) -> ValidationReport:
    """Check everything short of training: the data (files, one batch, labels against
    ``model.num_classes``), the model (imports, checkpoint, one forward pass on that batch),
    the search space against the model, and that ``output_dir`` can be written."""
    spec = load_search_space(cfg.search_space)
    check_available(cfg.data)
    data = load_data(cfg.data)
    if not cfg.task.evaluate and data.num_classes > cfg.model.num_classes:
        raise ConfigError(
            f"model.num_classes is {cfg.model.num_classes} but the data has "
            f"{data.num_classes} classes: set model.num_classes: {data.num_classes}"
        )
    model = cfg.model.build(data.input_shape[0])
    x = next(batches(data.val, 8))[0]
    classes = None if cfg.task.evaluate else cfg.model.num_classes
    check_model_fits(model, x, classes, name=cfg.model.name)
    space = spec.resolve(model, x[:1])
    check_output_dir(cfg.output_dir)
    return ValidationReport(cfg, space, sum(p.numel() for p in model.parameters()))


def status(cfg: ExperimentConfig) -> dict:
    """Trials done / failed / running, the current front, and time spent (safe during a search)."""
    info = load_study(cfg)
    trials = info.study.get_trials(deepcopy=False)
    elapsed = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete and t.datetime_start
    )
    return {
        "study": cfg.name,
        "n_trials": cfg.search.n_trials,
        "complete": info.count(TrialState.COMPLETE),
        "failed": info.count(TrialState.FAIL),
        "running": info.count(TrialState.RUNNING),
        # which worker (host:pid) runs each running trial
        "running_on": {
            t.number: t.user_attrs.get("worker", "?")
            for t in trials
            if t.state == TrialState.RUNNING
        },
        "elapsed_s": elapsed,
        "front": front_points(info),  # FrontPoint records
    }


@dataclass
class CompressedModel:
    """A model compressed by a policy: ``model`` keeps masks and fake-quantisers as weight
    parametrisations (so it can be fine-tuned); the rest is derived from it."""

    model: nn.Module
    policy: CompressionPolicy
    example: torch.Tensor
    calibration: list[torch.Tensor] = field(default_factory=list)

    def size_bytes(self) -> int:
        """Bytes of the packed, entropy-coded state (``autocompress.compression.packing``): the size
        the search scores, without the architecture reference of an exported file."""
        return packed_size(compressed_state(self.model), metadata={"policy": self.policy.to_dict()})

    def plain(self) -> nn.Module:
        """A plain copy: masks and quantised values baked into float weights, no quantisers."""
        return materialize(self.model)[0]

    def int8_layers(self) -> list[str]:
        """The layers quantised below 32 bits (run as INT8 in the ``int8-qdq`` form)."""
        return sorted(materialize(self.model)[1])

    def to_onnx(self, path: str | Path, *, form: str = "int8-qdq") -> Path:
        """Write the ONNX model of ``form`` (one of ``fp32``, ``int8-qdq``, ``fp16``); the INT8
        activation ranges are calibrated on the ``calibration`` batches (or the example)."""
        plain, int8 = materialize(self.model)
        layers = tuple(sorted(int8)) if form == "int8-qdq" else ()
        spec = DeploySpec(form, layers, reduce_range=u8s8_saturates())
        calib = self.calibration or [self.example]
        return build_form(plain, self.example, path, spec, calibration=calib)[0]


def compress(
    model: nn.Module,
    policy: CompressionPolicy,
    *,
    example: torch.Tensor,
    calibration: Iterable[torch.Tensor] = (),
    importance: str = "l1",
    round_to: int = 1,
) -> CompressedModel:
    """Apply ``policy`` to a copy of ``model`` (channel removal traced on ``example``, magnitude
    masks, weight quantisers) and calibrate its activation quantisers on ``calibration``
    batches (default: the example)."""
    out = apply_policy(model, policy, example=example, importance=importance, round_to=round_to)
    calib = list(calibration) or [example]
    calibrate(out, calib)
    return CompressedModel(out.eval(), policy, example, calib)
