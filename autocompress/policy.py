"""The compression policy: per layer, how much to prune and at how many bits to store weights.

One immutable value that every stage passes on: the search samples it, the compressor applies
it, MLflow stores it (``policy.json``), export materialises it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from .errors import ModelError

__all__ = ["CompressionPolicy", "LayerPolicy", "FLOAT_BITS", "compressible_layers"]

FLOAT_BITS = 32
_COMPRESSIBLE = (nn.Conv2d, nn.Linear)


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers a policy may address (Conv2d and Linear), in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _COMPRESSIBLE)}


@dataclass(frozen=True)
class LayerPolicy:
    """What to do with one layer.

    ``sparsity``: fraction of weights zeroed by magnitude (unstructured), in [0, 1).
    ``bits``: weight bit-width, 2..8 (symmetric per-channel integer) or 32 (float).
    ``keep_ratio``: fraction of output channels kept by structured pruning (1.0 = none removed).
    """

    sparsity: float = 0.0
    bits: int = FLOAT_BITS
    keep_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.bits != FLOAT_BITS and not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be 2..8 or 32, got {self.bits}")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")

    @property
    def quantized(self) -> bool:
        return self.bits != FLOAT_BITS

    @property
    def is_identity(self) -> bool:
        return self.sparsity == 0.0 and not self.quantized and self.keep_ratio == 1.0


@dataclass(frozen=True)
class CompressionPolicy(Mapping[str, LayerPolicy]):
    """Per-layer decisions keyed by module name; layers not named stay untouched."""

    layers: Mapping[str, LayerPolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))

    # Mapping protocol -------------------------------------------------------------------
    def __getitem__(self, name: str) -> LayerPolicy:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.layers.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompressionPolicy) and dict(self.layers) == dict(other.layers)

    # (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "layers": {n: asdict(p) for n, p in self.layers.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionPolicy:
        layers = data.get("layers", data)
        try:
            return cls({n: LayerPolicy(**dict(p)) for n, p in layers.items()})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid compression policy: {exc}") from None

    # checks and summaries ---------------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """Raise ModelError if a named layer is missing or is not compressible."""
        layers = compressible_layers(model)
        unknown = [n for n in self.layers if n not in layers]
        if unknown:
            sample = ", ".join(list(layers)[:6])
            raise ModelError(
                f"policy names unknown layer(s) {', '.join(unknown)}; "
                f"compressible layers are e.g. {sample}"
            )

    def summary(self) -> str:
        """A short human summary, e.g. ``5 layers, sparsity 0.62 mean, bits 2-8``."""
        if not self.layers:
            return "no compression"
        sp = [p.sparsity for p in self.layers.values()]
        bits = sorted({p.bits for p in self.layers.values()})
        bit_txt = "/".join("fp32" if b == FLOAT_BITS else str(b) for b in bits)
        return f"{len(sp)} layers, mean sparsity {sum(sp) / len(sp):.2f}, bits {bit_txt}"
