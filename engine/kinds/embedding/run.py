"""Recording and checking embedding goldens: per case the pooled feature of every input
and the last hidden state of every non-padding token, compared per output (cosine, max
abs / rel error, shares of small relative errors; compare.arrays), then repeated for
determinism."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from specengine.backends.registry import config_for
from specengine.compare.arrays import ArrayStats, array_stats, limit_failures
from specengine.errors import BackendCrashed, GoldenError
from specengine.golden.store import Golden, golden_path, previous_golden, replace_golden
from specengine.kinds.base import (check_cases, finish_run, new_run, not_run_cases, record_cases,
                                   run_checks)
from specengine.kinds.embedding.golden import (build_embedding_golden, case_outputs,
                                               describe_embedding_changes, embedding_case_hash,
                                               encode_array, load_embedding_golden)
from specengine.kinds.embedding.perf import measure_perf
from specengine.kinds.embedding.pooling import resolve_pooling
from specengine.kinds.embedding.session import (KIND, EmbeddingSession, open_embedding_session,
                                                prepare, reference_preparer)
from specengine.loading.session import model_for
from specengine.loading.sources import resolve
from specengine.results import FAIL, PASS, CaseResult, Check, RunResult, Side
from specengine.compare.limits import Limits
from specengine.compare.tolerances import coarser, dtype_class
from specengine.spec import OUTPUTS, EmbeddingCase, Spec
from dataclasses import replace


def _check_finite(arrays: dict, name: str, case_id: str) -> None:
    for key in OUTPUTS:
        if key in arrays and not np.isfinite(arrays[key]).all():
            raise BackendCrashed(f"backend '{name}' produced NaN/Inf in {key} on case "
                                 f"'{case_id}'; refusing to record it as a golden")


def _record_cases(session: EmbeddingSession, cases: list[EmbeddingCase], action: str
                  ) -> tuple[dict, dict]:
    """Each case's golden record, and the pooling settings resolved on the first case."""
    spec = session.spec
    resolved: dict = {}

    def record(case: EmbeddingCase) -> dict:
        prepared = session.inputs(case)
        if not resolved:
            probe = session.forward(prepared)
            pooling, normalize = resolve_pooling(spec.settings, session.preparer.dir,
                                                 probe.pooler_output is not None)
            resolved.update(pooling=pooling, normalize=normalize,
                            outputs=list(spec.settings.outputs))
        out = session.outputs(prepared, resolved["pooling"], resolved["normalize"],
                              spec.settings.outputs)
        _check_finite(out, session.config.name, case.id)
        encoded = {}
        if "pooled" in out:
            encoded["pooled"] = encode_array(out["pooled"])
        if "last_hidden_state" in out:
            encoded["last_hidden_state"] = encode_array(out["last_hidden_state"],
                                                        lengths=out["lengths"])
        return {"hash": embedding_case_hash(prepared.digest, spec.settings.hashed(),
                                            session.resolved.fingerprint),
                "inputs": prepared.described, "outputs": encoded}

    records = record_cases(cases, spec, session.config.name, record, action)
    return records, resolved or {"pooling": "cls", "normalize": False,
                                 "outputs": list(spec.settings.outputs)}


def record_embedding_golden(spec: Spec, backend_name: str, golden_dir: Path,
                            update: bool = False, echo: Callable[[str], None] = print,
                            allow_inconsistent: bool = False) -> Path:
    """Record every case of an embedding spec into golden/<spec>/<backend>.json."""
    name = config_for(backend_name, spec.backends).name
    path = golden_path(golden_dir, spec.name, name)
    old = previous_golden(path, update,
                          lambda p: load_embedding_golden(p, spec.name).data, echo)
    session = open_embedding_session(spec, name)
    try:
        records, settings = _record_cases(session, spec.cases, "record")
        side = session.side()
    finally:
        session.close()
    data = build_embedding_golden(spec.name, name, session.resolved.fingerprint,
                                  session.resolved.origin, side.recorded(), settings, records)
    return replace_golden(path, data, old, describe_embedding_changes, echo)


