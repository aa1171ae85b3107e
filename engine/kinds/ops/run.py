"""Checking and recording ops specs: each op through the shared skeleton (kinds.base), its
golden through the one lifecycle (golden.store)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from specengine.backends.registry import config_for
from specengine.compare.tolerances import coarser, dtype_class
from specengine.errors import BackendCrashed, GoldenError
from specengine.golden.store import (GoldenFormat, default_golden_dir, golden_path,
                                     previous_golden, read_verified, replace_golden, seal)
from specengine.kinds.base import (check_cases, finish_run, new_run, not_run_cases, record_cases,
                                   run_checks)
from specengine.kinds.ops.checks import float_check, routing_checks
from specengine.kinds.ops.runner import (OpRunner, inputs_sha256, op_hash, oracle_side, round_to,
                                         same_class)
from specengine.results import FAIL, PASS, CaseResult, Check, RunResult, Side
from specengine.spec import OpCase, Spec
from specengine.spec.ops_catalog import OPS, draw_inputs

OPS_GOLDEN_FORMAT = 1
OPS_FORMAT = GoldenFormat(kind="ops", version=OPS_GOLDEN_FORMAT, what="ops golden",
                          schema="ops-golden", default_kind="causal-lm")


def _op_result(case: OpCase, runner: OpRunner, ref_runner: OpRunner | None, ref_side: Side,
               cand_side: Side, golden_case: dict | None, golden_backend: str | None,
               timeout_s: float | None = None) -> CaseResult:
    dtype = runner.dtype_for(case)
    result = CaseResult(id=case.id, status=PASS, line=case.line, tags=list(case.tags),
                        prompt=case.describe(dtype))

    def checks() -> None:
        m = runner.measure(case)
        if golden_case is not None and golden_case["inputs_sha256"] != m.inputs_sha256:
            raise GoldenError(f"op '{case.id}': the seeded inputs differ from the ones the "
                              f"golden was recorded with (an older input generator?); "
                              "re-record with --update")
        inputs = m.inputs
        if ref_runner is not None:
            ref_out, _ = ref_runner.run(case, inputs)
            ref_dtype = ref_runner.dtype_for(case)
        else:
            ref_out, ref_dtype = m.oracle, "float64"
        self_check = same_class(cand_side, dtype, ref_side, ref_dtype)
        klass = coarser(dtype_class(dtype), dtype_class(ref_dtype))
        limits = runner.session.spec.limits(case, klass, runner.config.name)
        recorded = None
        if golden_case is not None:
            recorded = {name: {**vals, "backend": golden_backend, "dtype": golden_case["dtype"]}
                        for name, vals in golden_case["metrics"].items()}
        reduction = OPS[case.op].reduction(case.dims)
        if case.op == "moe_topk_routing":
            result.checks.append(float_check("scores", ref_out["scores"], m.outputs["scores"],
                                             m.oracle["scores"], dtype, limits, self_check,
                                             reduction, (recorded or {}).get("scores")))
            result.checks += routing_checks(case, ref_out, m.outputs, m.oracle, dtype, self_check,
                                            {k: round_to(v, dtype) for k, v in inputs.items()},
                                            recorded, limits)
        else:
            for name in sorted(m.outputs):
                result.checks.append(float_check(name, ref_out[name], m.outputs[name],
                                                 m.oracle[name], dtype, limits,
                                                 self_check, reduction,
                                                 (recorded or {}).get(name)))
        det = case.determinism
        if det.runs > 1:
            worst = 0.0
            for _ in range(det.runs - 1):
                again, _ = runner.run(case, inputs)
                for name, value in again.items():
                    diff = float(np.abs(value.astype(np.float64) - m.outputs[name]).max()) \
                        if value.size else 0.0
                    worst = max(worst, diff if np.isfinite(diff) else float("inf"))
            ok = worst <= det.atol
            result.checks.append(Check(
                "determinism", PASS if ok else FAIL,
                f"{det.runs} runs identical within atol {det.atol:g}" if ok else
                f"repeats differ by max |Δ| {worst:.3g} (atol {det.atol:g})",
                {"runs": det.runs, "max_abs_diff": worst, "atol": det.atol}))

    return run_checks(result, checks, timeout_s)


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


def check_ops_spec(spec: Spec, backend_name: str, golden_dir: Path | None = None,
                   against: str | None = None, cases: list[OpCase] | None = None,
                   fail_fast: bool = False, perf: bool = False,
                   localize: bool = False) -> RunResult:
    """Each op on the candidate against the float64 oracle (or a live `against` backend),
    with the reference's recorded numbers beside it when an ops golden exists."""
    started = time.perf_counter()
    cases = list(spec.cases if cases is None else cases)
    golden = None
    gpath = golden_path(golden_dir or default_golden_dir(spec.path), spec.name,
                        config_for(spec.reference, spec.backends).name)
    if not against and gpath.exists():
        golden = load_ops_golden(gpath, spec.name)
        for case in cases:
            record = golden["ops"].get(case.id)
            if record is None:
                raise GoldenError(f"op '{case.id}' ({spec.path}:{case.line}) has no golden in "
                                  f"{gpath}; re-record with --update")
            if record["hash"] != op_hash(case):
                raise GoldenError(f"golden for op '{case.id}' ({spec.path}:{case.line}) is stale: "
                                  "its shape, parameters, dtype or seed changed since it was "
                                  "recorded; re-record with `specengine record-golden --update`")
    runner = OpRunner(spec, backend_name)
    ref_runner = OpRunner(spec, against) if against else None
    try:
        cand_side = runner.side()
        ref_side = ref_runner.side() if ref_runner else oracle_side()
        run = new_run(spec, cand_side, ref_side, "live")
        per_op_self = []

        def after(case: OpCase, result: CaseResult) -> None:
            run.notes.append(op_note(result))
            if any(c.metrics.get("comparison") == "self-check" for c in result.checks):
                per_op_self.append(case.id)

        if not runner.backend.supports_ops:
            not_run_cases(run, cases, "op", runner.backend.unsupported.get("ops") or
                          f"backend '{runner.config.name}' ({runner.config.runtime}) cannot run "
                          "operator specs, so no op is compared",
                          lambda case: case.describe(runner.dtype_for(case)))
            cases = []
        check_cases(run, spec, runner.config.name, cases, lambda case: _op_result(
            case, runner, ref_runner, ref_side, cand_side,
            golden["ops"].get(case.id) if golden else None,
            golden["backend"] if golden else None, spec.timeout_s), fail_fast, after, what="op")
        if per_op_self and run.comparison != "self-check":
            if len(per_op_self) == len(run.cases):
                run.comparison = "self-check"
            else:
                run.notes.append("self-check ops (same runtime, device and dtype on both sides; "
                                 f"repeatability only): {', '.join(per_op_self)}")
        if ref_runner is None:
            if cand_side.device.split(":")[0] == "cpu":
                run.notes.append("the oracle is float64 on this same CPU: these numbers measure "
                                 f"{cand_side.dtype} arithmetic on the CPU, not a cross-device port")
            run.notes.append("reference: float64 oracle computed live from the same dtype-rounded "
                             "inputs" + (f"; reference numbers from {gpath}" if golden else
                                         f"; no ops golden at {gpath} (record one to pin the "
                                         "inputs' digests and the reference's numbers)"))
        if perf:
            run.notes.append("perf is not measured for ops specs")
    finally:
        runner.close()
        if ref_runner:
            ref_runner.close()
    return finish_run(run, started)


def _metrics_record(check: Check) -> dict:
    keep = ("cosine_min", "max_abs_err", "max_rel_err", "rel_share_1e3", "rel_share_5e3",
            "dtype_error_ratio", "max_err_dtype_units")
    out = {}
    for k in keep:
        v = check.metrics.get(k)
        out[k] = None if v is None else float(f"{float(v):.6g}")
    return out


def record_ops_golden(spec: Spec, backend_name: str, golden_dir: Path, update: bool = False,
                      echo: Callable[[str], None] = print,
                      allow_inconsistent: bool = False) -> Path:
    """Record each op's settings hash, inputs digest and metrics on a backend."""
    name = config_for(backend_name, spec.backends).name
    path = golden_path(golden_dir, spec.name, name)
    old = previous_golden(path, update, lambda p: load_ops_golden(p, spec.name), echo)
    runner = OpRunner(spec, name)
    try:
        side = runner.side()
        oracle = oracle_side()

        def record(case: OpCase) -> dict:
            result = _op_result(case, runner, None, oracle, side, None, None)
            if result.error:
                raise BackendCrashed(f"op '{case.id}' failed on {name}: {result.error}")
            m_float = {c.name: _metrics_record(c) for c in result.checks
                       if "dtype_error_ratio" in c.metrics}
            routing = next((c for c in result.checks if c.name == "routing"), None)
            return {
                "hash": op_hash(case), "op": case.op, "dtype": runner.dtype_for(case),
                "inputs_sha256": inputs_sha256(draw_inputs(OPS[case.op], case.dims, case.params,
                                                           case.seed)),
                "metrics": m_float,
                "routing": {k: routing.metrics[k] for k in ("tokens", "agree", "near_ties",
                                                            "mismatched")} if routing else None}

        records = record_cases(spec.cases, spec, name, record)
    finally:
        runner.close()
    env = {k: v for k, v in side.recorded().items()    # no model: no model flags either
           if k not in ("model_override", "trust_remote_code")}
    data = {"format": OPS_GOLDEN_FORMAT, "kind": "ops", "spec": spec.name, "backend": name,
            "recorded_with": env, "ops": records}
    return replace_golden(path, seal(data), old, describe_ops_changes, echo)


def describe_ops_changes(old: dict, new: dict) -> list[str]:
    lines = []
    a, b = old.get("ops", {}), new.get("ops", {})
    for oid in sorted(set(a) | set(b)):
        if oid not in a:
            lines.append(f"  + op {oid} (new)")
        elif oid not in b:
            lines.append(f"  - op {oid} (removed)")
        elif a[oid] != b[oid]:
            what = [k for k in sorted(set(a[oid]) | set(b[oid])) if a[oid].get(k) != b[oid].get(k)]
            lines.append(f"  ~ op {oid}: {', '.join(what)} changed")
    return lines or ["  (no change)"]


def load_ops_golden(path: Path, spec_name: str) -> dict:
    """Read and verify an ops golden; GoldenError (exit 2) naming the problem."""
    return read_verified(path, OPS_FORMAT, spec_name)
