"""Inline SVG charts, drawn in Python (no JavaScript): the per-position KL and
|Δ logprob| of a case along its continuation, and tokens/s against batch size.

Every piece of text in an SVG goes through `markupsafe.escape`; the result is `Markup`
so the HTML template embeds it as is. Points carry a `<title>` (a native tooltip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

from specengine.results import CaseResult
from specengine.report.model import PerfView, tolerance
from specengine.report.text import fmt, is_number, truncate, visible

WIDTH = 680
LEFT, RIGHT = 58, 14
PANEL_H, TITLE_H, AXIS_H = 86, 30, 20
MARKER_COLORS = {"divergence": "#b91c1c", "worst": "#b45309"}
PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2")


@dataclass
class Panel:
    """One plot area of a chart: its origin, size and y range."""

    top: float
    height: float
    ymax: float

    def y(self, value: float) -> float:
        return self.top + self.height * (1 - min(value, self.ymax) / self.ymax)


def nice_ceiling(value: float) -> float:
    """The smallest 1/2/2.5/5 × 10^k that is >= value (1 for 0)."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * 10 ** exp >= value * (1 - 1e-12):
            return step * 10 ** exp
    return 10 ** (exp + 1)


def svg_text(x: float, y: float, label: Any, cls: str = "", anchor: str = "start") -> str:
    css = f' class="{cls}"' if cls else ""
    css += ' font-size="11" font-family="sans-serif" fill="#616e7c"' 
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{css}>'
            f'{escape(visible(label))}</text>')


def value_of(v: Any) -> float | None:
    """A plotted value: finite number, +inf (drawn at the top), or None (a gap)."""
    if not is_number(v) or math.isnan(v):
        return None
    return float(v) if v >= 0 else 0.0


def y_axis(panel: Panel, title: str) -> list[str]:
    right = WIDTH - RIGHT
    out = [svg_text(LEFT, panel.top - 8, title, "chart-title")]
    for frac in (0.0, 0.5, 1.0):
        value = panel.ymax * frac
        y = panel.y(value)
        out.append(f'<line class="grid" stroke="#d9dee5" x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>')
        out.append(svg_text(LEFT - 6, y + 4, fmt(value, 3), "tick", "end"))
    return out


def _x_of(i: int, n: int) -> float:
    return LEFT + (i + 0.5) * (WIDTH - LEFT - RIGHT) / n


def _series(values: list[Any], panel: Panel, color: str, name: str) -> list[str]:
    """A polyline (split at gaps), a dot per point with a tooltip, ▲ for infinities."""
    n = len(values)
    out, run = [], []
    points = []
    for i, raw in enumerate(values):
        v = value_of(raw)
        if v is None:
            if run:
                points.append(run)
            run = []
            continue
        run.append((_x_of(i, n), panel.y(v), i, raw))
    if run:
        points.append(run)
    for seg in points:
        if len(seg) > 1:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in seg)
            out.append(f'<polyline class="series" points="{coords}" fill="none" stroke-width="2" stroke="{color}"/>')
    radius = 2.6 if n <= 64 else 1.6 if n <= 256 else 0
    for seg in points:
        for x, y, i, raw in seg:
            tip = f"<title>{escape(name)} at position {i}: {escape(fmt(raw))}</title>"
            if math.isinf(float(raw)):
                out.append(f'<path class="inf" fill="#b91c1c" d="M{x:.1f},{panel.top - 1:.1f} l-4,7 h8 z">{tip}</path>')
            elif radius:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{color}">{tip}</circle>')
    return out


def limit_line(limit: Any, panel: Panel) -> list[str]:
    """A tolerance as a horizontal line, when it falls inside the panel's range."""
    if not is_number(limit) or not 0 < limit <= panel.ymax:
        return []
    y = panel.y(limit)
    return [f'<line class="limit" stroke="#b91c1c" stroke-dasharray="2 3" x1="{LEFT}" '
            f'y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"><title>limit {escape(fmt(limit))}'
            f'</title></line>']


