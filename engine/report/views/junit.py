"""The view of the JUnit XML page: one suite per run, one testcase per case plus a `perf`
and a `distribution` testcase when the run has them, every attribute already text."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from specengine.results import ERROR, FAIL, NOT_RUN, PASS, CaseResult, RunResult
from specengine.report import model
from specengine.report.distribution import distribution_lines
from specengine.report.hints import near_tie_hints
from specengine.report.text import fmt, fmt_ratio, metrics_text, one_line, token_text, truncate
from specengine.report.tokens import decoded, divergence_texts, marked
from specengine.report.ttft import ttft_line, ttft_rows


@dataclass(frozen=True)
class JUnitCase:
    classname: str
    name: str
    time: str
    status: str            # pass | fail | error | not-run
    message: str = ""      # one line, for the failure/error attribute
    body: str = ""


@dataclass(frozen=True)
class JUnitSuite:
    name: str
    time: str
    cases: tuple[JUnitCase, ...]
    properties: tuple[tuple[str, str], ...]
    out: str
    failures: int
    errors: int
    skipped: int


@dataclass(frozen=True)
class JUnitView:
    tests: int
    failures: int
    errors: int
    skipped: int
    time: str
    suites: tuple[JUnitSuite, ...]


def _seconds(value: Any) -> str:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
    return f"{value:.3f}" if ok else "0.000"


def _line(text: str) -> str:
    return truncate(one_line(text), 500)


def _continuation_lines(case: CaseResult) -> list[str]:
    lines = [f"golden:    {_line(decoded(case, 'golden'))}",
             f"candidate: {_line(decoded(case, 'candidate'))}"]
    if case.divergence_step is not None:
        g, c = divergence_texts(case)
        lines.append(f"first divergence at step {case.divergence_step}: golden "
                     f"{token_text(g or '(end)')} → candidate {token_text(c or '(end)')}")
        lines.append(f"golden tokens:    {_line(marked(case, 'golden'))}")
        lines.append(f"candidate tokens: {_line(marked(case, 'candidate'))}")
    return lines


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
        lines += _continuation_lines(case)
    return "\n".join(lines)


def _classname(run: RunResult) -> str:
    return f"{run.spec_name}.{run.candidate.backend}"


def _junit_case(run: RunResult, case: CaseResult) -> JUnitCase:
    status = case.status if case.status in (PASS, FAIL, ERROR) else NOT_RUN
    message = "; ".join(case.failures()) or case.status
    return JUnitCase(classname=_classname(run), name=case.id, time=_seconds(case.duration_s),
                     status=status, message=_line(message),
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
    return JUnitCase(classname=_classname(run), name="perf", time="0.000", status=status,
                     message=_line(message), body="\n".join(view.messages + rows))


def _distribution_case(run: RunResult) -> JUnitCase | None:
    """A testcase for the spec-level distribution limits, when the spec sets any."""
    dist = run.distribution or {}
    limits = {k: v for k, v in (dist.get("limits") or {}).items() if k != "paths"}
    if not limits:
        return None
    failures = dist.get("failures") or []
    return JUnitCase(classname=_classname(run), name="distribution", time="0.000",
                     status=FAIL if failures else PASS,
                     message=_line("; ".join(failures) or "within limits"),
                     body="\n".join(distribution_lines(run)))


def _cases(run: RunResult) -> list[JUnitCase]:
    cases = [_junit_case(run, c) for c in run.cases]
    if getattr(run, "error", ""):      # the spec could not run: one error testcase
        cases.append(JUnitCase(classname=_classname(run), name="(spec)", time="0.000",
                               status=ERROR, message=_line(run.error),
                               body=f"the spec {run.spec_path} could not run: {run.error}"))
    extra = (_perf_case(run), _distribution_case(run))
    return cases + [case for case in extra if case is not None]


def _properties(run: RunResult) -> tuple[tuple[str, str], ...]:
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
    return tuple((k, str(v)) for k, v in props)


def _system_out(run: RunResult) -> str:
    out = [f"{run.spec_name}: {model.run_title(run)} [{run.comparison}]"]
    if run.comparison == model.SELF_CHECK:
        out.append(model.SELF_CHECK_TEXT)
    out += distribution_lines(run)
    out += [f"note: {n}" for n in run.notes]
    return "\n".join(out)


def _suite(run: RunResult) -> JUnitSuite:
    cases = tuple(_cases(run))

    def count(status: str) -> int:
        return sum(1 for c in cases if c.status == status)

    return JUnitSuite(name=_classname(run), time=_seconds(run.duration_s), cases=cases,
                      properties=_properties(run), out=_system_out(run), failures=count(FAIL),
                      errors=count(ERROR), skipped=count(NOT_RUN))


def junit_view(runs: list[RunResult]) -> JUnitView:
    """The JUnit page of `runs`: a suite per run."""
    suites = tuple(_suite(run) for run in runs)
    return JUnitView(tests=sum(len(s.cases) for s in suites),
                     failures=sum(s.failures for s in suites),
                     errors=sum(s.errors for s in suites),
                     skipped=sum(s.skipped for s in suites),
                     time=_seconds(sum(float(_seconds(r.duration_s)) for r in runs)),
                     suites=suites)
