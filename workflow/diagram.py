"""A routing policy drawn as a flow diagram (SVG, generated on the server).

The completed study enters at the top and falls through the rules in order:
each rule is a decision ("matches?"); its "yes" branch runs to the right
through the first offer and every escalation step (each arrow labelled with
the SLA that triggers it); "no" goes down to the next rule, and the last
"no" reaches the fallback. A dry run's matched rule can be highlighted.
Only presentation attributes are used (the CSP forbids inline styles).
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from . import policy
from .models import RoutingPolicy

ROW = 96
LEFT = 20
DECISION_W = 300
STEP_W = 250
STEP_GAP = 70
BOX_H = 64
LINE = 17
FONT = 12
CHAR_W = 6.6
ACCENT = "#1f6feb"
INK = "#1d2330"
MUTED = "#5b6475"


def _fit(text: str, width: float) -> str:
    limit = max(4, int(width / CHAR_W))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(
    x: float, y: float, text: str, width: float, *, weight: str = "normal", fill: str = INK, anchor: str = "start"
) -> str:
    return (
        f'<text x="{x:.0f}" y="{y:.0f}" font-size="{FONT}" font-family="system-ui, sans-serif" '
        f'font-weight="{weight}" fill="{fill}" text-anchor="{anchor}">{escape(_fit(text, width))}</text>'
    )


def _arrow(x1: float, y1: float, x2: float, y2: float, label: str = "", colour: str = MUTED) -> str:
    out = f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{colour}" stroke-width="1.5" marker-end="url(#arrow)"/>'
    if label:
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        if y1 == y2:
            out += _text(mx, my - 6, label, abs(x2 - x1) + 40, fill=colour, anchor="middle")
        else:
            out += _text(mx + 6, my + 4, label, 120, fill=colour)
    return out


def _box(
    x: float, y: float, w: float, lines: list[str], *, highlight: bool, rounded: int = 6, height: float = BOX_H
) -> str:
    stroke = ACCENT if highlight else "#9aa4b2"
    fill = "#e8f0fe" if highlight else "#ffffff"
    out = (
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{height:.0f}" rx="{rounded}" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="{2 if highlight else 1}"/>'
    )
    for i, line in enumerate(lines):
        out += _text(x + 10, y + 20 + i * LINE, line, w - 20, weight="bold" if i == 0 else "normal")
    return out


def _box_height(lines: int) -> float:
    return max(BOX_H, 14 + lines * LINE)


def _sla_text(sla: dict[str, int]) -> str:
    if not sla:
        return "SLA: agreement/default"
    return "SLA " + " · ".join(f"{p} {m // 60}h{m % 60:02d}" if m >= 60 else f"{p} {m}m" for p, m in sla.items())


def render(row: RoutingPolicy, *, highlight: int | None | str = "") -> str:
    """SVG of ``row``; ``highlight`` is a rule index, ``None`` for the fallback, ``""`` for none."""
    parsed = policy.parse(row.definition)
    labels = policy._Labels(parsed)
    institution = row.institution
    rules: list[tuple[int | None, policy.Rule]] = [*enumerate(parsed.rules), (None, parsed.fallback)]
    widest = max(len(rule.steps) for _, rule in rules)
    width = LEFT * 2 + DECISION_W + widest * (STEP_W + STEP_GAP) + 20
    heights = [_box_height(2 + max(len(s.offer_to) for s in rule.steps)) for _, rule in rules]
    height = 70 + sum(h + ROW - BOX_H for h in heights) + 10
    title = f"{institution.name}: routing policy v{row.version}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f"<title>{escape(title)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="{MUTED}"/></marker></defs>',
        f'<rect x="{LEFT}" y="10" width="{DECISION_W}" height="34" rx="17" fill="#0f1b2d"/>',
        _text(
            LEFT + DECISION_W / 2,
            32,
            f"Study complete at {institution.name}",
            DECISION_W - 20,
            fill="#ffffff",
            anchor="middle",
            weight="bold",
        ),
    ]
    y: float = 70
    parts.append(_arrow(LEFT + DECISION_W / 2, 44, LEFT + DECISION_W / 2, y))
    for n, (index, rule) in enumerate(rules):
        hit = highlight != "" and highlight == index
        if index is None:
            heading, cond = "Otherwise (fallback)", "no rule matched"
        else:
            heading, cond = f"{index + 1}. {rule.name}", "if " + ", ".join(rule.when.describe())
        flags = "double reading + reconciliation" if rule.double_reading else ""
        box_h = heights[n]
        parts.append(
            _box(
                LEFT,
                y,
                DECISION_W,
                [heading, cond, flags],
                highlight=hit,
                rounded=2 if index is not None else 12,
                height=box_h,
            )
        )
        x = LEFT + DECISION_W
        for level, step in enumerate(rule.steps):
            label = "yes" if level == 0 and index is not None else ("" if level == 0 else "SLA breach")
            parts.append(_arrow(x, y + BOX_H / 2, x + STEP_GAP, y + BOX_H / 2, label, ACCENT if hit else MUTED))
            x += STEP_GAP
            step_heading = "Offer at once to" if level == 0 else f"Escalate (level {level}) to"
            targets = [labels.target(t, institution) for t in step.offer_to]
            lines = [step_heading, *targets, _sla_text(step.sla_minutes)]
            parts.append(_box(x, y, STEP_W, lines, highlight=hit, height=box_h))
            x += STEP_W
        if n < len(rules) - 1:
            parts.append(_arrow(LEFT + DECISION_W / 2, y + box_h, LEFT + DECISION_W / 2, y + box_h + ROW - BOX_H, "no"))
        y += box_h + ROW - BOX_H
    parts.append("</svg>")
    return "".join(parts)
