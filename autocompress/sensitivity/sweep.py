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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..compress.apply import CompressWeight, apply_policy
from ..compress.quantization import ActFakeQuant
from ..policy import CompressionPolicy, LayerPolicy, compressible_layers
from ..search_space import SearchSpace
from .table import IDENTITY, LevelResult, harsh_order

__all__ = ["SweepData", "levels_of", "model_structure", "run_sweep"]

_TRACE_BUDGET = 256 * 2**20  # bytes of recorded module outputs per batch


@dataclass
class SweepData:
    """The fixed inputs of a sweep: validation subset, calibration batches, example input."""

    x: torch.Tensor
    y: torch.Tensor
    calib: list[torch.Tensor]
    example: torch.Tensor


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


def _weight_floats(model: nn.Module) -> tuple[dict[str, int], dict[str, int], int]:
    layers = compressible_layers(model)
    numel = {n: int(m.weight.numel()) for n, m in layers.items()}
    out = {n: int(m.weight.shape[0]) for n, m in layers.items()}
    weights = {f"{n}.weight" if n else "weight" for n in layers}
    other = sum(
        int(v.numel())
        for k, v in model.state_dict().items()
        if k not in weights and not k.endswith("num_batches_tracked")
    )
    return numel, out, other


def model_structure(model: nn.Module) -> dict:
    """Weight elements and output channels per compressible layer, other float elements."""
    numel, out, other = _weight_floats(model)
    return {"numel": numel, "out": out, "other_floats": other, "keep": {}}


class _Trace:
    """Records the outputs of every leaf module of a forward pass (by module name, in call
    order) and replays them: a wrapped model in ``replay`` mode returns the recorded output for
    its first ``cut`` leaf calls instead of computing them. Recorded outputs are cloned (in-place
    ops may change them later in the recorded pass); replayed ones are handed out as they are
    unless a pass was seen to modify them in place (``dirty``), after which they are cloned."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, torch.Tensor]] = []
        self.versions: list[int] = []
        self.mode, self.cut, self.pos, self.copy = "off", 0, 0, False
        self._wrapped: list[nn.Module] = []

    def wrap(self, model: nn.Module) -> None:
        for name, m in model.named_modules():
            if next(m.children(), None) is None:
                m.forward = self._wrap(name, m.forward)
                self._wrapped.append(m)

    def unwrap(self) -> None:
        for m in self._wrapped:
            m.__dict__.pop("forward", None)
        self._wrapped = []

    def _wrap(self, name: str, orig: Callable) -> Callable:
        def forward(*args, **kwargs):
            if self.mode == "record":
                out = orig(*args, **kwargs)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"{name}: non-tensor module output")
                self.entries.append((name, out.clone()))
                return out
            if self.mode == "replay":
                pos = self.pos
                self.pos += 1
                if pos < self.cut:
                    recorded, out = self.entries[pos]
                    if recorded != name:
                        raise RuntimeError("module call order differs from the recorded one")
                    return out.clone() if self.copy else out
            return orig(*args, **kwargs)

        return forward

    def record(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        self.entries, self.mode = [], "record"
        try:
            return model(x)
        finally:
            self.mode = "off"
            self.versions = [t._version for _, t in self.entries]

    def replay(self, model: nn.Module, x: torch.Tensor, cut: int) -> torch.Tensor:
        self.mode, self.cut, self.pos = "replay", cut, 0
        try:
            return model(x)
        finally:
            self.mode = "off"

    def dirty(self) -> bool:
        return any(t._version != v for (_, t), v in zip(self.entries, self.versions, strict=True))

    def first_call(self, names: set[str]) -> int:
        return next((i for i, (n, _) in enumerate(self.entries) if n in names), 0)


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
    model (sparsity, bits), or a separate model with channels removed (keep_ratio)."""

    def __init__(self, key: tuple[str, str, float], model: nn.Module, changed: set[str]) -> None:
        self.key, self.model, self.changed = key, model, changed
        self.order: torch.Tensor | None = None  # weight indices by magnitude (sparsity levels)
        self.quant: ActFakeQuant | None = None  # calibrated input quantiser (bits levels)

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        """The value ``CompressWeight`` gives this layer at this level (as ``apply_policy``)."""
        mask = torch.ones(w.numel(), dtype=torch.bool)
        if self.key[1] == "sparsity":
            mask[self.order[: int(round(self.key[2] * w.numel()))]] = False
        bits = int(self.key[2]) if self.key[1] == "bits" else 32
        return CompressWeight(mask.view_as(w), bits)(w)

    def run(self, trace: _Trace, x: torch.Tensor, use_replay: bool) -> torch.Tensor:
        layer = (
            None if self.key[1] == "keep_ratio" else compressible_layers(self.model)[self.key[0]]
        )
        saved, hook = None, None
        if layer is not None:
            saved = layer.weight.data
            layer.weight.data = self._weight(saved)
            if self.quant is not None:
                q = self.quant
                hook = layer.register_forward_pre_hook(lambda m, a: (q(a[0]), *a[1:]))
        try:
            if use_replay:
                return trace.replay(self.model, x, trace.first_call(self.changed))
            return self.model(x)
        finally:
            if layer is not None:
                layer.weight.data = saved
                if hook is not None:
                    hook.remove()


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


