"""Figures of a search: the Pareto front as interactive HTML (plotly) and PNG (matplotlib).

Plot data comes in as plain rows (dicts), computed elsewhere; this module only renders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["pareto_html", "pareto_png"]

_AXES = [("latency_ms", "latency (ms)"), ("size_kb", "size (KB)")]


def _panels(rows: Sequence[dict]) -> list[tuple[str, str]]:
    return [(k, label) for k, label in _AXES if rows and rows[0].get(k) is not None]


def pareto_html(rows: Sequence[dict], path: Path, *, title: str) -> Path:
    """Accuracy against each cost objective; front points highlighted; hover shows the trial
    number and its policy summary."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = _panels(rows)
    fig = make_subplots(rows=1, cols=max(len(panels), 1), subplot_titles=[p[1] for p in panels])
    for col, (key, label) in enumerate(panels, start=1):
        for on_front, colour, name in ((False, "#b0b0b0", "trial"), (True, "#d62728", "Pareto")):
            pts = [r for r in rows if bool(r.get("pareto")) == on_front]
            fig.add_trace(
                go.Scatter(
                    x=[r[key] for r in pts],
                    y=[r["val_accuracy"] for r in pts],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    marker={"color": colour, "size": 10 if on_front else 7},
                    text=[f"trial {r['trial']}<br>{r.get('summary', '')}" for r in pts],
                    hovertemplate="%{text}<br>accuracy %{y:.4f}<br>" + label + " %{x:.3f}",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=label, row=1, col=col)
        fig.update_yaxes(title_text="validation accuracy", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", height=480)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def pareto_png(rows: Sequence[dict], path: Path, *, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(rows)
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 4.5))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, (key, label) in zip(axes, panels, strict=False):
        rest = [r for r in rows if not r.get("pareto")]
        front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r[key])
        ax.scatter(
            [r[key] for r in rest],
            [r["val_accuracy"] for r in rest],
            c="#b0b0b0",
            s=18,
            label="trial",
        )
        ax.scatter(
            [r[key] for r in front],
            [r["val_accuracy"] for r in front],
            c="#d62728",
            s=36,
            label="Pareto",
        )
        for r in front:
            ax.annotate(
                str(r["trial"]),
                (r[key], r["val_accuracy"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
