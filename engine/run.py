"""Running specs: record goldens and check candidates against them (DESIGN §4-5).

This module orchestrates; the judging itself is in `compare` (pure functions) and the
numbers land in `results` dataclasses.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from specengine.backends.base import ScoringUnavailable

from specengine.compare import tokens as compare
from specengine.kinds.causal_lm import decode
from specengine.errors import (BackendCrashed, BackendUnavailable, GoldenError,
    ReferenceInconsistent, SpecEngineError, SpecError)
from specengine.kinds.causal_lm.greedy import greedy_check, greedy_note
from specengine.golden import (Golden, build_golden, case_hash, describe_changes, golden_path,
    load_golden, previous_golden, step_record, write_golden)
from specengine.kinds.causal_lm import paths
from specengine.kinds.causal_lm.paths import side_class
from specengine.progress import cases as progress_cases
from specengine.results import (ERROR, FAIL, NOT_RUN, PASS, CaseResult, Check, RunResult, Side,
    TopKRow)
from specengine.loading.session import Session, open_session, reference_source
from specengine.spec import Case, Spec
from specengine.compare.tolerances import coarser, dtype_class


def select_cases(spec: Spec, ids: list[str] | None = None, tags: list[str] | None = None,
                 expr: str | None = None) -> list[Case]:
    """--case ID (exact), --tag T (any), -k EXPR (substring of the id; 'not X' excludes)."""
    from specengine.errors import UsageError

    cases = list(spec.cases)
    if ids:
        unknown = [i for i in ids if i not in {c.id for c in cases}]
        if unknown:
            raise UsageError(f"{spec.path}: no case {', '.join(map(repr, unknown))}")
        cases = [c for c in cases if c.id in ids]
    if tags:
        cases = [c for c in cases if set(tags) & set(c.tags)]
    if expr:
        cases = [c for c in cases if _match_expr(expr, c)]
    return cases


def _match_expr(expr: str, case: Case) -> bool:
    words = expr.split()
    if len(words) == 2 and words[0] == "not":
        return words[1] not in case.id and words[1] not in case.tags
    return expr in case.id or expr in case.tags


# -- recording ---------------------------------------------------------------------

def record_case(session: Session, case: Case, sketch: bool = True) -> dict:
    """Run one case on the reference and return its golden record (with the layer sketch
    that `localize` needs when the backend returns hidden states and `sketch` is set)."""
    return record_case_checked(session, case, sketch)[0]


def record_case_checked(session: Session, case: Case, sketch: bool = True
                        ) -> tuple[dict, compare.Consistency | None]:
    """`record_case`, plus the reference's own prefill/decode consistency on the case: its
    generation (incremental decode) against its one-pass scores of the same tokens, judged
    at its own dtype's default tolerance."""
    ids = session.prompt_ids(case)
    _check_length(session, case, ids)
    try:
        with _time_limit(session.spec.timeout_s):
            gen = session.backend.generate([ids], case.max_new_tokens, case.top_k,
                                           session.tokenizer.stop_ids)[0]
    except CaseTimedOut:
        raise BackendCrashed(f"backend '{session.config.name}': case '{case.id}' timed out "
                             f"after {session.spec.timeout_s:g} s (defaults.timeout_s); "
                             "nothing was recorded") from None
    except SpecEngineError:
        raise
    except Exception as exc:  # a runtime's own bug: exit 3 naming the case, no golden
        raise BackendCrashed(f"backend '{session.config.name}' failed on case '{case.id}': "
                             f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}; "
                             "nothing was recorded") from None
    if not gen.has_logprobs or len(gen.topk_logprobs) < len(gen.output_ids):
        raise BackendUnavailable(f"backend '{session.config.name}' returned no log-probs for "
                                 f"case '{case.id}', so it cannot record a golden: "
                                 f"{paths.unsupported(session.backend, 'logprobs')}")
    _check_finite(gen.topk_logprobs, session, case)
    own = case.tolerance_for(dtype_class(session.config.dtype, session.config.quantization))
    consistency = decode.generation_consistency(session.backend, ids, gen, case.top_k, own)
    record = {"hash": case_hash(ids, case.settings(), session.resolved.fingerprint),
              "prompt": session.prompt_text(case), "prompt_ids": ids,
              "output_ids": gen.output_ids, "output_text": session.tokenizer.decode(gen.output_ids),
              "settings": case.settings(),
              "steps": [step_record(gen.topk_ids[i], gen.topk_logprobs[i], gen.tail_logprob[i])
                        for i in range(len(gen.output_ids))]}
    if case.recipe is not None and getattr(session.backend, "supports_positions", False):
        record["prompt_steps"] = paths.prompt_steps(session, ids, case.top_k)
    if sketch and case.recipe is None:   # per-layer sketch, so localize works on the golden alone
        from specengine.kinds.causal_lm.localize import sketch_for_record

        layer_sketch = sketch_for_record(session.backend, record)
        if layer_sketch:
            record["sketch"] = layer_sketch
    return record, consistency


