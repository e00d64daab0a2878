"""The measured sweep: every layer of the search space compressed alone at each of its sparsity,
bit-width and keep-ratio levels, scored on a fixed validation subset without fine-tuning.

Only the compressed layer changes, so for sparsity and bits the sweep swaps that layer's weight
in place (the same ``CompressWeight`` values ``apply_policy`` produces, plus the 8-bit input
fake-quantiser calibrated on the same batches) and replays the recorded outputs of every module
that runs before it instead of recomputing them. Channel removal changes several modules: those
levels go through ``apply_policy`` and a full forward pass.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..compression.apply import CompressWeight, apply_policy
from ..compression.batchnorm import (
    BNState,
    batch_statistics,
    batchnorms,
    batchnorms_after,
    corrected_statistics,
    train_mode,
)
from ..compression.quantization import ActFakeQuant
from ..policy import CompressionPolicy, LayerPolicy, compressible_layers
from ..search_space import SearchSpace
from .replay import ModuleTrace, call_order
from .table import IDENTITY, LevelResult, harsh_order, interpolate_levels

__all__ = ["SweepData", "levels_of", "run_sweep"]

_TRACE_BUDGET = 256 * 2**20  # bytes of recorded module outputs per batch


@dataclass
class SweepData:
    """The fixed inputs of a sweep: validation subset, activation-calibration batches, example
    input, and the batches BatchNorm statistics are re-estimated on (none: no re-estimation)."""

    x: torch.Tensor
    y: torch.Tensor
    calib: list[torch.Tensor]
    example: torch.Tensor
    bn: list[torch.Tensor] = field(default_factory=list)


def levels_of(space: SearchSpace) -> list[tuple[str, str, float]]:
    """Every non-identity (layer, dimension, value) of the space, gentlest first per dimension."""
    out = []
    for name, ch in space.layers.items():
        for dim in ("sparsity", "bits", "keep_ratio"):
            vals = [v for v in harsh_order(dim, getattr(ch, dim)) if v != IDENTITY[dim]]
            out += [(name, dim, float(v)) for v in vals]
    return out


def _points(values: list[float], max_points: int | None) -> set[float]:
    if max_points is None or len(values) <= max_points:
        return set(values)
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, max_points)).astype(int))
    return {values[i] for i in idx}


@torch.no_grad()
def _layer_inputs(model: nn.Module, layer: nn.Module, batches: list[torch.Tensor]) -> list:
    seen: list[torch.Tensor] = []
    h = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    try:
        for x in batches:
            model(x)
    finally:
        h.remove()
    return seen


@torch.no_grad()
def _input_quant(inputs: list[torch.Tensor]) -> ActFakeQuant:
    """The 8-bit input quantiser ``calibrate`` would produce from these batches."""
    q = ActFakeQuant()
    q.train()
    for x in inputs:
        q(x)
    return q.eval()


class _Scores:
    def __init__(self) -> None:
        self.correct, self.loss, self.n = 0, 0.0, 0

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += float(F.cross_entropy(logits, y, reduction="sum"))
        self.correct += int((logits.argmax(1) == y).sum())
        self.n += len(y)

    def result(self) -> tuple[float, float]:
        return self.correct / max(self.n, 1), self.loss / max(self.n, 1)


def _changed_leaves(model: nn.Module, ref: nn.Module) -> set[str]:
    """Names of the leaf modules whose parameters or buffers differ from ``ref``'s."""
    ref_leaves = dict(ref.named_modules())
    changed = set()
    for name, m in model.named_modules():
        if next(m.children(), None) is not None:
            continue
        r = ref_leaves.get(name)
        mine = dict(m.named_parameters(recurse=False)) | dict(m.named_buffers(recurse=False))
        theirs = {} if r is None else dict(r.named_parameters()) | dict(r.named_buffers())
        if mine.keys() != theirs.keys() or any(
            v.shape != theirs[k].shape or not torch.equal(v, theirs[k]) for k, v in mine.items()
        ):
            changed.add(name)
    return changed


