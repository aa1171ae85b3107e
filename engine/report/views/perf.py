"""The view of a run's performance section: the gate's verdict and messages, the other
scalar measurements, a row per backend and batch size with its chart, and time to first
token by prompt length with its chart and one-line summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from specengine.report.charts import perf_chart, perf_mermaid
from specengine.report.model import perf_view
from specengine.report.ttft import ttft_chart, ttft_line, ttft_rows


@dataclass(frozen=True)
class PerfLine:
    """One backend at one batch size (values unformatted; `None` when not measured)."""

    backend: str
    batch_size: Any
    ttft_p50: Any
    ttft_p90: Any
    ttft_p99: Any
    tpot_p50: Any
    tpot_p90: Any
    tpot_p99: Any
    tokens_per_s: Any
    peak_mem_gib: Any


@dataclass(frozen=True)
class LengthLine:
    """Time to first token at one prompt length."""

    prompt_tokens: int
    p50: Any
    p90: Any
    p99: Any
    cases: str                # the cases measured at this length, comma-separated


@dataclass(frozen=True)
class PerfSection:
    anchor: str
    status: str               # the perf gate's status as recorded ('' when not judged)
    badge: str                # pass | fail | error | not-run
    label: str                # the status, or "measured"
    messages: tuple[str, ...]
    extras: tuple[tuple[str, Any], ...]    # other scalar measurements (load time, ...)
    rows: tuple[PerfLine, ...]
    chart: Markup             # tokens/s by batch size, SVG
    mermaid: Markup           # the same as a Mermaid chart (Markdown)
    lengths: tuple[LengthLine, ...]
    length_runs: Any          # timed runs per length
    ttft_chart: Markup
    ttft_line: str


def perf_section(perf: Any, anchor: str) -> PerfSection | None:
    """The performance section of `run.perf`; None when the run measured none."""
    view = perf_view(perf)
    if view is None:
        return None
    rows = tuple(PerfLine(r.backend, r.batch_size, r.ttft.get("p50"), r.ttft.get("p90"),
                          r.ttft.get("p99"), r.tpot.get("p50"), r.tpot.get("p90"),
                          r.tpot.get("p99"), r.tokens_per_s, r.peak_mem_gib) for r in view.rows)
    lengths = ttft_rows(perf)
    return PerfSection(
        anchor=anchor, status=view.status,
        badge=view.status if view.status in ("pass", "fail", "error") else "not-run",
        label=view.status or "measured", messages=tuple(view.messages),
        extras=tuple(view.extras), rows=rows, chart=perf_chart(view),
        mermaid=perf_mermaid(view) if view.rows else Markup(""),
        lengths=tuple(LengthLine(r.prompt_tokens, r.ttft.get("p50"), r.ttft.get("p90"),
                                 r.ttft.get("p99"), ", ".join(r.cases)) for r in lengths),
        length_runs=lengths[0].runs if lengths else None, ttft_chart=ttft_chart(lengths),
        ttft_line=ttft_line(lengths))