def _check_finite(lp: np.ndarray, session: Session, case: Case) -> None:
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise BackendCrashed(f"backend '{session.config.name}' produced NaN/Inf log-probs on "
                             f"case '{case.id}'; refusing to record it as a golden")


def record_golden(spec: Spec, backend_name: str, golden_dir: Path, update: bool = False,
                  echo: Callable[[str], None] = print,
                  allow_inconsistent: bool = False) -> Path:
    """Record every case of a spec on a backend into golden/<spec>/<backend>.json.

    A reference whose own decode and one-pass paths disagree on a case (beyond its dtype's
    noise) does not become a golden: ReferenceInconsistent (exit 1) naming the cases,
    unless `allow_inconsistent`, which the golden then records."""
    from specengine.backends.registry import config_for

    if spec.kind == "embedding":
        from specengine.kinds.embedding import record_embedding_golden

        return record_embedding_golden(spec, backend_name, golden_dir, update, echo)
    if spec.kind == "ops":
        from specengine.kinds.ops import record_ops_golden

        return record_ops_golden(spec, backend_name, golden_dir, update, echo)

    name = config_for(backend_name, spec.backends).name
    path = golden_path(golden_dir, spec.name, name)
    old = previous_golden(path, update, lambda p: load_golden(p, spec.name).data, echo)
    session = open_session(spec, name)
    _bind_chats(session)
    try:
        cases, checks = {}, {}
        for case in progress_cases(spec.cases, "record", spec.name, name):
            cases[case.id], checks[case.id] = record_case_checked(session, case)
        side = session.side()
    finally:
        session.close()
    inconsistent = paths.report_consistency(checks, echo)
    env = {k: v for k, v in side.__dict__.items()
           if k not in ("model_fingerprint", "model_source")}
    if inconsistent and not allow_inconsistent:
        raise ReferenceInconsistent(
            f"backend '{name}' disagrees with itself (incremental decode vs one-pass) on "
            f"{len(inconsistent)} case(s): {'; '.join(inconsistent)[:600]}; nothing was "
            "recorded — fix the reference, or pass --allow-inconsistent-reference to record it "
            "anyway (the golden says so)")
    cases = {cid: paths.stored_record(record) for cid, record in cases.items()}
    data = build_golden(spec.name, name, session.resolved.fingerprint, session.resolved.origin,
                        env, cases, inconsistent_allowed=inconsistent if allow_inconsistent
                        else None)
    if old is not None:
        echo(f"changes in {path}:")
        for line in describe_changes(old, data):
            echo(line)
    write_golden(path, data)
    return path


