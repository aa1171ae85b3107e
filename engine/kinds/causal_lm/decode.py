"""The decode path of a causal-LM case, and its consistency with the one-pass path.

Ports break most in incremental decoding — KV-cache positions, paged attention, decode
kernels, rope offsets — where a one-pass forward over the whole sequence never goes. So
besides scoring the golden's sequence in one pass, a check measures the candidate's
*incremental* log-probs at every generated position:

- up to and including its first divergence from the golden, from its own free-running
  generation (the very steps that chose its tokens: no extra work);
- after it, by feeding the golden's tokens one at a time through its KV cache.

Both are taken at the golden's top-k ids, so the same metrics and tolerances apply as to
the one-pass comparison. The two paths of one backend over the same sequence must also
agree with each other within that backend's own dtype noise (no golden needed); a
reference whose paths disagree is refused as a golden.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specengine.compare import tokens as compare
from specengine.compare.tokens import Consistency, TeacherForced
from specengine.results import FAIL, NOT_RUN, PASS, Check
from specengine.compare.limits import Limits
from specengine.compare.tolerances import Tolerance
from specengine.kinds.causal_lm.limits import CaseLimits


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


def decode_check(rows: DecodeRows, g_ids: np.ndarray, g_lp: np.ndarray, g_tail: np.ndarray,
                 limits: CaseLimits) -> tuple[Check, TeacherForced | None]:
    """The `decode` check of a case: the golden's metrics on the decode-path rows, judged
    by the decode path's limits."""
    if rows.covered == 0:
        return Check("decode", NOT_RUN, f"needs decode-path log-probs: {rows.note}"), None
    n = rows.covered
    tf = compare.teacher_forced(g_ids[:n], g_lp[:n], g_tail[:n], rows.lp, rows.tail, rows.top1,
                                limits.decode.values)
    if rows.forced_from is None:
        how = "its own free-running steps"
    elif rows.forced_from == 0:
        how = "the golden's tokens fed through its KV cache from step 0"
    else:
        how = (f"its own steps 0…{rows.forced_from - 1}, then the golden's tokens fed through "
               f"its KV cache from step {rows.forced_from}")
    message = tf.verdict() + f" ({how}"
    message += f"; {rows.note})" if rows.note else ")"
    metrics = {"kl_mean": tf.kl_mean, "kl_max": tf.kl_max, "top1_agreement": tf.top1_agreement,
               "top1_agreement_all": tf.top1_agreement_all, "near_ties": tf.near_ties,
               "max_abs_dlogprob": tf.max_abs_dlogprob, "max_abs_dp": tf.max_abs_dp,
               "positions": n, "of_positions": rows.total, "forced_from": rows.forced_from,
               "worst_position": tf.worst_position}
    metrics.update(limits.metrics("decode", metrics))
    return Check("decode", PASS if tf.passed else FAIL, message, metrics), tf


def consistency_check(name: str, cons: Consistency, limits: Limits, what: str) -> Check:
    """A `consistency` (or `reference-consistency`) check from its measurement."""
    message = ("; ".join(cons.failures) or "decode and one-pass agree, "
               + cons.verdict()) + f" ({what})"
    return Check(name, PASS if cons.passed else FAIL, message,
                 {"kl_mean": cons.kl_mean, "kl_max": cons.kl_max,
                  "max_abs_dlogprob": cons.max_abs_dlogprob,
                  "top1_agreement": cons.top1_agreement, "worst_position": cons.worst_position,
                  "positions": len(cons.kl), **limits.metrics()})


def clear_of_ties(top_lp: np.ndarray, margin: float) -> np.ndarray:
    """Positions whose top-1 leads its runner-up by at least `margin` nats."""
    if top_lp.ndim != 2 or top_lp.shape[1] < 2:
        return np.ones(top_lp.shape[0], dtype=bool)
    return (top_lp[:, 0] - top_lp[:, 1]) >= margin


def generation_consistency(backend, prompt_ids: list[int], gen, top_k: int,
                           tol: Tolerance) -> Consistency | None:
    """A backend's own generation (decode path, its own top-k) against its one-pass
    scores of the same continuation, at the generation's top-k ids. None when the backend
    cannot score or returned no log-probs."""
    if not gen.has_logprobs or not len(gen.output_ids) or not backend.supports_scoring:
        return None
    n = len(gen.output_ids)
    ids = np.asarray(gen.topk_ids[:n], dtype=np.int64)
    scores = backend.score(prompt_ids, gen.output_ids, ids, top_k)
    return compare.consistency(np.asarray(gen.topk_logprobs[:n]), np.asarray(gen.tail_logprob[:n]),
                               ids[:, 0], scores.gathered_logprobs, scores.gathered_tail,
                               scores.top_ids[:, 0], clear_of_ties(scores.top_logprobs,
                                                                   tol.max_margin), tol)
