"""The view of one case, computed once from a CaseResult: what every format shows of it
(`CaseFacts`: headline metrics, limit rows, checks, hints, the worst position's top-k), and
per format what only that format draws — token chips, charts and the localization for the
HTML report (`HtmlCase`), the marked `<pre>` continuations for Markdown (`MarkdownCase`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from specengine.results import CaseResult, RunResult
from specengine.report.charts import position_chart
from specengine.report.hints import near_tie_hints
from specengine.report.layers import localization_line
from specengine.report.limits import limit_rows
from specengine.report.model import CaseMetrics, bad_metrics, case_metrics, tolerance
from specengine.report.sequence import drift_text, sequence_caption, sequence_chart
from specengine.report.text import fmt, fmt_ratio, md_pre, metrics_text, token_text
from specengine.report.tokens import chips, decoded, divergence_texts, split_marked
from specengine.report.views.layers import LocalizationView, localization_view


@dataclass(frozen=True)
class LimitLine:
    """A judged metric beside its limit, every cell already text."""

    path: str
    metric: str
    relation: str             # "0.0012 ≤ 0.01"
    headroom: str
    klass: str
    origin: str
    noise: str                # value ÷ the reference's noise, or '—'
    ok: bool


@dataclass(frozen=True)
class CheckLine:
    name: str
    status: str
    message: str
    metrics: str              # key=value pairs on one line


@dataclass(frozen=True)
class TopKLine:
    """One token of the top-k at the worst position, both sides' probabilities."""

    token: str
    id: Any
    golden_p: Any
    candidate_p: Any
    delta: Any
    delta_class: str          # delta-pos | delta-neg | ''
    golden_px: int            # probability bar widths
    candidate_px: int


@dataclass(frozen=True)
class CaseFacts:
    """What every report format shows of a case."""

    id: str
    status: str
    metrics: CaseMetrics
    limit_rows: tuple[LimitLine, ...]
    error: str
    hints: tuple[str, ...]
    prompt: str
    drift: str                # where a long case's drift starts ('' when it does not)
    checks: tuple[CheckLine, ...]
    worst_topk: tuple[TopKLine, ...]
    worst_position: Any


def bar_px(p: Any, width: int = 120) -> int:
    """Width in pixels of a probability bar (0 for a missing or non-finite p)."""
    if not isinstance(p, (int, float)) or not math.isfinite(p):
        return 0
    return round(min(max(p, 0.0), 1.0) * width)


def _topk_line(r: Any) -> TopKLine:
    delta = r.delta or 0
    return TopKLine(r.token, r.id, r.golden_p, r.candidate_p, r.delta,
                    "delta-pos" if delta > 0 else "delta-neg" if delta < 0 else "",
                    bar_px(r.golden_p), bar_px(r.candidate_p))


def case_facts(case: CaseResult) -> CaseFacts:
    limits = tuple(LimitLine(r.path, r.metric, r.relation(), r.headroom_text(), r.klass,
                             r.origin, r.noise_text(), r.ok) for r in limit_rows(case))
    checks = tuple(CheckLine(c.name, c.status, c.message, metrics_text(c.metrics))
                   for c in case.checks)
    return CaseFacts(
        id=case.id, status=case.status, metrics=case_metrics(case), limit_rows=limits,
        error=case.error, hints=tuple(near_tie_hints(case)), prompt=case.prompt,
        drift=drift_text(case), checks=checks,
        worst_topk=tuple(_topk_line(r) for r in case.worst_topk or ()),
        worst_position=case.worst_position)


# --- HTML --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tile:
    """A headline metric tile; `bad` when it broke its limit."""

    label: str
    value: str
    bad: bool
    near_tie: bool = False    # a divergence the near-tie rule accepted


@dataclass(frozen=True)
class Chip:
    text: str
    css: str                  # "tok", plus diverged / after, benign, partial
    title: str


@dataclass(frozen=True)
class SideTokens:
    """One side's continuation: its token chips (none without per-token data) and text."""

    side: str                 # golden | candidate
    backend: str
    chips: tuple[Chip, ...]
    decoded: str


@dataclass(frozen=True)
class HtmlCase:
    facts: CaseFacts
    anchor: str
    open: bool                # shown unfolded (every case that did not pass)
    headline: str             # the one-line metrics beside their limits
    tiles: tuple[Tile, ...]
    golden_at: str            # each side's text at the first divergence
    candidate_at: str
    per_token: bool           # the golden has per-token data
    sides: tuple[SideTokens, ...]
    sequence_chart: Markup    # a long case over its whole sequence
    sequence_caption: str
    position_chart: Markup    # along the continuation (when there is no sequence chart)
    localization: LocalizationView | None


