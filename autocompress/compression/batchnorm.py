"""BatchNorm statistics after compression, corrected rather than re-estimated from scratch.

Compressing a layer shifts the distribution every later BatchNorm layer sees; its running
statistics, fixed at training time, no longer normalise it (which is most of the damage channel
removal and aggressive pruning do before any fine-tuning, and what a trial's fine-tune repairs
first). Re-estimating them on a few batches alone adds the sampling noise of those batches to
every level. Instead, each BatchNorm layer gets its trained statistics moved by the change the
compression causes on the same batches::

    mean' = mean + (batch_mean(compressed) - batch_mean(baseline))
    var'  = var  * batch_var(compressed) / batch_var(baseline)

so an unchanged layer keeps its statistics exactly. Batch statistics are measured with every
BatchNorm layer normalising by its batch (train mode), for the baseline and the compressed model
alike. Channels of a pruned BatchNorm layer are matched to the baseline's by their affine
parameters (copied by channel removal).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

_BN = nn.modules.batchnorm._BatchNorm


def batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _BN) and m.track_running_stats}


def folded_variance(eps: float) -> float:
    """The running variance v with ``float32(v + eps) == 1`` exactly: a BatchNorm layer with mean
    0 and this variance is ``x * weight + bias`` (its inverse standard deviation is exactly 1)."""
    import numpy as np

    e = np.float32(eps)
    v = np.float32(1.0) - e
    while v + e > 1:
        v = np.nextafter(v, np.float32(0.0))
    while v + e < 1:
        v = np.nextafter(v, np.float32(2.0))
    return float(v)


def inference_affine(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of BatchNorm layer ``m`` in inference form, statistics folded in:
    ``weight * (x - mean) / sqrt(var + eps) + bias == x * w' + b'`` (to float rounding; exact when
    ``m`` is already folded)."""
    with torch.no_grad():
        w = m.weight * torch.rsqrt(m.running_var + m.eps)
        return w, m.bias - m.running_mean * w


def foldable(m: nn.Module) -> bool:
    """Whether BatchNorm layer ``m`` has affine parameters and running statistics to fold."""
    return m.affine and m.running_mean is not None


_FOLDABLE_INTO = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _producers(model: nn.Module, batch: torch.Tensor) -> dict[nn.Module, nn.Module]:
    """BatchNorm layer -> the Conv/Linear layer whose output is its input and nothing else's
    (of the modules: functional uses are caught by the caller's output check)."""
    made: dict[int, nn.Module] = {}
    uses: dict[int, int] = {}
    feeds: dict[nn.Module, int] = {}
    alive: list[torch.Tensor] = []  # keeps tensors alive so ids are not reused

    def pre(m, args):
        for a in args:
            if isinstance(a, torch.Tensor):
                uses[id(a)] = uses.get(id(a), 0) + 1
                alive.append(a)
                if isinstance(m, _BN):
                    feeds[m] = id(a)

    def post(m, args, out):
        if isinstance(out, torch.Tensor):
            made[id(out)] = m
            alive.append(out)

    hooks = [m.register_forward_pre_hook(pre) for m in model.modules() if not list(m.children())]
    hooks += [
        m.register_forward_hook(post) for m in model.modules() if isinstance(m, _FOLDABLE_INTO)
    ]
    try:
        model.eval()(batch)
    finally:
        for h in hooks:
            h.remove()
    return {bn: made[t] for bn, t in feeds.items() if t in made and uses[t] == 1}


def _weight_parametrization(layer: nn.Module):
    """The layer's weight parametrisation list (torch.nn.utils.parametrize), or None."""
    return getattr(getattr(layer, "parametrizations", None), "weight", None)


def _scalable(layer: nn.Module) -> bool:
    """Whether scaling the layer's output channels leaves its compression unchanged: float or
    FP16 weights, or integer weights with one scale per output channel (not k-means or a
    per-tensor scale, whose shared values cannot absorb a per-channel factor)."""
    plist = _weight_parametrization(layer)
    if plist is None:
        return True
    comp = plist[0]
    return hasattr(comp, "format") and comp.format.scalable(comp.policy)


