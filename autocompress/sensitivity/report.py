"""Files of the sensitivity stage (CSV table, JSON table, PNG heat map, shaping summary); every
artifact name contains ``sensitivity``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .table import SensitivityTable

_TITLE = {
    "drop": "accuracy drop (points)",
    "loss": "loss increase (nats)",
    "estimate": "estimated loss increase",
}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    return obj


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(data), indent=2, default=str))
    return path


def write_table(table: SensitivityTable, out_dir: Path) -> list[Path]:
    """``sensitivity.csv`` (one row per layer level) and ``sensitivity_table.json`` (the whole
    table, what ``autocompress report`` reads)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "sensitivity.csv"
    csv_path.write_text(table.to_csv())
    return [csv_path, write_json(out_dir / "sensitivity_table.json", table.to_dict())]


def _metric(table: SensitivityTable) -> str:
    return "drop" if table.has("drop") else "loss" if table.has("loss") else "estimate"


def heatmap_png(table: SensitivityTable, path: Path, *, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = _metric(table)
    layers, cols, z = table.matrix(metric)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(cols) + 3), max(3, 0.35 * len(layers) + 2)))
    cmap = matplotlib.colormaps["Reds"].with_extremes(bad="#e8e8e8")
    im = ax.imshow(np.ma.masked_invalid(z), cmap=cmap, aspect="auto", vmin=0)
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    if len(layers) * len(cols) <= 900:
        top = np.nanmax(z) if np.isfinite(z).any() else 1.0
        for i in range(len(layers)):
            for j in range(len(cols)):
                if np.isfinite(z[i, j]):
                    colour = "white" if z[i, j] > 0.6 * top else "black"
                    ax.text(j, i, f"{z[i, j]:.1f}", ha="center", va="center", fontsize=6, c=colour)
    fig.colorbar(im, ax=ax, label=_TITLE[metric])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
