"""A small inline-SVG scatter plot for the HTML report: no script, no external file, and a
native tooltip (``<title>``) on every point with the trial number and its policy."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

__all__ = ["nice_ticks", "scatter_svg"]

_W, _H = 470, 330
_ML, _MR, _MT, _MB = 62, 14, 14, 44


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _span(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.06 or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


def scatter_svg(
    points: Sequence[dict],
    *,
    x_label: str,
    y_label: str,
) -> str:
    """``points``: dicts with ``x``, ``y``, ``tooltip`` (plain text), ``kind`` (``trial``,
    ``front`` or ``picked``) and optional ``label`` (written next to the point)."""
    pts = [p for p in points if p.get("x") is not None and p.get("y") is not None]
    if not pts:
        return "<p><em>no data</em></p>"
    x0, x1 = _span([p["x"] for p in pts])
    y0, y1 = _span([p["y"] for p in pts])
    pw, ph = _W - _ML - _MR, _H - _MT - _MB

    def sx(v: float) -> float:
        return _ML + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return _MT + ph - (v - y0) / (y1 - y0) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" '
        f'height="{_H}" class="scatter" role="img" aria-label="{html.escape(y_label)} against '
        f'{html.escape(x_label)}">',
        f'<rect x="{_ML}" y="{_MT}" width="{pw}" height="{ph}" fill="#fff" stroke="#ccc"/>',
    ]
    for t in nice_ticks(x0, x1):
        x = sx(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{_MT}" x2="{x:.1f}" y2="{_MT + ph}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{_MT + ph + 14}" text-anchor="middle">{_fmt(t)}</text>'
        )
    for t in nice_ticks(y0, y1):
        y = sy(t)
        out.append(
            f'<line x1="{_ML}" y1="{y:.1f}" x2="{_ML + pw}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{_ML - 5}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
        )
    out.append(
        f'<text x="{_ML + pw / 2}" y="{_H - 8}" text-anchor="middle" class="axis">'
        f"{html.escape(x_label)}</text>"
        f'<text transform="translate(14 {_MT + ph / 2}) rotate(-90)" text-anchor="middle" '
        f'class="axis">{html.escape(y_label)}</text>'
    )
    order = {"trial": 0, "front": 1, "picked": 2}
    for p in sorted(pts, key=lambda p: order.get(p.get("kind", "trial"), 0)):
        kind = p.get("kind", "trial")
        x, y = sx(p["x"]), sy(p["y"])
        r, fill, stroke = {"trial": (4, "#b0b0b0", "none"), "front": (6, "#d62728", "#fff")}.get(
            kind, (7, "#d62728", "#000")
        )
        tip = html.escape(p.get("tooltip", ""))
        out.append(
            f'<g class="pt {kind}"><title>{tip}</title>'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="{2 if kind == "picked" else 1}"/></g>'
        )
        if p.get("label") is not None:
            out.append(
                f'<text x="{x + 7:.1f}" y="{y - 5:.1f}" class="lbl">{html.escape(str(p["label"]))}'
                "</text>"
            )
    out.append("</svg>")
    return "".join(out)
