"""The checks of a causal-LM case beyond the one-pass comparison: the decode path and the
prefill/decode consistency (of the candidate, and of a live or recording reference), a
long prompt's sampled prompt positions and how its golden record is stored, the
whole-spec distribution statistics, and decode-path localization of a failing case."""

from __future__ import annotations

from typing import Callable

import numpy as np

from specengine.compare import tokens as compare
from specengine.kinds.causal_lm import decode
from specengine.errors import SpecEngineError
from specengine.kinds.causal_lm.golden import step_record
from specengine.results import FAIL, NOT_RUN, PASS, CaseResult, Check, Side
from specengine.loading.session import Session
from specengine.spec import Case
from specengine.compare.limits import Limits
from specengine.compare.tolerances import dtype_class
from specengine.kinds.causal_lm.limits import CaseLimits
from specengine.compare.distribution import PATHS, distribution, judge
from specengine.kinds.causal_lm.localize_decode import localize_decode_record
from specengine.spec.long_prompt import ids_sha256
from specengine.spec.long_prompt import prompt_positions


def side_class(side: Side) -> str:
    """The numeric class (float32 / half / quantized) of one side of a comparison."""
    return dtype_class(side.dtype, side.quantization)


def prompt_steps(session: Session, ids: list[int], top_k: int) -> dict:
    """The reference's own top-k at a long prompt's sampled positions (one forward pass)."""

    positions = prompt_positions(len(ids))
    scores = session.backend.score_positions(ids, positions, np.zeros((len(positions), 1),
                                                                       np.int64), top_k)
    mass = np.exp(scores.top_logprobs.astype(np.float64)).sum(axis=1)
    with np.errstate(divide="ignore"):
        tail = np.log(np.clip(1.0 - mass, 0.0, None))
    return {"positions": positions,
            "steps": [step_record(scores.top_ids[i], scores.top_logprobs[i], tail[i])
                      for i in range(len(positions))]}


def prompt_check(session: Session, case: Case, record: dict, result: CaseResult,
                 limits: Limits) -> None:
    """`prompt-positions`: a long case's sampled prompt positions, one-pass, vs the golden."""
    stored = record.get("prompt_steps")
    if not stored:
        return
    backend = session.backend
    if not backend.supports_positions:
        result.checks.append(Check("prompt-positions", NOT_RUN, f"backend '{backend.name}' "
                                   "cannot score chosen prompt positions"))
        return
    steps = stored["steps"]
    k = min(len(st["ids"]) for st in steps)
    g_ids = np.array([st["ids"][:k] for st in steps], np.int64)
    g_lp = np.array([st["logprobs"][:k] for st in steps], np.float64)
    g_tail = np.array([-np.inf if st["tail"] is None else st["tail"] for st in steps], np.float64)
    scores = backend.score_positions(list(record["prompt_ids"]), stored["positions"], g_ids,
                                     case.top_k)
    tf = compare.teacher_forced(g_ids, g_lp, g_tail, scores.gathered_logprobs,
                                scores.gathered_tail, scores.top_ids[:, 0], limits.values)
    worst = stored["positions"][tf.worst_position]
    result.checks.append(Check(
        "prompt-positions", PASS if tf.passed else FAIL,
        tf.verdict() + f" ({len(steps)} sampled prompt positions, one-pass; worst at position "
        f"{worst})",
        {"kl_mean": tf.kl_mean, "kl_max": tf.kl_max, "top1_agreement": tf.top1_agreement,
         "max_abs_dlogprob": tf.max_abs_dlogprob, "positions": len(steps),
         "worst_position": worst, **limits.metrics()}))
    result.per_position["kl_prompt"] = tf.kl
    result.per_position["abs_dlogprob_prompt"] = tf.abs_dlogprob
    result.per_position["prompt_position"] = [float(p) for p in stored["positions"]]


def stored_record(record: dict) -> dict:
    """A case record as the golden file keeps it: a long prompt made by recipe is stored
    by its length and the sha256 of its ids (the recipe is in the settings), not the ids."""
    if "prompt_recipe" not in record.get("settings", {}):
        return record

    out = {k: v for k, v in record.items() if k != "prompt_ids"}
    out["prompt_ids_sha256"] = ids_sha256(record["prompt_ids"])
    out["prompt_length"] = len(record["prompt_ids"])
    return out


def report_consistency(checks: dict, echo: Callable[[str], None]) -> list[str]:
    """One line per case on the reference's prefill/decode consistency; the failures."""
    bad = []
    for cid, cons in checks.items():
        if cons is None:
            echo(f"  {cid}: prefill/decode consistency not measured (no one-pass scores)")
            continue
        state = "ok" if cons.passed else "INCONSISTENT"
        echo(f"  {cid}: prefill/decode {state} (KL mean {cons.kl_mean:.2g}, max |Δ logprob| "
             f"{cons.max_abs_dlogprob:.2g})")
        if not cons.passed:
            bad.append(f"{cid}: {', '.join(cons.failures)}")
    return bad


# -- checking ----------------------------------------------------------------------


