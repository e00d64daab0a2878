"""The uncompressed model and its metrics: loaded from a checkpoint, or trained once and cached
(keyed by everything that determines it, so a second run skips training); and what every stage
starts from (:func:`prepare`): the data, the baseline and the search space resolved on it."""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ._files import atomic_write, content_key, file_digest
from .compression.batchnorm import batchnorms, train_mode
from .config import ExperimentConfig
from .data import DataBundle, load_data
from .errors import ModelError
from .hardware.measure import measure_torch_model_latency
from .hardware.profiler import machine_fingerprint
from .hardware.targets import load_target
from .models import build_model, check_model_fits, load_callable
from .policy import CompressionPolicy
from .search_space import SearchSpace, load_search_space
from .size import size_bytes, size_measure
from .training import CLASSIFICATION, Task, evaluate, first_batches, train

if TYPE_CHECKING:
    from .hardware.memory_model import MemoryModel


@dataclass
class BaselineMetrics:
    val_accuracy: float
    val_loss: float
    test_accuracy: float
    latency_ms: float
    size_bytes: int
    fp32_state_dict_bytes: int
    params: int
    trained_seconds: float
    cache_key: str


@dataclass
class Baseline:
    model: nn.Module
    metrics: BaselineMetrics
    checkpoint: Path


def _state_bytes(model: nn.Module) -> bytes:
    """``torch.save(model.state_dict())`` (its length: the FP32 reference for compression
    ratios)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def _cache_key(cfg: ExperimentConfig) -> str:
    d = cfg.to_dict()
    data = {k: d["data"][k] for k in ("dataset", "root", "kwargs", "val_fraction", "seed")}
    data["batch_size"] = d["data"]["batch_size"]
    payload = {"model": d["model"], "baseline": d["baseline"], "data": data}
    if cfg.model.checkpoint is not None:
        payload["checkpoint_sha"] = file_digest(cfg.model.checkpoint)
    return content_key(payload)


def _threads(cfg: ExperimentConfig) -> int:
    """The latency target's ONNX Runtime threads (2 for an analytic target)."""
    return getattr(getattr(load_target(cfg.latency.target), "runtime", None), "threads", 2)


def _latency_key(cfg: ExperimentConfig) -> str:
    """What a cached baseline latency was measured with: batch size, threads and machine."""
    b, t = cfg.latency.batch_size, _threads(cfg)
    return content_key({"batch_size": b, "threads": t, "machine": machine_fingerprint()})


def _load_cached(cfg: ExperimentConfig, ckpt: Path, kw: dict, log) -> nn.Module | None:
    """The cached baseline, or None (and a line saying so) when the file is damaged."""
    try:
        return build_model(cfg.model.name, checkpoint=ckpt, **kw)
    except ModelError as exc:
        log(f"baseline: cached {ckpt.name} is damaged ({exc}): training again")
        ckpt.unlink(missing_ok=True)
        return None


def _read_meta(path: Path, log) -> dict:
    if not path.is_file():
        return {}
    try:
        if isinstance(data := json.loads(path.read_text()), dict):
            return data
    except (ValueError, OSError):
        pass
    log(f"baseline: cached {path.name} is damaged: measuring again")
    return {}