class _Variant:
    """One level to score: a weight computed on the fly and swapped into the shared working
    model (sparsity, bits), or a separate model with channels removed (keep_ratio); with BN
    re-estimation, the running statistics of the BatchNorm layers after the change."""

    def __init__(self, key: tuple[str, str, float], model: nn.Module, changed: set[str]) -> None:
        self.key, self.model, self.changed = key, model, changed
        self.shared = key[1] != "keep_ratio"
        self.order: torch.Tensor | None = None  # weight indices by magnitude (sparsity levels)
        self.quant: ActFakeQuant | None = None  # calibrated input quantiser (bits levels)
        self.cut = 0  # position of the first changed leaf call
        self.bns: dict[str, nn.Module] = {}
        self.bn_state: BNState | None = None  # re-estimated statistics (shared model only)

    def locate(self, order: list[str]) -> None:
        self.cut = next((i for i, n in enumerate(order) if n in self.changed), 0)
        self.bns = batchnorms_after(self.model, order, self.cut)

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        """The value ``CompressWeight`` gives this layer at this level (as ``apply_policy``)."""
        mask = torch.ones(w.numel(), dtype=torch.bool)
        if self.key[1] == "sparsity":
            mask[self.order[: int(round(self.key[2] * w.numel()))]] = False
        bits = int(self.key[2]) if self.key[1] == "bits" else 32
        return CompressWeight(mask.view_as(w), bits)(w)

    def run(self, trace: ModuleTrace | None, x: torch.Tensor) -> torch.Tensor:
        layer = compressible_layers(self.model)[self.key[0]] if self.shared else None
        saved, hook = None, None
        if layer is not None:
            saved = layer.weight.data
            layer.weight.data = self._weight(saved)
            if self.quant is not None:
                q = self.quant
                hook = layer.register_forward_pre_hook(lambda m, a: (q(a[0]), *a[1:]))
        try:
            if trace is not None:
                return trace.replay(self.model, x, self.cut)
            return self.model(x)
        finally:
            if layer is not None:
                layer.weight.data = saved
                if hook is not None:
                    hook.remove()

    def score(self, trace: ModuleTrace | None, x: torch.Tensor, base_bn: BNState) -> torch.Tensor:
        """Logits of this level, with its re-estimated BatchNorm statistics when it has them."""
        if self.bn_state is not None:
            self.bn_state.load(self.bns)
        try:
            return self.run(trace, x)
        finally:
            if self.bn_state is not None:
                base_bn.load(self.bns)

    def reestimate(self, trace, x: torch.Tensor, first: bool, base_bn: BNState) -> None:
        """One batch of BatchNorm re-estimation (cumulative average over the batches)."""
        if not self.bns:
            return
        if self.shared and self.bn_state is not None:
            self.bn_state.load(self.bns)
        try:
            with train_mode(self.model, self.bns, reset=first):
                self.run(trace, x)
        finally:
            if self.shared:
                self.bn_state = BNState(self.bns)
                base_bn.load(self.bns)

    def finalize(self, refs: dict[str, nn.Module], base_bn: BNState, base_est: dict) -> None:
        """Turn the re-estimated statistics into corrected ones (see :mod:`.batchnorm`)."""
        for n, m in self.bns.items():
            if self.shared:
                mean, var, count = self.bn_state.values[n]
            else:
                mean, var = m.running_mean, m.running_var
            orig = base_bn.values[n]
            cm, cv = corrected_statistics(m, (mean, var), refs[n], orig[:2], base_est[n])
            if self.shared:
                self.bn_state.values[n] = (cm, cv, count)
            else:
                m.running_mean.copy_(cm)
                m.running_var.copy_(cv)


def _weight_variants(work: nn.Module, todo: list, data: SweepData) -> list[_Variant]:
    layers = compressible_layers(work)
    quants = {
        n: _input_quant(_layer_inputs(work, layers[n], data.calib))
        for n in {t[0] for t in todo if t[1] == "bits"}
    }
    orders = {
        n: torch.argsort(layers[n].weight.detach().abs().flatten(), stable=True)
        for n in {t[0] for t in todo if t[1] == "sparsity"}
    }
    out = []
    for key in todo:
        v = _Variant(key, work, {key[0]})
        v.order = orders.get(key[0])
        v.quant = quants.get(key[0]) if key[1] == "bits" else None
        out.append(v)
    return out


def _keep_variant(model: nn.Module, key, data: SweepData, importance: str, round_to: int):
    policy = CompressionPolicy({key[0]: LayerPolicy(keep_ratio=key[2])})
    pruned = apply_policy(
        model, policy, example=data.example, importance=importance, round_to=round_to
    ).eval()
    return _Variant(key, pruned, _changed_leaves(pruned, model))


