"""Structured pruning on one small model of each torchvision family (the sweep over every
model is benchmarks/torchvision_sweep.py): half of the prunable channels removed, 50 % sparsity,
4 bits, and ONNX Runtime's outputs match PyTorch's (tests/torchvision_check.py)."""

from __future__ import annotations

import pytest
import torch
import torchvision_check

import autocompress as ac
from autocompress.compression.structured import prunable_layers, prune_channels
from autocompress.errors import ModelError
from autocompress.policy import CompressionPolicy, LayerPolicy

pytestmark = pytest.mark.filterwarnings("ignore")  # Torch-Pruning's and torchvision's notes

FAMILIES = [
    "resnet18",
    "resnext50_32x4d",  # grouped convolutions
    "regnet_x_400mf",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "shufflenet_v2_x0_5",  # channel shuffle: Torch-Pruning cannot trace the whole model
    "squeezenet1_1",
    "densenet121",
    "convnext_tiny",
    "mnasnet0_5",
    "googlenet",
    "vgg11",
    "vit_b_32",  # attention heads
    "swin_t",  # attention that uses its weights directly: its MLPs are pruned alone
]


@pytest.mark.parametrize("name", FAMILIES)
def test_half_the_channels_go_and_onnx_runtime_agrees(name):
    rec = torchvision_check.check(name)
    assert rec["ok"], {k: rec.get(k) for k in ("stage", "error", "max_rel_error")}
    assert rec["prunable"] > 0 and rec["params_after"] < rec["params"], rec


def test_groups_that_do_not_converge_end_in_a_model_error_naming_the_layer(monkeypatch):
    # Torch-Pruning's group search can grow without bound on some reshapes; the budget that
    # stops it is set to nothing here, so no group of any part of the model converges.
    from autocompress.compression import structured

    monkeypatch.setattr(structured, "_limit", lambda scope: 0)
    model = torchvision_check.build("resnet18")
    example = torch.rand(1, 3, 64, 64)
    policy = CompressionPolicy({"layer1.0.conv1": LayerPolicy(keep_ratio=0.5)})
    with pytest.raises(ModelError, match=r"layer1\.0\.conv1: .*do not converge"):
        ac.compress(model, policy, example=example)


def test_maxvit_loses_channels_in_the_parts_that_can_be_traced():
    model = torchvision_check.build("maxvit_t")
    example = torch.rand(1, 3, 224, 224)
    prunable = prunable_layers(model, example)
    assert "blocks.0.layers.0.layers.MBconv.layers.conv_a.0" in prunable
    assert not any(n.endswith("to_qkv") for n in prunable)  # its heads are reshaped by hand


def test_sub_modules_keep_their_output_channels_when_the_model_cannot_be_traced():
    model = torchvision_check.build("shufflenet_v2_x0_5")
    example = torch.rand(1, 3, 64, 64)
    prunable = prunable_layers(model, example)
    # inside each branch: the first 1x1 conv's channels (the depthwise conv follows them)
    assert "stage2.1.branch2.0" in prunable
    # the branch's last conv feeds the channel shuffle: never pruned alone
    assert "stage2.1.branch2.5" not in prunable
    removed = prune_channels(model, torchvision_check.harsh_policy(model, example), example)
    assert removed["stage2.1.branch2.0"] == model.stage2[1].branch2[0].out_channels
    assert model.stage2[1].branch2[5].out_channels == 24
    assert model(example).shape == (1, 10)
    with pytest.raises(ModelError, match="stage2.1.branch2.5"):
        prune_channels(
            torchvision_check.build("shufflenet_v2_x0_5"),
            CompressionPolicy({"stage2.1.branch2.5": LayerPolicy(keep_ratio=0.5)}),
            example,
        )
