"""The per-layer chart of a localization (kinds.causal_lm.localize): inline SVG, no script.

Panels share the layer axis (embedding, 0 … N−1, final norm): rel_err on a log scale
with the rule's floor, 1 − cosine on a log scale, and — when both sides' full hidden
states were compared — max |Δ| / max relative error (log) and the shares of elements
under 0.001 / 0.005 relative error. The first flagged layer is a dashed vertical line
across every panel; every flagged layer's point is drawn as a larger red dot. All text
goes through `markupsafe.escape` (through charts.svg_text / svg_chart).
"""

from __future__ import annotations

import math
from typing import Any

from markupsafe import Markup, escape

from specengine.report.charts import LEFT, PALETTE, RIGHT, WIDTH, svg_chart, svg_text
from specengine.report.text import fmt

PANEL_H, TITLE_H, AXIS_H = 92, 38, 40
FLAG = "#b91c1c"


def _short(name: str) -> str:
    if name == "embedding":
        return "emb"
    if name == "final_norm":
        return "norm"
    return name.replace("layer.", "")


def _x(i: int, n: int) -> float:
    return LEFT + (i + 0.5) * (WIDTH - LEFT - RIGHT) / max(n, 1)


class _Log:
    """A log10 y-axis panel over whole decades; zeros are drawn on the bottom line."""

    def __init__(self, top: float, values: list[float]):
        pos = [v for v in values if v is not None and math.isfinite(v) and v > 0]
        hi = math.ceil(math.log10(max(pos))) if pos else 0
        lo = math.floor(math.log10(min(pos))) if pos else hi - 1
        self.lo, self.hi = min(lo, hi - 1), max(hi, lo + 1)
        self.top = top

    def y(self, v: float) -> float:
        if v is None or not v > 0:
            return self.top + PANEL_H
        t = (min(max(math.log10(v), self.lo), self.hi) - self.lo) / (self.hi - self.lo)
        return self.top + PANEL_H * (1 - t)

    def axis(self, title: str) -> list[str]:
        out = [svg_text(LEFT, self.top - 8, title, "chart-title")]
        step = max(1, math.ceil((self.hi - self.lo) / 4))
        for d in range(self.lo, self.hi + 1, step):
            y = self.y(10.0 ** d)
            out.append(f'<line class="grid" stroke="#d9dee5" x1="{LEFT}" y1="{y:.1f}" '
                       f'x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>')
            out.append(svg_text(LEFT - 6, y + 4, f"1e{d}", "tick", "end"))
        return out


class _Lin:
    """A linear 0..1 panel (shares)."""

    def __init__(self, top: float):
        self.top = top

    def y(self, v: float) -> float:
        v = 0.0 if v is None or not math.isfinite(v) else min(max(v, 0.0), 1.0)
        return self.top + PANEL_H * (1 - v)

    def axis(self, title: str) -> list[str]:
        out = [svg_text(LEFT, self.top - 8, title, "chart-title")]
        for v in (0.0, 0.5, 1.0):
            y = self.y(v)
            out.append(f'<line class="grid" stroke="#d9dee5" x1="{LEFT}" y1="{y:.1f}" '
                       f'x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>')
            out.append(svg_text(LEFT - 6, y + 4, fmt(v, 2), "tick", "end"))
        return out


def _series(panel, layers: list[dict], key: str, color: str, label: str,
            transform=lambda v: v) -> list[str]:
    n = len(layers)
    pts = []
    for i, m in enumerate(layers):
        raw = m.get(key)
        if raw is None:
            continue
        v = transform(raw)
        pts.append((_x(i, n), panel.y(v), m, raw))
    out = []
    if len(pts) > 1:
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in pts)
        out.append(f'<polyline class="series" points="{coords}" fill="none" stroke-width="2" '
                   f'stroke="{color}"/>')
    for x, y, m, raw in pts:
        flagged = bool(m.get("flagged"))
        tip = f"<title>{escape(label)} at {escape(m.get('name', '?'))}: {escape(fmt(raw))}" \
              f"{' (flagged)' if flagged else ''}</title>"
        r, fill = (4.2, FLAG) if flagged and key == "rel_err" else (2.6, color)
        cls = ' class="flagged"' if flagged and key == "rel_err" else ""
        out.append(f'<circle{cls} cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}">{tip}</circle>')
    return out


def _legend(top: float, items: list[tuple[str, str]]) -> list[str]:
    out = []
    for k, (label, color) in enumerate(items):
        lx = WIDTH - RIGHT - 105 * (len(items) - k)
        out.append(f'<rect x="{lx}" y="{top - 17}" width="10" height="10" fill="{color}"/>')
        out.append(svg_text(lx + 14, top - 8, label, "legend"))
    return out


