"""Charts drawn on the server as SVG: no script, no library, readable by screen readers.

Bars are horizontal so long names (Chinese ones included) fit on the left;
a day series is a polyline; a series per label (the edge backlog) is one
polyline per edge. Every mark carries a ``<title>`` with its exact value.
"""

from __future__ import annotations

from html import escape
from typing import Any

from .figures import Chart

WIDTH = 720
COLOURS = ("#1f6feb", "#d4731a", "#2da44e", "#8250df", "#cf222e", "#6e7781")
FONT = 'font-family="Noto Sans CJK SC, Microsoft YaHei, sans-serif" font-size="12"'


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _empty(chart: Chart) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {WIDTH} 40" '
        f'aria-label="{escape(chart.title)}: no data"><text x="8" y="24" {FONT} fill="#6e7781">'
        "No data in this range.</text></svg>"
    )


def bars(chart: Chart, rows: list[dict[str, Any]]) -> str:
    rows = [r for r in rows if r.get(chart.value) is not None or (chart.second and r.get(chart.second) is not None)]
    if not rows:
        return _empty(chart)
    keys = [chart.value, *([chart.second] if chart.second else [])]
    top = max(float(r.get(k) or 0) for r in rows for k in keys) or 1.0
    label_w, bar_h, gap = 180, 14, 8
    per_row = bar_h * len(keys) + gap
    height = per_row * len(rows) + 24
    plot = WIDTH - label_w - 70
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" aria-label="{escape(chart.title)}" data-chart="{chart.slug}">'
    ]
    for i, row in enumerate(rows):
        y = 8 + i * per_row
        label = escape(str(row["label"]))
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h * len(keys) / 2 + 4:.1f}" text-anchor="end" {FONT}>{label}</text>'
        )
        for j, key in enumerate(keys):
            value = row.get(key)
            w = 0.0 if value is None else max(1.0, plot * float(value) / top)
            colour = COLOURS[j % len(COLOURS)]
            by = y + j * bar_h
            name = next((c.label for c in chart.columns if c.key == key), key)
            parts.append(
                f'<rect class="bar" x="{label_w}" y="{by}" width="{w:.1f}" height="{bar_h - 2}" fill="{colour}">'
                f"<title>{label} — {escape(name)}: {_num(value)}</title></rect>"
                f'<text x="{label_w + w + 4:.1f}" y="{by + bar_h - 4}" {FONT}>{_num(value)}</text>'
            )
    if chart.second:
        legend_y = height - 6
        for j, key in enumerate(keys):
            name = next((c.label for c in chart.columns if c.key == key), key)
            x = label_w + j * 220
            parts.append(
                f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" fill="{COLOURS[j]}"/>'
                f'<text x="{x + 14}" y="{legend_y}" {FONT}>{escape(name)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _polyline(points: list[tuple[float, float]], colour: str) -> str:
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>'


def lines(chart: Chart, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return _empty(chart)
    # One series per label ("series"), or the one series of a day chart ("line").
    series: dict[str, dict[str, float]] = {}
    xs: list[str] = []
    for row in rows:
        name = str(row["label"]) if chart.draw == "series" else chart.title
        series.setdefault(name, {})[row["key"]] = float(row.get(chart.value) or 0)
        if row["key"] not in xs:
            xs.append(row["key"])
    top = max((v for s in series.values() for v in s.values()), default=0.0) or 1.0
    left, right, top_pad, bottom = 48, 12, 12, 40
    height = 220
    plot_w, plot_h = WIDTH - left - right, height - top_pad - bottom
    step = plot_w / max(1, len(xs) - 1)

    def at(i: int, v: float) -> tuple[float, float]:
        return left + i * step, top_pad + plot_h * (1 - v / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" aria-label="{escape(chart.title)}" data-chart="{chart.slug}">',
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{WIDTH - right}" y2="{top_pad + plot_h}" stroke="#888"/>',
        f'<text x="{left - 4}" y="{top_pad + 8}" text-anchor="end" {FONT}>{_num(round(top, 1))}</text>',
        f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end" {FONT}>0</text>',
    ]
    for tick in sorted({0, len(xs) // 2, len(xs) - 1}):
        tick_x, _ = at(tick, 0)
        # The end labels stay inside the drawing.
        anchor = "start" if tick == 0 else "end" if tick == len(xs) - 1 else "middle"
        parts.append(
            f'<text x="{tick_x:.1f}" y="{height - 22}" text-anchor="{anchor}" {FONT}>{escape(xs[tick])}</text>'
        )
    for n, (name, values) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        points = [at(i, values[x]) for i, x in enumerate(xs) if x in values]
        parts.append(_polyline(points, colour))
        for (px, py), x in zip(points, [x for x in xs if x in values], strict=True):
            parts.append(
                f'<circle class="point" cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}">'
                f"<title>{escape(name)} {escape(x)}: {_num(values[x])}</title></circle>"
            )
        if chart.draw == "series":
            parts.append(
                f'<rect x="{left + n * 160}" y="{height - 13}" width="10" height="10" fill="{colour}"/>'
                f'<text x="{left + n * 160 + 14}" y="{height - 4}" {FONT}>{escape(name)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def draw(chart: Chart, rows: list[dict[str, Any]]) -> str:
    return bars(chart, rows) if chart.draw == "bars" else lines(chart, rows)
