"""The decode path of a causal-LM case, and its consistency with the one-pass path.

Ports break most in incremental decoding — KV-cache positions, paged attention, decode
kernels, rope offsets — where a one-pass forward over the whole sequence never goes. So
besides scoring the golden's sequence in one pass, a check measures the candidate's
*incremental* log-probs at every generated position:

- up to and including its first divergence from the golden, from its own free-running
  generation (the very steps that chose its tokens: no extra work);
- after it, by feeding the golden's tokens one at a time through its KV cache.

Both are taken at the golden's top-k ids, so the same metrics apply as to the one-pass
comparison, judged by the decode path's limits (`decode`). The two paths of one backend
over the same sequence must also agree with each other (kinds.causal_lm.consistency).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specengine.compare import tokens as compare
from specengine.results import FAIL, NOT_RUN, PASS, Check


@dataclass
class DecodeRows:
    """The candidate's decode-path log-probs at the golden's top-k ids, rows 0…covered−1."""

    lp: np.ndarray            # (covered, k)
    tail: np.ndarray          # (covered,)
    top1: np.ndarray          # (covered,) the candidate's own argmax per row
    covered: int              # rows measured (the golden has `total`)
    total: int
    forced_from: int | None   # first row fed with the golden's tokens (None: none were)
    note: str = ""            # how the rows were obtained, what is missing and why


def gather_from_topk(top_ids: np.ndarray, top_lp: np.ndarray,
                     want: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Log-probs of `want` ids read off a runtime's own top-k rows (a served model), the
    log of the mass outside them, and how many wanted ids were not among the top-k (they
    get the row's lowest log-prob, an upper bound)."""
    n, k = want.shape
    out = np.empty((n, k), np.float64)
    missing = 0
    for i in range(n):
        row = {int(t): float(v) for t, v in zip(top_ids[i], top_lp[i]) if np.isfinite(v)}
        floor = min(row.values()) if row else -20.0
        for j, gid in enumerate(want[i]):
            if int(gid) in row:
                out[i, j] = row[int(gid)]
            else:
                out[i, j] = floor
                missing += 1
    mass = np.exp(out).sum(axis=1)
    with np.errstate(divide="ignore"):
        tail = np.log(np.clip(1.0 - mass, 1e-9, None))
    return out.astype(np.float32), tail.astype(np.float32), missing


def decode_rows(backend, prompt_ids: list[int], golden_out: list[int], g_ids: np.ndarray,
                gen, divergence_step: int | None, top_k: int) -> DecodeRows:
    """Assemble the decode-path rows of one case from the free-running generation `gen`
    (run with `gather=g_ids` where the backend supports it) and, past the divergence, an
    incremental run over the golden's tokens."""
    total = len(golden_out)
    usable = total if divergence_step is None else min(divergence_step + 1, total)
    notes = []
    if gen.gathered_logprobs is not None:
        usable = min(usable, len(gen.gathered_logprobs))
        lp, tail = gen.gathered_logprobs[:usable], gen.gathered_tail[:usable]
        top1 = np.asarray(gen.topk_ids[:usable, 0]) if usable else np.zeros(0, np.int64)
    elif gen.has_logprobs:
        usable = min(usable, len(gen.topk_logprobs))
        lp, tail, missing = gather_from_topk(gen.topk_ids[:usable], gen.topk_logprobs[:usable],
                                             g_ids[:usable])
        top1 = np.asarray(gen.topk_ids[:usable, 0])
        notes.append("read off the runtime's own top-k" + (
            f"; {missing} golden top-k entries outside it got its lowest log-prob (an upper "
            "bound)" if missing else ""))
    else:
        return DecodeRows(np.zeros((0, g_ids.shape[1]), np.float32), np.zeros(0, np.float32),
                          np.zeros(0, np.int64), 0, total, None,
                          "the runtime returned no log-probs for its generated tokens")
    forced_from = None
    if usable < total:
        if backend.supports_incremental:
            forced = backend.score_incremental(prompt_ids, golden_out, g_ids, top_k,
                                               start=usable)
            forced_from = usable
            lp = np.concatenate([lp, forced.gathered_logprobs])
            tail = np.concatenate([tail, forced.gathered_tail])
            top1 = np.concatenate([top1, forced.top_ids[:, 0]])
            usable = total
        else:
            reason = backend.unsupported.get("incremental") or \
                "the runtime cannot be fed the golden's tokens through its KV cache"
            notes.append(f"steps {usable}…{total - 1} not compared: {reason}")
    return DecodeRows(np.asarray(lp, np.float32), np.asarray(tail, np.float32),
                      np.asarray(top1, np.int64), usable, total, forced_from, "; ".join(notes))


def decode(ctx) -> Check | None:
    """`decode`: the golden's metrics on the candidate's decode-path rows, judged by the
    decode path's limits; the per-position series go to the case result."""
    if not ctx.golden_ids:
        return None
    rows = ctx.decode_rows
    if rows.covered == 0:
        return Check("decode", NOT_RUN, f"needs decode-path log-probs: {rows.note}")
    n, (ids, lp, tail) = rows.covered, ctx.golden_steps
    limits = ctx.limits
    tf = compare.teacher_forced(ids[:n], lp[:n], tail[:n], rows.lp, rows.tail, rows.top1,
                                limits.decode.values)
    ctx.result.per_position.update({
        "kl_decode": tf.kl, "abs_dlogprob_decode": tf.abs_dlogprob, "dp_decode": tf.dp,
        "same_top1_decode": [float(x) for x in tf.same_top1]})
    metrics = {"kl_mean": tf.kl_mean, "kl_max": tf.kl_max, "top1_agreement": tf.top1_agreement,
               "top1_agreement_all": tf.top1_agreement_all, "near_ties": tf.near_ties,
               "max_abs_dlogprob": tf.max_abs_dlogprob, "max_abs_dp": tf.max_abs_dp,
               "positions": n, "of_positions": rows.total, "forced_from": rows.forced_from,
               "worst_position": tf.worst_position}
    metrics.update(limits.metrics("decode", metrics))
    message = tf.verdict() + f" ({_how(rows.forced_from)}"
    message += f"; {rows.note})" if rows.note else ")"
    return Check("decode", PASS if tf.passed else FAIL, message, metrics)


def _how(forced_from: int | None) -> str:
    if forced_from is None:
        return "its own free-running steps"
    if forced_from == 0:
        return "the golden's tokens fed through its KV cache from step 0"
    return (f"its own steps 0…{forced_from - 1}, then the golden's tokens fed through its KV "
            f"cache from step {forced_from}")
