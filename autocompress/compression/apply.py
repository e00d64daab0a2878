"""Apply a :class:`CompressionPolicy` to a model: magnitude masks + fake-quantisation as weight
parametrisations (so fine-tuning keeps them; formats from the quantiser registry,
``compression.quantizers``), 8-bit activation fake-quant with a straight-through estimator on
quantised layers, the packed state that defines the model's size, and per-layer activation
statistics of the uncompressed against the compressed model (:func:`activation_stats`)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..models import evaluating
from ..policy import FLOAT_BITS, CompressionPolicy, LayerPolicy, compressible_layers
from .batchnorm import batchnorms, foldable, inference_affine
from .packing import QuantizedTensor
from .quantizers import straight_through, weight_format
from .structured import prune_channels


class ActFakeQuant(nn.Module):
    """Per-tensor asymmetric fake-quantisation of activations (uint8 by default).

    The range is tracked with an exponential moving average of batch min/max in training mode
    and frozen in eval mode.
    """

    def __init__(self, bits: int = 8, momentum: float = 0.1) -> None:
        super().__init__()
        self.bits = bits
        self.momentum = momentum
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    def scale_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        levels = 2**self.bits - 1
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        scale = torch.clamp((hi - lo) / levels, min=1e-8)
        zero_point = torch.clamp(torch.round(-lo / scale), 0, levels)
        return scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = x.detach().min(), x.detach().max()
            if not bool(self.initialized):
                self.min_val.copy_(lo)
                self.max_val.copy_(hi)
                self.initialized.fill_(True)
            else:
                self.min_val.lerp_(lo, self.momentum)
                self.max_val.lerp_(hi, self.momentum)
        if not bool(self.initialized):
            return x
        scale, zp = self.scale_zero_point()
        levels = 2**self.bits - 1
        xq = (torch.clamp(torch.round(x / scale) + zp, 0, levels) - zp) * scale
        return straight_through(x, xq)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


ACT_BITS = 8
CLIP_WARN = 0.01  # the export report flags layers clipping more of their input than this


class CompressWeight(nn.Module):
    """Weight parametrisation: ``weight * mask`` (a fixed mask) in the layer's weight format
    (``compression.quantizers.weight_format``: integer grid, k-means codebook, FP16, float)."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, lp: LayerPolicy) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.bits = lp.bits
        self.policy = lp
        self.format = weight_format(lp)
        self.format.setup(self, weight.detach() * mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.format.value(self, weight * self.mask)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, density={self.mask.float().mean().item():.3f}"


def compressed_weight(weight: torch.Tensor, lp: LayerPolicy) -> torch.Tensor:
    """One weight tensor as ``lp`` leaves it (magnitude mask, then the weight format): what
    :func:`apply_policy` computes for a layer, for estimators that perturb weights directly."""
    mask = magnitude_mask(weight, lp.sparsity, threshold=lp.threshold)
    with torch.no_grad():
        return CompressWeight(weight, mask, lp)(weight.detach())


def _quant_input_hook(module: nn.Module, args: tuple) -> tuple:
    return (module.input_quant(args[0]), *args[1:])


def attach_input_quant(layer: nn.Module, bits: int = ACT_BITS) -> None:
    """Fake-quantise the layer's input (submodule ``input_quant`` + a forward pre-hook)."""
    layer.input_quant = ActFakeQuant(bits)
    layer.register_forward_pre_hook(_quant_input_hook)


def apply_policy(
    model: nn.Module,
    policy: CompressionPolicy,
    *,
    example: torch.Tensor | None = None,
    importance: str = "l1",
    round_to: int = 1,
    inplace: bool = False,
) -> nn.Module:
    """Return the model compressed as ``policy`` says (a copy unless ``inplace``).

    First output channels are removed for layers with ``keep_ratio < 1`` (real removal, needs an
    ``example`` input to trace the model); then each named layer gets a magnitude mask at its
    sparsity (ranked across layers when ``policy.scope`` is ``global``) and threshold, then its
    weight quantiser (integer grid, k-means codebook or FP16) and, for integer weights, 8-bit
    fake-quantisation of its input.
    """
    policy.validate(model)
    out = model if inplace else copy.deepcopy(model)
    if any(p.keep_ratio < 1.0 for p in policy.values()):
        if example is None:
            raise ValueError("structured pruning (keep_ratio < 1) needs an example input")
        prune_channels(out, policy, example, importance=importance, round_to=round_to)
    layers = compressible_layers(out)
    masks = _masks({n: layers[n].weight for n in policy}, policy)
    for name, lp in policy.items():
        if name not in masks:
            continue
        layer = layers[name]
        comp = CompressWeight(layer.weight, masks[name], lp)
        parametrize.register_parametrization(layer, "weight", comp)
        if lp.quantized:
            attach_input_quant(layer)
    return out


def magnitude_mask(
    weight: torch.Tensor, sparsity: float, *, threshold: float = 0.0
) -> torch.Tensor:
    """Boolean mask keeping the largest-magnitude weights; exactly ``round(sparsity * n)`` are
    dropped (ties broken by position, so the count is exact even with repeated values), and with
    a ``threshold`` every weight with ``|w| < threshold`` as well."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    n = weight.numel()
    k = int(round(sparsity * n))
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    magnitude = weight.detach().abs().flatten()
    if k:
        order = torch.argsort(magnitude, stable=True)
        mask[order[:k]] = False
    if threshold > 0.0:
        mask &= magnitude >= threshold
    return mask.view_as(weight)


def global_sparsities(
    weights: dict[str, torch.Tensor], sparsity: dict[str, float]
) -> dict[str, float]:
    """Per-layer sparsities of one magnitude ranking across layers: as many weights are
    dropped in total as ``sparsity`` asks layer by layer (layers at 0 take no part), the
    smallest magnitudes among all participating layers first."""
    names = [n for n, s in sparsity.items() if s > 0.0]
    if not names:
        return dict(sparsity)
    sizes = [weights[n].numel() for n in names]
    k = int(round(sum(sparsity[n] * size for n, size in zip(names, sizes, strict=True))))
    magnitude = torch.cat([weights[n].detach().abs().flatten() for n in names])
    dropped = torch.zeros(magnitude.numel(), dtype=torch.bool)
    dropped[torch.argsort(magnitude, stable=True)[:k]] = True
    out = dict(sparsity)
    for name, part, size in zip(names, dropped.split(sizes), sizes, strict=True):
        out[name] = min(int(part.sum()) / size, (size - 1) / size)  # keep one weight at least
    return out


def _masks(weights: dict[str, torch.Tensor], policy: CompressionPolicy) -> dict[str, torch.Tensor]:
    """The pruning mask of every layer the policy changes (sparsity ranked across layers with
    ``scope: global``), by magnitude of ``weights``."""
    amounts = {n: lp.sparsity for n, lp in policy.items()}
    if policy.scope == "global":
        amounts = global_sparsities(weights, amounts)
    return {
        n: magnitude_mask(weights[n], amounts[n], threshold=lp.threshold)
        for n, lp in policy.items()
        if not (lp.sparsity == 0.0 and lp.threshold == 0.0 and lp.bits == FLOAT_BITS)
    }


def gradual_policies(policy: CompressionPolicy, stages: int) -> list[CompressionPolicy]:
    """The steps of gradual pruning toward ``policy`` (Zhu & Gupta's cubic schedule, AGP):
    stage ``k`` of ``n`` prunes ``s * (1 - (1 - k/n)**3)`` of what ``policy`` prunes (sparsity
    and threshold); channel counts and bit-widths are the policy's from the first stage."""
    out = []
    for k in range(1, stages + 1):
        frac = 1.0 - (1.0 - k / stages) ** 3
        layers = {
            n: replace(lp, sparsity=lp.sparsity * frac, threshold=lp.threshold * frac)
            for n, lp in policy.items()
        }
        out.append(CompressionPolicy(layers, scope=policy.scope))
    return out


@torch.no_grad()
def update_masks(model: nn.Module, policy: CompressionPolicy) -> None:
    """Re-prune a model made by :func:`apply_policy` to ``policy``'s sparsities (one step of
    gradual pruning): by the magnitudes of its surviving weights now (k-means layers: of their
    shared weights), so a pruned weight never comes back; k-means layers keep their trained
    centroids. Channel counts and bit-widths are left as they are."""
    layers = compressible_layers(model)
    parts = {n: _layer_parts(layers[n]) for n in policy}
    live = {}
    for name, (weight, comp) in parts.items():
        if comp is None:
            live[name] = weight
        else:
            w = torch.where(comp.mask, weight, 0.0)
            live[name] = comp.format.ranking(comp, w, layers[name].weight.detach())
    masks = _masks(live, policy)
    for name, (_, comp) in parts.items():
        if comp is None or name not in masks:
            continue
        comp.mask &= masks[name]
        comp.format.pruned(comp)


def _bake(layer: nn.Module) -> None:
    """Replace a parametrised weight by its current value. (Not ``remove_parametrizations``:
    a deep copy shares the generated ``Parametrized*`` class with the original, and removing the
    parametrisation deletes the property from that shared class.)"""
    with torch.no_grad():
        value = layer.weight.detach().clone()
    del layer._modules["parametrizations"]
    layer.__class__ = layer.__class__.__bases__[0]
    layer.weight = nn.Parameter(value)


def materialize(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """A plain copy of a compressed model for export: masks and quantised values baked into the
    weights, activation quantisers removed. Returns it with ``{layer: bits}`` of the layers that
    were quantised (their deployed form is INT8; sub-8-bit weights sit on a coarser grid)."""
    plain = copy.deepcopy(model)
    bits: dict[str, int] = {}
    for name, layer in compressible_layers(plain).items():
        if parametrize.is_parametrized(layer, "weight"):
            comp = layer.parametrizations["weight"][0]
            if comp.bits <= 8:
                bits[name] = comp.bits
            _bake(layer)
        if hasattr(layer, "input_quant"):
            del layer.input_quant
            for key, hook in list(layer._forward_pre_hooks.items()):
                if hook is _quant_input_hook:
                    del layer._forward_pre_hooks[key]
    return plain.eval(), bits


@torch.no_grad()
def calibrate(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Initialise activation ranges from a few batches (BatchNorm statistics are left as they
    are: the model runs in eval mode apart from the quantisers)."""
    quants = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    if not quants:
        return
    model.eval()
    for q in quants:
        q.train()
    for x in batches:
        model(x)
    model.eval()


def _layer_parts(layer: nn.Module) -> tuple[torch.Tensor, CompressWeight | None]:
    if parametrize.is_parametrized(layer, "weight"):
        plist = layer.parametrizations["weight"]
        return plist.original.detach(), plist[0]
    return layer.weight.detach(), None


def compressed_state(model: nn.Module) -> dict[str, np.ndarray | QuantizedTensor]:
    """Everything a loader needs to rebuild the compressed model: integer codes + scales for
    quantised weights (a codebook for k-means), FP16 arrays for 16-bit layers, masked float
    weights for pruned float layers, BatchNorm layers in inference form (weight and bias with
    the statistics folded in, the weight left out when it is all ones; exact for a model after
    :func:`~.batchnorm.fold_statistics`, which the loader restores), float arrays otherwise."""
    out: dict[str, np.ndarray | QuantizedTensor] = {}
    handled: set[str] = set()
    state = model.state_dict()
    for name, bn in batchnorms(model).items():
        if foldable(bn):
            prefix = f"{name}." if name else ""
            w, b = inference_affine(bn)
            if not bool((w == 1).all()):  # 1 where the scale is folded into the layer before
                out[prefix + "weight"] = w.numpy().astype(np.float32)
            out[prefix + "bias"] = b.numpy().astype(np.float32)
            handled.update(prefix + k for k in ("weight", "bias", "running_mean", "running_var"))
    for name, layer in compressible_layers(model).items():
        weight, comp = _layer_parts(layer)
        if comp is None:
            continue
        prefix = f"{name}." if name else ""
        w = torch.where(comp.mask, weight, 0.0)  # (+0.0 where pruned: weight * mask gives -0.0)
        out[prefix + "weight"] = comp.format.stored(comp, w)
        handled.add(prefix + "weight")
        handled.update(k for k in state if k.startswith(prefix + "parametrizations.weight."))
    for key, value in state.items():
        if key in handled or key.endswith("num_batches_tracked") or key.endswith("initialized"):
            continue
        out[key] = value.detach().cpu().numpy().astype(np.float32)
    return out


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all Conv2d/Linear layers (after masks and quantisation)."""
    zeros = total = 0
    for layer in compressible_layers(model).values():
        w = layer.weight.detach()
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


@dataclass(frozen=True)
class ActivationStats:
    """One layer's output statistics before and after compression (``clipped``: fraction of
    its input outside the activation quantiser's range; None without a quantiser)."""

    layer: str
    before_mean: float
    before_std: float
    before_min: float
    before_max: float
    after_mean: float
    after_std: float
    after_min: float
    after_max: float
    clipped: float | None = None

    @property
    def flagged(self) -> bool:
        return self.clipped is not None and self.clipped > CLIP_WARN

    def to_dict(self) -> dict:
        return asdict(self) | {"flagged": self.flagged}


class _Moments:
    def __init__(self) -> None:
        self.n = 0
        self.total = self.squares = 0.0
        self.lo, self.hi = float("inf"), float("-inf")
        self.clipped = self.seen = 0

    def add(self, t: torch.Tensor) -> None:
        t = t.detach().double()
        self.n += t.numel()
        self.total += float(t.sum())
        self.squares += float((t * t).sum())
        self.lo, self.hi = min(self.lo, float(t.min())), max(self.hi, float(t.max()))

    def stats(self) -> tuple[float, float, float, float]:
        mean = self.total / max(self.n, 1)
        var = max(self.squares / max(self.n, 1) - mean * mean, 0.0)
        return mean, var**0.5, self.lo, self.hi


def _record(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, _Moments]:
    seen = {name: _Moments() for name in compressible_layers(model)}
    hooks = []
    for name, layer in compressible_layers(model).items():

        def out_hook(_m, _inp, out, acc=seen[name]):
            acc.add(out)

        hooks.append(layer.register_forward_hook(out_hook))
        quant = getattr(layer, "input_quant", None)
        if isinstance(quant, ActFakeQuant) and bool(quant.initialized):  # (else: identity)

            def in_hook(q, inp, acc=seen[name]):
                x = inp[0].detach()
                scale, zp = q.scale_zero_point()
                lo, hi = -zp * scale, (2**q.bits - 1 - zp) * scale
                acc.clipped += int(((x < lo - scale / 2) | (x > hi + scale / 2)).sum())
                acc.seen += x.numel()

            hooks.append(quant.register_forward_pre_hook(in_hook))
    with torch.no_grad(), evaluating(model, hooks):
        for x in batches:
            model(x)
    return seen


def activation_stats(
    reference: nn.Module, compressed: nn.Module, batches: list[torch.Tensor]
) -> list[ActivationStats]:
    """Statistics of every compressible layer's output in ``reference`` (uncompressed) and
    ``compressed`` on ``batches``, in module order (layers of the compressed model)."""
    before, after = _record(reference, batches), _record(compressed, batches)
    out = []
    for name, acc in after.items():
        ref = before.get(name) or _Moments()
        b, a = ref.stats(), acc.stats()
        clipped = acc.clipped / acc.seen if acc.seen else None
        out.append(ActivationStats(name, *b, *a, clipped=clipped))
    return out
