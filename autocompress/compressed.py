"""``compress(model, policy, example=...)``: a policy applied to any ``nn.Module``, as a typed
object a notebook can use without an experiment file.

    cm = ac.compress(model, policy, example=x[:1], calibration=[x[:64]])
    cm.model                    # the compressed nn.Module (masks + fake-quant; fine-tunable)
    cm.size_bytes()             # the packed size (the search's size objective)
    cm.to_onnx("m.onnx")        # the deployed form: INT8 QDQ for the quantised layers
    cm.to_onnx("m32.onnx", form="fp32")
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .compression.apply import apply_policy, calibrate, compressed_state, materialize
from .compression.packing import packed_size
from .hardware.forms import FORMS, DeploySpec, build_form
from .policy import CompressionPolicy


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
        if form not in FORMS:
            raise ValueError(f"form {form!r}: one of {', '.join(FORMS)}")
        from .hardware.deploy import u8s8_saturates

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
    batches = [t for t in calibration] or [example]
    calibrate(out, batches)
    return CompressedModel(out.eval(), policy, example, batches)
