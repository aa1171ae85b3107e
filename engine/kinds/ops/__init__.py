"""Operator specs (`ops:` instead of `model:` + `cases:`): single operators measured on a
backend's device and dtype against a float64 oracle.

For each op: inputs are drawn in float64 from the op's seed (engine/ops_catalog.py),
rounded to the compute dtype (the backend's, or the op's `dtype`), and run

* on the candidate backend (`Backend.run_op`, on its device, in that dtype), and
* as the oracle: the same implementation in float64 on the CPU, on the same rounded
  inputs — so what is measured is the operator's own error, not its inputs' rounding.

Reported per output: cosine (min over rows), max abs / max relative error, the shares of
elements with relative error under 0.001 and 0.005, and the error relative to what the
dtype can achieve (`dtype_error_ratio`, engine/embedding_compare.py). MoE routing also
compares the selected expert ids (a disagreement is a near-tie when the reference's scores
of the swapped experts differ by less than twice the candidate's own measured score error
on that token) and the routing weights of the tokens whose expert sets agree.

`--against B` compares with backend B live instead of the oracle (the dtype ratio stays
against the oracle). Per op, a comparison whose two sides ran on the same runtime, device
family and dtype is labelled a self-check; it shows repeatability only, never a
cross-device pass.

Goldens: `record-golden` on an ops spec stores, per op, the hash of its settings, the
sha256 of its float64 inputs and the recording backend's metrics
(golden/<spec>/<backend>.json, schemas/ops-golden.schema.json). `check` uses the golden of
the spec's reference backend when it exists — stale settings or different inputs are exit
2, and the reference's numbers are shown next to the candidate's — and works without one,
since the oracle is computed live.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from specengine.compare.arrays import array_stats, dtype_error
from specengine.errors import BackendCrashed, GoldenError, SpecEngineError
from specengine.spec.ops_catalog import OPS, draw_inputs, resolve_dims, resolve_params
from specengine.results import ERROR, FAIL, NOT_RUN, PASS, CaseResult, Check, RunResult, Side

OPS_GOLDEN_FORMAT = 1
ORACLE = Side(backend="oracle-float64", runtime="torch", device="cpu", dtype="float64")
_INT_OUTPUTS = {"ids"}


# -- spec ------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpTolerance:
    cosine_min: float = 0.999
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    rel_share_1e3_min: float | None = None
    rel_share_5e3_min: float | None = None
    dtype_error_ratio_max: float = 64.0
    routing_mismatch_max: int = 0

    def merged(self, override: dict | None) -> "OpTolerance":
        return replace(self, **override) if override else self

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class OpCase:
    id: str
    op: str
    dims: dict
    params: dict
    dtype: str | None
    seed: int
    tags: tuple[str, ...]
    tolerance: OpTolerance
    determinism: Any
    description: str = ""
    line: int = 0

    def settings(self) -> dict:
        return {"op": self.op, "dims": self.dims, "params": self.params, "dtype": self.dtype,
                "seed": self.seed}

    def describe(self, dtype: str) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        text = f"{self.op} ({OPS[self.op].summary}); shape {dims}"
        text += f"; {params}" if params else ""
        text += f"; {dtype}; seed {self.seed}"
        return text + (f"\n{self.description}" if self.description else "")


def build_op_cases(located, data: dict, determinism, base_dir: Path):
    """(cases, settings) of an ops spec; SpecError with file:line:col."""
    defaults = data.get("defaults") or {}
    tol = OpTolerance().merged(defaults.get("tolerance"))
    seed = int(defaults.get("seed", 0))
    cases, seen = [], {}
    for i, entry in enumerate(data["ops"]):
        cid = entry["id"]
        if cid in seen:
            raise located.error(("ops", i, "id"),
                                f"duplicate op id '{cid}' (first at op {seen[cid] + 1})")
        seen[cid] = i
        op = OPS[entry["op"]]
        dims, problem = resolve_dims(op, entry.get("shape") or {})
        if dims is None:
            raise located.error(("ops", i, "shape"), problem)
        params, problem = resolve_params(op, entry.get("params") or {}, dims)
        if params is None:
            raise located.error(("ops", i, "params"), problem)
        cases.append(OpCase(
            id=cid, op=op.name, dims=dims, params=params, dtype=entry.get("dtype"),
            seed=int(entry.get("seed", seed)), tags=tuple(entry.get("tags", ())),
            tolerance=tol.merged(entry.get("tolerance")),
            determinism=determinism.merged(entry.get("determinism")),
            description=entry.get("description", ""), line=located.where(("ops", i))[0]))
    return cases, {"seed": seed}


# -- running ---------------------------------------------------------------------------

def _torch():
    try:
        import torch
    except ImportError:
        from specengine.errors import BackendUnavailable

        raise BackendUnavailable("the float64 oracle of ops specs needs torch: "
                                 "pip install 'specengine[torch]'") from None
    return torch


def round_to(array: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values rounded to `dtype` (on the CPU, the way backends receive them)."""
    torch = _torch()
    if dtype == "float64":
        return np.asarray(array, dtype=np.float64)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(
        getattr(torch, dtype)).double().numpy()


