"""Line charts as SVG markup, drawn on the server (no script, no library from elsewhere)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH = 520
HEIGHT = 180
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 44
LEGEND_PER_ROW = 3
LEGEND_ROW_H = 14
PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#4b5563")


def _nice_max(value: float) -> float:
    """A round axis maximum at or above `value` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def _label(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:g}"


def line_chart(
    title: str,
    *,
    unit: str,
    start: float,
    step_s: float,
    lines: Sequence[tuple[str, Sequence[float]]],
) -> Markup:
    """One chart: a line per (name, values), the values one per `step_s` from `start`."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    legend_rows = max(1, math.ceil(len(lines) / LEGEND_PER_ROW))
    height = HEIGHT + (legend_rows - 1) * LEGEND_ROW_H
    points = max((len(v) for _, v in lines), default=0)
    top = _nice_max(max((max(v, default=0.0) for _, v in lines), default=0.0))
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg" data-title="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):  # grid lines and y labels
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#e5e7eb" stroke-width="1"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="#6b7280">{escape(_label(value, unit))}</text>'
        )
    if points > 1:
        for i in range(0, points, max(1, points // 6)):  # x labels: clock time
            x = LEFT + plot_w * i / (points - 1)
            clock = time.strftime("%H:%M", time.gmtime(start + i * step_s))
            parts.append(
                f'<text x="{x:.1f}" y="{TOP + plot_h + 14}" text-anchor="middle" font-size="10" '
                f'fill="#6b7280">{clock}</text>'
            )
    for index, (name, values) in enumerate(lines):
        colour = PALETTE[index % len(PALETTE)]
        if len(values) > 1:
            xy = [
                (LEFT + plot_w * i / (len(values) - 1), TOP + plot_h - plot_h * (v / top))
                for i, v in enumerate(values)
            ]
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
            parts.append(
                f'<polyline class="series" data-name="{escape(name)}" fill="none" '
                f'stroke="{colour}" stroke-width="1.5" stroke-linejoin="round" points="{coords}"/>'
            )
            parts.extend(  # a dot on every minute with calls: one busy minute still shows
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>'
                for (x, y), v in zip(xy, values, strict=True)
                if v > 0
            )
        legend_x = LEFT + (index % LEGEND_PER_ROW) * (plot_w / LEGEND_PER_ROW)
        legend_y = HEIGHT - 12 + (index // LEGEND_PER_ROW) * LEGEND_ROW_H
        total = (
            f"max {_label(max(values, default=0.0), unit)}"
            if unit == "s"
            else _label(sum(values), unit)
        )
        parts.append(
            f'<rect x="{legend_x}" y="{legend_y - 8}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{legend_y + 1}" font-size="11" fill="#111827">'
            f"{escape(name[:20])} ({escape(total)})</text>"
        )
    if not lines:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-size="12" '
            'fill="#6b7280">no calls in the last hour</text>'
        )
    parts.append(
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#9ca3af"/>'
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" '
        'stroke="#9ca3af"/></svg>'
    )
    return Markup("".join(parts))