def _error_panels(loc: dict[str, Any], layers: list[dict]) -> tuple[list[str], float]:
    """The panels every localization has — rel_err against the floor, 1 − cosine — and,
    comparing full hidden states, max |Δ| / max rel err and the shares of small
    element-wise errors; with the y where the x axis goes."""
    top = TITLE_H
    rel = _Log(top, [m.get("rel_err") for m in layers] + [loc.get("floor")])
    parts = rel.axis(f"rel_err per layer (log) · floor {fmt(loc.get('floor'), 2)} · "
                     f"growth × {fmt(loc.get('growth'), 3)}")
    floor = loc.get("floor")
    if isinstance(floor, (int, float)) and floor > 0:
        y = rel.y(floor)
        parts.append(f'<line class="limit" stroke="{FLAG}" stroke-dasharray="2 3" x1="{LEFT}" '
                     f'y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"><title>floor '
                     f'{escape(fmt(floor))}</title></line>')
    parts += _series(rel, layers, "rel_err", PALETTE[0], "rel_err")
    top += PANEL_H + TITLE_H

    one_minus = [None if m.get("cosine") is None else max(0.0, 1.0 - m["cosine"]) for m in layers]
    cos = _Log(top, one_minus)
    parts += cos.axis("1 − cosine per layer (log)")
    parts += _series(cos, layers, "cosine", PALETTE[1], "cosine",
                     transform=lambda v: max(0.0, 1.0 - v))
    top += PANEL_H + TITLE_H

    if loc.get("mode") == "full":
        err = _Log(top, [m.get("max_abs") for m in layers] + [m.get("max_rel") for m in layers])
        parts += err.axis("max |Δ| and max rel err (log)")
        parts += _legend(top, [("max |Δ|", PALETTE[2]), ("max rel err", PALETTE[3])])
        parts += _series(err, layers, "max_abs", PALETTE[2], "max |Δ|")
        parts += _series(err, layers, "max_rel", PALETTE[3], "max rel err")
        top += PANEL_H + TITLE_H
        share = _Lin(top)
        parts += share.axis("share of elements with rel err under")
        parts += _legend(top, [("< 0.001", PALETTE[4]), ("< 0.005", PALETTE[5])])
        parts += _series(share, layers, "frac_rel_lt_1e3", PALETTE[4], "share < 0.001")
        parts += _series(share, layers, "frac_rel_lt_5e3", PALETTE[5], "share < 0.005")
        top += PANEL_H + TITLE_H
    return parts, top - TITLE_H


def _first_flagged_marker(loc: dict[str, Any], n: int, bottom: float) -> list[str]:
    """A dashed vertical line through every panel at the first flagged layer, labelled."""
    first = loc.get("first_flagged")
    if not (isinstance(first, int) and 0 <= first < n):
        return []
    x = _x(first, n)
    label = f"▲ first flagged: {loc.get('first_flagged_name') or first}"
    anchor = "end" if x > WIDTH * 0.75 else "start" if x < WIDTH * 0.25 else "middle"
    return [f'<line class="first-flagged" stroke="{FLAG}" stroke-width="1.5" '
            f'stroke-dasharray="5 4" x1="{x:.1f}" y1="{TITLE_H:.1f}" x2="{x:.1f}" '
            f'y2="{bottom:.1f}"/>',
            svg_text(x, bottom + 32, label, "first-flagged-label", anchor)
            .replace("<text ", f'<text style="fill: {FLAG}; font-weight: 600" ', 1)]


def layer_chart(loc: dict[str, Any] | None) -> Markup:
    """The per-layer chart of a localization dict (Localization.to_dict()); empty when there
    is nothing to draw."""
    if not loc or not loc.get("layers"):
        return Markup("")
    layers = list(loc["layers"])
    n = len(layers)
    parts, bottom = _error_panels(loc, layers)
    parts += _first_flagged_marker(loc, n, bottom)
    parts.append(f'<line class="axis" stroke="#9aa5b1" x1="{LEFT}" y1="{bottom:.1f}" '
                 f'x2="{WIDTH - RIGHT}" y2="{bottom:.1f}"/>')
    first = loc.get("first_flagged")
    every = max(1, math.ceil(n / 16))
    for i, m in enumerate(layers):
        if i % every == 0 or i == n - 1 or i == first:
            parts.append(svg_text(_x(i, n), bottom + 14, _short(str(m.get("name", i))), "tick",
                               "middle"))
    label = (f"Per-layer errors of case {loc.get('case_id', '')}: "
             + (f"first flagged layer {loc.get('first_flagged_name')}"
                if loc.get("first_flagged_name") else "no layer flagged"))
    return svg_chart(bottom + AXIS_H + 4, label, "layer-chart", parts)


def localization_line(loc: dict[str, Any] | None) -> str:
    """One line for terminal and Markdown reports: the first flagged layer, or why none."""
    if not loc:
        return ""
    if loc.get("error"):
        return f"localization not made: {loc['error']}"
    layers = loc.get("layers") or []
    first = loc.get("first_flagged")
    where = f"{loc.get('mode', '?')} comparison with {loc.get('reference', '?')}"
    if isinstance(first, int) and 0 <= first < len(layers):
        m = layers[first]
        prev = layers[first - 1].get("rel_err") if first > 0 else 0.0
        return (f"first drifting layer: {m.get('name')} (rel_err {fmt(prev, 3)} → "
                f"{fmt(m.get('rel_err'), 3)}, cosine {fmt(m.get('cosine'), 5)}; {where})")
    worst = max(layers, key=lambda m: m.get("rel_err") or 0.0, default=None)
    tail = (f"; largest rel_err {fmt(worst.get('rel_err'), 3)} at {worst.get('name')}"
            if worst else "")
    return f"no layer flagged by the rule ({where}){tail}"