def _x_axis(n: int, bottom: float) -> list[str]:
    every = max(1, math.ceil(n / 12))
    out = [f'<line class="axis" stroke="#9aa5b1" x1="{LEFT}" y1="{bottom:.1f}" x2="{WIDTH - RIGHT}" y2="{bottom:.1f}"/>']
    for i in range(0, n, every):
        out.append(svg_text(_x_of(i, n), bottom + 14, i, "tick", "middle"))
    out.append(svg_text(LEFT - 6, bottom + 14, "pos.", "tick", "end"))
    return out


LABEL_CHAR_PX = 7.0        # a generous width per character of a 11-12 px label
LABEL_LINE_PX = 13.0


def label_box(x: float, label: str) -> tuple[float, float, str]:
    """(left, right, anchor) of a marker label at x: right of the line, or left of it
    when it would run past the plot's right edge."""
    width = LABEL_CHAR_PX * len(label)
    if x + 4 + width > WIDTH - RIGHT:
        return x - 4 - width, x - 4, "end"
    return x + 4, x + 4 + width, "start"


def _marker(step: int | None, n: int, top: float, bottom: float, cls: str, label: str,
            row: int = 0) -> list[str]:
    if step is None or not 0 <= step < n:
        return []
    x = _x_of(step, n)
    color = MARKER_COLORS.get(cls, "#616e7c")
    left, right, anchor = label_box(x, label)
    tx = left if anchor == "start" else right
    return [f'<line class="{cls}" stroke="{color}" stroke-dasharray="5 4" x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}"/>',
            svg_text(tx, top + 10 + row * LABEL_LINE_PX, label, f"{cls}-label", anchor)]


