"""A long case over its whole sequence: the sampled prompt positions (check
`prompt-positions`) and the generated positions on one axis, where drift starts, and an
inline SVG chart of both with the prompt/generation boundary marked.

Position p means the logits at sequence position p (0-based), which predict token p + 1.
The sampled prompt positions are at most prompt_length - 2; generated step s is position
prompt_length - 1 + s, so the two parts meet at the boundary, prompt_length - 1. The same
one-pass (teacher-forced) scores are on both sides of it.

Pure functions over `specengine.results` (the kinds' sweep note uses `drift_start`), plus
the chart; every piece of text in the SVG is escaped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

from specengine.results import CaseResult
from specengine.report.charts import (AXIS_H, LEFT, MARKER_COLORS, PALETTE, PANEL_H, RIGHT,
                                      TITLE_H, WIDTH, Panel, limit_line, svg_chart, svg_text, value_of,
                                      y_axis, label_box, nice_ceiling)
from specengine.report.model import tolerance
from specengine.report.text import fmt, is_number, visible

PROMPT, GENERATED = "prompt", "generated"
PROMPT_SHARE = 0.68          # of the plot width, for the (sampled) prompt positions


@dataclass
class SeqPoint:
    position: int
    part: str                 # prompt | generated
    step: int | None          # the generated step (None on the prompt)
    kl: Any
    dlogprob: Any


@dataclass
class Sequence:
    prompt_length: int
    points: list[SeqPoint]    # prompt points first, then generated, each by position

    @property
    def boundary(self) -> int:
        """The first generated position (the prompt's last token's logits)."""
        return self.prompt_length - 1

    def part(self, name: str) -> list[SeqPoint]:
        return [p for p in self.points if p.part == name]


@dataclass
class Drift:
    """The first position past the per-position limits, and the last one before it that
    was checked and within them (a bracket: drift starts after `previous`)."""

    point: SeqPoint
    path: str                 # one-pass | decode
    previous: SeqPoint | None
    prompt_checked: bool      # the case had sampled prompt positions

    def describe(self) -> str:
        p = self.point
        if p.part == PROMPT:
            where = "a sampled prompt position"
            where += (f"; the sampled position before it, {self.previous.position}, is within"
                      if self.previous is not None else "; the first one sampled")
        else:
            where = f"generated step {p.step}" + (", decode path" if self.path == "decode" else "")
            if self.prompt_checked:
                where += "; every sampled prompt position is within"
        return f"sequence position {p.position} ({where})"


def _at(values: Any, i: int) -> Any:
    return values[i] if isinstance(values, list) and i < len(values) else None


def sequence_of(per_position: dict, prompt_length: int, path: str = "one-pass"
                ) -> Sequence | None:
    """The case's points in sequence order: one-pass prompt positions then generated ones
    (`path` decode: the decode path's generated positions only). None without data."""
    suffix = "_decode" if path == "decode" else ""
    positions = [] if suffix else list(per_position.get("prompt_position") or [])
    if not prompt_length:
        prompt_length = int(max(positions)) + 2 if positions else 0
    points = [SeqPoint(int(p), PROMPT, None, _at(per_position.get("kl_prompt"), i),
                       _at(per_position.get("abs_dlogprob_prompt"), i))
              for i, p in enumerate(positions)]
    kl, dlp = per_position.get(f"kl{suffix}") or [], per_position.get(f"abs_dlogprob{suffix}") or []
    points += [SeqPoint(prompt_length - 1 + s, GENERATED, s, _at(kl, s), _at(dlp, s))
               for s in range(max(len(kl), len(dlp)))]
    return Sequence(prompt_length, points) if points else None


def _past(value: Any, limit: Any) -> bool:
    """Past a limit; NaN is past any limit, a missing value or limit is not."""
    return is_number(value) and is_number(limit) and not value <= limit


def first_past(seq: Sequence, kl_max: Any, logprob_atol: Any) -> tuple[SeqPoint | None, SeqPoint | None]:
    """(the first point whose KL or |Δ logprob| exceeds its per-position limit, the last
    point before it) in sequence order; (None, None) when every point is within."""
    previous = None
    for point in sorted(seq.points, key=lambda p: p.position):
        if _past(point.kl, kl_max) or _past(point.dlogprob, logprob_atol):
            return point, previous
        previous = point
    return None, None


def drift_start(per_position: dict, prompt_length: int, kl_max: Any, logprob_atol: Any
                ) -> Drift | None:
    """Where drift starts over the whole sequence: the earliest position past the limits
    on the one-pass path (sampled prompt positions and generated ones) or, when earlier
    or alone, on the decode path."""
    found = []
    for path in ("one-pass", "decode"):
        seq = sequence_of(per_position, prompt_length, path)
        if seq is not None:
            point, previous = first_past(seq, kl_max, logprob_atol)
            if point is not None:
                found.append(Drift(point, path, previous,
                                   bool(per_position.get("prompt_position"))))
    return min(found, key=lambda d: d.point.position, default=None)


def _limits(case: CaseResult) -> dict:
    tol = tolerance(case)
    if not tol:
        check = next((c for c in case.checks if c.name == "prompt-positions"), None)
        found = check.metrics.get("tolerance") if check is not None else None
        tol = found if isinstance(found, dict) else {}
    return tol


def case_drift(case: CaseResult) -> Drift | None:
    """A long case's drift start, judged by the limits its checks recorded."""
    if not case.per_position.get("prompt_position"):
        return None
    tol = _limits(case)
    return drift_start(case.per_position, case.prompt_length, tol.get("kl_max"),
                       tol.get("logprob_atol"))


def drift_text(case: CaseResult) -> str:
    """'drift starts at sequence position P (…)' for a long case past its limits, else ''."""
    drift = case_drift(case)
    if drift is None:
        return ""
    return (f"drift starts at {drift.describe()}, prompt length {case.prompt_length}: the "
            "first position whose KL or |Δ logprob| is past its per-position limit")


def sequence_caption(case: CaseResult) -> str:
    seq = sequence_of(case.per_position, case.prompt_length)
    if seq is None:
        return ""
    return (f"{len(seq.part(PROMPT))} sampled prompt positions (to scale, 0 to "
            f"{seq.boundary - 1}) left of the boundary, then {len(seq.part(GENERATED))} "
            f"generated positions ({seq.boundary} on, evenly spread); one-pass scores on both "
            "sides. Position p is the logits at p, which predict token p + 1.")


# -- the chart ------------------------------------------------------------------------

class _Axis:
    """x of a position: the prompt to scale on the left, generated steps evenly on the right."""

    def __init__(self, seq: Sequence):
        self.seq = seq
        self.n_gen = len(seq.part(GENERATED))
        has_prompt = bool(seq.part(PROMPT))
        span = WIDTH - RIGHT - LEFT
        self.xb = LEFT + (span * PROMPT_SHARE if has_prompt and self.n_gen else
                          span if has_prompt else 0)

    def x(self, point: SeqPoint) -> float:
        if point.part == PROMPT:
            return LEFT + 4 + (self.xb - LEFT - 10) * point.position / max(self.seq.boundary, 1)
        return self.xb + (point.step + 0.5) * (WIDTH - RIGHT - self.xb) / max(self.n_gen, 1)

    def ticks(self) -> list[tuple[float, int]]:
        out = []
        if self.seq.part(PROMPT):
            step = nice_ceiling(max(self.seq.boundary, 1) / 6)
            pos = 0.0
            while pos < self.seq.boundary - step / 3:
                out.append((self.x(SeqPoint(int(pos), PROMPT, None, 0, 0)), int(pos)))
                pos += step
        every = max(1, math.ceil(self.n_gen / 5))
        out += [(self.x(p), p.position) for p in self.seq.part(GENERATED)[::every]]
        return out


def _dots(seq: Sequence, axis: _Axis, panel: Panel, attr: str, color: str, name: str) -> list[str]:
    out = []
    for part in (PROMPT, GENERATED):
        xy = [(axis.x(p), panel.y(value_of(getattr(p, attr))), p) for p in seq.part(part)
              if value_of(getattr(p, attr)) is not None]
        if len(xy) > 1:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in xy)
            out.append(f'<polyline class="series {part}" points="{coords}" fill="none" '
                       f'stroke-width="2" stroke="{color}"/>')
        for x, y, p in xy:
            where = (f"prompt position {p.position}" if p.part == PROMPT else
                     f"position {p.position} (generated step {p.step})")
            tip = f"<title>{escape(name)} at {escape(where)}: {escape(fmt(getattr(p, attr)))}</title>"
            if math.isinf(float(getattr(p, attr))):
                out.append(f'<path class="inf" fill="#b91c1c" d="M{x:.1f},{panel.top - 1:.1f} '
                           f'l-4,7 h8 z">{tip}</path>')
            else:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="{color}">{tip}</circle>')
    return out


