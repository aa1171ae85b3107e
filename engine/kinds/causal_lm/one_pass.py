"""The one-pass path of a causal-LM case: the candidate scores the golden's whole sequence
in one forward pass and its log-probs at the golden's top-k ids are compared position by
position (`teacher-forced`) — this keeps comparing after a divergence; a long prompt made
by recipe is also compared at its sampled prompt positions (`prompt-positions`)."""

from __future__ import annotations

import numpy as np

from specengine.compare import tokens as compare
from specengine.results import FAIL, NOT_RUN, PASS, Check, TopKRow


def teacher_forced(ctx) -> Check:
    """`teacher-forced`: KL, top-1 agreement, |Δ logprob| and Δp on the one-pass path,
    judged by the one-pass limits; the per-position series and the worst position's
    top-k go to the case result."""
    scores = ctx.scores
    if scores is None:
        return Check("teacher-forced", NOT_RUN, ctx.one_pass_unavailable)
    ids, lp, tail = ctx.golden_steps
    tf = compare.teacher_forced(ids, lp, tail, scores.gathered_logprobs, scores.gathered_tail,
                                scores.top_ids[:, 0], ctx.limits.prefill.values)
    metrics = {"kl_mean": tf.kl_mean, "kl_max": tf.kl_max, "top1_agreement": tf.top1_agreement,
               "top1_agreement_all": tf.top1_agreement_all, "near_ties": tf.near_ties,
               "max_abs_dlogprob": tf.max_abs_dlogprob, "max_abs_dp": tf.max_abs_dp,
               "positions": len(tf.kl)}
    metrics.update(ctx.limits.metrics("prefill", metrics))
    result, worst = ctx.result, tf.worst_position
    result.per_position = {"kl": tf.kl, "abs_dlogprob": tf.abs_dlogprob, "dp": tf.dp,
                           "same_top1": [float(x) for x in tf.same_top1]}
    result.worst_position = worst
    result.worst_topk = topk_rows(ctx.tokenizer, ids[worst], lp[worst],
                                  scores.gathered_logprobs[worst])
    return Check("teacher-forced", PASS if tf.passed else FAIL,
                 tf.verdict() + (f" ({scores.note})" if scores.note else ""), metrics)


def prompt_positions(ctx) -> Check | None:
    """`prompt-positions`: a long case's sampled prompt positions, one-pass, vs the
    golden (None for a case without them)."""
    stored = ctx.record.prompt_steps
    if stored is None:
        return None
    backend = ctx.backend
    if not backend.supports_positions:
        return Check("prompt-positions", NOT_RUN, f"backend '{backend.name}' cannot score "
                     "chosen prompt positions")
    ids, lp, tail = stored.steps.arrays()
    positions = list(stored.positions)
    scores = backend.score_positions(ctx.prompt_ids, positions, ids, ctx.case.top_k)
    limits = ctx.limits.prefill
    tf = compare.teacher_forced(ids, lp, tail, scores.gathered_logprobs, scores.gathered_tail,
                                scores.top_ids[:, 0], limits.values)
    worst = positions[tf.worst_position]
    per = ctx.result.per_position
    per["kl_prompt"], per["abs_dlogprob_prompt"] = tf.kl, tf.abs_dlogprob
    per["prompt_position"] = [float(p) for p in positions]
    return Check("prompt-positions", PASS if tf.passed else FAIL,
                 tf.verdict() + f" ({len(positions)} sampled prompt positions, one-pass; "
                 f"worst at position {worst})",
                 {"kl_mean": tf.kl_mean, "kl_max": tf.kl_max,
                  "top1_agreement": tf.top1_agreement, "max_abs_dlogprob": tf.max_abs_dlogprob,
                  "positions": len(positions), "worst_position": worst, **limits.metrics()})


def topk_rows(tok, ids: np.ndarray, golden_lp: np.ndarray, cand_lp: np.ndarray) -> list[TopKRow]:
    """The golden's top-k at one position beside the candidate's probabilities."""
    names = tok.token_strings([int(i) for i in ids])
    rows = []
    for name, tid, g, c in zip(names, ids, golden_lp, cand_lp):
        gp, cp = float(np.exp(g)), float(np.exp(c))
        rows.append(TopKRow(token=name, id=int(tid), golden_p=gp, candidate_p=cp, delta=cp - gp))
    return rows
