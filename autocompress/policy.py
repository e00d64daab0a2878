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

FLOAT_BITS = 32
HALF_BITS = 16
_COMPRESSIBLE = (nn.Conv2d, nn.Linear)


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers a policy may address (Conv2d and Linear), in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _COMPRESSIBLE)}


@dataclass(frozen=True)
class LayerPolicy:
    """What to do with one layer.

    ``sparsity``: fraction of weights zeroed by magnitude (unstructured), in [0, 1).
    ``threshold``: weights with ``|w| < threshold`` are zeroed too (0 = no threshold).
    ``bits``: weight bit-width: 2..8 (integer), 16 (FP16 storage) or 32 (float).
    ``keep_ratio``: fraction of output channels kept by structured pruning (1.0 = none removed).
    ``quantizer``: a registered weight quantiser (``compression.quantizers``): ``uniform``
    (integer grid) or ``kmeans`` (weight sharing: ``2**bits`` centroids per layer, Deep
    Compression) built in.
    ``scheme``: ``symmetric`` (zero point 0) or ``asymmetric`` (min/max with a zero point) and
    ``granularity``: ``per_channel`` or ``per_tensor`` scales, for ``uniform`` integer weights.
    """

    sparsity: float = 0.0
    bits: int = FLOAT_BITS
    keep_ratio: float = 1.0
    threshold: float = 0.0
    quantizer: str = "uniform"
    scheme: str = "symmetric"
    granularity: str = "per_channel"

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.bits not in (FLOAT_BITS, HALF_BITS) and not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be 2..8, 16 or 32, got {self.bits}")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if not self.threshold >= 0.0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}"
                )
        # One value per behaviour: options that do nothing at this bit-width take defaults.
        read = _QUANTIZER_OPTIONS[self.quantizer] if self.quantized else ()
        for key in _CHOICES:
            if key not in read and (key != "quantizer" or not self.quantized):
                object.__setattr__(self, key, _CHOICE_DEFAULTS[key])

    @property
    def quantized(self) -> bool:
        """Integer weights (2..8 bits, uniform or k-means): deployed as INT8, 8-bit inputs."""
        return self.bits <= 8

    @property
    def half(self) -> bool:
        return self.bits == HALF_BITS

    @property
    def is_identity(self) -> bool:
        return self == LayerPolicy()  # (options take their defaults at 32 bits)


# Values of the quantiser options; ``quantizer`` lists the registered weight quantisers
# (``compression.quantizers.register_quantizer``), each with the options it reads.
_QUANTIZER_OPTIONS: dict[str, tuple[str, ...]] = {}
_CHOICES: dict[str, list[str]] = {
    "quantizer": [],
    "scheme": ["symmetric", "asymmetric"],
    "granularity": ["per_channel", "per_tensor"],
}
_CHOICE_DEFAULTS = {"quantizer": "uniform", "scheme": "symmetric", "granularity": "per_channel"}


def _register_quantizer_name(name: str, options: tuple[str, ...]) -> None:
    """(For the quantiser registry.) Accept ``name`` as a quantizer, reading ``options``."""
    if name not in _QUANTIZER_OPTIONS:
        _CHOICES["quantizer"].append(name)
    _QUANTIZER_OPTIONS[name] = tuple(options)


_DEFAULTS = {name: f.default for name, f in LayerPolicy.__dataclass_fields__.items()}


@dataclass(frozen=True)
class CompressionPolicy(Mapping[str, LayerPolicy]):
    """Per-layer decisions keyed by module name; layers not named stay untouched.

    ``scope``: ``layer`` (each sparsity applies to its layer) or ``global`` (the policy's total
    of pruned weights is kept, one magnitude ranking across the pruned layers decides which go).
    """

    layers: Mapping[str, LayerPolicy] = field(default_factory=dict)
    scope: str = "layer"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope must be layer or global, got {self.scope!r}")

    # Mapping protocol -------------------------------------------------------------------
    def __getitem__(self, name: str) -> LayerPolicy:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __hash__(self) -> int:  # (__eq__: the dataclass's, on layers and scope)
        return hash((tuple(sorted(self.layers.items())), self.scope))

    # (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {"version": 1, "layers": {n: _layer_dict(p) for n, p in self.layers.items()}}
        if self.scope != "layer":
            out["scope"] = self.scope
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionPolicy:
        layers = data.get("layers", data)
        try:
            scope = data.get("scope", "layer") if "layers" in data else "layer"
            return cls({n: LayerPolicy(**dict(p)) for n, p in layers.items()}, scope=scope)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid compression policy: {exc}") from None

    # checks and summaries ---------------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """Raise ModelError if a named layer is missing or is not compressible."""
        layers = compressible_layers(model)
        if unknown := [n for n in self.layers if n not in layers]:
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
        bit_txt = "/".join({FLOAT_BITS: "fp32", HALF_BITS: "fp16"}.get(b, str(b)) for b in bits)
        return f"{len(sp)} layers, mean sparsity {sum(sp) / len(sp):.2f}, bits {bit_txt}"


def _layer_dict(lp: LayerPolicy) -> dict[str, Any]:
    """The layer's fields; the options added after version 1 only when not at their default,
    so a policy written before them reads and hashes as it did."""
    d = asdict(lp)
    return {k: v for k, v in d.items() if k in _V1_FIELDS or v != _DEFAULTS[k]}


_V1_FIELDS = ("sparsity", "bits", "keep_ratio")
