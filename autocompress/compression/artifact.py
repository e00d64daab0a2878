"""The packed model file: ``compressed_state`` in the ``compression.packing`` format, with what
rebuilds the architecture (model reference, policy, input shape) in its metadata. The loaded
model's logits equal the compressed model's bit for bit once its BatchNorm statistics are folded
(``batchnorm.fold_statistics``, which the trial pipeline does after the fine-tune)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from ..models import build_model
from ..policy import CompressionPolicy, compressible_layers
from .apply import attach_input_quant, compressed_state
from .batchnorm import batchnorms, foldable, folded_variance
from .packing import QuantizedTensor, pack_state, packed_size, unpack_state
from .structured import prune_channels

if TYPE_CHECKING:
    from ..config import ExperimentConfig


FORMAT = "autocompress-model/1"


@dataclass(frozen=True)
class ModelRef:
    """What ``build_model`` needs to rebuild the architecture, plus the input shape."""

    name: str
    num_classes: int
    in_channels: int
    input_shape: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, input_shape: tuple[int, ...]) -> ModelRef:
        m = cfg.model
        return cls(m.name, m.num_classes, input_shape[0], tuple(input_shape), dict(m.kwargs))


def _meta(
    ref: ModelRef, policy: CompressionPolicy, round_to: int, deploy: dict | None = None
) -> dict:
    meta = {
        "format": FORMAT,
        "model": asdict(ref),
        "policy": policy.to_dict(),
        "round_to": round_to,
    }
    return meta | ({"deploy": deploy} if deploy else {})


def pack_model(
    model: nn.Module,
    ref: ModelRef,
    policy: CompressionPolicy,
    *,
    round_to: int = 1,
    deploy: dict | None = None,
) -> bytes:
    """The packed file's bytes (Huffman-coded: what export writes). ``deploy`` (export's
    :class:`~autocompress.hardware.deploy.DeploySpec` as a dict) is what rebuilds the shipped
    ONNX model from the file alone (``autocompress unpack``)."""
    return pack_state(compressed_state(model), metadata=_meta(ref, policy, round_to, deploy))


def packed_model_size(
    model: nn.Module, ref: ModelRef, policy: CompressionPolicy, *, round_to: int = 1
) -> int:
    """``len(pack_model(...))`` without encoding: the model size the search scores."""
    return packed_size(compressed_state(model), metadata=_meta(ref, policy, round_to))


def save_packed_model(
    path: str | Path,
    model: nn.Module,
    ref: ModelRef,
    policy: CompressionPolicy,
    *,
    round_to: int = 1,
    deploy: dict | None = None,
) -> int:
    """Write the compressed ``model`` packed; returns the file's size in bytes."""
    data = pack_model(model, ref, policy, round_to=round_to, deploy=deploy)
    Path(path).write_bytes(data)
    return len(data)


def load_packed_model(
    path: str | Path, *, model: nn.Module | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored by :func:`save_packed_model` (eval mode) and its metadata.
    ``model``: an uncompressed instance of the architecture (a copy is filled), for a file
    packed from a Python model object, which has no name to build it by."""
    tensors, meta = unpack_state(Path(path).read_bytes())
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: not an autocompress packed model (format {meta.get('format')})")
    ref = meta["model"]
    if model is not None:
        model = copy.deepcopy(model).eval()
    elif ref["name"].startswith("object:"):
        raise ModelError(
            f"{path}: packed from a Python model object ({ref['name'][7:]}): load it from "
            "Python with the architecture, load_packed_model(path, model=...) or "
            "ac.unpack(path, out, model=...)"
        )
    else:
        model = build_model(
            ref["name"],
            num_classes=ref["num_classes"],
            in_channels=ref["in_channels"],
            kwargs=ref.get("kwargs") or {},
        ).eval()
    policy = CompressionPolicy.from_dict(meta["policy"])
    if any(p.keep_ratio < 1.0 for p in policy.values()):
        # Channel counts only depend on the policy: prune a fresh model to get the shapes.
        example = torch.zeros((1, *ref["input_shape"]))
        prune_channels(model, policy, example, round_to=int(meta.get("round_to", 1)))
    layers = compressible_layers(model)
    for name, lp in policy.items():
        if lp.quantized:
            attach_input_quant(layers[name])
    state: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        array = value.dequantize() if isinstance(value, QuantizedTensor) else value
        state[key] = torch.from_numpy(np.ascontiguousarray(array))
    for name, bn in batchnorms(model).items():  # stored in inference form: statistics folded
        prefix = f"{name}." if name else ""
        if foldable(bn) and prefix + "running_mean" not in state:
            state[prefix + "running_mean"] = torch.zeros_like(bn.running_mean)
            state[prefix + "running_var"] = torch.full_like(bn.running_var, folded_variance(bn.eps))
            if prefix + "weight" not in state:  # its scale is folded into the layer before
                state[prefix + "weight"] = torch.ones_like(bn.weight)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("num_batches_tracked", "initialized"))]
    if missing or unexpected:
        raise ModelError(
            f"{path}: packed state does not fit {ref['name']}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for module in model.modules():
        if hasattr(module, "initialized"):
            module.initialized.fill_(True)
    return model.eval(), meta
