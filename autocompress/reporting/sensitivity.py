"""Finding and reading a sensitivity analysis for the heat map (``when present``).

A sensitivity result is a table layers x settings -> change of validation accuracy. Accepted
JSON shapes (the first that fits wins):

- ``{"layers": {layer: {"sparsity": {"0.5": d, ...}, "bits": {"4": d, ...}}}}`` (nested),
- ``{layer: {"sparsity 0.5": d, "4 bits": d}}`` (flat, the keys are the column labels),
- ``{"rows": [{"layer": ..., "knob": "sparsity", "value": 0.5, "delta": d}, ...]}`` (records;
  ``delta_accuracy`` or ``accuracy_drop`` (sign flipped) also accepted).

Values are accuracy changes as fractions (``-0.02``) or points; they are shown in points. A
top-level ``"metric"`` other than ``"drop"`` (e.g. ``"loss"``, ``"estimate"``: the sensitivity
stage's score when accuracy drops were not measured) is kept for the colour-bar label.
Looked for, in order: ``output_dir/sensitivity/sensitivity.json`` (what the sensitivity stage
writes), the other ``output_dir/sensitivity/*.json``, ``output_dir/cache/sensitivity*.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SensitivityTable", "find_sensitivity", "sensitivity_table"]

_DELTA_KEYS = ("delta", "delta_accuracy", "accuracy_delta", "delta_acc")


@dataclass
class SensitivityTable:
    """Rows are layers, columns are settings (``sparsity 0.5``, ``4 bits``), cells accuracy
    change in points (None where a setting was not tried); ``source`` is the file read."""

    layers: list[str]
    columns: list[str]
    values: list[list[float | None]]
    source: Path | None = None
    metric: str | None = None

    @property
    def label(self) -> str:
        """What the cells are, for a colour bar."""
        if self.metric in (None, "drop", "accuracy"):
            return "accuracy change (points)"
        return f"sensitivity ({self.metric}, negated)"


def _label(knob: str, value: Any) -> str:
    knob = str(knob)
    if knob.startswith("bit"):
        return f"{value} bits"
    if knob == "keep_ratio":
        return f"keep {value}"
    return f"{knob} {value}"


def _cells(data: Any) -> dict[str, dict[str, float]] | None:
    """``{layer: {column label: delta}}`` from one of the accepted shapes, else None."""
    if isinstance(data, Mapping) and isinstance(data.get("rows"), list):
        cells: dict[str, dict[str, float]] = {}
        for rec in data["rows"]:
            if not isinstance(rec, Mapping) or "layer" not in rec:
                return None
            delta = next((rec[k] for k in _DELTA_KEYS if k in rec), None)
            if delta is None and "accuracy_drop" in rec:
                delta = -float(rec["accuracy_drop"])
            if delta is None:
                return None
            col = _label(rec.get("knob", "setting"), rec.get("value", ""))
            cells.setdefault(str(rec["layer"]), {})[col] = float(delta)
        return cells or None
    if not isinstance(data, Mapping):
        return None
    layers = data.get("layers", data)
    if not isinstance(layers, Mapping) or not layers:
        return None
    cells = {}
    for layer, knobs in layers.items():
        if not isinstance(knobs, Mapping):
            return None
        row: dict[str, float] = {}
        for knob, val in knobs.items():
            if isinstance(val, Mapping):
                for setting, delta in val.items():
                    if isinstance(delta, int | float):
                        row[_label(knob, setting)] = float(delta)
            elif isinstance(val, int | float):
                row[str(knob)] = float(val)
        if row:
            cells[str(layer)] = row
    return cells or None


def sensitivity_table(data: Any, source: Path | None = None) -> SensitivityTable | None:
    """Normalise a parsed sensitivity JSON into a table, or None if it fits no accepted shape."""
    cells = _cells(data)
    if not cells:
        return None
    columns: list[str] = []
    for row in cells.values():
        columns += [c for c in row if c not in columns]
    flat = [v for row in cells.values() for v in row.values()]
    scale = 100.0 if flat and max(abs(v) for v in flat) <= 1.0 else 1.0  # fractions -> points
    values = [[None if c not in row else row[c] * scale for c in columns] for row in cells.values()]
    metric = data.get("metric") if isinstance(data, Mapping) else None
    return SensitivityTable(list(cells), columns, values, source, metric)


def find_sensitivity(output_dir: Path) -> SensitivityTable | None:
    """The first readable sensitivity table under ``output_dir`` (see the module docstring)."""
    output_dir = Path(output_dir)
    folder = output_dir / "sensitivity"
    first = folder / "sensitivity.json"
    candidates = [first] + [p for p in sorted(folder.glob("*.json")) if p != first]
    candidates += sorted((output_dir / "cache").glob("sensitivity*.json"))
    for path in candidates:
        if not path.is_file():
            continue
        try:
            table = sensitivity_table(json.loads(path.read_text()), path)
        except (OSError, ValueError):
            continue
        if table is not None:
            return table
    return None