def get_baseline(
    cfg: ExperimentConfig, data: DataBundle, *, task: Task = CLASSIFICATION, log=print
) -> Baseline:
    """Load (checkpoint or cache) or train the baseline, then measure it on val and test."""
    key = _cache_key(cfg)
    ckpt = cfg.output_dir / "cache" / f"baseline-{key}.pt"
    meta_path = ckpt.with_suffix(".json")
    in_ch = data.input_shape[0]
    kw = {"num_classes": cfg.model.num_classes, "in_channels": in_ch, "kwargs": cfg.model.kwargs}
    trained_seconds = 0.0
    if cfg.model.checkpoint is not None:
        model = build_model(cfg.model.name, checkpoint=cfg.model.checkpoint, **kw)
        ckpt = cfg.model.checkpoint
    elif ckpt.is_file() and (model := _load_cached(cfg, ckpt, kw, log)) is not None:
        log(f"baseline: cached model {ckpt.name}")
    else:
        torch.manual_seed(cfg.data.seed)  # the initialisation is part of what the key fixes
        model = build_model(cfg.model.name, **kw)
        classes = None if task.metric else cfg.model.num_classes
        check_model_fits(model, data.example_input(2), classes, name=cfg.model.name)
        train_ds = data.train_full
        bs = cfg.data.batch_size
        steps = cfg.baseline.epochs * max(1, len(train_ds) // bs)
        log(
            f"baseline: training {cfg.model.name} for {cfg.baseline.epochs} epochs "
            f"({steps} steps on {len(train_ds)} images)"
        )
        t0 = time.perf_counter()
        train(
            model,
            train_ds,
            steps=steps,
            lr=cfg.baseline.lr,
            batch_size=bs,
            weight_decay=cfg.baseline.weight_decay,
            seed=cfg.data.seed,
            schedule="onecycle",
            log_every=max(steps // 5, 1),
            task=task,
        )
        trained_seconds = time.perf_counter() - t0
        atomic_write(ckpt, _state_bytes(model))
    model.eval()
    cached = _read_meta(meta_path, log) if not trained_seconds else {}  # (retrained: stale)
    metrics = _measure(cfg, model, data, key, cached, trained_seconds, task)
    if cfg.model.checkpoint is None:
        meta = asdict(metrics) | {"latency_key": _latency_key(cfg)}
        atomic_write(meta_path, json.dumps(meta, indent=2))
    return Baseline(model, metrics, ckpt)


def baseline_from_model(
    cfg: ExperimentConfig,
    model: nn.Module,
    data: DataBundle,
    *,
    task: Task = CLASSIFICATION,
    log=print,
) -> Baseline:
    """A user's (trained) model object as the baseline: measured, not trained. Its weights are
    written to the cache under their content hash, so caches keyed by the checkpoint (the
    sensitivity table) tell two models apart. BatchNorm layers that never saw a batch (running
    statistics at their initial values: in eval mode they do not normalise at all) get their
    statistics estimated on training batches first."""
    bns = batchnorms(model)
    if bns and all(int(m.num_batches_tracked) == 0 for m in bns.values()):
        log(
            f"baseline: the model's {len(bns)} BatchNorm layers never saw a batch: "
            "estimating their statistics on 8 training batches"
        )
        with torch.no_grad(), train_mode(model, bns, reset=True):
            for x in first_batches(data.train, cfg.data.batch_size, 8, shuffle=True):
                model(x)
    model.eval()
    state = _state_bytes(model)
    key = content_key(state)
    ckpt = cfg.output_dir / "cache" / f"baseline-{key}.pt"
    if not ckpt.is_file():
        atomic_write(ckpt, state)
    return Baseline(model, _measure(cfg, model, data, key, {}, 0.0, task), ckpt)


def _measure(
    cfg: ExperimentConfig,
    model: nn.Module,
    data: DataBundle,
    key: str,
    cached: dict,
    trained_seconds: float,
    task: Task,
) -> BaselineMetrics:
    val_acc, val_loss = evaluate(model, data.val, task=task)
    test_acc = evaluate(model, data.test, task=task)[0] if data.test is not None else float("nan")
    example = data.example_input(cfg.latency.batch_size)
    latency = None
    if cached.get("latency_key") == _latency_key(cfg):  # measured here, at this batch size
        latency = cached.get("latency_ms")
    latency = latency or measure_torch_model_latency(model, example, threads=_threads(cfg))
    return BaselineMetrics(
        val_accuracy=val_acc,
        val_loss=val_loss,
        test_accuracy=test_acc,
        latency_ms=latency,
        # (measure memory: the memory model needs the search space; prepare() fills it in)
        size_bytes=0
        if size_measure(cfg) == "memory"
        else size_bytes(cfg, model, CompressionPolicy(), data.input_shape),
        fp32_state_dict_bytes=len(_state_bytes(model)),
        params=sum(p.numel() for p in model.parameters()),
        trained_seconds=cached.get("trained_seconds", trained_seconds),
        cache_key=key,
    )


@dataclass
class Prepared:
    cfg: ExperimentConfig
    data: DataBundle
    baseline: Baseline
    space: SearchSpace
    memory_model: MemoryModel | None = None  # with objectives.size.measure: memory
    task: Task = CLASSIFICATION  # the metric and loss every stage uses

    def baseline_summary(self) -> dict:
        bm = self.baseline.metrics
        return {
            "val_accuracy": bm.val_accuracy,
            "test_accuracy": bm.test_accuracy,
            "latency_ms": bm.latency_ms,
            "size_kb": bm.size_bytes / 1024,
            "fp32_state_dict_bytes": bm.fp32_state_dict_bytes,
            "params": bm.params,
        }


def task_from_config(cfg: ExperimentConfig) -> Task:
    """The ``task`` section's callables (``module:callable``), imported."""
    t = cfg.task
    return Task(
        metric=load_callable(t.evaluate, what="task.evaluate") if t.evaluate else None,
        loss=load_callable(t.loss, what="task.loss") if t.loss else None,
    )


def prepare(
    cfg: ExperimentConfig,
    *,
    model: nn.Module | None = None,
    data: DataBundle | None = None,
    space: SearchSpace | None = None,
    task: Task | None = None,
    log=print,
) -> Prepared:
    """Data, baseline (trained once, cached) and the search space resolved on the model. A
    Python caller's own ``model`` (used as the trained baseline, not trained again), ``data``
    ``space`` and ``task`` take the place of what the config names."""
    task = task or task_from_config(cfg)
    data = data or load_data(cfg.data)
    if model is None:
        baseline = get_baseline(cfg, data, task=task, log=log)
    else:
        baseline = baseline_from_model(cfg, model, data, task=task, log=log)
    if space is None:
        space = load_search_space(cfg.search_space).resolve(baseline.model, data.example_input(1))
        if space.unprunable:
            log(
                f"search space: {len(space.unprunable)} layer(s) cannot lose output channels, "
                f"keep_ratio fixed at 1.0: {', '.join(space.unprunable)}"
            )
    prep = Prepared(cfg, data, baseline, space, task=task)
    if size_measure(cfg) == "memory":
        from .hardware.memory_model import get_memory_model

        prep.memory_model = mm = get_memory_model(cfg, prep, log=log)
        size = size_bytes(
            cfg, baseline.model, CompressionPolicy(), data.input_shape, memory_model=mm
        )
        prep.baseline = replace(baseline, metrics=replace(baseline.metrics, size_bytes=size))
    return prep
