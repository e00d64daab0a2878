"""Structured pruning: real removal of output channels through Torch-Pruning's dependency graph
(residual additions, depthwise convolutions, BatchNorm and concatenations stay consistent).

A layer's ``keep_ratio`` decides how many of its output channels survive, rounded to a multiple
of ``round_to``. Layers coupled with each other (e.g. every conv that writes into one residual
stream) form one group: the first layer of the group in module order decides for all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from ..policy import CompressionPolicy, compressible_layers

__all__ = ["IMPORTANCES", "kept_channels", "output_layers", "prune_channels"]

IMPORTANCES = ("l1", "l2", "fpgm")


def _importance(name: str):
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "fpgm":
        return tp.importance.FPGMImportance()
    raise ValueError(f"unknown importance {name!r}; allowed: {', '.join(IMPORTANCES)}")


@torch.no_grad()
def output_layers(model: nn.Module, example: torch.Tensor) -> set[str]:
    """Names of the layers whose output is the model's output (their channels cannot go)."""
    outs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, a, o, n=n: outs.__setitem__(n, o))
        for n, m in compressible_layers(model).items()
    ]
    was_training = model.training
    model.eval()
    try:
        final = model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n for n, o in outs.items() if o is final}


def kept_channels(channels: int, keep_ratio: float, round_to: int) -> int:
    """Output channels a layer keeps at ``keep_ratio``: a multiple of ``round_to``, at least one."""
    keep = int(round(channels * keep_ratio / round_to)) * round_to
    return min(channels, max(round_to, keep, 1))


def prune_channels(
    model: nn.Module,
    policy: CompressionPolicy,
    example: torch.Tensor,
    *,
    importance: str = "l1",
    round_to: int = 1,
) -> dict[str, int]:
    """Remove output channels in place as the policy's ``keep_ratio`` says.

    Returns the number of channels removed per deciding layer. Raises ModelError when a layer
    whose output is the model's output is asked to lose channels.
    """
    todo = [(n, lp) for n, lp in policy.items() if lp.keep_ratio < 1.0]
    if not todo:
        return {}
    import torch_pruning as tp

    layers = compressible_layers(model)
    protected = output_layers(model, example)
    bad = [n for n, _ in todo if n in protected]
    if bad:
        raise ModelError(
            f"cannot remove output channels of {', '.join(bad)}: it is the model output"
        )
    scorer = _importance(importance)
    was_training = model.training
    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    done: set[nn.Module] = set()
    removed: dict[str, int] = {}
    order = {n: i for i, n in enumerate(layers)}
    for name, lp in sorted(todo, key=lambda item: order[item[0]]):
        layer = layers[name]
        if isinstance(layer, nn.Conv2d):
            fn, channels = tp.prune_conv_out_channels, layer.out_channels
        else:
            fn, channels = tp.prune_linear_out_channels, layer.out_features
        group = graph.get_pruning_group(layer, fn, idxs=list(range(channels)))
        members = {  # layers whose outputs this group removes (consumers' inputs don't count)
            dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)
        }
        if members & done:
            continue  # coupled with a layer already decided
        n_remove = channels - kept_channels(channels, lp.keep_ratio, round_to)
        if n_remove <= 0:
            continue
        scores = scorer(group)
        if scores is None:
            raise ModelError(f"no importance for layer {name}: cannot prune its channels")
        idxs = torch.argsort(scores)[:n_remove].tolist()
        group = graph.get_pruning_group(layer, fn, idxs=sorted(idxs))
        if not graph.check_pruning_group(group):
            raise ModelError(f"pruning {n_remove} channels of {name} would break the model")
        group.prune()
        done |= members
        removed[name] = n_remove
    model.train(was_training)
    return removed
