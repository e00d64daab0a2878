"""Replaying a recorded forward pass: a level of the sensitivity sweep changes one layer, so
every module that runs before it produces what it produced for the baseline. The trace records
leaf-module outputs once per batch; a compressed variant returns them for its first ``cut`` leaf
calls instead of recomputing them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["ModuleTrace", "call_order"]


class ModuleTrace:
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

    def repair(self, model: nn.Module, x: torch.Tensor) -> None:
        """After a replayed pass: if an in-place op after the cut (a residual ``+=`` on a
        replayed output) edited the recording, record ``x`` afresh and copy from now on."""
        if self.dirty():
            self.copy = True
            self.record(model, x)


@torch.no_grad()
def call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the leaf modules in the order a forward pass calls them (repeats included)."""
    order: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, a, n=n: order.append(n))
        for n, m in model.named_modules()
        if next(m.children(), None) is None
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return order