class _Progress:
    """A line at every tenth of the sweep: levels scored, elapsed, ETA."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.done, self.log = total, 0, log
        self.t0, self.next = time.perf_counter(), 0.1

    def step(self) -> None:
        self.done += 1
        frac = self.done / max(self.total, 1)
        if frac >= self.next and frac < 1.0:
            el = time.perf_counter() - self.t0
            self.log(
                f"sensitivity: {100 * frac:.0f}% of the sweep, {el:.0f} s elapsed, "
                f"ETA {el * (1 - frac) / frac:.0f} s"
            )
            while self.next <= frac:
                self.next += 0.1


def _chunks(model: nn.Module, keep_todo: list) -> list[list]:
    """Channel-removal levels in groups whose models fit the memory budget together."""
    per_model = sum(p.numel() * p.element_size() for p in model.parameters())
    n = max(1, int(4 * _TRACE_BUDGET // max(per_model, 1)))
    return [keep_todo[i : i + n] for i in range(0, len(keep_todo), n)] or [[]]


def _measure(model, todo, data, *, importance, round_to, log):
    """Scores of all levels: batch by batch, the baseline pass is recorded once and each level
    replays it up to the first module it changes (after re-estimating, on ``data.bn``, the
    statistics of the BatchNorm layers after that module)."""
    work = copy.deepcopy(model).eval()
    order = call_order(work, data.x[:2])
    weight_variants = _weight_variants(work, [t for t in todo if t[1] != "keep_ratio"], data)
    refs = batchnorms(work)
    base_bn = BNState(refs)
    base_est = batch_statistics(work, data.bn, work) if data.bn else {}
    scores = {t: _Scores() for t in todo}
    base = _Scores()
    progress = _Progress(len(todo) * max(1, math.ceil(len(data.x) / 500)), log)
    trace: ModuleTrace | None = ModuleTrace()
    trace.wrap(work)
    try:
        try:
            with torch.no_grad():
                trace.record(work, data.x[:2])
            per_image = sum(t.numel() * t.element_size() for _, t in trace.entries) / 2
            bs = int(min(500, max(16, _TRACE_BUDGET // max(per_image, 1))))
        except TypeError:
            bs, trace = 250, None
        progress.total = len(todo) * math.ceil(len(data.x) / bs)
        for c, chunk in enumerate(_chunks(model, [t for t in todo if t[1] == "keep_ratio"])):
            variants = weight_variants if c == 0 else []
            for key in chunk:
                v = _keep_variant(model, key, data, importance, round_to)
                if trace is not None:
                    trace.wrap(v.model)
                variants.append(v)
            for v in variants:
                v.locate(order)
            with torch.no_grad():
                for b, xb in enumerate(data.bn):
                    if trace is not None:
                        with train_mode(work):
                            trace.record(work, xb)
                    for v in variants:
                        v.reestimate(trace, xb, b == 0, base_bn)
                        if trace is not None:
                            with train_mode(work):
                                trace.repair(work, xb)
                if data.bn:
                    for v in variants:
                        v.finalize(refs, base_bn, base_est)
                for i in range(0, len(data.x), bs):
                    x, y = data.x[i : i + bs], data.y[i : i + bs]
                    logits = trace.record(work, x) if trace is not None else work(x)
                    if c == 0:
                        base.add(logits, y)
                    if trace is not None and i == 0 and variants:
                        check = trace.replay(work, x, len(trace.entries) - 1)
                        if not torch.allclose(check, logits, atol=1e-5, rtol=1e-4):
                            log("sensitivity: module replay disagrees with the model: full passes")
                            trace.unwrap()
                            trace = None
                    for v in variants:
                        out = v.score(trace, x, base_bn)
                        if trace is not None:
                            trace.repair(work, x)
                        scores[v.key].add(out, y)
                        progress.step()
    finally:
        if trace is not None:
            trace.unwrap()
    return {t: s.result() for t, s in scores.items()}, base.result()


def run_sweep(
    model: nn.Module,
    space: SearchSpace,
    data: SweepData,
    *,
    importance: str = "l1",
    round_to: int = 1,
    max_points: int | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[LevelResult], tuple[float, float]]:
    """Measure every level of ``space`` on ``data``; returns the rows (in ``levels_of`` order),
    and the baseline (accuracy, loss)."""
    model = model.eval()
    all_levels = levels_of(space)
    todo = []
    for name, dim in dict.fromkeys((n, d) for n, d, _ in all_levels):
        vals = [v for n, d, v in all_levels if n == name and d == dim]
        chosen = _points(vals, max_points)
        todo += [(name, dim, v) for v in vals if v in chosen]
    log(
        f"sensitivity: measuring {len(todo)} levels of {len(space)} layers on "
        f"{len(data.x)} validation images"
    )
    scores, (base_acc, base_loss) = _measure(
        model,
        todo,
        data,
        importance=importance,
        round_to=round_to,
        log=log,
    )
    rows = []
    for key, (acc, loss) in scores.items():
        drop = 100.0 * (base_acc - acc)
        rows.append(LevelResult(*key, acc_drop=drop, loss_increase=loss - base_loss))
        if not math.isfinite(loss):
            rows[-1] = LevelResult(*key, acc_drop=drop, loss_increase=None)
    return interpolate_levels(rows, all_levels), (base_acc, base_loss)
