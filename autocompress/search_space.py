"""Per-layer search spaces: YAML rules that select layers (exact name, glob or module type) and
give each the sparsity and bit-width choices the search may pick from.

```yaml
layers:
  - name: "features.*"          # exact name or glob ...
    sparsity: [0.0, 0.5, 0.75, 0.9]
    bits: [2, 4, 8, 32]
  - type: Linear                 # ... or a module type
    sparsity: {low: 0.0, high: 0.9, step: 0.1}
    bits: [8, 32]
    keep_ratio: [1.0, 0.75, 0.5] # structured: fraction of output channels kept (real removal)
    threshold: [0.0, 0.01]       # also zero weights with |w| < threshold
    quantizer: [uniform, kmeans] # integer grid, 2**bits shared weights (k-means), or yours
    scheme: [symmetric]          # or asymmetric (min/max with a zero point)
    granularity: [per_channel]   # or per_tensor
exclude: ["features.0"]          # never compressed
scope: layer                     # or global: one magnitude ranking across the pruned layers
```
The first rule that matches a layer decides its choices; unmatched layers stay untouched.
``bits`` choices are 2..8 (integer), 16 (FP16 storage) or 32.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from .compression.structured import prunable_layers, prune_channels
from .config import read_yaml, validation_message
from .errors import ConfigError
from .policy import FLOAT_BITS, CompressionPolicy, LayerPolicy, compressible_layers


class _Range(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: float = Field(ge=0.0, lt=1.0)
    high: float = Field(ge=0.0, lt=1.0)
    step: float = Field(gt=0.0)

    def values(self) -> list[float]:
        n = int(round((self.high - self.low) / self.step))
        return [round(self.low + i * self.step, 6) for i in range(n + 1)]


_OPTION_DIMS = ("quantizer", "scheme", "granularity")
_DIMS = ("sparsity", "bits", "keep_ratio", "threshold", *_OPTION_DIMS)


class LayerRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="exact layer name or glob")
    type: str | None = Field(None, description="module class name, e.g. Conv2d")
    sparsity: list[float] | _Range = Field(default_factory=lambda: [0.0])
    bits: list[int] = Field(default_factory=lambda: [FLOAT_BITS])
    keep_ratio: list[float] = Field(default_factory=lambda: [1.0])
    threshold: list[float] = Field(default_factory=lambda: [0.0])
    quantizer: list[str] = Field(default_factory=lambda: ["uniform"])  # registered names
    scheme: list[Literal["symmetric", "asymmetric"]] = Field(default_factory=lambda: ["symmetric"])
    granularity: list[Literal["per_channel", "per_tensor"]] = Field(
        default_factory=lambda: ["per_channel"]
    )

    @model_validator(mode="after")
    def _one_selector(self) -> LayerRule:
        if (self.name is None) == (self.type is None):
            raise ValueError("give exactly one of 'name' (exact or glob) or 'type'")
        return self

    @field_validator(*_DIMS)
    @classmethod
    def _choices(cls, v: list | _Range, info) -> list | _Range:
        """Each choice must be a value a LayerPolicy takes (its range checks and messages)."""
        vals = v.values() if isinstance(v, _Range) else v
        if not vals:
            raise ValueError("give at least one choice")
        for x in vals:
            LayerPolicy(**{info.field_name: x})
        return vals  # (a range as its values)

    @property
    def label(self) -> str:
        return f"name {self.name!r}" if self.name is not None else f"type {self.type!r}"

    def matches(self, name: str, module: nn.Module) -> bool:
        if self.type is not None:
            return type(module).__name__ == self.type
        return name == self.name or fnmatch.fnmatchcase(name, self.name)


class SearchSpaceSpec(BaseModel):
    """The YAML file as written, before it is resolved against a model."""

    model_config = ConfigDict(extra="forbid")
    layers: list[LayerRule] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)
    scope: Literal["layer", "global"] = "layer"
    source: Path | None = Field(None, exclude=True)

    def resolve(self, model: nn.Module, example=None) -> SearchSpace:
        """Match rules to the model's compressible layers; a rule matching nothing is an error.

        With an ``example`` input, layers whose output channels cannot be removed (the model's
        outputs, parts Torch-Pruning cannot trace: ``prunable_layers``) keep ``keep_ratio``
        1.0 (listed in ``SearchSpace.unprunable``), and the harshest channel removal left is
        tried once on a copy, so a model it cannot handle fails here and not in a trial."""
        layers = compressible_layers(model)
        where = f"{self.source}: " if self.source else ""
        choices: dict[str, LayerChoices] = {}
        for i, rule in enumerate(self.layers):
            hits = [n for n, m in layers.items() if rule.matches(n, m)]
            if not hits:
                sample = ", ".join(f"{n} ({type(m).__name__})" for n, m in list(layers.items())[:5])
                raise ConfigError(
                    f"{where}layers.{i}: {rule.label} matches no Conv2d/Linear layer of the model; "
                    f"layers are e.g. {sample}"
                )
            for n in hits:
                if n not in choices and not any(fnmatch.fnmatchcase(n, p) for p in self.exclude):
                    choices[n] = LayerChoices(
                        tuple(sorted({float(s) for s in rule.sparsity})),
                        tuple(sorted(set(rule.bits))),
                        tuple(sorted(set(rule.keep_ratio), reverse=True)),
                        tuple(sorted(set(rule.threshold))),
                        *(tuple(dict.fromkeys(getattr(rule, k))) for k in _OPTION_DIMS),
                    )
        ordered = {n: choices[n] for n in layers if n in choices}
        if not ordered:
            raise ConfigError(f"{where}every matched layer is excluded: nothing to search")
        space = SearchSpace(ordered, self.scope)
        if example is not None and any(min(c.keep_ratio) < 1.0 for c in ordered.values()):
            space = _check_channel_removal(space, model, example, where)
        return space


@dataclass(frozen=True)
class LayerChoices:
    sparsity: tuple[float, ...]
    bits: tuple[int, ...]
    keep_ratio: tuple[float, ...] = (1.0,)
    threshold: tuple[float, ...] = (0.0,)
    quantizer: tuple[str, ...] = ("uniform",)
    scheme: tuple[str, ...] = ("symmetric",)
    granularity: tuple[str, ...] = ("per_channel",)

    @property
    def size(self) -> int:
        return math.prod(len(opts) for opts in self.options().values())

    def options(self) -> dict[str, tuple]:
        """The searched dimensions of this layer (sparsity and bits always; the others only
        when they offer a choice)."""
        out: dict[str, tuple] = {"sparsity": self.sparsity, "bits": self.bits}
        for dim in ("keep_ratio", "threshold", *_OPTION_DIMS):
            if len(getattr(self, dim)) > 1:
                out[dim] = getattr(self, dim)
        return out


@dataclass(frozen=True)
class SearchSpace:
    """Resolved choices per layer name, in module order."""

    layers: dict[str, LayerChoices]
    scope: str = "layer"
    unprunable: tuple[str, ...] = ()  # asked for keep_ratio < 1, cannot lose channels: kept 1.0

    def __len__(self) -> int:
        return len(self.layers)

    @classmethod
    def from_rules(
        cls,
        model: nn.Module,
        rules: list[dict],
        *,
        exclude: list[str] | tuple[str, ...] = (),
        scope: str = "layer",
        example=None,
    ) -> SearchSpace:
        """The space of ``rules`` (the YAML file's ``layers`` list, as dicts) on ``model``.
        ``scope``: ``layer`` (each layer's sparsity is its own) or ``global`` (the policy's
        pruned-weight count is kept, one magnitude ranking across its layers decides which go).
        With an ``example`` input, channel removal is offered only where the model allows it
        (:meth:`SearchSpaceSpec.resolve`)."""
        try:
            spec = SearchSpaceSpec.model_validate(
                {"layers": rules, "exclude": list(exclude), "scope": scope}
            )
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, "rules", SearchSpaceSpec)) from None
        spec.source = Path("rules")  # (errors name the caller's argument)
        return spec.resolve(model, example)

    @property
    def cardinality(self) -> int:
        return math.prod(c.size for c in self.layers.values())

    def choices(self) -> dict[str, tuple]:
        """Every searched parameter (``<layer>.<dimension>``) and its choices, in order."""
        return {
            f"{layer}.{dim}": opts
            for layer, ch in self.layers.items()
            for dim, opts in ch.options().items()
        }

    def policy_from_params(self, params: dict) -> CompressionPolicy:
        """Rebuild the policy from Optuna trial params (missing ones take their first choice)."""
        out = {}
        for name, ch in self.layers.items():
            values = {f: params.get(f"{name}.{f}", getattr(ch, f)[0]) for f in _FIELDS}
            out[name] = LayerPolicy(**{f: _FIELDS[f](v) for f, v in values.items()})
        return CompressionPolicy(out, scope=self.scope)

    def params_from_policy(self, policy: CompressionPolicy) -> dict:
        return {
            f"{layer}.{dim}": getattr(policy.layers.get(layer, LayerPolicy()), dim)
            for layer, ch in self.layers.items()
            for dim in ch.options()
        }

    def uniform_policy(
        self, sparsity: float, bits: int, keep_ratio: float | None = None
    ) -> CompressionPolicy:
        """Every layer at ``sparsity``, ``bits`` and ``keep_ratio`` (its nearest allowed choice,
        ties to the gentler one; no keep ratio: the largest): what a one-line config gives."""

        def near(opts, v, tie=1):
            return min(opts, key=lambda o: (abs(o - v), tie * o))

        params = {}
        for name, ch in self.layers.items():
            params[f"{name}.sparsity"] = near(ch.sparsity, sparsity)
            params[f"{name}.bits"] = near(ch.bits, bits)
            k = max(ch.keep_ratio) if keep_ratio is None else near(ch.keep_ratio, keep_ratio, -1)
            params[f"{name}.keep_ratio"] = k
        return self.policy_from_params(params)

    def extreme(self, *, aggressive: bool) -> dict:
        """Params of the least (or most) aggressive policy of the space."""
        out = {}
        for key, opts in self.choices().items():
            dim = key.rpartition(".")[2]
            if dim in _OPTION_DIMS:  # no order: the first listed choice either way
                out[key] = opts[0]
                continue
            fewer_is_harsher = dim in ("bits", "keep_ratio")
            out[key] = (min if fewer_is_harsher == aggressive else max)(opts)
        return out


def _check_channel_removal(space: SearchSpace, model: nn.Module, example, where: str):
    try:
        prunable = prunable_layers(model, example)
        wanted = [n for n, c in space.layers.items() if min(c.keep_ratio) < 1.0]
        fixed = tuple(n for n in wanted if n not in prunable)
        layers = {
            n: replace(c, keep_ratio=(1.0,)) if n in fixed else c for n, c in space.layers.items()
        }
        space = SearchSpace(layers, space.scope, fixed)
        harsh = space.policy_from_params(space.extreme(aggressive=True))
        prune_channels(copy.deepcopy(model), harsh, example)
    except Exception as exc:  # noqa: BLE001 - the user's model: say what failed
        raise ConfigError(
            f"{where}keep_ratio < 1 (channel removal) fails on this model "
            f"({type(exc).__name__}: {exc}); use keep_ratio: [1.0] for its layers"
        ) from None
    return space


_FIELDS = {f.name: type(f.default) for f in fields(LayerPolicy)}  # the type each value takes


def load_search_space(path: str | Path) -> SearchSpaceSpec:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'layers' list")
    try:
        spec = SearchSpaceSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, str(path), SearchSpaceSpec)) from None
    spec.source = Path(path)
    return spec
