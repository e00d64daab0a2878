"""One trial: sample a policy, compress the baseline, fine-tune briefly, measure."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import optuna
from torch import nn
from torch.utils.data import Dataset

from ..baseline import Baseline
from ..compression.apply import (
    apply_policy,
    calibrate,
    gradual_policies,
    update_masks,
    weight_sparsity,
)
from ..compression.artifact import ModelRef, save_packed_model
from ..compression.batchnorm import batch_statistics, correct_batchnorm, fold_statistics
from ..config import ExperimentConfig, FinetuneConfig
from ..data import DataBundle
from ..hardware.latency import LatencyModel
from ..hardware.memory_model import MemoryModel
from ..metrics import TrialMetrics
from ..policy import CompressionPolicy
from ..search_space import SearchSpace
from ..size import size_bytes
from ..training import CLASSIFICATION, Task, batches, evaluate, train
from .study import worker_id


def suggest_policy(trial: optuna.Trial, space: SearchSpace) -> CompressionPolicy:
    """Ask the trial for every searched parameter; record the policy and this worker on it."""
    params = {k: trial.suggest_categorical(k, list(v)) for k, v in space.choices().items()}
    policy = space.policy_from_params(params)
    trial.set_user_attr("worker", worker_id())
    trial.set_user_attr("policy", policy.to_dict())
    return policy


@dataclass
class TrialEvaluator:
    """Everything a trial needs, built once per search."""

    cfg: ExperimentConfig
    baseline: Baseline
    data: DataBundle
    latency_model: LatencyModel
    memory_model: MemoryModel | None = None  # objectives.size.measure: memory
    task: Task = CLASSIFICATION  # the metric and loss (default top-1, cross-entropy)
    _calibration: dict = field(default_factory=dict, init=False, repr=False)
    _onnx_sizes: dict = field(default_factory=dict, init=False, repr=False)
    uncharged_s: float = field(default=0.0, init=False)  # benchmark-only test scoring

    def compress(
        self, policy: CompressionPolicy, *, recipe: FinetuneConfig | None = None, seed: int = 0
    ):
        """``(model, mean final loss)``: compressed, fine-tuned by ``recipe`` (default: the
        per-trial fine-tune), masks and fake-quant in place. A ``gradual`` recipe prunes in
        ``prune_stages`` steps, ``steps / prune_stages`` fine-tune steps after each (at
        ``recovery_lr_factor * lr`` but the last). BatchNorm statistics end folded
        (:func:`~autocompress.compression.batchnorm.fold_statistics`)."""
        ft = recipe or self.cfg.finetune
        bs = ft.batch_size or self.cfg.data.batch_size
        train_ds = self.data.train_full if ft.full_train else self.data.train
        comp = self.cfg.compression
        stages = gradual_policies(policy, ft.prune_stages) if ft.schedule == "gradual" else [policy]
        model = apply_policy(
            self.baseline.model,
            stages[0],
            example=self.data.example_input(2),
            importance=comp.importance,
            round_to=comp.round_to,
        )
        key = (ft.full_train, bs, seed, ft.correct_batchnorm)
        if key not in self._calibration:
            calib = [x for x, _ in islice(batches(train_ds, bs, shuffle=True, seed=seed), 4)]
            ref = None
            if ft.correct_batchnorm:  # the baseline's side of the correction, once per batches
                ref = batch_statistics(self.baseline.model.eval(), calib, self.baseline.model)
            self._calibration = {key: (calib, ref)}  # the latest only: screens reuse one seed
        calib, ref_stats = self._calibration[key]
        calibrate(model, calib)
        loss = float("nan")
        for k, stage in enumerate(stages):
            if k:
                update_masks(model, stage)  # the next gradual step, by today's magnitudes
            if ft.correct_batchnorm:
                # A short fine-tune does not repair the statistics alone (bn-finetune.md).
                correct_batchnorm(model, self.baseline.model, calib, reference_estimate=ref_stats)
            last = k == len(stages) - 1
            loss = train(
                model,
                train_ds,
                steps=ft.steps // len(stages) + (ft.steps % len(stages) if last else 0),
                lr=ft.lr if last else ft.lr * ft.recovery_lr_factor,
                batch_size=bs,
                seed=seed + k,
                schedule="cosine",
                teacher=self.baseline.model if ft.distill_weight > 0 else None,
                distill_weight=ft.distill_weight,
                temperature=ft.temperature,
                task=self.task,
            )
        fold_statistics(model, calib[0])  # finished: BatchNorm in inference form, as stored
        return model, loss

    def measure(
        self,
        model: nn.Module,
        policy: CompressionPolicy,
        ft_loss: float,
        *,
        val: Dataset | None = None,
        report_test: bool = True,
    ) -> TrialMetrics:
        """Accuracy on ``val`` (default: the validation split), predicted latency, size."""
        acc, val_loss = evaluate(model, self.data.val if val is None else val, task=self.task)
        cache = {"onnx_cache": self._onnx_sizes, "memory_model": self.memory_model}
        size = size_bytes(self.cfg, model, policy, self.data.input_shape, **cache)
        # Benchmarks only (search.report_test_accuracy): stored, never seen by the sampler.
        test_acc = None
        if report_test and self.cfg.search.report_test_accuracy:
            t0 = time.perf_counter()
            test_acc, _ = evaluate(model, self.data.test, task=self.task)
            self.uncharged_s += time.perf_counter() - t0  # not part of any search budget
        return TrialMetrics(
            val_accuracy=acc,
            val_loss=val_loss,
            latency_ms=self.latency_model.predict(model, policy),
            size_bytes=size,
            compression_ratio=self.baseline.metrics.fp32_state_dict_bytes / size,
            weight_sparsity=weight_sparsity(model),
            finetune_loss=ft_loss,
            test_accuracy=test_acc,
        )

    def __call__(
        self, policy: CompressionPolicy, *, seed: int = 0, save_to: Path | None = None
    ) -> TrialMetrics:
        """Compress, fine-tune and measure; with ``save_to`` also save the packed model there."""
        model, loss = self.compress(policy, seed=seed)
        metrics = self.measure(model, policy, loss)
        if save_to is not None:
            save_to.parent.mkdir(parents=True, exist_ok=True)
            ref = ModelRef.from_config(self.cfg, self.data.input_shape)
            save_packed_model(save_to, model, ref, policy, round_to=self.cfg.compression.round_to)
        return metrics
