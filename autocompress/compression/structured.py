"""Structured pruning: real removal of output channels through Torch-Pruning's high-level
``BasePruner`` (its dependency graph keeps residual additions, depthwise and grouped
convolutions, BatchNorm, concatenations, channel shuffles and attention heads consistent).

A layer's ``keep_ratio`` decides how many of its output channels survive (``kept_channels``:
a multiple of ``round_to``). Layers coupled with each other (e.g. every conv that writes into
one residual stream) form one group, pruned as one: Torch-Pruning takes the ratio of the
group's first member that the policy names. The model's output layers are never pruned.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from ..errors import ModelError
from ..models import evaluating
from ..policy import CompressionPolicy, compressible_layers

IMPORTANCES = ("l1", "l2", "fpgm")


def _importance(name: str):
    import torch_pruning as tp

    imp = tp.importance
    make = {"l1": lambda: imp.GroupMagnitudeImportance(p=1), "fpgm": imp.FPGMImportance}
    make["l2"] = lambda: imp.GroupMagnitudeImportance(p=2)
    if name not in make:
        raise ValueError(f"unknown importance {name!r}; allowed: {', '.join(IMPORTANCES)}")
    return make[name]()


@torch.no_grad()
def output_layers(model: nn.Module, example: torch.Tensor, *, probe: bool = False) -> set[str]:
    """Names of the layers whose output is the model's output (their channels cannot go).
    ``probe`` (the whole model; sub-modules check their boundary layers by pruning anyway):
    also the layers as wide as the output whose pruning alone would change its shape."""
    outs: dict[str, torch.Tensor] = {}
    layers = compressible_layers(model)
    hooks = [
        m.register_forward_hook(lambda mod, a, o, n=n: outs.__setitem__(n, o))
        for n, m in layers.items()
    ]
    with evaluating(model, hooks):
        final = model(example)
    direct = {n for n, o in outs.items() if o is final}
    if not probe:
        return direct
    # Channels can also reach the output through pooling / flattening (SqueezeNet's classifier
    # conv): a layer as wide as the output is one if pruning it alone changes the output shape.
    # (channels are dim 1 of an image tensor, the last dim of a token sequence)
    ok = isinstance(final, torch.Tensor) and final.dim() >= 2
    widths = {final.shape[1], final.shape[-1]} if ok else set()
    maybe = {n for n, m in layers.items() if n not in direct and _out_channels(m) in widths}
    if maybe:
        with evaluating(model):
            direct |= _boundary_layers(model, (example,), maybe, _importance("l1"))
    return direct


def kept_channels(channels: int, keep_ratio: float, round_to: int) -> int:
    """Output channels a layer keeps at ``keep_ratio``: a multiple of ``round_to``, at least one."""
    keep = int(round(channels * keep_ratio / round_to)) * round_to
    return min(channels, max(round_to, keep, 1))


def _sync_attributes(model: nn.Module) -> None:
    """Width attributes that torchvision models read in ``forward`` and Torch-Pruning cannot
    know about (a ViT's ``hidden_dim``, a MultiheadAttention's ``head_dim``)."""
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            m.embed_dim = m.out_proj.out_features
            m.kdim = m.vdim = m.embed_dim
            m.head_dim = m.embed_dim // m.num_heads
        if hasattr(m, "hidden_dim") and hasattr(m, "conv_proj"):  # torchvision ViT
            m.hidden_dim = m.conv_proj.out_channels


def _out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _join(scope: str, child: str) -> str:
    return f"{scope}.{child}" if scope else child


def _within(layer: str, scope: str) -> bool:
    return not scope or layer == scope or layer.startswith(scope + ".")


def _children(scope: nn.Module, prefix: str = ""):
    """The sub-modules ``scope`` calls itself: its children, and the items of its ModuleLists
    and ModuleDicts (containers are never called)."""
    for n, c in scope.named_children():
        if isinstance(c, (nn.ModuleList, nn.ModuleDict)):
            yield from _children(c, f"{prefix}{n}.")
        else:
            yield f"{prefix}{n}", c


@torch.no_grad()
def _child_inputs(scope: nn.Module, args: tuple) -> dict[str, tuple | None]:
    """The positional inputs of each sub-module's first call (None: called with keyword
    arguments; absent: not called)."""
    seen: dict[str, tuple | None] = {}

    def hook(mod, a, kw, n):
        # (a copy of list arguments: DenseNet's blocks append to the list after the call)
        seen.setdefault(n, None if kw else tuple(list(v) if isinstance(v, list) else v for v in a))

    hooks = [
        c.register_forward_pre_hook(lambda m, a, kw, n=n: hook(m, a, kw, n), with_kwargs=True)
        for n, c in _children(scope)
    ]
    with evaluating(scope, hooks):  # (callers run the model in eval mode already)
        scope(*args)
    return seen


class _GroupTooLarge(Exception):
    pass


@contextlib.contextmanager
def _group_budget(limit: int):
    """Torch-Pruning's group search revisits nodes with ever longer index lists on some
    reshapes (window attention with relative position tables: MaxViT) and grows without bound.
    Stop a group once it holds ``limit`` channel indices (``_limit``): deterministic, so the
    same model always takes the same path."""
    from torch_pruning.dependency.group import Group

    original = Group.add_dep
    held: dict[int, int] = {}

    def add_dep(self, dep, idxs):
        held[id(self)] = held.get(id(self), 0) + len(idxs)
        if held[id(self)] > limit:
            raise _GroupTooLarge
        return original(self, dep, idxs)

    Group.add_dep = add_dep
    try:
        yield
    finally:
        Group.add_dep = original


def _limit(scope: nn.Module) -> int:
    """Channel indices a sound group of ``scope`` stays below: about one index list per
    module, none longer than the widest layer input, with a margin of 8 (ResNet-152's largest
    group holds 188k of its 4.2M; MaxViT's window attention passes 60M)."""
    widest = max(
        (m.in_channels if isinstance(m, nn.Conv2d) else m.in_features)
        for m in compressible_layers(scope).values()
    )
    return 8 * sum(1 for _ in scope.modules()) * widest


class _Scopes:
    """Where Torch-Pruning may work: the whole model when its dependency graph traces every
    layer, else sub-modules, recursively (a sub-module's own output channels are kept, so the
    rest of the model is untouched). Fails only on layers no traceable scope can prune."""

    def __init__(self, model: nn.Module, example: torch.Tensor, todo: set[str]):
        self.todo = todo
        self.units: list[tuple[str, nn.Module, tuple]] = []  # (name, module, inputs)
        self.unprunable: dict[str, str] = {}  # layer -> why
        self._traced: dict[str, str] = {}  # scope -> "" (traceable) or why not
        self._inputs: dict[str, dict] = {}  # scope -> its sub-modules' inputs
        self._split("", model, (example,), "")

    def inputs(self, name: str, scope: nn.Module, args: tuple) -> dict:
        if name not in self._inputs:
            self._inputs[name] = _child_inputs(scope, args)
        return self._inputs[name]

    def _why_not(self, name: str, scope: nn.Module, args: tuple) -> str:
        """ "" when Torch-Pruning traces ``scope`` and every layer inside it and inside its
        sub-modules; else why not."""
        if name in self._traced:
            return self._traced[name]
        import torch_pruning as tp

        why, graph = "", None
        try:
            graph = tp.DependencyGraph().build_dependency(scope, example_inputs=args)
        except Exception as exc:  # noqa: BLE001 - Torch-Pruning's tracer on the user's model
            why = f"Torch-Pruning cannot trace {name or 'the model'} ({type(exc).__name__}: {exc})"
        else:
            seen = {n for n, m in scope.named_modules() if m in graph.module2node}
            for n, m in scope.named_modules():
                parts = n.split(".")
                covered = any(".".join(parts[:i]) in seen for i in range(1, len(parts) + 1))
                if isinstance(m, (nn.Conv2d, nn.Linear)) and not covered:
                    why = (
                        f"{_join(name, n)} is not called as a module (its weight is used directly)"
                    )
                    break
        if not why:
            inputs = self.inputs(name, scope, args)
            for cname, child in _children(scope):
                if next(child.children(), None) is None or cname not in inputs:
                    continue
                if child in graph.module2node:  # one node for Torch-Pruning (attention)
                    continue
                full = _join(name, cname)
                if not any(_within(t, full) for t in self.todo):
                    continue
                if inputs[cname] is None:
                    why = f"{full} is called with keyword arguments"
                else:
                    why = self._why_not(full, child, inputs[cname])
                if why:
                    break
        if not why:  # the groups BasePruner will walk (output layers ignored, as there)
            kept = output_layers(scope, args[0], probe=not name) if len(args) == 1 else set()
            try:
                with _group_budget(_limit(scope)):
                    for _ in graph.get_all_groups(
                        ignored_layers=[scope.get_submodule(n) for n in kept],
                        root_module_types=(nn.Conv2d, nn.Linear),
                    ):
                        pass
            except _GroupTooLarge:
                why = f"Torch-Pruning's channel groups of {name or 'the model'} do not converge"
        self._traced[name] = why
        return why

    def _split(self, name: str, scope: nn.Module, args: tuple, parent_why: str) -> None:
        if not any(_within(t, name) for t in self.todo):
            return
        if next(scope.children(), None) is None:  # a layer alone: its output must stay
            self.unprunable[name] = parent_why
            return
        why = self._why_not(name, scope, args)
        if not why:
            self.units.append((name, scope, args))
            return
        inputs = self.inputs(name, scope, args)
        for cname, child in _children(scope):
            full = _join(name, cname)
            if inputs.get(cname) is not None:
                self._split(full, child, inputs[cname], why)
            else:
                for t in self.todo:
                    if _within(t, full):
                        self.unprunable[t] = f"{full} is not called with positional inputs"


def _shape(out) -> tuple:
    return tuple(out.shape) if isinstance(out, torch.Tensor) else ()


def _pruner(unit: nn.Module, args: tuple, ratios: dict, scorer, ignored: list):
    import torch_pruning as tp

    layers = set(compressible_layers(unit).values())
    # Attention heads keep their count; each head loses the same dimensions.
    heads = {m: m.num_heads for m in unit.modules() if isinstance(m, nn.MultiheadAttention)}
    return tp.pruner.BasePruner(
        unit,
        args[0] if len(args) == 1 else args,
        importance=scorer,
        pruning_ratio=0.0,
        pruning_ratio_dict={m: r for m, r in ratios.items() if m in layers},
        ignored_layers=ignored,
        num_heads=heads,
    )


def _boundary_layers(unit: nn.Module, args: tuple, todo: set[str], scorer) -> set[str]:
    """The layers of a sub-module whose channels reach its output (or that cannot be pruned
    inside it): pruning each alone, on a copy, must leave the sub-module's output shape as is."""
    with torch.no_grad():
        want = _shape(unit(*args))
    bad = set()
    for n in sorted(todo):
        trial = copy.deepcopy(unit)
        try:
            with _group_budget(_limit(trial)):
                _pruner(trial, args, {trial.get_submodule(n): 0.5}, scorer, []).step()
            with torch.no_grad():
                ok = _shape(trial(*args)) == want
        except Exception:  # noqa: BLE001 - a failed trial marks the layer, nothing else
            ok = False
        if not ok:
            bad.add(n)
    return bad


def _prune_unit(name: str, unit: nn.Module, args: tuple, ratios: dict, scorer, keep: set) -> None:
    layers = compressible_layers(unit)
    protected = output_layers(unit, args[0], probe=not name) if len(args) == 1 else set()
    ignored = [layers[n] for n in protected | keep]
    names = {m: _join(name, n) for n, m in layers.items()}
    root = name or "the model"
    try:
        with _group_budget(_limit(unit)):
            for group in _pruner(unit, args, ratios, scorer, ignored).step(interactive=True):
                root = names.get(group[0].dep.target.module, name or "the model")
                group.prune()
    except _GroupTooLarge:
        raise ModelError(
            f"cannot remove output channels in {root}: Torch-Pruning's channel groups there do "
            "not converge; use keep_ratio: [1.0]"
        ) from None
    except Exception as exc:  # noqa: BLE001 - say which layer, not an internal error
        raise ModelError(
            f"cannot remove output channels of {root} ({type(exc).__name__}: {exc}); "
            f"use keep_ratio: [1.0] for it"
        ) from None


def _plan(model: nn.Module, example: torch.Tensor, todo: set[str], scorer):
    """Scopes and, per scope, the layers kept whole; and the layers no scope can prune."""
    scopes = _Scopes(model, example, todo)
    plan = []
    for name, unit, args in scopes.units:
        local = {n[len(name) + 1 :] if name else n for n in todo if _within(n, name)}
        keep = _boundary_layers(unit, args, local, scorer) if name else set()
        for n in keep:
            scopes.unprunable[_join(name, n)] = (
                f"its channels leave {name}, and {scopes._traced['']}"
            )
        plan.append((name, unit, args, keep))
    return plan, scopes.unprunable


def prunable_layers(model: nn.Module, example: torch.Tensor, importance: str = "l1") -> set[str]:
    """The layers whose output channels ``prune_channels`` can remove (not the model's output
    layers, not layers that no traceable part of the model can prune)."""
    with evaluating(model):
        todo = set(compressible_layers(model)) - output_layers(model, example, probe=True)
        _, unprunable = _plan(model, example, todo, _importance(importance))
    return todo - set(unprunable)


def prune_channels(
    model: nn.Module,
    policy: CompressionPolicy,
    example: torch.Tensor,
    *,
    importance: str = "l1",
    round_to: int = 1,
) -> dict[str, int]:
    """Remove output channels in place as the policy's ``keep_ratio`` says.

    Returns the number of output channels each pruned layer lost. Raises ModelError naming the
    layer and why when a layer cannot lose channels: it is the model's output, or no part of
    the model around it can be traced by Torch-Pruning, or a group fails to prune.
    """
    todo = {n for n, lp in policy.items() if lp.keep_ratio < 1.0}
    if not todo:
        return {}
    layers = compressible_layers(model)
    with evaluating(model):
        protected = output_layers(model, example, probe=True)
        if bad := sorted(todo & protected):
            raise ModelError(
                f"cannot remove output channels of {', '.join(bad)}: it is the model output"
            )
        scorer = _importance(importance)
        plan, unprunable = _plan(model, example, todo, scorer)
        if unprunable:
            layer, why = sorted(unprunable.items())[0]
            raise ModelError(
                f"cannot remove output channels of {layer}: {why}; use keep_ratio: [1.0] for it"
            )
        before = {n: _out_channels(m) for n, m in layers.items()}
        ratios = {  # a ratio whose int() truncation lands exactly on kept_channels
            layers[n]: 1.0
            - (kept_channels(before[n], policy[n].keep_ratio, round_to) + 0.5) / before[n]
            for n in todo
        }
        for name, unit, args, keep in plan:
            _prune_unit(name, unit, args, ratios, scorer, keep)
        _sync_attributes(model)
    after = {n: _out_channels(m) for n, m in compressible_layers(model).items()}
    return {n: before[n] - after[n] for n in before if after.get(n, before[n]) < before[n]}
