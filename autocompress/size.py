"""The size objective (``objectives.size.measure``: ``packed``, ``onnx`` or ``memory``, see
:class:`~autocompress.config.SizeObjectiveConfig`), one definition for the baseline and every
trial."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .compression.artifact import ModelRef, packed_model_size
from .hardware.deploy import deployed_onnx_bytes
from .policy import CompressionPolicy

if TYPE_CHECKING:
    from .config import ExperimentConfig


def size_measure(cfg: ExperimentConfig) -> str:
    """``packed``, ``onnx`` or ``memory`` (``packed`` when size is not an objective)."""
    return cfg.objectives.size.measure if cfg.objectives.size is not None else "packed"


def size_bytes(
    cfg: ExperimentConfig,
    model: nn.Module,
    policy: CompressionPolicy,
    input_shape: tuple[int, ...],
    *,
    onnx_cache: dict | None = None,
    memory_model=None,  # hardware.memory_model.MemoryModel, with measure: memory
) -> int:
    """The model's size in the experiment's measure (``model`` compressed by ``policy``, or
    the uncompressed model with an empty policy)."""
    example = torch.zeros((1, *input_shape))
    if size_measure(cfg) == "memory":
        if memory_model is None:
            raise ValueError("objectives.size.measure is memory: pass the fitted memory model")
        return max(1, round(memory_model.predict_mb(model, example) * 1e6))
    if size_measure(cfg) == "onnx":
        sparse = cfg.export.sparse_initializers
        return deployed_onnx_bytes(model, example, cache=onnx_cache, sparse_initializers=sparse)
    ref = ModelRef.from_config(cfg, input_shape)
    return packed_model_size(model, ref, policy, round_to=cfg.compression.round_to)
