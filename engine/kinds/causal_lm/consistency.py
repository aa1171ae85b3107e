"""Prefill/decode consistency: one backend's two paths over the same sequence — its
incremental decode (KV cache) and its one-pass forward — must agree within that backend's
own numeric class (no golden needed). Checked on the candidate (`consistency`), on a live
reference (`reference-consistency`, check --against), and on the reference when a golden
is recorded (a reference whose paths disagree is refused as a golden)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from specengine.compare import tokens as compare
from specengine.compare.limits import Limits
from specengine.compare.tokens import Consistency
from specengine.compare.tolerances import Tolerance
from specengine.results import FAIL, NOT_RUN, PASS, Check


def consistency(ctx) -> Check | None:
    """`consistency`: the candidate's decode-path rows vs its own one-pass scores of the
    golden's sequence, at its own class's limits."""
    if not ctx.golden_ids:
        return None
    rows, scores = ctx.decode_rows, ctx.scores
    if scores is None or rows.covered == 0:
        reason = rows.note if rows.covered == 0 else ctx.unsupported("scoring")
        return Check("consistency", NOT_RUN, f"needs both paths: {reason}")
    own, n = ctx.limits.own, rows.covered
    cons = compare.consistency(rows.lp, rows.tail, rows.top1, scores.gathered_logprobs[:n],
                               scores.gathered_tail[:n], scores.top_ids[:n, 0],
                               clear_of_ties(scores.top_logprobs[:n], own.values.max_margin),
                               own.values)
    ctx.result.per_position["kl_consistency"] = cons.kl
    return consistency_check("consistency", cons, own, "the candidate's decode path vs its own "
                             "one-pass scores of the golden's sequence")


def reference_consistency(ctx) -> Check | None:
    """`reference-consistency` (check --against): the live reference's own two paths on
    the case, at the reference's own class."""
    if not ctx.reference_name:
        return None
    cons = ctx.reference_consistency
    if cons is None:
        return Check("reference-consistency", NOT_RUN,
                     f"reference '{ctx.reference_name}' gave no one-pass scores")
    return consistency_check("reference-consistency", cons, ctx.reference_limits,
                             f"reference '{ctx.reference_name}': its generation vs its "
                             "one-pass scores")


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