def check_embedding_spec(spec: Spec, backend_name: str, golden_dir: Path | None = None,
                         against: str | None = None, cases: list[EmbeddingCase] | None = None,
                         fail_fast: bool = False, perf: bool = False,
                         localize: bool = False) -> RunResult:
    """Check a candidate against the embedding golden (or a live reference `against`)."""
    started = time.perf_counter()
    cases = list(spec.cases if cases is None else cases)
    cand_name = config_for(backend_name, spec.backends).name
    if against:
        ref_name = config_for(against, spec.backends).name
        ref = open_embedding_session(spec, ref_name)
        try:
            records, settings = _record_cases(ref, cases, "reference")
            ref_side = ref.side()
        finally:
            ref.close()
        data = build_embedding_golden(spec.name, ref_name, ref.resolved.fingerprint,
                                      ref.resolved.origin, {}, settings, records)
        golden, ref_kind = Golden(Path(f"<live {ref_name}>"), data), "live"
    else:
        golden = load_embedding_golden(golden_path(golden_dir, spec.name, spec.reference),
                                       spec.name)
        check_staleness(spec, golden, cases)
        ref_side, ref_kind = Side.from_golden(golden.data), "golden"
    session = open_embedding_session(spec, cand_name)
    try:
        cand_side = session.side()
        klass = coarser(*(dtype_class(s.dtype, s.quantization) for s in (cand_side, ref_side)))
        run = new_run(spec, cand_side, ref_side, ref_kind, tolerance_class=klass)
        if session.model_override:
            run.notes.append(f"candidate '{cand_name}' runs its own model: {session.resolved.origin}")
        backend = session.backend
        if not backend.supports_embedding:
            not_run_cases(run, cases, "embedding", backend.unsupported.get("embedding") or
                          f"backend '{cand_name}' ({backend.config.runtime}) cannot run "
                          "embedding models, so no case is compared", EmbeddingCase.describe)
            perf = False
        else:
            check_cases(run, spec, cand_name, cases, lambda case: check_case(
                            session, case, golden, spec.limits(case, klass, cand_name)),
                        fail_fast, after=lambda case, result: run.notes.append(case_note(result)))
        if perf:
            run.perf = measure_perf(session, spec, cases)
            run.notes += run.perf.get("lines", [])
        run.candidate = session.side()
    finally:
        session.close()
    return finish_run(run, started)


def check_staleness(spec: Spec, golden: Golden, cases: list[EmbeddingCase]) -> None:
    """GoldenError (exit 2) naming the first case whose inputs, settings or model changed."""
    name = config_for(spec.reference, spec.backends).name
    model = model_for(spec, name)[0]
    resolved = resolve(model if model.kind == KIND else replace(model, kind=KIND))
    if resolved.fingerprint != golden.data["model"]["fingerprint"]:
        raise GoldenError(f"golden {golden.path} was recorded from another model "
                          f"({golden.data['model']['fingerprint'][:23]}…, now "
                          f"{resolved.fingerprint[:23]}…); re-record it with --update")
    _, preparer = reference_preparer(spec)
    for case in cases:
        if case.id not in golden.cases:
            raise GoldenError(f"case '{case.id}' ({spec.path}:{case.line}) has no golden in "
                              f"{golden.path}; re-record with --update")
        digest = prepare(preparer, case).digest
        if embedding_case_hash(digest, spec.settings.hashed(), resolved.fingerprint) != \
                golden.cases[case.id]["hash"]:
            raise GoldenError(f"golden for case '{case.id}' ({spec.path}:{case.line}) is stale: "
                              "its inputs or embedding settings changed since it was recorded; "
                              "re-record with `specengine record-golden --update`")


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


def check_case(session: EmbeddingSession, case: EmbeddingCase, golden: Golden,
               limits: Limits) -> CaseResult:
    result = CaseResult(id=case.id, status=PASS, line=case.line, tags=list(case.tags),
                        prompt=case.describe())
    return run_checks(result, lambda: _run_checks(session, case, golden, result, limits),
                      session.spec.timeout_s)


def _run_checks(session: EmbeddingSession, case: EmbeddingCase, golden, result: CaseResult,
                limits: Limits) -> None:
    settings = golden.data["settings"]
    names = tuple(settings["outputs"])
    expected = case_outputs(golden, case.id)
    prepared = session.inputs(case)
    got = session.outputs(prepared, settings["pooling"], settings["normalize"], names)
    lengths = golden.cases[case.id]["outputs"].get("last_hidden_state", {}).get("lengths")
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
            again = session.outputs(prepared, settings["pooling"], settings["normalize"], names)
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