def _overlap(a: tuple[float, float, str], b: tuple[float, float, str]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def position_chart(case: CaseResult) -> Markup:
    """Two stacked panels sharing the position axis: KL(G‖C) and max |Δ logprob| per
    generated position, the first divergence as a dashed line. Empty when no data."""
    tol = tolerance(case)
    series = [("KL(G‖C)", list(case.per_position.get("kl") or []), PALETTE[0], tol.get("kl_max")),
              ("max |Δ logprob|", list(case.per_position.get("abs_dlogprob") or []), PALETTE[1],
               tol.get("logprob_atol"))]
    series = [s for s in series if s[1]]
    if not series:
        return Markup("")
    n = max(len(s[1]) for s in series)
    height = len(series) * (TITLE_H + PANEL_H) + AXIS_H + 8
    parts = []
    for idx, (name, values, color, limit) in enumerate(series):
        finite = [v for v in (value_of(x) for x in values) if v is not None and math.isfinite(v)]
        panel = Panel(top=idx * (TITLE_H + PANEL_H) + TITLE_H, height=PANEL_H,
                      ymax=nice_ceiling(max(finite, default=0.0)))
        title = f"{name} per position" + (f" · limit {fmt(limit)}" if is_number(limit) else "")
        parts += y_axis(panel, title)
        parts += limit_line(limit, panel)
        parts += _series(values, panel, color, name)
        if idx == 0 and case.worst_position is not None and 0 <= case.worst_position < n:
            parts += _marker(case.worst_position, n, panel.top, panel.top + panel.height,
                             "worst", f"worst {case.worst_position}")
    bottom = len(series) * (TITLE_H + PANEL_H)
    row = 0      # the divergence label goes one line lower when it would hit the worst's
    div_label, worst_label = f"divergence {case.divergence_step}", f"worst {case.worst_position}"
    if (case.divergence_step is not None and case.worst_position is not None
            and 0 <= case.worst_position < n and 0 <= case.divergence_step < n
            and _overlap(label_box(_x_of(case.divergence_step, n), div_label),
                         label_box(_x_of(case.worst_position, n), worst_label))):
        row = 1
    parts += _marker(case.divergence_step, n, TITLE_H, bottom, "divergence", div_label, row)
    parts += _x_axis(n, bottom)
    label = f"Per-position KL and |Δ logprob| of case {visible(case.id)} over {n} positions"
    return svg_chart(height, label, "position-chart", parts)


def svg_chart(height: float, label: str, cls: str, parts: list[str]) -> Markup:
    body = "\n".join(p for p in parts if p)
    return Markup(f'<svg class="chart {cls}" viewBox="0 0 {WIDTH} {height:.0f}" '
                  f'width="{WIDTH}" height="{height:.0f}" role="img" '
                  f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">\n'
                  f"<title>{escape(label)}</title>\n{body}\n</svg>")


def perf_chart(view: PerfView | None) -> Markup:
    """Tokens/s against batch size, one line per backend. Empty without two numbers."""
    if view is None:
        return Markup("")
    by_backend: dict[str, list[tuple[float, float]]] = {}
    for row in view.rows:
        if is_number(row.batch_size) and is_number(row.tokens_per_s) and math.isfinite(row.tokens_per_s):
            by_backend.setdefault(row.backend or "?", []).append((row.batch_size, row.tokens_per_s))
    if not by_backend:
        return Markup("")
    sizes = sorted({b for pts in by_backend.values() for b, _ in pts})
    ymax = nice_ceiling(max(t for pts in by_backend.values() for _, t in pts))
    panel = Panel(top=TITLE_H + 8, height=PANEL_H * 2, ymax=ymax)
    parts = y_axis(panel, "tokens/s by batch size")
    bottom = panel.top + panel.height
    n = len(sizes)
    parts.append(f'<line class="axis" stroke="#9aa5b1" x1="{LEFT}" y1="{bottom:.1f}" x2="{WIDTH - RIGHT}" y2="{bottom:.1f}"/>')
    for i, size in enumerate(sizes):
        parts.append(svg_text(_x_of(i, n), bottom + 14, f"batch {fmt(size)}", "tick", "middle"))
    for k, (backend, pts) in enumerate(sorted(by_backend.items())):
        color = PALETTE[k % len(PALETTE)]
        xy = [(_x_of(sizes.index(b), n), panel.y(t), b, t) for b, t in sorted(pts)]
        if len(xy) > 1:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in xy)
            parts.append(f'<polyline class="series" points="{coords}" fill="none" stroke-width="2" stroke="{color}"/>')
        for x, y, b, t in xy:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"><title>'
                         f'{escape(visible(backend))}, batch {escape(fmt(b))}: '
                         f'{escape(fmt(t))} tokens/s</title></circle>')
        lx = LEFT + 200 + 130 * k
        ly = TITLE_H
        parts.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color}"/>')
        parts.append(svg_text(lx + 14, ly, truncate(backend, 18), "legend"))
    height = bottom + AXIS_H + 4
    return svg_chart(height, "Tokens per second against batch size", "perf-chart", parts)


def perf_mermaid(view: PerfView | None) -> Markup:
    """Tokens/s against batch size as a Mermaid xychart (rendered by GitHub and GitLab
    Markdown), one line per backend; empty without a number to plot."""
    if view is None:
        return Markup("")
    by_backend: dict[str, dict[Any, float]] = {}
    for row in view.rows:
        if is_number(row.batch_size) and is_number(row.tokens_per_s) and math.isfinite(row.tokens_per_s):
            by_backend.setdefault(row.backend or "?", {})[row.batch_size] = float(row.tokens_per_s)
    if not by_backend:
        return Markup("")
    sizes = sorted({b for pts in by_backend.values() for b in pts})
    names = ", ".join("".join(ch for ch in name if ch.isalnum() or ch in " ._-")[:30]
                      for name in sorted(by_backend))
    lines = ["```mermaid", "xychart-beta",
             f'    title "tokens/s by batch size ({names})"',
             f"    x-axis \"batch size\" [{', '.join(str(int(b)) for b in sizes)}]",
             '    y-axis "tokens/s"']
    for _, pts in sorted(by_backend.items()):
        lines.append(f"    line [{', '.join(f'{pts.get(b, 0.0):.4g}' for b in sizes)}]")
    lines.append("```")
    return Markup("\n".join(lines) + "\n")
