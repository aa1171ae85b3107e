"""TTFT against prompt length (`run.perf["ttft_by_length"]`, measured by `check --perf` on
a long spec): a tolerant reading of the rows, one terminal line, and an inline SVG chart
(linear axes, the p50 line with a p50–p90 whisker per length; no script, text escaped)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from specengine.report.charts import (AXIS_H, LEFT, PALETTE, PANEL_H, RIGHT, TITLE_H, WIDTH,
                                      Panel, svg_chart, svg_text, y_axis, nice_ceiling)
from specengine.report.text import fmt, is_number, visible


@dataclass
class LengthRow:
    prompt_tokens: int
    ttft: dict[str, float]            # p50 / p90 / p99 in ms (missing keys absent)
    runs: Any = None
    cases: list[str] = field(default_factory=list)


def ttft_rows(perf: Any) -> list[LengthRow]:
    """The rows of `perf["ttft_by_length"]` with a prompt length and a p50, shortest first."""
    rows = perf.get("ttft_by_length") if isinstance(perf, dict) else None
    out = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or not is_number(row.get("prompt_tokens")):
            continue
        raw = row.get("ttft_ms")
        pcts = {k: float(v) for k, v in (raw.items() if isinstance(raw, dict) else ())
                if k in ("p50", "p90", "p99") and is_number(v) and math.isfinite(v)}
        if "p50" not in pcts:
            continue
        cases = row.get("cases") if isinstance(row.get("cases"), list) else []
        out.append(LengthRow(int(row["prompt_tokens"]), pcts, row.get("runs"),
                             [str(c) for c in cases]))
    return sorted(out, key=lambda r: r.prompt_tokens)


def ttft_line(rows: list[LengthRow]) -> str:
    """'TTFT by prompt length (p50): 512 tok 40 ms · … · 2048 tok 190 ms; ×4.75 from 512 to
    2048 tokens' ('' without rows)."""
    if not rows:
        return ""
    text = "TTFT by prompt length (p50): " + " · ".join(
        f"{r.prompt_tokens} tok {fmt(r.ttft['p50'])} ms" for r in rows)
    first, last = rows[0], rows[-1]
    if len(rows) > 1 and first.ttft["p50"] > 0:
        text += (f"; ×{fmt(last.ttft['p50'] / first.ttft['p50'], 3)} from "
                 f"{first.prompt_tokens} to {last.prompt_tokens} tokens")
    return text


def ttft_chart(rows: list[LengthRow]) -> Markup:
    """TTFT (ms) against prompt length (tokens), both axes linear from 0: a p50 line and a
    p50–p90 whisker per measured length. Empty with fewer than two lengths."""
    if len(rows) < 2:
        return Markup("")
    longest = max(r.prompt_tokens for r in rows)
    step = nice_ceiling(longest / 5)
    xmax = step * max(math.ceil(longest / step), 1)
    ymax = nice_ceiling(max(max(r.ttft.values()) for r in rows))
    panel = Panel(top=TITLE_H + 8, height=PANEL_H * 2, ymax=ymax)
    parts = y_axis(panel, "TTFT (ms) by prompt length · p50, whisker to p90")
    bottom, right = panel.top + panel.height, WIDTH - RIGHT

    def x_of(n: float) -> float:
        return LEFT + 8 + (right - LEFT - 16) * n / xmax

    parts.append(f'<line class="axis" stroke="#9aa5b1" x1="{LEFT}" y1="{bottom:.1f}" '
                 f'x2="{right}" y2="{bottom:.1f}"/>')
    for i in range(round(xmax / step) + 1):
        parts.append(svg_text(x_of(i * step), bottom + 14, fmt(i * step), "tick", "middle"))
    parts.append(svg_text(right, bottom + 28, "prompt tokens", "tick", "end"))
    color = PALETTE[0]
    xy = [(x_of(r.prompt_tokens), panel.y(r.ttft["p50"]), r) for r in rows]
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in xy)
    parts.append(f'<polyline class="series" points="{coords}" fill="none" stroke-width="2" '
                 f'stroke="{color}"/>')
    for x, y, r in xy:
        if "p90" in r.ttft:
            parts.append(f'<line class="whisker" stroke="{color}" stroke-opacity="0.5" '
                         f'x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" '
                         f'y2="{panel.y(r.ttft["p90"]):.1f}"/>')
        pcts = ", ".join(f"{k} {fmt(v)} ms" for k, v in r.ttft.items())
        cases = f" (cases {', '.join(r.cases[:6])}{', …' if len(r.cases) > 6 else ''})" if r.cases else ""
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"><title>'
                     f'{r.prompt_tokens} prompt tokens: TTFT {escape(pcts)}'
                     f'{escape(visible(cases))}</title></circle>')
    return svg_chart(bottom + AXIS_H + 18, "Time to first token against prompt length",
                "ttft-chart", parts)
