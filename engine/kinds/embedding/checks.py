"""Checking one embedding case: the candidate's outputs for the case's inputs compared
with the golden's per output (cosine, max abs / rel error, shares of small relative errors;
compare.arrays), judged by the limits of the comparison's class, then repeated for
determinism."""

from __future__ import annotations

import numpy as np

from specengine.compare.arrays import ArrayStats, array_stats, limit_failures
from specengine.compare.limits import Limits
from specengine.kinds.embedding.golden import EmbeddingGolden
from specengine.kinds.embedding.session import EmbeddingSession
from specengine.kinds.policy import run_checks
from specengine.results import FAIL, PASS, CaseResult, Check
from specengine.spec import OUTPUTS, EmbeddingCase


def output_check(name: str, stats: ArrayStats, limits: Limits) -> Check:
    """Judge one output's metrics against the limits of the comparison's class (pure)."""
    tol = limits.values
    cos_min = tol.cosine_min if name == "pooled" else tol.hidden_cosine_min
    per = "input" if name == "pooled" else "token"
    failures = []
    if not stats.finite:
        failures.append("candidate output contains NaN or Inf")
    if stats.cosine_min < cos_min:
        failures.append(f"cosine {stats.cosine_min:.6f} < {cos_min} ({per} {stats.worst_row})")
    failures += limit_failures(stats, tol)
    summary = (f"cosine min {stats.cosine_min:.6f} over {stats.rows} {per}s, max |Δ| "
               f"{stats.max_abs_err:.3g}, max rel {stats.max_rel_err:.3g}, rel<1e-3 "
               f"{stats.rel_share_1e3:.1%}, rel<5e-3 {stats.rel_share_5e3:.1%}")
    metrics = stats.as_dict()
    metrics["cosine_min_limit"] = cos_min
    metrics.update(limits.metrics())
    summary += f" (limit: cosine ≥ {cos_min:g}, {limits.label()})"
    return Check(name, FAIL if failures else PASS,
                 ("; ".join(failures) + " — " + summary) if failures else summary, metrics)


def check_case(session: EmbeddingSession, case: EmbeddingCase, golden: EmbeddingGolden,
               limits: Limits) -> CaseResult:
    result = CaseResult(id=case.id, status=PASS, line=case.line, tags=list(case.tags),
                        prompt=case.describe())
    return run_checks(result, lambda: _run_checks(session, case, golden, result, limits),
                      session.spec.timeout_s)


def _run_checks(session: EmbeddingSession, case: EmbeddingCase, golden: EmbeddingGolden,
                result: CaseResult, limits: Limits) -> None:
    names, record = golden.outputs, golden.case(case.id)
    expected = record.outputs()
    prepared = session.inputs(case)
    got = session.outputs(prepared, golden.pooling, golden.normalize, names)
    lengths = record.lengths()
    if "lengths" in got and lengths is not None and list(got["lengths"]) != list(lengths):
        result.checks.append(Check("inputs", FAIL, f"candidate token counts {got['lengths']} "
                                   f"differ from the golden's {lengths}"))
        return
    for name in names:
        if expected[name].shape != got[name].shape:
            result.checks.append(Check(name, FAIL, f"shape {list(got[name].shape)} differs from "
                                       f"the golden's {list(expected[name].shape)}"))
            continue
        result.checks.append(output_check(name, array_stats(expected[name], got[name]),
                                          limits))
    det = case.determinism
    if det.runs > 1:
        worst, where = 0.0, ""
        for run_no in range(2, det.runs + 1):
            again = session.outputs(prepared, golden.pooling, golden.normalize, names)
            for name in names:
                diff = float(np.abs(again[name].astype(np.float64) - got[name]).max()) \
                    if got[name].size else 0.0
                if not np.isfinite(diff):
                    diff = float("inf")
                if diff > worst:
                    worst, where = diff, f"run {run_no} {name}"
        ok = worst <= det.atol
        message = (f"{det.runs} runs identical within atol {det.atol:g}" if ok else
                   f"{where} differs from run 1 by max |Δ| {worst:.3g} (atol {det.atol:g})")
        result.checks.append(Check("determinism", PASS if ok else FAIL, message,
                                   {"runs": det.runs, "max_abs_diff": worst, "atol": det.atol}))


def case_note(result: CaseResult) -> str:
    """One line per case for the terminal summary (whose columns are causal-lm metrics)."""
    bits = []
    for check in result.checks:
        if check.name in OUTPUTS and "cosine_min" in check.metrics:
            m = check.metrics
            bits.append(f"{check.name} cos min {m['cosine_min']:.6f}, max |Δ| "
                        f"{m['max_abs_err']:.3g}, rel<5e-3 {m['rel_share_5e3']:.1%}")
    text = "; ".join(bits) or (result.error or "no metrics")
    return f"{result.id} [{result.status}]: {text}"
