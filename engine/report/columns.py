"""The metric columns of a terminal table, per kind of spec: a causal LM shows KL,
top-1 agreement, |Δ logprob| and the divergence step; an embedding spec the smallest
cosine and the largest absolute / relative error; an ops spec the smallest cosine, the
largest absolute error and the error in units of the dtype's own rounding error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from specengine.results import CaseResult, RunResult
from specengine.report.limits import has_noise, headroom_cell, noise_cell
from specengine.report.model import case_metrics, tolerance
from specengine.report.text import fmt, fmt_ratio, is_number

CAUSAL, EMBEDDING, OPS = "causal-lm", "embedding", "ops"
CAUSAL_NOISE = "causal-lm+noise"      # a causal-lm run whose golden records the noise


@dataclass
class Columns:
    kind: str
    headers: tuple[str, ...]
    widths: tuple[int, ...]
    cells: Callable[[CaseResult], list[str]]


def case_kind(case: CaseResult) -> str | None:
    """What a case's checks measured (None when it has no metrics to tell by)."""
    keys = set()
    for check in case.checks:
        keys |= set(check.metrics)
    if "dtype_error_ratio" in keys:
        return OPS
    if "cosine_min" in keys:
        return EMBEDDING
    if keys & {"kl_mean", "kl_max", "top1_agreement"} or case.golden_tokens:
        return CAUSAL
    return None


def run_kind(run: RunResult) -> str:
    kinds = [k for k in (case_kind(c) for c in run.cases) if k]
    return max(set(kinds), key=kinds.count) if kinds else CAUSAL


def _values(case: CaseResult, key: str) -> list[float]:
    return [float(c.metrics[key]) for c in case.checks
            if is_number(c.metrics.get(key))]


def _lowest(case: CaseResult, key: str):
    values = _values(case, key)
    return min(values) if values else None


def _highest(case: CaseResult, key: str):
    values = _values(case, key)
    return max(values) if values else None


def _divergence(m) -> str:
    if m.divergence is None:
        return "—"
    return f"{m.divergence} (tie)" if m.divergence_ok else str(m.divergence)


def _causal(case: CaseResult) -> list[str]:
    """value/limit per metric (the one-pass path's, as judged), the headroom left on the
    tightest limit of either path, and the divergence step."""
    m = case_metrics(case)
    tol = tolerance(case)
    return [_over(fmt(m.kl_mean, 3), tol.get("kl_mean_max")),
            _over(fmt(m.kl_max, 3), tol.get("kl_max")),
            _over(fmt_ratio(m.top1), tol.get("top1_agreement_min")),
            _over(fmt(m.dlogprob, 3), tol.get("logprob_atol")),
            headroom_cell(case), _divergence(m)]


def _over(value: str, limit) -> str:
    return value if not is_number(limit) or value == "—" else f"{value}/{fmt(limit, 3)}"


def _causal_noise(case: CaseResult) -> list[str]:
    return _causal(case) + [noise_cell(case)]


def _cosine(value) -> str:
    return "—" if value is None else f"{value:.6f}"


def _embedding(case: CaseResult) -> list[str]:
    return [_cosine(_lowest(case, "cosine_min")), fmt(_highest(case, "max_abs_err"), 3),
            fmt(_highest(case, "max_rel_err"), 3)]


def _ops(case: CaseResult) -> list[str]:
    ratio = _highest(case, "dtype_error_ratio")
    return [_cosine(_lowest(case, "cosine_min")), fmt(_highest(case, "max_abs_err"), 3),
            "—" if ratio is None else f"{fmt(ratio, 3)}×"]


COLUMNS = {
    CAUSAL: (("KL mean/lim", "KL max/lim", "top-1/lim", "max|Δlp|/lim", "headroom",
              "diverges"), (16, 16, 11, 14, 16, 10), _causal),
    CAUSAL_NOISE: (("KL mean/lim", "KL max/lim", "top-1/lim", "max|Δlp|/lim", "headroom",
                    "diverges", "÷noise"), (16, 16, 11, 14, 16, 10, 8), _causal_noise),
    EMBEDDING: (("min cos", "max abs", "max rel"), (9, 9, 9), _embedding),
    OPS: (("min cos", "max abs", "err÷step"), (9, 9, 9), _ops),
}


def columns_for_kind(kind: str) -> Columns:
    headers, widths, cells = COLUMNS[kind]
    return Columns(kind, headers, widths, cells)


def columns_for(run: RunResult) -> Columns:
    kind = run_kind(run)
    return columns_for_kind(CAUSAL_NOISE if kind == CAUSAL and has_noise(run) else kind)