def check_spec(spec: Spec, backend_name: str, golden_dir: Path | None = None,
               against: str | None = None, cases: list[Case] | None = None,
               fail_fast: bool = False, perf: bool = False, localize: bool = False) -> RunResult:
    """Check a candidate backend against the golden (or a live reference backend).

    With `localize`, each failing case is localized (engine/localize.py): per-layer errors
    against the live reference's hidden states, or against the golden's layer sketch.

    With `perf`, the candidate is then measured (engine/perf.py) in the same session and
    judged against the spec's budgets and its perf golden; the result is `run.perf`.
    """
    from specengine.backends.registry import config_for

    if spec.kind in ("embedding", "ops"):   # engine/embedding.py, engine/ops.py
        if spec.kind == "embedding":
            from specengine.kinds.embedding import check_embedding_spec as check_kind
        else:
            from specengine.kinds.ops import check_ops_spec as check_kind
        return check_kind(spec, backend_name, golden_dir, against, cases, fail_fast, perf)
    started = time.perf_counter()
    cases = list(spec.cases if cases is None else cases)
    cand_name = config_for(backend_name, spec.backends).name
    if against:
        ref_name = config_for(against, spec.backends).name
        ref_states: dict = {}
        ref_checks: dict = {}
        golden, ref_side = _live_reference(spec, ref_name, cases,
                                           ref_states if localize else None, ref_checks)
        ref_kind = "live"
    else:
        ref_name = spec.reference
        resolved = reference_source(spec, ref_name)   # a missing model names its variable first
        golden = load_golden(golden_path(golden_dir, spec.name, ref_name), spec.name)
        _check_staleness(spec, golden, ref_name, cases, resolved)
        ref_side, ref_kind = _golden_side(golden), "golden"
    session = open_session(spec, cand_name)
    _bind_chats(session)
    try:
        cand_side = session.side()
        klass = coarser(side_class(cand_side), side_class(ref_side))
        run = RunResult(spec_name=spec.name, spec_path=str(spec.path), command="check",
                        candidate=cand_side, reference=ref_side,
                        comparison=comparison_label(cand_side, ref_side),
                        reference_kind=ref_kind, tolerance_class=klass)
        if session.model_override:
            run.notes.append(f"candidate '{cand_name}' runs its own model: {session.resolved.origin}")
        if not (session.backend.supports_logprobs and session.backend.supports_scoring):
            run.notes.append(f"candidate '{cand_name}' gives no log-probs, so the checks that need "
                             f"them are not run: {paths.unsupported(session.backend, 'scoring')}")
        for case in progress_cases(cases, "check", spec.name, cand_name, run.cases):
            try:
                result = check_case(session, case, golden, klass)
                if against:
                    paths.reference_consistency_check(result, ref_checks.get(case.id), ref_side,
                                                 case)
            except BackendCrashed as exc:   # out of memory: the backend cannot go on
                run.cases.append(CaseResult(id=case.id, status=ERROR, line=case.line,
                                            tags=list(case.tags), error=exc.one_line()))
                run.notes.append(f"stopped at case '{case.id}': {exc.one_line()}")
                run.finish()
                exc.partial_run = run     # the CLI still writes the requested reports
                raise
            run.cases.append(result)
            if localize and result.status == FAIL and paths.decode_only_failure(result):
                paths.localize_decode(session, result, golden.cases[case.id])
            elif localize and result.status == FAIL:
                from specengine.kinds.causal_lm.localize import localize_failed_case

                localize_failed_case(session, result, golden.cases[case.id], ref_side.backend,
                                     ref_side.dtype, ref_states.get(case.id) if against else None,
                                     live=bool(against))
            if fail_fast and result.status != PASS:
                run.notes.append("stopped at the first failing case (--fail-fast)")
                break
        from specengine.kinds.causal_lm.sweep import sweep_notes

        run.notes += sweep_notes(cases, run.cases, {c.id: c.tolerance_for(klass) for c in cases})
        note = greedy_note(cand_name, run.cases)
        if note:
            run.notes.append(note)
        if perf:
            run.perf = _measure_perf(session, spec, golden_dir)
        run.candidate = session.side()
    finally:
        session.close()
    run.distribution = paths.spec_distribution(run.cases, spec.distribution)
    run.finish()
    if run.perf and run.perf.get("status") == ERROR:
        run.status = ERROR
    run.duration_s = time.perf_counter() - started
    return run


def _measure_perf(session: Session, spec: Spec, golden_dir: Path | None) -> dict:
    """Perf section of a check; a crash while measuring is an `error` perf section."""
    from specengine.kinds.causal_lm.perf import check_perf

    try:
        return check_perf(session, spec, golden_dir)
    except SpecEngineError:
        raise
    except Exception as exc:
        return {"status": ERROR, "failures": [
            f"perf measurement failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"]}


def comparison_label(a: Side, b: Side) -> str:
    """self-check: same runtime, device, dtype and model fingerprint (it shows
    repeatability only); cross-model: only the weights differ; cross-backend otherwise."""
    same = (a.runtime, a.device.split(":")[0], a.dtype) == (b.runtime, b.device.split(":")[0], b.dtype)
    if not same:
        return "cross-backend"
    fingerprints = a.model_fingerprint, b.model_fingerprint
    if all(fingerprints) and fingerprints[0] != fingerprints[1]:
        return "cross-model"
    return "self-check"


def _golden_side(golden: Golden) -> Side:
    env = dict(golden.data.get("recorded_with", {}))
    allowed = set(Side.__dataclass_fields__)
    side = Side(**{k: v for k, v in env.items() if k in allowed})
    side.model_fingerprint = golden.data["model"]["fingerprint"]
    side.model_source = golden.data["model"]["source"]
    return side