def _headline(m: CaseMetrics, lim: dict[str, Any]) -> str:
    def limit(key: str) -> str:
        return f" / {fmt(lim[key], 3)}" if key in lim else ""

    text = (f"KL mean {fmt(m.kl_mean, 3)}{limit('kl_mean_max')} · KL max {fmt(m.kl_max, 3)}"
            f"{limit('kl_max')} · top-1 {fmt_ratio(m.top1)}{limit('top1_agreement_min')} · "
            f"max |Δ logprob| {fmt(m.dlogprob, 3)}{limit('logprob_atol')}")
    return text + (f" · diverges at {m.divergence}" if m.divergence is not None else "")


def _tiles(case: CaseResult, m: CaseMetrics) -> tuple[Tile, ...]:
    bad = bad_metrics(case)
    divergence = "none" if m.divergence is None else str(m.divergence)
    return (Tile("KL mean", fmt(m.kl_mean), "kl_mean" in bad),
            Tile("KL max", fmt(m.kl_max), "kl_max" in bad),
            Tile("top-1 agreement", fmt_ratio(m.top1), "top1" in bad),
            Tile("max |Δ logprob|", fmt(m.dlogprob), "dlogprob" in bad),
            Tile("divergence step", divergence, m.divergence_ok is False,
                 m.divergence is not None and bool(m.divergence_ok)))


def _side(case: CaseResult, side: str, backend: str, benign: bool) -> SideTokens:
    shown = tuple(Chip(c.text, f"tok {c.cls}{' benign' if c.cls == 'diverged' and benign else ''}"
                       f"{' partial' if c.partial else ''}", c.title) for c in chips(case, side))
    return SideTokens(side, backend, shown, decoded(case, side))


def html_case(run: RunResult, case: CaseResult, anchor: str) -> HtmlCase:
    facts = case_facts(case)
    m = facts.metrics
    golden_at, candidate_at = divergence_texts(case)
    benign = bool(m.divergence_ok)
    seq_chart = sequence_chart(case)
    return HtmlCase(
        facts=facts, anchor=anchor, open=case.status != "pass",
        headline=_headline(m, tolerance(case)), tiles=_tiles(case, m),
        golden_at=golden_at or "(end)", candidate_at=candidate_at or "(end)",
        per_token=bool(case.golden_tokens),
        sides=(_side(case, "golden", run.reference.backend, benign),
               _side(case, "candidate", run.candidate.backend, benign)),
        sequence_chart=seq_chart, sequence_caption=sequence_caption(case) if seq_chart else "",
        position_chart=Markup("") if seq_chart else position_chart(case),
        localization=localization_view(case.localization, anchor + "-layers")
        if case.localization else None)


# --- Markdown ----------------------------------------------------------------------------

@dataclass(frozen=True)
class MarkdownCase:
    facts: CaseFacts
    localization: str         # one line: the first drifting layer, or why none
    identical: bool           # both sides wrote the same continuation
    has_text: bool            # there is a continuation to show
    reference: str            # the backends of both sides
    candidate: str
    divergence_step: int | None
    golden_pre: Markup        # `<pre>` contents, the first divergence marked ⟦…⟧
    candidate_pre: Markup
    golden_decoded: str
    candidate_decoded: str


def _pre_text(case: CaseResult, side: str, mark: bool = True) -> Markup:
    """One side's readable continuation for a Markdown `<pre>` block, the first divergence
    bracketed in bold."""
    before, at, after = split_marked(case, side)
    if at is None or not mark:
        return Markup(md_pre(decoded(case, side), 4000))
    return Markup(f"{md_pre(before, 2000)}<b>⟦{md_pre(token_text(at), 200)}⟧</b>"
                  f"{md_pre(after, 2000)}")


def markdown_case(run: RunResult, case: CaseResult, anchor: str = "") -> MarkdownCase:
    identical = (case.golden_tokens == case.candidate_tokens
                 and case.golden_text == case.candidate_text and case.divergence_step is None)
    return MarkdownCase(
        facts=case_facts(case),
        localization=localization_line(case.localization) if case.localization else "",
        identical=identical, has_text=bool(case.golden_tokens or case.golden_text),
        reference=run.reference.backend, candidate=run.candidate.backend,
        divergence_step=case.divergence_step,
        golden_pre=_pre_text(case, "golden", mark=not identical),
        candidate_pre=Markup("") if identical else _pre_text(case, "candidate"),
        golden_decoded=decoded(case, "golden"), candidate_decoded=decoded(case, "candidate"))
