"""Settings of the sensitivity stage: how the per-layer table is measured and how it shapes the
search space — the experiment config's ``sensitivity:`` section, one class for both
(:class:`autocompress.config.SensitivityConfig`); :func:`settings_for` reads that section of a
config (else the defaults).
"""

from __future__ import annotations

from typing import Any

from ..config import SensitivityConfig as SensitivitySettings

__all__ = ["SensitivitySettings", "settings_for"]


def settings_for(cfg: Any, overrides: dict[str, Any] | None = None) -> SensitivitySettings:
    """The experiment's sensitivity settings (``cfg.sensitivity`` when the config has that
    section, else the defaults), with ``overrides`` applied."""
    base = SensitivitySettings.from_mapping(getattr(cfg, "sensitivity", None))
    return base.with_(**overrides) if overrides else base
