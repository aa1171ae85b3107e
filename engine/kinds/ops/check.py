"""Checking one operator: its seeded inputs on the candidate, against the reference (the
float64 oracle on dtype-rounded inputs, or a live backend), each float output judged
relative to what its dtype can achieve (kinds.ops.checks), MoE routing by expert sets with
near-ties, then repeats for determinism."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from specengine.compare.tolerances import coarser, dtype_class
from specengine.errors import GoldenError
from specengine.kinds.ops.checks import float_check, routing_checks
from specengine.kinds.ops.golden import RecordedOutput
from specengine.kinds.ops.runner import OpRunner, round_to, same_class
from specengine.kinds.policy import run_checks
from specengine.results import FAIL, PASS, CaseResult, Check, Side
from specengine.spec import OpCase
from specengine.spec.ops_catalog import OPS


def check_op(case: OpCase, runner: OpRunner, ref_runner: OpRunner | None, ref_side: Side,
             cand_side: Side, recorded: Mapping[str, RecordedOutput] | None,
             inputs_sha256: str | None, timeout_s: float | None = None) -> CaseResult:
    """One op's checks; `recorded` / `inputs_sha256` are the golden's record of it (None
    without an ops golden)."""
    dtype = runner.dtype_for(case)
    result = CaseResult(id=case.id, status=PASS, line=case.line, tags=list(case.tags),
                        prompt=case.describe(dtype))
    return run_checks(result, lambda: _run(case, runner, ref_runner, ref_side, cand_side,
                                           recorded, inputs_sha256, result), timeout_s)


def _run(case: OpCase, runner: OpRunner, ref_runner: OpRunner | None, ref_side: Side,
         cand_side: Side, recorded: Mapping[str, RecordedOutput] | None,
         inputs_sha256: str | None, result: CaseResult) -> None:
    dtype = runner.dtype_for(case)
    m = runner.measure(case)
    if inputs_sha256 is not None and inputs_sha256 != m.inputs_sha256:
        raise GoldenError(f"op '{case.id}': the seeded inputs differ from the ones the "
                          f"golden was recorded with (an older input generator?); "
                          "re-record with --update")
    if ref_runner is not None:
        ref_out, _ = ref_runner.run(case, m.inputs)
        ref_dtype = ref_runner.dtype_for(case)
    else:
        ref_out, ref_dtype = m.oracle, "float64"
    self_check = same_class(cand_side, dtype, ref_side, ref_dtype)
    limits = runner.session.spec.limits(case, coarser(dtype_class(dtype), dtype_class(ref_dtype)),
                                        runner.config.name)
    recorded = recorded or {}
    reduction = OPS[case.op].reduction(case.dims)
    if case.op == "moe_topk_routing":
        result.checks.append(float_check("scores", ref_out["scores"], m.outputs["scores"],
                                         m.oracle["scores"], dtype, limits, self_check,
                                         reduction, recorded.get("scores")))
        result.checks += routing_checks(case, ref_out, m.outputs, m.oracle, dtype, self_check,
                                        {k: round_to(v, dtype) for k, v in m.inputs.items()},
                                        recorded, limits)
    else:
        for name in sorted(m.outputs):
            result.checks.append(float_check(name, ref_out[name], m.outputs[name],
                                             m.oracle[name], dtype, limits, self_check,
                                             reduction, recorded.get(name)))
    if case.determinism.runs > 1:
        result.checks.append(_determinism(case, runner, m))


def _determinism(case: OpCase, runner: OpRunner, m) -> Check:
    det, worst = case.determinism, 0.0
    for _ in range(det.runs - 1):
        again, _ = runner.run(case, m.inputs)
        for name, value in again.items():
            diff = float(np.abs(value.astype(np.float64) - m.outputs[name]).max()) \
                if value.size else 0.0
            worst = max(worst, diff if np.isfinite(diff) else float("inf"))
    ok = worst <= det.atol
    return Check("determinism", PASS if ok else FAIL,
                 f"{det.runs} runs identical within atol {det.atol:g}" if ok else
                 f"repeats differ by max |Δ| {worst:.3g} (atol {det.atol:g})",
                 {"runs": det.runs, "max_abs_diff": worst, "atol": det.atol})


def op_note(result: CaseResult) -> str:
    bits = []
    for c in result.checks:
        if "dtype_error_ratio" in c.metrics:
            m = c.metrics
            bits.append(f"{c.name} {m['dtype']} max|Δ| {m['max_abs_err']:.3g}, rel<5e-3 "
                        f"{m['rel_share_5e3']:.1%}, {m['dtype_error_ratio']:.3g}x rounding")
        elif c.name == "routing":
            bits.append(f"routing {c.metrics['agree']}/{c.metrics['tokens']} agree, "
                        f"{c.metrics['near_ties']} near-tie(s)")
    text = "; ".join(bits) or result.error or "no metrics"
    return f"{result.id} [{result.status}]: {text}"