def _check_staleness(spec: Spec, golden: Golden, ref_name: str, cases: list[Case],
                     resolved=None) -> None:
    from specengine.spec.long_prompt import ids_sha256
    from specengine.loading.session import prompt_ids_for, tokenizer_for

    resolved = resolved or reference_source(spec, ref_name)
    if resolved.fingerprint != golden.data["model"]["fingerprint"]:
        raise GoldenError(f"golden {golden.path} was recorded from another model "
                          f"({golden.data['model']['fingerprint'][:23]}…, now "
                          f"{resolved.fingerprint[:23]}…); re-record it with --update")
    tokenizer = tokenizer_for(spec)
    for case in cases:
        if case.id not in golden.cases:
            raise GoldenError(f"case '{case.id}' ({spec.path}:{case.line}) has no golden in "
                              f"{golden.path}; re-record with --update")
        ids = prompt_ids_for(tokenizer, case)
        record = golden.cases[case.id]
        if "prompt_ids" not in record:      # a long prompt stored by recipe + hash
            if record.get("prompt_ids_sha256") != ids_sha256(ids):
                raise GoldenError(f"golden for case '{case.id}' ({spec.path}:{case.line}) is "
                                  "stale: its long prompt's recipe no longer reproduces the "
                                  "recorded prompt ids (sha256 differs); re-record with "
                                  "`specengine record-golden --update`")
            record["prompt_ids"] = ids      # in memory only: the golden file keeps the hash
        if case_hash(ids, case.settings(), resolved.fingerprint) != record["hash"]:
            raise GoldenError(f"golden for case '{case.id}' ({spec.path}:{case.line}) is stale: "
                              "its prompt or generation settings changed since it was recorded; "
                              "re-record with `specengine record-golden --update`")


def _live_reference(spec: Spec, ref_name: str, cases: list[Case],
                    states: dict | None = None, checks: dict | None = None
                    ) -> tuple[Golden, Side]:
    """Records of the reference run live; with `states`, also each case's per-layer hidden
    states (for check --localize), by case id; with `checks`, each case's reference
    prefill/decode consistency."""
    session = open_session(spec, ref_name)
    _bind_chats(session)
    try:
        records = {}
        for case in progress_cases(cases, "reference", spec.name, ref_name):
            records[case.id], consistency = record_case_checked(session, case, sketch=False)
            if checks is not None:
                checks[case.id] = consistency
        if states is not None:
            from specengine.kinds.causal_lm.localize import capture, teacher_forced_ids

            for cid, record in records.items():
                try:
                    states[cid] = capture(session.backend, teacher_forced_ids(record))
                except BackendUnavailable:   # no hidden states: localization says so
                    pass
        side = session.side()
    finally:
        session.close()
    data = build_golden(spec.name, ref_name, session.resolved.fingerprint,
                        session.resolved.origin, {}, records)
    return Golden(Path(f"<live {ref_name}>"), data), side


def check_case(session: Session, case: Case, golden: Golden, klass: str | None = None
               ) -> CaseResult:
    """All checks of one case; an exception becomes an `error` case, not a lost run.

    `klass` is the comparison's numeric class (the coarser side's), which picks the
    default tolerance set the spec's and case's own values are applied over."""
    start = time.perf_counter()
    record = golden.cases[case.id]
    result = CaseResult(id=case.id, status=PASS, line=case.line, tags=list(case.tags),
                        prompt=record["prompt"], golden_text=record["output_text"],
                        golden_ids=list(record["output_ids"]))
    tok = session.tokenizer
    result.prompt_length = len(record.get("prompt_ids") or []) or int(record.get("prompt_length", 0))
    result.golden_tokens = tok.token_strings(record["output_ids"])
    result.golden_token_bytes = [None if b is None else b.hex() for b in tok.token_bytes(record["output_ids"])]
    try:
        with _time_limit(session.spec.timeout_s):
            _run_checks(session, case, golden, record, result,
                        klass or dtype_class(session.config.dtype, session.config.quantization))
    except CaseTimedOut:
        result.error = (f"timed out after {session.spec.timeout_s:g} s (defaults.timeout_s); "
                        "the remaining checks of this case were not run")
    except BackendCrashed as exc:
        if "out of memory" in str(exc).lower():
            raise
        result.error = exc.one_line()
    except SpecEngineError:
        raise
    except Exception as exc:  # one broken case must not lose the others' results
        result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    statuses = {c.status for c in result.checks}
    result.status = ERROR if result.error or ERROR in statuses else FAIL if FAIL in statuses else PASS
    result.duration_s = time.perf_counter() - start
    return result


