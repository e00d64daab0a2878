"""``unpack(model.acpk, model.onnx)``: the deployable ONNX model rebuilt from the packed file
alone (the architecture reference, the entropy-coded weights and the deployed form's
:class:`~autocompress.hardware.forms.DeploySpec` it carries), so the small file is a transfer
format: download the packed file, unpack, run in ONNX Runtime. Export checks that the unpacked
model's outputs equal the shipped model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..compression.apply import materialize
from ..compression.artifact import load_packed_model
from ..errors import ModelError
from ..hardware.forms import DeploySpec, build_form
from ..hardware.measure import make_session


def unpack(packed: str | Path, out: str | Path, *, model: torch.nn.Module | None = None) -> Path:
    """Write the ONNX model the packed file ``packed`` was deployed as to ``out``; a file
    packed without a deployed form (before export) gives the FP32 model. ``model``: the
    architecture, for a file packed from a Python model object."""
    model, meta = load_packed_model(packed, model=model)
    deploy = meta.get("deploy") or {}
    spec = DeploySpec.from_dict(deploy)
    plain, _ = materialize(model)
    batch = int(deploy.get("example_batch", 1))
    example = torch.zeros((batch, *meta["model"]["input_shape"]))
    if spec.form == "int8-qdq" and spec.int8_layers and not spec.activation_qparams:
        raise ModelError(f"{packed}: INT8 form without activation parameters; cannot unpack")
    path, _ = build_form(plain, example, out, spec)
    return path


def onnx_outputs_equal(a: str | Path, b: str | Path, x: np.ndarray) -> bool:
    """Whether two ONNX models give bit-identical outputs on ``x`` (ONNX Runtime, CPU)."""
    outs = []
    for path in (a, b):
        sess = make_session(path)
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0])
    return bool(np.array_equal(outs[0], outs[1]))
