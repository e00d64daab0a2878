"""Hardware target presets: YAML files shipped in ``autocompress/hardware/targets/``, or a
user's own preset file (``latency.target: my_npu.yaml``, relative to the experiment file).

A preset is ``measured`` (a latency table is profiled on this machine), ``analytic`` (a formula
for hardware the user may not have) or ``proxy`` (the MACs x bits placeholder).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._files import content_key
from ..errors import ConfigError

PRESET_DIR = Path(__file__).with_name("targets")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Credit(_Strict):
    """Which compression the target's kernels turn into speed."""

    unstructured_sparsity: bool = False
    sub_8bit: bool = False


_PASS_KEYS = ("passes", "span_seconds", "max_passes")


class Runtime(_Strict):
    """How one model is timed (see :func:`~autocompress.hardware.measure.measure_onnx_latency`)."""

    threads: int = Field(1, ge=1)
    warmup: int = Field(20, ge=0)
    repeats: int = Field(100, ge=1)
    rounds: int = Field(6, ge=1)
    tolerance: float = Field(0.02, gt=0)
    round_seconds: float = Field(0.05, gt=0)
    passes: int = Field(3, ge=1)
    span_seconds: float = Field(0.0, ge=0)
    max_passes: int = Field(10, ge=1)

    def timing(self) -> dict:
        """The keyword arguments of :func:`~autocompress.hardware.measure.measure_onnx_latency`."""
        return self.model_dump(exclude={"threads", *_PASS_KEYS})

    def pass_settings(self) -> dict:
        """How :func:`~autocompress.hardware.measure.measure_passes` repeats the timings."""
        return self.model_dump(include=set(_PASS_KEYS))


class ProfileSettings(_Strict):
    """The profiler's budget: configurations measured and the time to stop adding more."""

    runs: int = Field(20, ge=1)
    profile_every: int = Field(3, ge=1)
    min_configs: int = Field(40, ge=1)
    max_configs: int = Field(320, ge=1)
    max_seconds: float = Field(85.0, gt=0)
    ridge: float | None = Field(None, ge=0, description="None: chosen by cross-validation")


class MeasuredTarget(_Strict):
    name: str
    kind: Literal["measured"]
    description: str = ""
    runtime: Runtime = Field(default_factory=Runtime)
    profile: ProfileSettings = Field(default_factory=ProfileSettings)
    credit: Credit = Field(default_factory=Credit)

    def digest(self) -> str:
        """Hash of what changes measurements (not the profiling budget)."""
        return content_key({"threads": self.runtime.threads}, 12)


class Compute(_Strict):
    kind: Literal["bit_serial", "peak"]
    brick_bits: int = Field(2, ge=1)
    bricks: int = Field(1, ge=1)
    clock_hz: float = Field(1e9, gt=0)
    macs_per_s: dict[int, float] = Field(default_factory=dict)


class Precision(_Strict):
    act_bits: int = Field(8, ge=1, le=32)
    float_bits: int = Field(32, ge=1, le=32)


class Memory(_Strict):
    bandwidth_bytes_per_s: float = Field(gt=0)


class Overhead(_Strict):
    per_layer_us: float = Field(0.0, ge=0)
    per_inference_us: float = Field(0.0, ge=0)


class AnalyticTarget(_Strict):
    name: str
    kind: Literal["analytic"]
    description: str = ""
    compute: Compute
    precision: Precision = Field(default_factory=Precision)
    memory: Memory
    overhead: Overhead = Field(default_factory=Overhead)
    credit: Credit = Field(default_factory=lambda: Credit(sub_8bit=True))


class ProxyTarget(_Strict):
    name: str
    kind: Literal["proxy"]
    description: str = ""


Target = MeasuredTarget | AnalyticTarget | ProxyTarget
_KINDS = {"measured": MeasuredTarget, "analytic": AnalyticTarget, "proxy": ProxyTarget}


@cache
def _presets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.yaml"))}


def available_targets() -> tuple[str, ...]:
    """Names of the shipped presets (what ``latency.target`` may be besides a preset file)."""
    return tuple(_presets())


def is_target_file(name: str) -> bool:
    """Whether ``latency.target`` names a preset file rather than a shipped preset."""
    return name.endswith((".yaml", ".yml"))


def parse_target(raw: dict, source: str = "target") -> Target:
    """Validate a preset mapping; errors become one-line :class:`ConfigError`."""
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind not in _KINDS:
        raise ConfigError(f"{source}: 'kind' must be one of {', '.join(_KINDS)} (got {kind!r})")
    try:
        return _KINDS[kind].model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{source}: {key}: {err['msg']}") from None


@cache
def load_target(name: str) -> Target:
    """The shipped preset called ``name``, or the preset file at path ``name``."""
    if is_target_file(name):
        path = Path(name)
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError:
            raise ConfigError(f"latency.target: preset file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"latency.target: {path} is not valid YAML: {exc}") from None
        return parse_target(raw, f"latency.target {path}")
    presets = _presets()
    if name not in presets:
        raise ConfigError(f"unknown latency target {name!r}; allowed: {', '.join(presets)}")
    return parse_target(yaml.safe_load(presets[name].read_text()), str(presets[name]))
