"""Checking a candidate against a causal-lm golden (or a live reference): per case the
expectations, the first divergence, teacher-forced scores, sampled prompt positions, the
decode path, determinism and batch invariance — the judging is in `compare` (pure
functions), the loop and error policy in `kinds.base`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from specengine.backends.base import ScoringUnavailable
from specengine.backends.registry import config_for
from specengine.compare import tokens as compare
from specengine.compare.tolerances import coarser, dtype_class
from specengine.errors import BackendStopped, SpecEngineError
from specengine.golden.store import golden_path
from specengine.kinds.base import check_cases, described, finish_run, new_run, run_checks
from specengine.kinds.causal_lm import paths
from specengine.kinds.causal_lm.batch import batch_invariance_check
from specengine.kinds.causal_lm.expect import expectation_checks
from specengine.kinds.causal_lm.golden import LmGolden, check_staleness, load_golden
from specengine.kinds.causal_lm.limits import CaseLimits, case_limits, check_noise_records
from specengine.kinds.causal_lm.layers import localize_failed_case, localization_summary
from specengine.kinds.causal_lm.greedy import greedy_check, greedy_note
from specengine.kinds.causal_lm.paths import side_class
from specengine.kinds.causal_lm.perf_gate import check_perf
from specengine.kinds.causal_lm.record import bind_chats, check_length, live_reference
from specengine.kinds.causal_lm.sweep import sweep_notes
from specengine.loading.session import Session, open_session, reference_source
from specengine.results import ERROR, FAIL, NOT_RUN, PASS, CaseResult, Check, RunResult, Side, TopKRow
from specengine.spec import Case, Spec


def check_spec(spec: Spec, backend_name: str, golden_dir: Path | None = None,
               against: str | None = None, cases: list[Case] | None = None,
               fail_fast: bool = False, perf: bool = False, localize: bool | str = False
               ) -> RunResult:
    """Check a candidate backend against the golden (or a live reference backend).

    With `localize`, each failing case is localized (kinds.causal_lm.localize): per-layer errors
    against the live reference's hidden states, or against the golden's layer sketch; with
    localize="all" every case is, and a passing case with a flagged layer gets a warning
    note (a departure the limits did not catch).

    With `perf`, the candidate is then measured (kinds.causal_lm.perf) in the same session and
    judged against the spec's budgets and its perf golden; the result is `run.perf`.
    """
    started = time.perf_counter()
    cases = list(spec.cases if cases is None else cases)
    cand_config = config_for(backend_name, spec.backends)
    cand_name = cand_config.name
    cand_class = dtype_class(cand_config.dtype, cand_config.quantization)
    if against:
        ref_name = config_for(against, spec.backends).name
        ref_config = config_for(against, spec.backends)
        check_noise_records(spec, cases, {}, coarser(cand_class, dtype_class(
            ref_config.dtype, ref_config.quantization)), cand_class, cand_name,
            f"the live reference '{ref_name}' (check --against)")
        ref_states: dict = {}
        ref_checks: dict = {}
        golden, ref_side = live_reference(spec, ref_name, cases,
                                           ref_states if localize else None, ref_checks)
        ref_kind = "live"
    else:
        ref_name = spec.reference
        resolved = reference_source(spec, ref_name)   # a missing model names its variable first
        golden = load_golden(golden_path(golden_dir, spec.name, ref_name), spec.name)
        check_staleness(spec, golden, ref_name, cases, resolved)
        ref_side, ref_kind = Side.from_golden(golden.data), "golden"
        check_noise_records(spec, cases, golden.cases, coarser(cand_class, side_class(ref_side)),
                            cand_class, cand_name, f"golden {golden.path}")
    session = open_session(spec, cand_name)
    bind_chats(session)
    try:
        cand_side = session.side()
        klass = coarser(side_class(cand_side), side_class(ref_side))
        run = new_run(spec, cand_side, ref_side, ref_kind, tolerance_class=klass)
        if session.model_override:
            run.notes.append(f"candidate '{cand_name}' runs its own model: {session.resolved.origin}")
        if not (session.backend.supports_logprobs and session.backend.supports_scoring):
            run.notes.append(f"candidate '{cand_name}' gives no log-probs, so the checks that need "
                             f"them are not run: {paths.unsupported(session.backend, 'scoring')}")

        own_class = side_class(cand_side)

        def check_one(case: Case) -> CaseResult:
            limits = case_limits(spec, case, klass, own_class, cand_name,
                                 golden.cases.get(case.id), str(golden.path))
            result = check_case(session, case, golden, limits)
            if against:
                paths.reference_consistency_check(result, ref_checks.get(case.id), ref_side,
                                                  spec.limits(case, side_class(ref_side)))
            return result

        def after(case: Case, result: CaseResult) -> None:
            wanted = localize == "all" or (localize and result.status == FAIL)
            if wanted and result.status == FAIL and paths.decode_only_failure(result):
                paths.localize_decode(session, result, golden.cases[case.id])
            elif wanted and result.status in (FAIL, PASS):
                localize_failed_case(session, result, golden.cases[case.id], ref_side.backend,
                                     ref_side.dtype, ref_states.get(case.id) if against else None,
                                     live=bool(against))
            flagged = (result.localization or {}).get("first_flagged_name")
            if result.status == PASS and flagged:
                run.notes.append(f"warning: case '{case.id}' passes its limits, but localize "
                                 f"flags {flagged}: {localization_summary(result.localization)}")

        check_cases(run, spec, cand_name, cases, check_one, fail_fast, after)
        run.notes += sweep_notes(cases, run.cases, {c.id: spec.limits(c, klass, cand_name).values
                                                    for c in cases if not c.limit_source
                                                    .relative_keys(klass)})
        note = greedy_note(cand_name, run.cases)
        if note:
            run.notes.append(note)
        if perf:
            try:
                run.perf = _measure_perf(session, spec, golden_dir)
            except BackendStopped as exc:   # the judged cases stay in the reports
                exc.at("while measuring perf")
                run.perf = {"status": ERROR, "failures": [exc.one_line()]}
                run.candidate = session.side()
                run.distribution = paths.spec_distribution(run.cases, spec.distribution)
                exc.partial_run = finish_run(run, started)
                raise
        run.candidate = session.side()
    finally:
        session.close()
    run.distribution = paths.spec_distribution(run.cases, spec.distribution)
    return finish_run(run, started)


def _measure_perf(session: Session, spec: Spec, golden_dir: Path | None) -> dict:
    """Perf section of a check; a crash while measuring is an `error` perf section."""
    try:
        return check_perf(session, spec, golden_dir)
    except SpecEngineError:
        raise
    except Exception as exc:
        return {"status": ERROR, "failures": [
            f"perf measurement failed: {described(exc)}"]}


def check_case(session: Session, case: Case, golden: LmGolden, limits: CaseLimits
               ) -> CaseResult:
    """All checks of one case, judged by `limits` (the comparison's class, resolved for
    this case and candidate); an exception becomes an `error` case, not a lost run."""
    record = golden.cases[case.id]
    result = CaseResult(id=case.id, status=PASS, line=case.line, tags=list(case.tags),
                        prompt=record["prompt"], golden_text=record["output_text"],
                        golden_ids=list(record["output_ids"]))
    tok = session.tokenizer
    result.prompt_length = len(record.get("prompt_ids") or []) or int(record.get("prompt_length", 0))
    result.golden_tokens = tok.token_strings(record["output_ids"])
    result.golden_token_bytes = [None if b is None else b.hex() for b in tok.token_bytes(record["output_ids"])]
    return run_checks(result, lambda: _run_checks(session, case, golden, record, result, limits),
                      session.spec.timeout_s)


def _run_checks(session: Session, case: Case, golden: LmGolden, record: dict,
                result: CaseResult, limits: CaseLimits) -> None:
    backend, tok = session.backend, session.tokenizer
    tol = limits.prefill.values
    prompt_ids = list(record["prompt_ids"])
    check_length(session, case, prompt_ids)
    g_ids, g_lp, g_tail = golden.arrays(case.id)
    gen = _generate(session, case, prompt_ids, record, gather=g_ids)
    result.candidate_ids = list(gen.output_ids)
    result.candidate_text = tok.decode(gen.output_ids)
    result.candidate_tokens = tok.token_strings(gen.output_ids)
    result.candidate_token_bytes = [None if b is None else b.hex() for b in tok.token_bytes(gen.output_ids)]

    nonfinite = gen.has_logprobs and bool(np.isnan(gen.topk_logprobs).any()
                                          or np.isposinf(gen.topk_logprobs).any())
    if nonfinite:
        result.checks.append(Check("finite", FAIL, "candidate logits contain NaN or Inf"))
    greedy = greedy_check(backend, gen, lambda i: tok.token_strings([i])[0])
    if greedy is not None:   # a served model: was each token its own top-1?
        result.checks.append(greedy)

    # 1. expectations and the free-running comparison
    first_lp = (float(gen.topk_logprobs[0][0]) if len(gen.output_ids) and gen.has_logprobs
                and len(gen.topk_logprobs) else None)
    result.checks += expectation_checks(case, result.candidate_text, gen.output_ids, first_lp,
                                        record.get("reference_fails") or [],
                                        paths.unsupported(backend, "logprobs"))
    div = compare.first_divergence(record["output_ids"], gen.output_ids, g_ids, g_lp, tol)
    result.divergence_step = div.step
    result.checks.append(Check(
        "divergence", PASS if div.passed else FAIL,
        div.reason or "identical greedy tokens",
        {"step": div.step, "rank_in_golden": div.rank_in_golden, "margin": div.margin,
         "golden_id": div.golden_id, "candidate_id": div.candidate_id,
         "within_top_k": tol.within_top_k, "max_margin": tol.max_margin}))

    # 2. teacher-forced on the golden's sequence
    scores, unscored = None, None
    if len(record["output_ids"]) and backend.supports_scoring:
        try:
            scores = backend.score(prompt_ids, record["output_ids"], g_ids, case.top_k)
        except ScoringUnavailable as exc:   # this input only: a missing optional feature
            unscored = str(exc)
    if len(record["output_ids"]) and (unscored or not backend.supports_scoring):
        result.checks.append(Check("teacher-forced", NOT_RUN,
                                   f"needs log-probs: {unscored or paths.unsupported(backend, 'scoring')}"))
    elif len(record["output_ids"]):
        tf = compare.teacher_forced(g_ids, g_lp, g_tail, scores.gathered_logprobs,
                                    scores.gathered_tail, scores.top_ids[:, 0], tol)
        metrics = {"kl_mean": tf.kl_mean, "kl_max": tf.kl_max, "top1_agreement": tf.top1_agreement,
                   "top1_agreement_all": tf.top1_agreement_all, "near_ties": tf.near_ties,
                   "max_abs_dlogprob": tf.max_abs_dlogprob, "max_abs_dp": tf.max_abs_dp,
                   "positions": len(tf.kl)}
        metrics.update(limits.metrics("prefill", metrics))
        result.checks.append(Check(
            "teacher-forced", PASS if tf.passed else FAIL,
            tf.verdict() + (f" ({scores.note})" if scores.note else ""), metrics))
        result.per_position = {"kl": tf.kl, "abs_dlogprob": tf.abs_dlogprob, "dp": tf.dp,
                               "same_top1": [float(x) for x in tf.same_top1]}
        result.worst_position = tf.worst_position
        result.worst_topk = _topk_rows(tok, g_ids[tf.worst_position], g_lp[tf.worst_position],
                                       scores.gathered_logprobs[tf.worst_position])
    else:
        scores = None
        result.checks.append(Check("teacher-forced", NOT_RUN, "the golden has no generated tokens"))

    paths.prompt_check(session, case, record, result, limits.prefill)

    # 3. decode path (KV cache) against the golden, and against the one-pass path
    if len(record["output_ids"]):
        paths.decode_checks(session, case, record, gen, div.step, scores, result, limits,
                            (g_ids, g_lp, g_tail))

    # 4. determinism: repeats of the same case
    if case.determinism.runs > 1:
        paths.determinism_checks(result, case, gen,
                                 lambda: _generate(session, case, prompt_ids, record),
                                 backend)

    # 5. batch invariance: the case alone (above) vs inside batches of other cases
    det = case.determinism
    if any(size > 1 for size in det.batch_sizes) and not gen.has_logprobs:
        result.checks.append(Check("batch-invariance", NOT_RUN,
                                   f"needs log-probs: {paths.unsupported(backend, 'logprobs')}"))
    elif any(size > 1 for size in det.batch_sizes):
        result.checks.append(batch_invariance_check(session, case, prompt_ids, gen))


def _generate(session: Session, case: Case, prompt_ids: list[int], record: dict,
              gather=None):
    """The candidate's greedy run of a case; ids that a served model's text was
    re-tokenized into are re-read along the golden's (Backend.align_to_golden). With
    `gather` (the golden's top-k ids per step) a backend that supports it also returns the
    log-probs it gave those ids at every step."""
    backend, tok = session.backend, session.tokenizer
    if gather is not None and backend.supports_gather:
        gen = backend.generate([prompt_ids], case.max_new_tokens, case.top_k, tok.stop_ids,
                               gather=[gather])[0]
    else:
        gen = backend.generate([prompt_ids], case.max_new_tokens, case.top_k, tok.stop_ids)[0]
    return backend.align_to_golden(gen, record["output_ids"], tok, case.max_new_tokens)


def _topk_rows(tok, ids: np.ndarray, golden_lp: np.ndarray, cand_lp: np.ndarray) -> list[TopKRow]:
    names = tok.token_strings([int(i) for i in ids])
    rows = []
    for name, tid, g, c in zip(names, ids, golden_lp, cand_lp):
        gp, cp = float(np.exp(g)), float(np.exp(c))
        rows.append(TopKRow(token=name, id=int(tid), golden_p=gp, candidate_p=cp, delta=cp - gp))
    return rows
