"""Small inline SVG charts, with the standard library and numpy only (the plain install has no
plotting library): a run's report and a training's curves."""

from __future__ import annotations

import html

import numpy as np


def line_chart(series: dict[str, tuple[np.ndarray, np.ndarray]], x_label: str, y_label: str,
               width: int = 620, height: int = 220) -> str:
    """Inline SVG: one polyline per series, axes with their ranges, a legend."""
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    xs = [np.asarray(x, float) for x, _ in series.values() if len(x)]
    ys = [np.asarray(y, float) for _, y in series.values() if len(y)]
    if not xs:
        return f"<p>no {y_label} to plot</p>"
    x_lo, x_hi = min(x.min() for x in xs), max(x.max() for x in xs)
    # The value axis spans zero and every value: a loss is read against zero, and a log-likelihood
    # loss goes below it.
    finite = [y[np.isfinite(y)] for y in ys]
    y_lo = min([0.0] + [float(y.min()) for y in finite if len(y)])
    y_hi = max([0.0] + [float(y.max()) for y in finite if len(y)])
    if y_hi == y_lo:
        y_hi = y_lo + 1.0
    left, bottom, pad = 56, 34, 10

    def px(x: np.ndarray, y: np.ndarray) -> str:
        u = left + (x - x_lo) / max(x_hi - x_lo, 1e-9) * (width - left - pad)
        v = height - bottom - (y - y_lo) / max(y_hi - y_lo, 1e-9) * (height - bottom - pad)
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(u, v) if np.isfinite(b))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - pad}" y2="{height - bottom}" stroke="#444"/>',
             f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{height - bottom}" stroke="#444"/>',
             f'<text x="{left}" y="{height - 18}">{x_lo:g}</text>',
             f'<text x="{width - pad}" y="{height - 18}" text-anchor="end">{x_hi:g}</text>',
             f'<text x="{(left + width) / 2}" y="{height - 4}" text-anchor="middle">{html.escape(x_label)}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">{y_lo:.3g}</text>',
             f'<text x="{left - 4}" y="{pad + 8}" text-anchor="end">{y_hi:.3g}</text>',
             f'<text x="12" y="{(height - bottom) / 2}" transform="rotate(-90 12 {(height - bottom) / 2})" '
             f'text-anchor="middle">{html.escape(y_label)}</text>']
    for i, (name, (x, y)) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{px(np.asarray(x, float), np.asarray(y, float))}"/>')
        parts.append(f'<text x="{left + 8 + 150 * i}" y="{pad + 10}" fill="{colour}">{html.escape(name)}</text>')
    return "".join(parts) + "</svg>"