def run_oracle(case: OpCase, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The op in float64 on the CPU."""
    torch = _torch()
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in inputs.items()}
    with torch.inference_mode():
        out = OPS[case.op].run(torch, tensors, case.dims, case.params, "float64")
    return {k: v.cpu().numpy() for k, v in out.items()}


def inputs_sha256(inputs: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(inputs):
        h.update(name.encode() + b"\0" + str(inputs[name].shape).encode() + b"\0")
        h.update(np.ascontiguousarray(inputs[name], dtype="<f8").tobytes())
    return h.hexdigest()


def op_hash(case: OpCase) -> str:
    payload = json.dumps(case.settings(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Measured:
    """One op on one backend: its outputs, the oracle's, and the metrics."""

    dtype: str
    inputs: dict[str, np.ndarray]     # float64 as drawn (before rounding to the dtype)
    inputs_sha256: str
    outputs: dict[str, np.ndarray]
    oracle: dict[str, np.ndarray]
    duration_s: float


class OpRunner:
    """A created backend (no model) that runs ops."""

    def __init__(self, spec, backend_name: str):
        from specengine.backends.registry import config_for, create

        self.config = config_for(backend_name, spec.backends)
        self.backend = create(self.config)

    def dtype_for(self, case: OpCase) -> str:
        return case.dtype or self.config.dtype

    def run(self, case: OpCase, inputs: dict[str, np.ndarray]) -> tuple[dict, float]:
        dtype = self.dtype_for(case)
        start = time.perf_counter()
        try:
            out = self.backend.run_op(case.op, inputs, case.dims, case.params, dtype)
        except SpecEngineError:
            raise
        except RuntimeError as exc:
            raise BackendCrashed(f"backend '{self.config.name}' failed on op '{case.id}': "
                                 f"{' '.join(str(exc).split())[:300]}") from None
        return out, time.perf_counter() - start

    def measure(self, case: OpCase) -> Measured:
        raw = draw_inputs(OPS[case.op], case.dims, case.params, case.seed)
        dtype = self.dtype_for(case)
        outputs, seconds = self.run(case, raw)
        rounded = {k: round_to(v, dtype) for k, v in raw.items()}
        return Measured(dtype, raw, inputs_sha256(raw), outputs, run_oracle(case, rounded), seconds)

    def side(self) -> Side:
        env = self.backend.environment()
        return Side(backend=self.config.name, runtime=env.get("runtime", self.config.runtime),
                    device=env.get("device", self.config.device),
                    device_name=env.get("device_name", ""), dtype=env.get("dtype", self.config.dtype),
                    versions=env.get("versions", {}), settings=env.get("settings", {}))

    def close(self) -> None:
        self.backend.close()


def oracle_side() -> Side:
    torch = _torch()
    from specengine.backends.torch.backend import _cpu_name

    return replace(ORACLE, device_name=_cpu_name(),
                   versions={"torch": torch.__version__, "numpy": np.__version__})


def same_class(a: Side, a_dtype: str, b: Side, b_dtype: str) -> bool:
    return (a.runtime, a.device.split(":")[0], a_dtype) == (b.runtime, b.device.split(":")[0], b_dtype)


# -- judging (pure) --------------------------------------------------------------------

def float_check(name: str, reference: np.ndarray, candidate: np.ndarray, oracle: np.ndarray,
                dtype: str, tol: OpTolerance, self_check: bool, reduction: int,
                recorded: dict | None = None) -> Check:
    """Metrics of one float output; fails on the tolerance (a self-check only reports)."""
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
    for value, limit, label in ((stats.max_abs_err, tol.max_abs_err, "max abs err"),
                                (stats.max_rel_err, tol.max_rel_err, "max rel err")):
        if limit is not None and not value <= limit:
            failures.append(f"{label} {value:.3g} > {limit:g}")
    for value, limit, label in ((stats.rel_share_1e3, tol.rel_share_1e3_min, "rel err < 0.001"),
                                (stats.rel_share_5e3, tol.rel_share_5e3_min, "rel err < 0.005")):
        if limit is not None and value < limit:
            failures.append(f"share {label} {value:.1%} < {limit:.1%}")
    summary = (f"{dtype}: max |Δ| {stats.max_abs_err:.3g}, max rel {stats.max_rel_err:.3g}, "
               f"rel<1e-3 {stats.rel_share_1e3:.1%}, rel<5e-3 {stats.rel_share_5e3:.1%}, cosine min "
               f"{stats.cosine_min:.6f}; {derr.dtype_error_ratio:.3g}x the {dtype} rounding error "
               f"({derr.max_err_dtype_units:.3g} units of u at the output's scale)")
    if recorded and recorded.get("dtype_error_ratio") is not None:
        summary += (f"; reference {recorded.get('backend')} ({recorded.get('dtype')}): "
                    f"{recorded['dtype_error_ratio']:.3g}x")
    metrics = {**stats.as_dict(), **derr.as_dict(), "reduction_length": reduction,
               "comparison": "self-check" if self_check else "cross-backend",
               "tolerance": tol.as_dict()}
    if recorded:
        metrics["reference_recorded"] = recorded
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
                   self_check: bool, inputs: dict, recorded: dict | None) -> list[Check]:
    tol = case.tolerance
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
            dtype, tol, self_check, reduction, (recorded or {}).get("weights")))
    else:
        checks.append(Check("weights", NOT_RUN, "no token with the same expert set"))
    return checks


