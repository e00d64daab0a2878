"""The torchvision check (issue: structured pruning on any torchvision classifier): a randomly
initialised torchvision model at a small resolution gets half of its prunable output channels
removed, 50 % unstructured sparsity and 4-bit weights on every Conv2d/Linear; it must still
run, export to ONNX, and ONNX Runtime's outputs must match PyTorch's. Used by
``tests/compression/test_torchvision_families.py`` (one small model per family) and by
``benchmarks/torchvision_sweep.py`` (every model)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

import autocompress as ac
from autocompress.compression.structured import prunable_layers
from autocompress.errors import AutocompressError
from autocompress.policy import CompressionPolicy, LayerPolicy, compressible_layers

TOLERANCE = 1e-3  # max |ORT - PyTorch|, relative to max(1, max |PyTorch|)


def resolution(name: str) -> int:
    """The smallest input side the model's architecture accepts, or 64."""
    if name.startswith(("maxvit", "vgg", "alexnet")):
        return 224  # partitions of 7 x 32 pixels; a 7 x 7 (6 x 6) map before the classifier
    if name.startswith("inception"):
        return 96  # needs at least 75
    if name == "vit_h_14":
        return 56  # a multiple of its 14-pixel patches
    return 64


def build(name: str) -> torch.nn.Module:
    kwargs: dict = {"num_classes": 10}
    if name in ("googlenet", "inception_v3"):
        kwargs |= {"aux_logits": False, "init_weights": False}
    if name.startswith("vit_"):
        kwargs["image_size"] = resolution(name)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def harsh_policy(model: torch.nn.Module, example: torch.Tensor) -> CompressionPolicy:
    """Keep half of the output channels of every prunable layer (``prunable_layers``), 50 %
    sparsity and 4 bits everywhere."""
    prunable = prunable_layers(model, example)
    return CompressionPolicy(
        {
            n: LayerPolicy(sparsity=0.5, bits=4, keep_ratio=0.5 if n in prunable else 1.0)
            for n in compressible_layers(model)
        }
    )


def check(name: str) -> dict:
    """Run the check on one torchvision model; the record says what passed, what failed, why."""
    torch.manual_seed(0)
    side = resolution(name)
    example = torch.rand(2, 3, side, side)
    rec: dict = {"model": name, "resolution": side}
    t0 = time.perf_counter()
    model = build(name)
    rec["params"] = sum(p.numel() for p in model.parameters())
    try:
        policy = harsh_policy(model, example[:1])
        rec["prunable"] = sum(lp.keep_ratio < 1 for lp in policy.values())
        rec["layers"] = len(policy)
        cm = ac.compress(model, policy, example=example[:1])
    except AutocompressError as exc:  # a one-line ModelError is the documented failure
        return rec | {"ok": False, "stage": "compress", "error": f"{type(exc).__name__}: {exc}"}
    plain = cm.plain()
    rec["params_after"] = sum(p.numel() for p in plain.parameters())
    with torch.no_grad():
        want = plain(example).numpy()
        shape = tuple(model.eval()(example).shape)
    if want.shape != shape:  # channel removal must never change what the model outputs
        return rec | {"ok": False, "stage": "shape", "error": f"output {want.shape} != {shape}"}
    with tempfile.TemporaryDirectory() as tmp:
        path = cm.to_onnx(Path(tmp) / "m.onnx", form="fp32")
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: example.numpy()})[0]
    err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
    rec |= {"max_rel_error": err, "ok": bool(err <= TOLERANCE)}
    if not rec["ok"]:
        rec |= {"stage": "onnx", "error": f"ORT differs from PyTorch by {err:.2e}"}
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec
