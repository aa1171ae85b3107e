"""The ops kind's hooks into the one record/check skeleton (kinds.base): its reference is
the float64 oracle computed live (or a live `against` backend), with the reference's
recorded numbers beside it when an ops golden exists; its candidate an operator runner."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from specengine.backends.registry import config_for
from specengine.errors import BackendCrashed, GoldenError
from specengine.golden.store import default_golden_dir, golden_path
from specengine.kinds.base import CheckRequest, Kind, RecordRequest, closing_session, new_run
from specengine.kinds.ops import golden as codec
from specengine.kinds.ops.check import check_op, op_note
from specengine.kinds.ops.runner import OpRunner, inputs_sha256, op_hash, oracle_side
from specengine.kinds.policy import not_run_cases
from specengine.results import Check, RunResult, Side
from specengine.spec import OpCase
from specengine.spec.ops_catalog import OPS, draw_inputs

KEEP = ("cosine_min", "max_abs_err", "max_rel_err", "rel_share_1e3", "rel_share_5e3",
        "dtype_error_ratio", "max_err_dtype_units")


@dataclass
class Reference:
    golden: codec.OpsGolden | None
    golden_path: Path
    runner: OpRunner | None              # a live `against` backend
    side: Side = field(default_factory=oracle_side)


@dataclass
class Candidate:
    runner: OpRunner
    side: Side
    self_checks: list[str] = field(default_factory=list)


class Ops(Kind):
    name = "ops"
    unit = "op"

    @contextlib.contextmanager
    def reference(self, req: CheckRequest):
        spec = req.spec
        gpath = golden_path(req.golden_dir or default_golden_dir(spec.path), spec.name,
                            config_for(spec.reference, spec.backends).name)
        golden = None
        if not req.against and gpath.exists():
            golden = codec.load_ops_golden(gpath, spec.name)
            problem = codec.staleness(golden, [(c, op_hash(c)) for c in req.cases],
                                      str(spec.path))
            if problem:
                raise GoldenError(problem)
        if not req.against:
            yield Reference(golden, gpath, None)
            return
        with closing_session(OpRunner(spec, req.against)) as runner:
            yield Reference(None, gpath, runner, runner.side())

    @contextlib.contextmanager
    def candidate(self, req: CheckRequest, ref: Reference):
        with closing_session(OpRunner(req.spec, req.candidate)) as runner:
            yield Candidate(runner, runner.side())

    def start(self, req: CheckRequest, cand: Candidate, ref: Reference):
        run = new_run(req.spec, cand.side, ref.side, "live")
        runner = cand.runner
        if runner.backend.supports_ops:
            return run, req.cases
        not_run_cases(run, req.cases, "op", runner.backend.unsupported.get("ops") or
                      f"backend '{runner.config.name}' ({runner.config.runtime}) cannot run "
                      "operator specs, so no op is compared",
                      lambda case: case.describe(runner.dtype_for(case)))
        return run, ()

    def check_case(self, req: CheckRequest, cand: Candidate, ref: Reference, case: OpCase):
        record = ref.golden.ops.get(case.id) if ref.golden else None
        return check_op(case, cand.runner, ref.runner, ref.side, cand.side,
                        ref.golden.recorded(case.id) if ref.golden else None,
                        record.inputs_sha256 if record else None, req.spec.timeout_s)

    def after_case(self, req, cand: Candidate, ref, run: RunResult, case, result) -> None:
        run.notes.append(op_note(result))
        if any(c.metrics.get("comparison") == "self-check" for c in result.checks):
            cand.self_checks.append(case.id)

    def finish(self, req: CheckRequest, cand: Candidate, ref: Reference, run: RunResult) -> None:
        if cand.self_checks and run.comparison != "self-check":
            if len(cand.self_checks) == len(run.cases):
                run.comparison = "self-check"
            else:
                run.notes.append("self-check ops (same runtime, device and dtype on both "
                                 "sides; repeatability only): " + ", ".join(cand.self_checks))
        if ref.runner is None:
            if cand.side.device.split(":")[0] == "cpu":
                run.notes.append("the oracle is float64 on this same CPU: these numbers "
                                 f"measure {cand.side.dtype} arithmetic on the CPU, not a "
                                 "cross-device port")
            run.notes.append("reference: float64 oracle computed live from the same "
                             "dtype-rounded inputs" + (
                                 f"; reference numbers from {ref.golden_path}" if ref.golden else
                                 f"; no ops golden at {ref.golden_path} (record one to pin the "
                                 "inputs' digests and the reference's numbers)"))
        if req.options.perf:
            run.notes.append("perf is not measured for ops specs")

    # -- recording ------------------------------------------------------------------------
    def load_data(self, path: Path, spec_name: str) -> dict:
        return codec.load_ops_data(path, spec_name)

    def describe_changes(self, old: dict, new: dict) -> list[str]:
        return codec.describe_ops_changes(old, new)

    @contextlib.contextmanager
    def recorder(self, req: RecordRequest):
        with closing_session(OpRunner(req.spec, req.backend)) as runner:
            yield runner

    def record_case(self, req: RecordRequest, runner: OpRunner, case: OpCase) -> codec.OpRecord:
        result = check_op(case, runner, None, oracle_side(), runner.side(), None, None)
        if result.error:
            raise BackendCrashed(f"op '{case.id}' failed on {req.backend}: {result.error}")
        routing = next((c for c in result.checks if c.name == "routing"), None)
        return codec.OpRecord(
            case.id, op_hash(case), case.op, runner.dtype_for(case),
            inputs_sha256(draw_inputs(OPS[case.op], case.dims, case.params, case.seed)),
            {c.name: _kept(c) for c in result.checks if "dtype_error_ratio" in c.metrics},
            {k: routing.metrics[k] for k in ("tokens", "agree", "near_ties", "mismatched")}
            if routing else None)

    def golden_data(self, req: RecordRequest, runner: OpRunner, side: Side,
                    records: Mapping[str, Any]) -> dict:
        env = {k: v for k, v in side.recorded().items()    # no model: no model flags either
               if k not in ("model_override", "trust_remote_code")}
        return codec.build_ops_golden(req.spec.name, req.backend, env, records)


def _kept(check: Check) -> dict:
    """What the golden keeps of one output's metrics (6 significant digits)."""
    out = {}
    for k in KEEP:
        v = check.metrics.get(k)
        out[k] = None if v is None else float(f"{float(v):.6g}")
    return out
