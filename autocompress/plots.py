"""Figures of a search, its trials and its exports: plotly (interactive ``.html``) and matplotlib
(``.png``, drawn on a pyplot-free ``Figure`` so it is cheap and thread-safe).

Plot data comes in as plain rows, dicts and lists, computed elsewhere; this module only renders.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_AXES = [("latency_ms", "latency (ms)"), ("size_kb", "size (KB)")]
_FLOAT_BITS = 32
_GREY, _RED, _BLUE, _GREEN = "#b0b0b0", "#d62728", "#1f77b4", "#2ca02c"


def _panels(rows: Sequence[dict]) -> list[tuple[str, str]]:
    return [(k, label) for k, label in _AXES if rows and rows[0].get(k) is not None]


def _figure(width: float, height: float, dpi: int = 100):
    """A matplotlib Figure with an Agg canvas, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, *, tight: bool = False) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=fig.dpi)
    return Path(path)


# -- policies --------------------------------------------------------------------------------
def policy_layers(policy: Mapping[str, Any]) -> list[dict]:
    """``{"layers": {name: {sparsity, bits, keep_ratio}}}`` (or the bare layer mapping) as one
    row per layer, in policy order."""
    layers = policy.get("layers", policy) if isinstance(policy, Mapping) else {}
    return [
        {
            "layer": name,
            "sparsity": float(lp.get("sparsity", 0.0)),
            "bits": int(lp.get("bits", _FLOAT_BITS)),
            "keep_ratio": float(lp.get("keep_ratio", 1.0)),
        }
        for name, lp in layers.items()
        if isinstance(lp, Mapping)
    ]


def _bits_text(bits: int) -> str:
    return "fp32" if bits == _FLOAT_BITS else f"{bits}b"


def policy_lines(policy: Mapping[str, Any] | None) -> list[str]:
    """Compact per-layer lines, e.g. ``features.0: sparsity 0.25, 6b, keep 1.00``."""
    return [
        f"{r['layer']}: sparsity {r['sparsity']:.2f}, {_bits_text(r['bits'])}"
        + (f", keep {r['keep_ratio']:.2f}" if r["keep_ratio"] < 1.0 else "")
        for r in policy_layers(policy or {})
    ]