def _vline(x: float, top: float, bottom: float, cls: str, label: str, row: int,
           color: str = "#616e7c") -> list[str]:
    left, right, anchor = label_box(x, label)
    return [f'<line class="{cls}" stroke="{color}" stroke-dasharray="5 4" x1="{x:.1f}" '
            f'y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}"/>',
            svg_text(left if anchor == "start" else right, top + 10 + row * 13, label,
                  f"{cls}-label", anchor) if label else ""]


def sequence_chart(case: CaseResult) -> Markup:
    """KL(G‖C) and max |Δ logprob| over a long case's whole sequence (sampled prompt
    positions, then the generated ones), the boundary between them, where drift starts
    and the first divergence marked. Empty for a case without sampled prompt positions."""
    if not case.per_position.get("prompt_position"):
        return Markup("")
    seq = sequence_of(case.per_position, case.prompt_length)
    if seq is None:
        return Markup("")
    tol = _limits(case)
    axis = _Axis(seq)
    series = [("KL(G‖C)", "kl", PALETTE[0], tol.get("kl_max")),
              ("max |Δ logprob|", "dlogprob", PALETTE[1], tol.get("logprob_atol"))]
    series = [s for s in series if any(value_of(getattr(p, s[1])) is not None for p in seq.points)]
    if not series:
        return Markup("")
    parts: list[str] = []
    for idx, (name, attr, color, limit) in enumerate(series):
        finite = [v for v in (value_of(getattr(p, attr)) for p in seq.points)
                  if v is not None and math.isfinite(v)]
        panel = Panel(top=idx * (TITLE_H + PANEL_H) + TITLE_H, height=PANEL_H,
                      ymax=nice_ceiling(max(finite, default=0.0)))
        parts += y_axis(panel, f"{name} over the whole sequence"
                         + (f" · limit {fmt(limit)}" if is_number(limit) else ""))
        parts += limit_line(limit, panel)
        parts += _dots(seq, axis, panel, attr, color, name)
    bottom = len(series) * (TITLE_H + PANEL_H)
    if seq.part(PROMPT) and seq.part(GENERATED):
        parts += _vline(axis.xb, TITLE_H, bottom + 20, "boundary", "", 0)
        parts.append(svg_text(axis.xb - 4, bottom + 30, "◂ prompt (sampled)", "boundary-label", "end"))
        parts.append(svg_text(axis.xb + 4, bottom + 30, f"generated from {seq.boundary} ▸",
                           "boundary-label"))
    drift = case_drift(case)
    if drift is not None and drift.path == "one-pass":
        parts += _vline(axis.x(drift.point), TITLE_H, bottom, "drift",
                        f"drift starts {drift.point.position}", 0, MARKER_COLORS["divergence"])
    step = case.divergence_step
    gen = seq.part(GENERATED)
    if step is not None and 0 <= step < len(gen):
        parts += _vline(axis.x(gen[step]), TITLE_H, bottom, "divergence", f"divergence {step}",
                        1, MARKER_COLORS["worst"])
    parts.append(f'<line class="axis" stroke="#9aa5b1" x1="{LEFT}" y1="{bottom:.1f}" '
                 f'x2="{WIDTH - RIGHT}" y2="{bottom:.1f}"/>')
    parts += [svg_text(x, bottom + 14, pos, "tick", "middle") for x, pos in axis.ticks()]
    parts.append(svg_text(LEFT - 6, bottom + 14, "pos.", "tick", "end"))
    label = (f"Per-position KL and |Δ logprob| of case {visible(case.id)} over its whole "
             f"sequence: {len(seq.part(PROMPT))} sampled prompt positions and "
             f"{len(gen)} generated positions")
    return svg_chart(bottom + AXIS_H + 22, label, "sequence-chart", parts)