def decode_only_failure(result: CaseResult) -> bool:
    """The decode path (or the candidate's prefill/decode consistency) failed while the
    one-pass comparison passed: the bug lives on the incremental-decode path."""
    status = {c.name: c.status for c in result.checks}
    return (FAIL in (status.get("decode"), status.get("consistency"))
            and status.get("teacher-forced") == PASS)


def localize_decode(session: Session, result: CaseResult, record: dict) -> None:
    """check --localize for a decode-path failure: the first layer whose incremental state
    departs from the candidate's own one-pass state (a problem becomes the `error`)."""

    try:
        loc = localize_decode_record(session.backend, record, result.id,
                                     candidate=session.config.name, dtype=session.config.dtype,
                                     quantization=session.config.quantization)
        result.localization = loc.to_dict()
    except SpecEngineError as exc:
        result.localization = {"case_id": result.id, "error": exc.one_line()}


def spec_distribution(cases: list[CaseResult], limits: dict | None) -> dict | None:
    """Distribution statistics over every compared position of every case, per path
    (one-pass `prefill`, incremental `decode`), and the spec-level limits they break."""

    out: dict = {"failures": [], "limits": dict(limits or {})}
    for path in PATHS:
        suffix = "" if path == "prefill" else "_decode"
        kl, dp, same = [], [], []
        for case in cases:
            pp = case.per_position
            if f"kl{suffix}" in pp and f"dp{suffix}" in pp:
                kl += pp[f"kl{suffix}"]
                dp += pp[f"dp{suffix}"]
                same += [bool(x) for x in pp.get(f"same_top1{suffix}", [])]
        stats = distribution(path, kl, dp, same)
        if stats is not None:
            out[path] = stats.as_dict()
            wanted = (limits or {}).get("paths", list(PATHS))
            if path in wanted:
                out["failures"] += judge(stats, limits or {})
    return out if any(p in out for p in PATHS) else None


def reference_consistency_check(result: CaseResult, cons, ref_side: Side,
                                own: Limits) -> None:
    """check --against: the live reference's own prefill/decode consistency on the case,
    judged by the reference's own class (`own`)."""
    if cons is None:
        result.checks.append(Check("reference-consistency", NOT_RUN,
                                   f"reference '{ref_side.backend}' gave no one-pass scores"))
        return
    result.checks.append(decode.consistency_check(
        "reference-consistency", cons, own,
        f"reference '{ref_side.backend}': its generation vs its one-pass scores"))
    if not cons.passed and result.status == PASS:
        result.status = FAIL


def decode_checks(session: Session, case: Case, record: dict, gen, div_step: int | None,
                  scores, result: CaseResult, limits: CaseLimits, golden_arrays) -> None:
    """The `decode` check (decode-path rows vs the golden) and the `consistency` check
    (decode-path rows vs the candidate's own one-pass scores, at its own dtype's noise)."""
    g_ids, g_lp, g_tail = golden_arrays
    rows = decode.decode_rows(session.backend, list(record["prompt_ids"]),
                              list(record["output_ids"]), g_ids, gen, div_step, case.top_k)
    check, dtf = decode.decode_check(rows, g_ids, g_lp, g_tail, limits)
    result.checks.append(check)
    if dtf is not None:
        result.per_position.update({"kl_decode": dtf.kl, "abs_dlogprob_decode": dtf.abs_dlogprob,
                                    "dp_decode": dtf.dp,
                                    "same_top1_decode": [float(x) for x in dtf.same_top1]})
    own = limits.own.values
    if scores is None or rows.covered == 0:
        reason = rows.note if rows.covered == 0 else unsupported(session.backend, "scoring")
        result.checks.append(Check("consistency", NOT_RUN, f"needs both paths: {reason}"))
        return
    n = rows.covered
    cons = compare.consistency(rows.lp, rows.tail, rows.top1, scores.gathered_logprobs[:n],
                               scores.gathered_tail[:n], scores.top_ids[:n, 0],
                               decode.clear_of_ties(scores.top_logprobs[:n], own.max_margin), own)
    result.per_position["kl_consistency"] = cons.kl
    result.checks.append(decode.consistency_check(
        "consistency", cons, limits.own,
        "the candidate's decode path vs its own one-pass scores of the golden's sequence"))


def unsupported(backend, what: str) -> str:
    reasons = backend.unsupported
    return reasons.get(what) or reasons.get("logprobs") or f"backend '{backend.name}' returned none"


def determinism_checks(result: CaseResult, case: Case, gen, repeat: Callable[[], object],
                       backend) -> None:
    """`determinism.runs`: the case again, `runs - 1` times (`repeat`), against run 1."""
    det = case.determinism
    reps, tokens_only = [], not gen.has_logprobs
    for run_no in range(2, det.runs + 1):
        again = repeat()
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
                                   f"needs log-probs: {unsupported(backend, 'logprobs')}"))


def _lp_or_none(gen) -> np.ndarray:
    """The generation's top-k log-probs, or no rows when it has none (tokens only)."""
    return gen.topk_logprobs if gen.has_logprobs else np.zeros((0, 1), np.float32)