def policy_png(policy: Mapping[str, Any], path: Path, *, title: str) -> Path:
    """Per-layer bars: sparsity and kept channels (0-1) on top, weight bits below."""
    rows = policy_layers(policy)
    n = max(len(rows), 1)
    width = min(max(5.0, 0.6 * n + 2.0), 16.0)
    fig = _figure(width, 4.2, dpi=96)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    x = list(range(len(rows)))
    for shift, key, colour in ((-0.2, "sparsity", _RED), (0.2, "keep_ratio", _BLUE)):
        label = key.replace("_", " ")
        top.bar([i + shift for i in x], [r[key] for r in rows], 0.4, color=colour, label=label)
    top.set(ylim=(0, 1.05), ylabel="fraction")
    top.legend(loc="upper left", fontsize=7, ncol=2, frameon=False, bbox_to_anchor=(0, 1.18))
    top.grid(axis="y", alpha=0.3)
    # 32-bit (float) layers are drawn as a full bar labelled fp32
    heights = [9.0 if r["bits"] == _FLOAT_BITS else r["bits"] for r in rows]
    colours = [_GREY if r["bits"] == _FLOAT_BITS else _GREEN for r in rows]
    bars = bottom.bar(x, heights, 0.6, color=colours)
    bottom.bar_label(bars, [_bits_text(r["bits"]) for r in rows], fontsize=7)
    bottom.set(ylim=(0, 11), yticks=[2, 4, 6, 8], ylabel="weight bits")
    bottom.set_xticks(x, [r["layer"] for r in rows], rotation=30, ha="right", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(
        left=0.7 / width, right=1 - 0.15 / width, top=0.84, bottom=0.25, hspace=0.15
    )
    return _save(fig, path)


def policy_table_html(policy: Mapping[str, Any]) -> str:
    """The per-layer policy as an HTML table with inline bars (no script, no external file)."""
    out = ["<table><tr><th>layer</th><th>sparsity</th><th>keep ratio</th><th>weight bits</th></tr>"]
    for r in policy_layers(policy):
        sp, kr = r["sparsity"], r["keep_ratio"]
        out.append(
            f"<tr><td>{html.escape(r['layer'])}</td>"
            f'<td class="num"><span class="bar" style="width:{60 * sp:.0f}px;'
            f'background:{_RED}"></span>{sp:.2f}</td>'
            f'<td class="num"><span class="bar" style="width:{60 * kr:.0f}px;'
            f'background:{_BLUE}"></span>{kr:.2f}</td>'
            f'<td class="num">{_bits_text(r["bits"])}</td></tr>'
        )
    out.append("</table>")
    return "".join(out)


# -- the Pareto front ------------------------------------------------------------------------
def _hover(r: dict) -> str:
    lines = [f"<b>trial {r['trial']}</b>" + ("  (Pareto)" if r.get("pareto") else "")]
    if r.get("compression_ratio"):
        lines.append(f"compression {r['compression_ratio']:.1f}x")
    if r.get("summary"):
        lines.append(html.escape(r["summary"]))
    lines += [html.escape(s) for s in policy_lines(r.get("policy"))[:12]]
    return "<br>".join(lines)


def pareto_html(rows: Sequence[dict], path: Path, *, title: str) -> Path:
    """Accuracy against each cost objective; front points highlighted; hover shows the trial
    number, its compression ratio, its policy summary and the per-layer policy."""
    from plotly.subplots import make_subplots

    panels = _panels(rows)
    fig = make_subplots(rows=1, cols=max(len(panels), 1), subplot_titles=[p[1] for p in panels])
    for col, (key, label) in enumerate(panels, start=1):
        for on_front, colour, name in ((False, _GREY, "trial"), (True, _RED, "Pareto")):
            pts = [r for r in rows if bool(r.get("pareto")) == on_front]
            fig.add_scatter(
                x=[r[key] for r in pts],
                y=[r["val_accuracy"] for r in pts],
                mode="markers",
                name=name,
                legendgroup=name,
                showlegend=col == 1,
                marker={"color": colour, "size": 10 if on_front else 7},
                text=[_hover(r) for r in pts],
                hovertemplate="%{text}<br>accuracy %{y:.4f}<br>"
                + label
                + " %{x:.3f}<extra></extra>",
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=label, row=1, col=col)
        fig.update_yaxes(title_text="validation accuracy", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", height=480, hovermode="closest")
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return Path(path)


def pareto_png(rows: Sequence[dict], path: Path, *, title: str) -> Path:
    """The same panels as ``pareto_html``, with the front's trial numbers written next to it."""
    panels = _panels(rows)
    n = max(len(panels), 1)
    fig = _figure(6 * n, 4.5, dpi=120)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (key, label) in zip(axes, panels, strict=False):
        rest = [r for r in rows if not r.get("pareto")]
        front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r[key])
        for pts, colour, size, name in ((rest, _GREY, 18, "trial"), (front, _RED, 36, "Pareto")):
            x, y = [r[key] for r in pts], [r["val_accuracy"] for r in pts]
            ax.scatter(x, y, c=colour, s=size, label=name)
        for r in front:
            ax.annotate(
                str(r["trial"]),
                (r[key], r["val_accuracy"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set(xlabel=label, ylabel="validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(title)
    return _save(fig, path, tight=True)


# -- search progress, sensitivity, export -------------------------------------------------------
def hypervolume_png(history: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path:
    """Hypervolume of the front after each complete trial (``{"trial", "hypervolume",
    "front_size"}`` rows, in trial order); the front size on a second axis."""
    fig = _figure(6.5, 3.6, dpi=100)
    ax = fig.subplots()
    x = [h["trial"] for h in history]
    ax.step(
        x, [h["hypervolume"] for h in history], where="post", color=_BLUE, lw=2, marker="o", ms=3
    )
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume (normalised)", color=_BLUE)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.step(x, [h["front_size"] for h in history], where="post", color=_GREY, lw=1)
    ax2.set_ylabel("points on the front", color="#707070")
    ax2.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, tight=True)


def latency_png(
    *, predicted_ms: float, measured_ms: float, baseline_ms: float | None, path: Path, title: str
) -> Path:
    """Predicted against measured latency of an exported model, next to the baseline."""
    names = ["predicted", "measured"] + (["baseline (FP32)"] if baseline_ms else [])
    vals = [predicted_ms, measured_ms] + ([baseline_ms] if baseline_ms else [])
    fig = _figure(5.0, 3.2, dpi=100)
    ax = fig.subplots()
    bars = ax.barh(names, vals, color=[_BLUE, _RED, _GREY][: len(vals)])
    ax.bar_label(bars, [f"{v:.4f} ms" for v in vals], padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, max(vals) * 1.35 if max(vals) > 0 else 1), xlabel="latency (ms)")
    if measured_ms > 0:
        title = f"{title}\npredicted / measured = {predicted_ms / measured_ms:.2f}"
    ax.set_title(title, fontsize=9)
    return _save(fig, path, tight=True)


def throughput_png(forms: Mapping[str, Mapping[str, Any]], path: Path, *, title: str) -> Path:
    """Images/s against batch size, one line per ONNX form and thread count (export's
    ``forms``: ``{form: {"throughput": [{batch, threads, ms, images_per_s}], "deployed"}}``)."""
    fig = _figure(6.0, 3.6, dpi=100)
    ax = fig.subplots()
    for name, m in forms.items():
        for t in sorted({p["threads"] for p in m["throughput"]}):
            pts = sorted(
                (p["batch"], p["images_per_s"]) for p in m["throughput"] if p["threads"] == t
            )
            style = "-" if t > 1 else "--"
            label = f"{name}{' (deployed)' if m.get('deployed') else ''}, {t} thr"
            ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size", ylabel="images / s")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=9)
    return _save(fig, path, tight=True)


def activations_png(stats: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path:
    """Per layer: output standard deviation before and after compression, and the share of
    its input the activation quantiser clips (the 1 % flag as a line)."""
    names = [s["layer"] for s in stats]
    y = range(len(names))
    fig = _figure(8.0, 0.28 * len(names) + 1.4, dpi=100)
    left, right = fig.subplots(1, 2, sharey=True)
    for shift, when, colour in ((-0.2, "before", _GREY), (0.2, "after", _BLUE)):
        left.barh(
            [i + shift for i in y], [s[f"{when}_std"] for s in stats], 0.4, color=colour, label=when
        )
    left.set_yticks(list(y), names, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("output std")
    left.legend(fontsize=7)
    clipped = [100 * (s["clipped"] or 0.0) for s in stats]
    colours = [_RED if s["flagged"] else _GREEN for s in stats]
    right.barh(list(y), clipped, color=colours)
    right.axvline(1.0, color=_RED, lw=0.8, ls="--")
    right.set_xlabel("input clipped by the activation quantiser (%)")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, tight=True)