# -- check / record --------------------------------------------------------------------

def _op_result(case: OpCase, runner: OpRunner, ref_runner: OpRunner | None, ref_side: Side,
               cand_side: Side, golden_case: dict | None, golden_backend: str | None) -> CaseResult:
    start = time.perf_counter()
    dtype = runner.dtype_for(case)
    result = CaseResult(id=case.id, status=PASS, line=case.line, tags=list(case.tags),
                        prompt=case.describe(dtype))
    try:
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
        recorded = None
        if golden_case is not None:
            recorded = {name: {**vals, "backend": golden_backend, "dtype": golden_case["dtype"]}
                        for name, vals in golden_case["metrics"].items()}
        reduction = OPS[case.op].reduction(case.dims)
        if case.op == "moe_topk_routing":
            result.checks.append(float_check("scores", ref_out["scores"], m.outputs["scores"],
                                             m.oracle["scores"], dtype, case.tolerance, self_check,
                                             reduction, (recorded or {}).get("scores")))
            result.checks += routing_checks(case, ref_out, m.outputs, m.oracle, dtype, self_check,
                                            {k: round_to(v, dtype) for k, v in inputs.items()},
                                            recorded)
        else:
            for name in sorted(m.outputs):
                result.checks.append(float_check(name, ref_out[name], m.outputs[name],
                                                 m.oracle[name], dtype, case.tolerance,
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
    except BackendCrashed as exc:
        result.error = exc.one_line()
    except SpecEngineError:
        raise
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    statuses = {c.status for c in result.checks}
    result.status = ERROR if result.error or ERROR in statuses else FAIL if FAIL in statuses else PASS
    result.duration_s = time.perf_counter() - start
    return result


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


def check_ops_spec(spec, backend_name: str, golden_dir: Path | None = None,
                   against: str | None = None, cases=None, fail_fast: bool = False,
                   perf: bool = False) -> RunResult:
    from specengine.backends.registry import config_for

    from specengine.golden import default_golden_dir, golden_path
    from specengine.progress import cases as progress_cases
    from specengine.run import comparison_label

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
        run = RunResult(spec_name=spec.name, spec_path=str(spec.path), command="check",
                        candidate=cand_side, reference=ref_side,
                        comparison=comparison_label(cand_side, ref_side),
                        reference_kind="live")
        per_op_self = []
        for case in progress_cases(cases, "check", spec.name, runner.config.name, run.cases):
            result = _op_result(case, runner, ref_runner, ref_side, cand_side,
                                golden["ops"].get(case.id) if golden else None,
                                golden["backend"] if golden else None)
            run.cases.append(result)
            run.notes.append(op_note(result))
            if any(c.metrics.get("comparison") == "self-check" for c in result.checks):
                per_op_self.append(case.id)
            if fail_fast and result.status != PASS:
                run.notes.append("stopped at the first failing op (--fail-fast)")
                break
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
    run.finish()
    run.duration_s = time.perf_counter() - started
    return run


def _metrics_record(check: Check) -> dict:
    keep = ("cosine_min", "max_abs_err", "max_rel_err", "rel_share_1e3", "rel_share_5e3",
            "dtype_error_ratio", "max_err_dtype_units")
    out = {}
    for k in keep:
        v = check.metrics.get(k)
        out[k] = None if v is None else float(f"{float(v):.6g}")
    return out


def record_ops_golden(spec, backend_name: str, golden_dir: Path, update: bool = False,
                      echo: Callable[[str], None] = print) -> Path:
    from specengine.backends.registry import config_for

    from specengine.files import atomic_write_text
    from specengine.golden import content_hash, dumps, golden_path, previous_golden
    from specengine.progress import cases as progress_cases

    name = config_for(backend_name, spec.backends).name
    path = golden_path(golden_dir, spec.name, name)
    old = previous_golden(path, update, lambda p: load_ops_golden(p, spec.name), echo)
    runner = OpRunner(spec, name)
    try:
        side = runner.side()
        oracle = oracle_side()
        records = {}
        for case in progress_cases(spec.cases, "record", spec.name, name):
            result = _op_result(case, runner, None, oracle, side, None, None)
            if result.error:
                raise BackendCrashed(f"op '{case.id}' failed on {name}: {result.error}")
            m_float = {c.name: _metrics_record(c) for c in result.checks
                       if "dtype_error_ratio" in c.metrics}
            routing = next((c for c in result.checks if c.name == "routing"), None)
            records[case.id] = {
                "hash": op_hash(case), "op": case.op, "dtype": runner.dtype_for(case),
                "inputs_sha256": inputs_sha256(draw_inputs(OPS[case.op], case.dims, case.params,
                                                           case.seed)),
                "metrics": m_float,
                "routing": {k: routing.metrics[k] for k in ("tokens", "agree", "near_ties", "mismatched")}
                if routing else None}
    finally:
        runner.close()
    env = {k: v for k, v in side.__dict__.items()
           if k not in ("model_fingerprint", "model_source", "model_override", "trust_remote_code")}
    data = {"format": OPS_GOLDEN_FORMAT, "kind": "ops", "spec": spec.name, "backend": name,
            "recorded_with": env, "ops": records}
    data = json.loads(json.dumps(data, sort_keys=True))
    data["content_sha256"] = content_hash(data)
    if old is not None:
        echo(f"changes in {path}:")
        for line in describe_ops_changes(old, data):
            echo(line)
    atomic_write_text(path, dumps(data))
    return path


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
    from jsonschema import Draft202012Validator

    from specengine.golden import content_hash
    from specengine.spec import schema

    from specengine.fileio import read_golden_json

    data = read_golden_json(path)
    if not isinstance(data, dict) or data.get("kind") != "ops":
        raise GoldenError(f"golden {path} is not an ops golden; re-record it with --update")
    if data.get("format") != OPS_GOLDEN_FORMAT:
        raise GoldenError(f"golden {path} has format {data.get('format')!r}; this specengine "
                          f"reads format {OPS_GOLDEN_FORMAT} — re-record it with --update")
    errors = sorted(Draft202012Validator(schema("ops-golden")).iter_errors(data),
                    key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "top level"
        raise GoldenError(f"golden {path} does not match the ops golden schema at {where}: "
                          f"{errors[0].message[:200]}")
    if content_hash(data) != data["content_sha256"]:
        raise GoldenError(f"golden {path} was edited by hand or corrupted: its content hash "
                          "does not match (re-record it with --update)")
    if data["spec"] != spec_name:
        raise GoldenError(f"golden {path} belongs to spec '{data['spec']}', not '{spec_name}'")
    return data