def _record_structure(structure: dict, key, pruned: nn.Module) -> None:
    numel, outs, other = _weight_floats(pruned)
    structure["keep"].setdefault(key[0], {})[f"{key[2]:g}"] = {
        "numel": {n: v for n, v in numel.items() if v != structure["numel"][n]},
        "out_changed": [n for n, v in outs.items() if v != structure["out"][n]],
        "other_floats": other,
    }


def _chunks(model: nn.Module, keep_todo: list) -> list[list]:
    """Channel-removal levels in groups whose models fit the memory budget together."""
    per_model = sum(p.numel() * p.element_size() for p in model.parameters())
    n = max(1, int(4 * _TRACE_BUDGET // max(per_model, 1)))
    return [keep_todo[i : i + n] for i in range(0, len(keep_todo), n)] or [[]]


def _measure(model, todo, data, *, importance, round_to, structure, log):
    """Scores of all levels: batch by batch, the baseline pass is recorded once and each level
    replays it up to the first module it changes."""
    work = copy.deepcopy(model).eval()
    weight_variants = _weight_variants(work, [t for t in todo if t[1] != "keep_ratio"], data)
    scores = {t: _Scores() for t in todo}
    base = _Scores()
    trace = _Trace()
    trace.wrap(work)
    try:
        try:
            with torch.no_grad():
                trace.record(work, data.x[:2])
            per_image = sum(t.numel() * t.element_size() for _, t in trace.entries) / 2
            bs, use_replay = int(min(500, max(16, _TRACE_BUDGET // max(per_image, 1)))), True
        except TypeError:
            bs, use_replay = 250, False
        for c, chunk in enumerate(_chunks(model, [t for t in todo if t[1] == "keep_ratio"])):
            variants = weight_variants if c == 0 else []
            for key in chunk:
                v = _keep_variant(model, key, data, importance, round_to)
                _record_structure(structure, key, v.model)
                trace.wrap(v.model)
                variants.append(v)
            with torch.no_grad():
                for i in range(0, len(data.x), bs):
                    x, y = data.x[i : i + bs], data.y[i : i + bs]
                    logits = trace.record(work, x) if use_replay else work(x)
                    if c == 0:
                        base.add(logits, y)
                    if use_replay and i == 0 and variants:
                        check = trace.replay(work, x, len(trace.entries) - 1)
                        if not torch.allclose(check, logits, atol=1e-5, rtol=1e-4):
                            log("sensitivity: module replay disagrees with the model: full passes")
                            use_replay = False
                    for v in variants:
                        out = v.run(trace, x, use_replay)
                        if use_replay and trace.dirty():
                            trace.copy = True
                            trace.record(work, x)
                        scores[v.key].add(out, y)
    finally:
        trace.unwrap()
    return {t: s.result() for t, s in scores.items()}, base.result()


def _interpolate(rows: list[LevelResult], all_levels: list[tuple[str, str, float]]) -> list:
    """Fill levels that were not measured by linear interpolation in the level's value between
    the measured neighbours (the identity, at zero, below the gentlest)."""
    got = {(r.layer, r.dim, r.value): r for r in rows}
    out = []
    for name, dim, value in all_levels:
        if (name, dim, value) in got:
            out.append(got[(name, dim, value)])
            continue
        pts = sorted(
            [(abs(v - IDENTITY[dim]), r) for (n, d, v), r in got.items() if n == name and d == dim],
            key=lambda p: p[0],
        )
        pos = abs(value - IDENTITY[dim])
        lo = max((p for p in pts if p[0] < pos), default=None, key=lambda p: p[0])
        hi = min((p for p in pts if p[0] > pos), default=None, key=lambda p: p[0])
        vals = []
        for attr in ("acc_drop", "loss_increase"):
            a = (0.0, 0.0) if lo is None else (lo[0], getattr(lo[1], attr))
            b = (hi[0], getattr(hi[1], attr)) if hi is not None else a
            t = 0.0 if b[0] == a[0] else (pos - a[0]) / (b[0] - a[0])
            va, vb = (math.nan if v is None else v for v in (a[1], b[1]))
            vals.append(va + t * (vb - va))
        out.append(LevelResult(name, dim, value, vals[0], vals[1], measured=False))
    return out


def run_sweep(
    model: nn.Module,
    space: SearchSpace,
    data: SweepData,
    *,
    importance: str = "l1",
    round_to: int = 1,
    max_points: int | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[LevelResult], dict, tuple[float, float]]:
    """Measure every level of ``space`` on ``data``; returns the rows (in ``levels_of`` order),
    the structure record of the channel-removal levels and the baseline (accuracy, loss)."""
    model = model.eval()
    all_levels = levels_of(space)
    todo = []
    for name, dim in dict.fromkeys((n, d) for n, d, _ in all_levels):
        vals = [v for n, d, v in all_levels if n == name and d == dim]
        chosen = _points(vals, max_points)
        todo += [(name, dim, v) for v in vals if v in chosen]
    structure = model_structure(model)
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
        structure=structure,
        log=log,
    )
    rows = []
    for key, (acc, loss) in scores.items():
        drop = 100.0 * (base_acc - acc)
        rows.append(LevelResult(*key, acc_drop=drop, loss_increase=loss - base_loss))
        if not math.isfinite(loss):
            rows[-1] = LevelResult(*key, acc_drop=drop, loss_increase=None)
    return _interpolate(rows, all_levels), structure, (base_acc, base_loss)