@torch.no_grad()
def fold_statistics(model: nn.Module, batch: torch.Tensor | None = None) -> nn.Module:
    """Put every BatchNorm layer of ``model`` (with affine parameters and running statistics) in
    inference form, in place: statistics folded into weight and bias, mean 0, variance
    :func:`folded_variance`. With a ``batch``, a BatchNorm layer fed by a Conv/Linear layer alone
    also gets its scale folded into that layer's weights (one factor per output channel, which
    a per-channel quantiser's scales absorb) and keeps weight 1 and its bias; the fold is undone
    if the outputs on ``batch`` move by more than float rounding. Evaluation outputs stay the
    same (to rounding) and the packed file stores one or two arrays per layer instead of four.
    For a finished model: training it again would normalise batches with folded parameters."""
    for m in batchnorms(model).values():
        if not foldable(m):
            continue
        w, b = inference_affine(m)
        m.weight.copy_(w)
        m.bias.copy_(b)
        m.running_mean.zero_()
        m.running_var.fill_(folded_variance(m.eps))
    if batch is None:
        return model
    pairs = {
        bn: layer
        for bn, layer in _producers(model, batch).items()
        if foldable(bn) and _scalable(layer) and layer.weight.shape[0] == bn.num_features
    }
    if not pairs:
        return model
    params = [(bn, _trained_weight(layer), layer.bias) for bn, layer in pairs.items()]
    saved = copy.deepcopy(model.state_dict())
    before = model(batch)
    if not isinstance(before, torch.Tensor):
        return model
    for bn, w, b in params:
        scale = bn.weight.detach().clone()
        w.mul_(scale.view((-1,) + (1,) * (w.dim() - 1)))
        if b is not None:
            b.mul_(scale)
        bn.weight.fill_(1.0)
    after = model(batch)
    # rounding moves a few weight or activation codes by a step; a missed consumer moves all
    if not torch.allclose(after, before, rtol=0.0, atol=1e-2 * float(before.abs().max())):
        model.load_state_dict(saved)  # not a pure Conv -> BN chain: undo
    return model


def _trained_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's trained weight tensor (under its compression parametrisation, if any)."""
    plist = _weight_parametrization(layer)
    return plist.original if plist is not None else layer.weight


@contextmanager
def train_mode(model: nn.Module, collect: dict[str, nn.Module] | None = None, reset: bool = False):
    """Every BatchNorm layer of ``model`` normalises by its batch; those in ``collect``
    accumulate the batches' statistics (cumulative average; ``reset`` starts afresh), the others
    keep their running statistics. Modes and momenta are restored on exit."""
    collect = collect or {}
    bns = batchnorms(model)
    others = {n: m for n, m in bns.items() if n not in collect}
    kept = {n: copy.deepcopy(m.state_dict()) for n, m in others.items()}
    momenta = {n: m.momentum for n, m in bns.items()}
    modes = {n: m.training for n, m in bns.items()}
    for n, m in bns.items():
        if n in collect:
            if reset:
                m.reset_running_stats()
            m.momentum = None
        else:
            m.momentum = 0.0
        m.train()
    try:
        yield
    finally:
        for n, m in bns.items():
            m.momentum = momenta[n]
            m.train(modes[n])
        for n, m in others.items():
            m.load_state_dict(kept[n])


@torch.no_grad()
def batch_statistics(
    model: nn.Module, batches: list[torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Mean and variance each BatchNorm layer of ``model`` sees over ``batches`` with all of
    them in train mode; the model is left as it was."""
    bns = batchnorms(model)
    saved = {n: copy.deepcopy(m.state_dict()) for n, m in bns.items()}
    try:
        with train_mode(model, bns, reset=True):
            for x in batches:
                model(x)
        return {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bns.items()}
    finally:
        for n, m in bns.items():
            m.load_state_dict(saved[n])


def _channels(ref: nn.Module, new: nn.Module) -> torch.Tensor | None:
    """Index of each of ``new``'s channels among ``ref``'s (None when it cannot be told)."""
    if new.num_features == ref.num_features:
        return torch.arange(ref.num_features)
    if not (ref.affine and new.affine):
        return None
    same = (new.weight[:, None] == ref.weight[None, :]) & (new.bias[:, None] == ref.bias[None, :])
    if not bool((same.sum(1) == 1).all()):
        return None
    return same.float().argmax(1)


@torch.no_grad()
def correct_batchnorm(
    model: nn.Module,
    reference: nn.Module,
    batches: list[torch.Tensor],
    *,
    reference_estimate: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> None:
    """Move every BatchNorm layer of ``model`` (a compressed copy of ``reference``) to the
    corrected statistics measured on ``batches``. ``reference_estimate``: the reference's
    :func:`batch_statistics` on the same batches, when the caller already has them."""
    bns, refs = batchnorms(model), batchnorms(reference)
    if not batches or not bns:
        return
    model.eval()
    reference.eval()
    est = batch_statistics(model, batches)
    ref_est = reference_estimate or batch_statistics(reference, batches)
    for n, m in bns.items():
        if n not in refs:
            continue
        r, (mean, var) = refs[n], est[n]
        idx = _channels(r, m)
        if idx is not None:  # (else: the plain estimate)
            mean = r.running_mean[idx] + (mean - ref_est[n][0][idx])
            var = r.running_var[idx] * var / ref_est[n][1][idx].clamp_min(1e-12)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
