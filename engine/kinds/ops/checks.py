"""Judging one op (pure): float outputs against the reference and the oracle, MoE routing
(expert ids with near-ties, and the weights of the tokens whose experts agree)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from specengine.compare.arrays import array_stats, dtype_error, limit_failures
from specengine.kinds.ops.golden import RecordedOutput
from specengine.kinds.ops.runner import round_to
from specengine.results import FAIL, NOT_RUN, PASS, Check
from specengine.compare.limits import Limits
from specengine.spec import OpCase
from specengine.spec.ops_catalog import OPS

_INT_OUTPUTS = {"ids"}


def float_check(name: str, reference: np.ndarray, candidate: np.ndarray, oracle: np.ndarray,
                dtype: str, limits: Limits, self_check: bool, reduction: int,
                recorded: RecordedOutput | None = None) -> Check:
    """Metrics of one float output; fails on the limits of its class (a self-check only
    reports)."""
    tol = limits.values
    stats = array_stats(reference, candidate)
    derr = dtype_error(oracle, candidate, round_to(oracle, dtype), dtype)
    failures = []
    if not stats.finite:
        failures.append("candidate output contains NaN or Inf")
    if stats.cosine_min < tol.cosine_min:
        failures.append(f"cosine {stats.cosine_min:.6f} < {tol.cosine_min} (row {stats.worst_row})")
    if not derr.dtype_error_ratio <= tol.dtype_error_ratio_max:
        failures.append(f"error {derr.dtype_error_ratio:.3g}x the {dtype} rounding error "
                        f"> {tol.dtype_error_ratio_max:g}x")
    failures += limit_failures(stats, tol)
    summary = (f"{dtype}: max |Δ| {stats.max_abs_err:.3g}, max rel {stats.max_rel_err:.3g}, "
               f"rel<1e-3 {stats.rel_share_1e3:.1%}, rel<5e-3 {stats.rel_share_5e3:.1%}, cosine min "
               f"{stats.cosine_min:.6f}; {derr.dtype_error_ratio:.3g}x the {dtype} rounding error "
               f"({derr.max_err_dtype_units:.3g} units of u at the output's scale)")
    if recorded is not None and recorded.dtype_error_ratio is not None:
        summary += (f"; reference {recorded.backend} ({recorded.dtype}): "
                    f"{recorded.dtype_error_ratio:.3g}x")
    metrics = {**stats.as_dict(), **derr.as_dict(), "reduction_length": reduction,
               "comparison": "self-check" if self_check else "cross-backend",
               **limits.metrics()}
    if recorded is not None:
        metrics["reference_recorded"] = recorded.as_metrics()
    if self_check:
        zero = stats.max_abs_err == 0.0
        return Check(name, PASS if not failures else FAIL,
                     "self-check (same runtime, device and dtype on both sides: repeatability "
                     f"only, not a cross-device pass){' — identical' if zero else ''}: {summary}",
                     metrics)
    return Check(name, FAIL if failures else PASS,
                 ("; ".join(failures) + " — " + summary) if failures else summary, metrics)


@dataclass
class Routing:
    tokens: int
    agree: int
    near_ties: int
    mismatched: list[int]             # tokens whose disagreement is not a near-tie
    matched_rows: np.ndarray          # bool per token: same expert set


def compare_routing(ref_ids: np.ndarray, cand_ids: np.ndarray, ref_select: np.ndarray,
                    score_err: np.ndarray) -> Routing:
    """Expert-set agreement per token. A disagreement is a near-tie when every expert the
    candidate chose instead of one of the reference's has a reference selection score
    within 2 x score_err[token] of the one it replaced (pure)."""
    n = ref_ids.shape[0]
    matched = np.zeros(n, dtype=bool)
    ties, bad = 0, []
    for t in range(n):
        a, b = set(int(i) for i in ref_ids[t]), set(int(i) for i in cand_ids[t])
        if a == b:
            matched[t] = True
            continue
        missing, extra = sorted(a - b), sorted(b - a)
        gap = max(ref_select[t, m] for m in missing) - min(ref_select[t, e] for e in extra)
        if gap <= 2.0 * score_err[t] + 1e-12:
            ties += 1
        else:
            bad.append(t)
    return Routing(n, int(matched.sum()), ties, bad, matched)


def _aligned_weights(ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    order = np.argsort(ids, axis=-1, kind="stable")
    return np.take_along_axis(weights, order, axis=-1)


def routing_checks(case: OpCase, ref: dict, cand: dict, oracle: dict, dtype: str,
                   self_check: bool, inputs: dict, recorded: Mapping | None,
                   limits: Limits) -> list[Check]:
    tol = limits.values
    bias = inputs.get("bias")
    ref_select = ref["scores"] + (bias if bias is not None else 0.0)
    score_err = np.abs(cand["scores"] - ref["scores"]).max(axis=-1)
    r = compare_routing(ref["ids"], cand["ids"], ref_select, score_err)
    ok = len(r.mismatched) <= tol.routing_mismatch_max
    message = (f"expert sets agree on {r.agree}/{r.tokens} tokens, {r.near_ties} near-tie swap(s) "
               f"within the measured score error, {len(r.mismatched)} other disagreement(s)"
               + (f" (tokens {r.mismatched[:8]})" if r.mismatched else "")
               + ("" if ok else f" > {tol.routing_mismatch_max} allowed"))
    if self_check:
        message = "self-check (repeatability only, not a cross-device pass): " + message
    checks = [Check("routing", PASS if ok else FAIL, message,
                    {"tokens": r.tokens, "agree": r.agree, "near_ties": r.near_ties,
                     "mismatched": len(r.mismatched), "agreement": r.agree / max(r.tokens, 1),
                     "comparison": "self-check" if self_check else "cross-backend"})]
    # weights of the tokens whose expert set is the same on all three sides, by expert id
    rows = r.matched_rows & (np.sort(oracle["ids"], -1) == np.sort(cand["ids"], -1)).all(-1)
    if rows.any():
        reduction = OPS[case.op].reduction(case.dims)
        checks.append(float_check(
            "weights", _aligned_weights(ref["ids"][rows], ref["weights"][rows]),
            _aligned_weights(cand["ids"][rows], cand["weights"][rows]),
            _aligned_weights(oracle["ids"][rows], oracle["weights"][rows]),
            dtype, limits, self_check, reduction, (recorded or {}).get("weights")))
    else:
        checks.append(Check("weights", NOT_RUN, "no token with the same expert set"))
    return checks
