"""HTML and JUnit rendering, and the one Jinja2 environment every template goes through.

Autoescaping is on for `*.html.j2` and `*.xml.j2` and off for Markdown (whose templates
escape explicitly with the `md*` filters). A `finalize` hook makes control characters
visible in every `{{ }}` of every template, so no format can emit characters that XML
forbids or that a terminal or browser would act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from specengine import __version__
from specengine.results import ERROR, FAIL, NOT_RUN, PASS, CaseResult, RunResult
from specengine.report import model
from specengine.report.charts import perf_chart, perf_mermaid, position_chart
from specengine.report.distribution import distribution_lines, distribution_rows
from specengine.report.layers import layer_chart, localization_line
from specengine.report.hints import near_tie_hints
from specengine.report.limits import class_line, limit_rows
from specengine.report.sequence import drift_text, sequence_caption, sequence_chart
from specengine.report.ttft import ttft_chart, ttft_line, ttft_rows
from specengine.report.tokens import chips, decoded, divergence_texts, marked, split_marked
from specengine.report.text import (fmt, fmt_ratio, fmt_seconds, icon, md_cell, md_escape,
    md_marked, md_pre, metrics_text, one_line, short_hash, token_text, truncate, visible)


def bar_px(p: Any, width: int = 120) -> int:
    """Width in pixels of a probability bar (0 for a missing or non-finite p)."""
    if not isinstance(p, (int, float)) or not math.isfinite(p):
        return 0
    return round(min(max(p, 0.0), 1.0) * width)


def _finalize(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    return visible(value)


@lru_cache(maxsize=1)
def environment() -> Environment:
    folder = resources.files("specengine").joinpath("templates")
    env = Environment(
        loader=FileSystemLoader(str(folder)),
        autoescape=select_autoescape(enabled_extensions=("html.j2", "xml.j2"),
                                     disabled_extensions=("md.j2",),
                                     default_for_string=True, default=True),
        undefined=StrictUndefined, finalize=_finalize,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(
        fmt=fmt, ratio=fmt_ratio, seconds=fmt_seconds, md=md_escape, mdcell=md_cell,
        mdpre=md_pre, oneline=one_line, tok=token_text, trunc=truncate,
        metrics=metrics_text, short=short_hash, icon=icon)
    env.globals.update(
        case_metrics=model.case_metrics, env_rows=model.env_rows, perf_view=model.perf_view,
        run_status=model.run_status, run_title=model.run_title,
        failing_checks=model.failing_checks, bad_metrics=model.bad_metrics, divergence_tokens=model.divergence_tokens,
        tokens=model.tokens, case_anchor=model.case_anchor, position_chart=position_chart, layer_chart=layer_chart, localization_line=localization_line,
        perf_chart=perf_chart, perf_mermaid=perf_mermaid, bar_px=bar_px, md_marked=md_marked, SELF_CHECK=model.SELF_CHECK,
        chips=chips, divergence_texts=divergence_texts, near_tie_hints=near_tie_hints, md_case_text=_md_case_text, decoded=decoded,
        SELF_CHECK_TEXT=model.SELF_CHECK_TEXT, version=__version__,
        distribution_rows=distribution_rows, tolerance_set=model.tolerance_set,
        tolerance=model.tolerance, limit_rows=limit_rows, class_line=class_line,
        sequence_chart=sequence_chart, sequence_caption=sequence_caption, drift_text=drift_text,
        ttft_rows=ttft_rows, ttft_chart=ttft_chart, ttft_line=ttft_line)
    return env


def _md_case_text(case: CaseResult, side: str, mark: bool = True) -> Markup:
    """One side's readable continuation for a Markdown `<pre>` block, the first divergence
    bracketed in bold."""
    before, at, after = split_marked(case, side)
    if at is None or not mark:
        return Markup(md_pre(decoded(case, side), 4000))
    return Markup(f"{md_pre(before, 2000)}<b>⟦{md_pre(token_text(at), 200)}⟧</b>"
                  f"{md_pre(after, 2000)}")


def common_context(runs: list[RunResult]) -> dict[str, Any]:
    verdict = model.overall_status(runs)
    return {"runs": runs, "verdict": verdict, "counts": model.counts(runs),
            "all_self_check": model.all_self_check(runs),
            "groups": model.summary_groups(runs)}


def render_html(runs: list[RunResult]) -> str:
    """One self-contained HTML page (embedded CSS and inline SVG, no script, no network)."""
    return environment().get_template("report.html.j2").render(**common_context(runs))


# --- JUnit ---------------------------------------------------------------------------

@dataclass
class JUnitCase:
    classname: str
    name: str
    time: str
    status: str            # pass | fail | error | not-run
    message: str = ""      # one line, for the failure/error attribute
    body: str = ""


@dataclass
class JUnitSuite:
    name: str
    time: str
    cases: list[JUnitCase]
    properties: list[tuple[str, str]]
    out: str

    def count(self, status: str) -> int:
        return sum(1 for c in self.cases if c.status == status)


def _seconds(value: Any) -> str:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
    return f"{value:.3f}" if ok else "0.000"


def _case_body(case: CaseResult) -> str:
    lines = []
    for check in model.failing_checks(case):
        lines.append(f"{check.name}: {check.status} — {check.message}")
        if check.metrics:
            lines.append(f"  metrics: {metrics_text(check.metrics)}")
    if case.error:
        lines.append(f"error: {case.error}")
    lines += [f"note: {hint}" for hint in near_tie_hints(case)]
    m = model.case_metrics(case)
    lines.append(f"KL mean {fmt(m.kl_mean)}, KL max {fmt(m.kl_max)}, top-1 agreement "
                 f"{fmt_ratio(m.top1)}, max |Δ logprob| {fmt(m.dlogprob)}, "
                 f"divergence step {fmt(m.divergence)}")
    if case.golden_text or case.candidate_text:
        lines.append(f"golden:    {truncate(one_line(decoded(case, 'golden')), 500)}")
        lines.append(f"candidate: {truncate(one_line(decoded(case, 'candidate')), 500)}")
        if case.divergence_step is not None:
            g, c = divergence_texts(case)
            lines.append(f"first divergence at step {case.divergence_step}: golden "
                         f"{token_text(g or '(end)')} → candidate {token_text(c or '(end)')}")
            lines.append(f"golden tokens:    {truncate(one_line(marked(case, 'golden')), 500)}")
            lines.append(f"candidate tokens: {truncate(one_line(marked(case, 'candidate')), 500)}")
    return "\n".join(lines)


def _junit_case(run: RunResult, case: CaseResult) -> JUnitCase:
    status = case.status if case.status in (PASS, FAIL, ERROR) else NOT_RUN
    message = "; ".join(case.failures()) or case.status
    return JUnitCase(classname=f"{run.spec_name}.{run.candidate.backend}", name=case.id,
                     time=_seconds(case.duration_s), status=status,
                     message=truncate(one_line(message), 500),
                     body="" if status == PASS else _case_body(case))


def _perf_case(run: RunResult) -> JUnitCase | None:
    view = model.perf_view(run.perf)
    if view is None:
        return None
    status = view.status if view.status in (FAIL, ERROR) else PASS
    rows = [f"{r.backend} batch {fmt(r.batch_size)}: {fmt(r.tokens_per_s)} tokens/s, TTFT "
            f"p50 {fmt(r.ttft.get('p50'))} ms, TPOT p50 {fmt(r.tpot.get('p50'))} ms"
            for r in view.rows]
    rows += [line for line in (ttft_line(ttft_rows(run.perf)),) if line]
    message = "; ".join(view.messages) or f"perf {view.status or 'measured'}"
    return JUnitCase(classname=f"{run.spec_name}.{run.candidate.backend}", name="perf",
                     time="0.000", status=status, message=truncate(one_line(message), 500),
                     body="\n".join(view.messages + rows))


def _distribution_case(run: RunResult) -> JUnitCase | None:
    """A testcase for the spec-level distribution limits, when the spec sets any."""
    dist = run.distribution or {}
    limits = {k: v for k, v in (dist.get("limits") or {}).items() if k != "paths"}
    if not limits:
        return None
    failures = dist.get("failures") or []
    return JUnitCase(classname=f"{run.spec_name}.{run.candidate.backend}", name="distribution",
                     time="0.000", status=FAIL if failures else PASS,
                     message=truncate(one_line("; ".join(failures) or "within limits"), 500),
                     body="\n".join(distribution_lines(run)))


def junit_suites(runs: list[RunResult]) -> list[JUnitSuite]:
    suites = []
    for run in runs:
        cases = [_junit_case(run, c) for c in run.cases]
        if getattr(run, "error", ""):      # the spec could not run: one error testcase
            cases.append(JUnitCase(classname=f"{run.spec_name}.{run.candidate.backend}",
                                   name="(spec)", time="0.000", status=ERROR,
                                   message=truncate(one_line(run.error), 500),
                                   body=f"the spec {run.spec_path} could not run: {run.error}"))
        perf = _perf_case(run)
        if perf is not None:
            cases.append(perf)
        dist = _distribution_case(run)
        if dist is not None:
            cases.append(dist)
        cand, ref = run.candidate, run.reference
        props = [("comparison", run.comparison), ("reference_kind", run.reference_kind),
                 ("candidate.backend", cand.backend), ("candidate.dtype", cand.dtype),
                 ("candidate.device_name", cand.device_name),
                 ("candidate.model_fingerprint", cand.model_fingerprint),
                 ("reference.backend", ref.backend), ("reference.dtype", ref.dtype),
                 ("reference.device_name", ref.device_name),
                 ("reference.model_fingerprint", ref.model_fingerprint),
                 ("tolerance_class", run.tolerance_class),
                 ("candidate.modeling", model.modeling_text(cand)),
                 ("reference.modeling", model.modeling_text(ref))]
        out = [f"{run.spec_name}: {model.run_title(run)} [{run.comparison}]"]
        if run.comparison == model.SELF_CHECK:
            out.append(model.SELF_CHECK_TEXT)
        out += distribution_lines(run)
        out += [f"note: {n}" for n in run.notes]
        suites.append(JUnitSuite(name=f"{run.spec_name}.{cand.backend}",
                                 time=_seconds(run.duration_s), cases=cases,
                                 properties=[(k, str(v)) for k, v in props], out="\n".join(out)))
    return suites


def render_junit(runs: list[RunResult]) -> str:
    """JUnit XML: `<testsuites>` holding one `<testsuite>` per run; each case one
    `<testcase classname="SPEC.BACKEND" name="CASE_ID">`; a `perf` testcase when the
    run measured performance."""
    suites = junit_suites(runs)
    return environment().get_template("junit.xml.j2").render(
        suites=suites, total=lambda status: sum(s.count(status) for s in suites),
        tests=sum(len(s.cases) for s in suites),
        time=_seconds(sum(float(_seconds(r.duration_s)) for r in runs)))