class CaseTimedOut(BaseException):
    """A case ran past `defaults.timeout_s`. A BaseException (like KeyboardInterrupt), so
    that a runtime's own `except Exception` cannot swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Raise CaseTimedOut in this (main) thread once `seconds` have passed.

    SIGALRM interrupts Python code and blocking waits (a sleep, a socket read, a
    generation loop between steps); a single native call (one huge kernel) is interrupted
    when it returns. Off the main thread, or where there is no SIGALRM, nothing is timed.
    """
    if (not seconds or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def fire(signum, frame):
        raise CaseTimedOut()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_length(session: Session, case: Case, prompt_ids: list[int]) -> None:
    """A prompt that cannot fit the model's context is refused with the numbers (exit 2)
    before it reaches the backend (where it would fail obscurely or exhaust memory)."""
    limit = _context_limit(session)
    if limit and len(prompt_ids) + case.max_new_tokens > limit:
        spec = session.spec
        index = next((i for i, c in enumerate(spec.cases) if c is case), None)
        line, col = (spec.located.where(("cases", index)) if spec.located and index is not None
                     else (case.line or None, None))
        raise SpecError(f"case '{case.id}': the prompt is {len(prompt_ids)} tokens and "
                        f"max_new_tokens is {case.max_new_tokens}, more than the model's "
                        f"context of {limit} tokens (max_position_embeddings); shorten it",
                        str(spec.path), line, col)


def _context_limit(session: Session) -> int | None:
    """max_position_embeddings (or n_positions) of the model's config.json, if it has one."""
    if not hasattr(session, "_context_limit"):
        from specengine.files import read_json

        limit = None
        hf_dir = getattr(session.resolved, "hf_dir", None)
        config = read_json(Path(hf_dir) / "config.json") if hf_dir else None
        for cfg in (config or {}, (config or {}).get("text_config") or {}):
            value = cfg.get("max_position_embeddings") or cfg.get("n_positions")
            if isinstance(value, int) and value > 0:
                limit = value
                break
        session._context_limit = limit
    return session._context_limit


def _run_checks(session: Session, case: Case, golden: Golden, record: dict,
                result: CaseResult, klass: str) -> None:
    backend, tok = session.backend, session.tokenizer
    tol = case.tolerance_for(klass)
    tolerance_set = case.tolerance_source.label(klass)
    prompt_ids = list(record["prompt_ids"])
    _check_length(session, case, prompt_ids)
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
    for exp in compare.expectations(case.expect, result.candidate_text, gen.output_ids, first_lp):
        if exp.name == "min_prob" and first_lp is None and len(gen.output_ids):
            result.checks.append(Check("expect.min_prob", NOT_RUN,
                                       f"needs log-probs: {paths.unsupported(backend, 'logprobs')}"))
            continue
        result.checks.append(Check(f"expect.{exp.name}", PASS if exp.passed else FAIL, exp.detail))
    div = compare.first_divergence(record["output_ids"], gen.output_ids, g_ids, g_lp, tol)
    result.divergence_step = div.step
    result.checks.append(Check(
        "divergence", PASS if div.passed else FAIL,
        div.reason or "identical greedy tokens",
        {"step": div.step, "rank_in_golden": div.rank_in_golden, "margin": div.margin,
         "golden_id": div.golden_id, "candidate_id": div.candidate_id}))

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
        result.checks.append(Check(
            "teacher-forced", PASS if tf.passed else FAIL,
            ("; ".join(tf.failures) or "within tolerance") + (f" ({scores.note})" if scores.note else ""),
            {"kl_mean": tf.kl_mean, "kl_max": tf.kl_max, "top1_agreement": tf.top1_agreement,
             "top1_agreement_all": tf.top1_agreement_all, "near_ties": tf.near_ties,
             "max_abs_dlogprob": tf.max_abs_dlogprob, "max_abs_dp": tf.max_abs_dp,
             "positions": len(tf.kl), "tolerance": tol.as_dict(),
             "tolerance_set": tolerance_set}))
        result.per_position = {"kl": tf.kl, "abs_dlogprob": tf.abs_dlogprob, "dp": tf.dp,
                               "same_top1": [float(x) for x in tf.same_top1]}
        result.worst_position = tf.worst_position
        result.worst_topk = _topk_rows(tok, g_ids[tf.worst_position], g_lp[tf.worst_position],
                                       scores.gathered_logprobs[tf.worst_position])
    else:
        scores = None
        result.checks.append(Check("teacher-forced", NOT_RUN, "the golden has no generated tokens"))

    paths.prompt_check(session, case, record, result, tol, tolerance_set)

    # 3. decode path (KV cache) against the golden, and against the one-pass path
    if len(record["output_ids"]):
        paths.decode_checks(session, case, record, gen, div.step, scores, result, klass,
                       tol, tolerance_set, (g_ids, g_lp, g_tail))

    # 4. determinism: repeats of the same case
    det = case.determinism
    if det.runs > 1:
        reps, tokens_only = [], not gen.has_logprobs
        for run_no in range(2, det.runs + 1):
            again = _generate(session, case, prompt_ids, record)
            tokens_only = tokens_only or not again.has_logprobs
            reps.append(compare.repeatability(gen.output_ids, _lp_or_none(gen), again.output_ids,
                                              _lp_or_none(again), det.atol, f"run {run_no}",
                                              det.runs))
        failing = [r for r in reps if not r.passed]
        worst = failing[0] if failing else max(reps, key=lambda r: r.max_abs_dlogprob)
        message = (f"{det.runs} runs gave identical tokens (log-probs not compared)"
                   if worst.passed and tokens_only else
                   f"{det.runs} runs identical within atol {det.atol:g}" if worst.passed else
                   f"{worst.where} differs from run 1 at step {worst.first_diff_step} (tokens "
                   f"identical: {worst.identical_tokens}, max |Δ logprob| "
                   f"{worst.max_abs_dlogprob:.3g}, atol {det.atol:g})")
        result.checks.append(Check(
            "determinism", PASS if worst.passed else FAIL, message,
            {"runs": det.runs, "identical_tokens": worst.identical_tokens,
             "max_abs_dlogprob": worst.max_abs_dlogprob, "atol": det.atol}))
        if tokens_only:
            result.checks.append(Check("determinism.logprobs", NOT_RUN,
                                       f"needs log-probs: {paths.unsupported(backend, 'logprobs')}"))

    # 5. batch invariance: the case alone (above) vs inside batches of other cases
    if any(size > 1 for size in det.batch_sizes) and not gen.has_logprobs:
        result.checks.append(Check("batch-invariance", NOT_RUN,
                                   f"needs log-probs: {paths.unsupported(backend, 'logprobs')}"))
    elif any(size > 1 for size in det.batch_sizes):
        from specengine.kinds.causal_lm.batch import batch_invariance_check

        result.checks.append(batch_invariance_check(session, case, prompt_ids, gen))


def _generate(session: Session, case: Case, prompt_ids: list[int], record: dict,
              gather=None):
    """The candidate's greedy run of a case; ids that a served model's text was
    re-tokenized into are re-read along the golden's (Backend.align_to_golden). With
    `gather` (the golden's top-k ids per step) a backend that supports it also returns the
    log-probs it gave those ids at every step."""
    backend, tok = session.backend, session.tokenizer
    if gather is not None and getattr(backend, "supports_gather", False):
        gen = backend.generate([prompt_ids], case.max_new_tokens, case.top_k, tok.stop_ids,
                               gather=[gather])[0]
    else:
        gen = backend.generate([prompt_ids], case.max_new_tokens, case.top_k, tok.stop_ids)[0]
    return backend.align_to_golden(gen, record["output_ids"], tok, case.max_new_tokens)


def _lp_or_none(gen) -> np.ndarray:
    """The generation's top-k log-probs, or no rows when it has none (tokens only)."""
    return gen.topk_logprobs if gen.has_logprobs else np.zeros((0, 1), np.float32)


def _bind_chats(session: Session) -> None:
    """Tell a chat-aware backend (openai) which prompt ids came from which messages."""
    bind = getattr(session.backend, "bind_chats", None)
    if bind is not None:
        bind({tuple(session.prompt_ids(c)): (c.messages, c.chat_template_kwargs)
              for c in session.spec.cases if c.messages is not None})


def _topk_rows(tok, ids: np.ndarray, golden_lp: np.ndarray, cand_lp: np.ndarray) -> list[TopKRow]:
    names = tok.token_strings([int(i) for i in ids])
    rows = []
    for name, tid, g, c in zip(names, ids, golden_lp, cand_lp):
        gp, cp = float(np.exp(g)), float(np.exp(c))
        rows.append(TopKRow(token=name, id=int(tid), golden_p=gp, candidate_p=cp, delta=cp - gp))
    return rows


def eprint(*args) -> None:
    print(*args, file=sys.stderr)
