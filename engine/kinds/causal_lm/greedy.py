"""The candidate's free-running greedy run of a case and the checks on it: its log-probs
are finite (`finite`), a served runtime really was greedy (`greedy`), and where it first
leaves the golden's tokens the near-tie rule says whether that is benign (`divergence`).

Whether a runtime's continuation really is greedy is judged by its own log-probs.

A greedy step picks the token the runtime itself ranks first. A served model can return
a token that is not its own top-1 even at temperature 0 — a repetition penalty, a top-k
or min-p cut, a logits processor or a model's generation-config defaults act after the
log-probs it reports. That is a deployment setting, not model drift, so it is a check of
its own (`greedy`) and a note on the run, apart from the divergence check whose failure
it usually causes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from specengine.compare import tokens as compare
from specengine.results import FAIL, NOT_RUN, PASS, Check

# log-probs come back rounded (JSON floats, float32 maths); a true tie is not a violation
TIE_ATOL = 1e-3


@dataclass
class GreedyResult:
    """The first step whose token is not the runtime's own top-1 (None: every step was)."""

    steps: int                         # steps with log-probs that were looked at
    step: int | None = None
    chosen_id: int | None = None
    chosen_logprob: float | None = None   # None: outside the returned top-k
    top1_id: int | None = None
    top1_logprob: float | None = None
    violations: int = 0

    @property
    def passed(self) -> bool:
        return self.step is None


def greedy_steps(output_ids: Sequence[int], topk_ids: np.ndarray, topk_logprobs: np.ndarray,
                 atol: float = TIE_ATOL) -> GreedyResult:
    """Compare each generated token with the top-1 of the distribution it was drawn from.

    `topk_ids[i]` / `topk_logprobs[i]` (sorted descending) are the runtime's own top-k at
    step i. A step is greedy when its token is the top-1, or ties it within `atol` nats.
    Steps past the arrays (a stop token without a distribution) are not judged."""
    n = min(len(output_ids), len(topk_ids))
    result = GreedyResult(steps=n)
    for i in range(n):
        chosen, top1, top1_lp = int(output_ids[i]), int(topk_ids[i][0]), float(topk_logprobs[i][0])
        if chosen == top1:
            continue
        hits = np.nonzero(np.asarray(topk_ids[i]) == chosen)[0]
        chosen_lp = float(topk_logprobs[i][hits[0]]) if len(hits) else None
        if chosen_lp is not None and chosen_lp >= top1_lp - atol:
            continue
        result.violations += 1
        if result.step is None:
            result.step, result.chosen_id, result.chosen_logprob = i, chosen, chosen_lp
            result.top1_id, result.top1_logprob = top1, top1_lp
    return result


def greedy_check(backend: Any, gen: Any, token_text) -> Check | None:
    """The `greedy` check of one generation, for runtimes that say why they might not be
    greedy (`backend.greedy_causes`); None for the others (greedy by construction).
    `token_text(id) -> str` shows a token."""
    causes = backend.greedy_causes
    if not causes:
        return None
    if not gen.has_logprobs:
        why = backend.unsupported.get("logprobs", "no log-probs")
        return Check("greedy", NOT_RUN, f"needs the server's log-probs: {why}")
    res = greedy_steps(gen.output_ids, gen.topk_ids, gen.topk_logprobs)
    metrics: dict[str, Any] = {"steps": res.steps, "violations": res.violations}
    if res.passed:
        return Check("greedy", PASS, f"every generated token was the server's own top-1 "
                                     f"({res.steps} steps)", metrics)
    chosen = (f"log-prob {res.chosen_logprob:.3f}" if res.chosen_logprob is not None
              else "outside its returned top-k")
    metrics.update({"first_step": res.step, "chosen_id": res.chosen_id, "top1_id": res.top1_id,
                    "top1_logprob": res.top1_logprob})
    if res.chosen_logprob is not None:
        metrics["chosen_logprob"] = res.chosen_logprob
    return Check("greedy", FAIL,
                 f"server not greedy at step {res.step}: it returned {token_text(res.chosen_id)!r} "
                 f"({chosen}) where its own top-1 was {token_text(res.top1_id)!r} (log-prob "
                 f"{res.top1_logprob:.3f}); {res.violations} of {res.steps} steps. Likely "
                 f"causes: {causes}", metrics)


def greedy_note(backend_name: str, cases: Sequence[Any]) -> str | None:
    """A run note naming the cases where the candidate was not greedy (None if none)."""
    bad = []
    for case in cases:
        for check in getattr(case, "checks", []):
            if check.name == "greedy" and check.status == FAIL:
                bad.append(f"{case.id} (step {check.metrics.get('first_step')})")
    if not bad:
        return None
    return (f"candidate '{backend_name}' was not greedy at temperature 0 in {len(bad)} "
            f"case{'s' if len(bad) > 1 else ''}: {', '.join(bad)} — a serving setting, not "
            "model drift; a divergence from that step on follows from it (see each case's "
            "greedy check for the likely causes)")


# -- the checks (CaseContext -> Check | None) -------------------------------------------

def finite(ctx) -> Check | None:
    """`finite`: NaN or +inf in the candidate's log-probs (-inf is a zero mass)."""
    gen = ctx.gen
    if gen.has_logprobs and bool(np.isnan(gen.topk_logprobs).any()
                                 or np.isposinf(gen.topk_logprobs).any()):
        return Check("finite", FAIL, "candidate logits contain NaN or Inf")
    return None


def served_greedy(ctx) -> Check | None:
    """`greedy`: a served model's tokens were its own top-1 (None for runtimes that are
    greedy by construction)."""
    return greedy_check(ctx.backend, ctx.gen, ctx.token_text)


def divergence(ctx) -> Check:
    """`divergence`: the first step where the candidate's tokens leave the golden's, judged
    by the near-tie rule (also what the decode path reads: where its own steps end)."""
    tol = ctx.limits.prefill.values
    ids, lp, _ = ctx.golden_steps
    div = compare.first_divergence(ctx.golden_ids, ctx.gen.output_ids, ids, lp, tol)
    ctx.divergence = div
    ctx.result.divergence_step = div.step
    return Check("divergence", PASS if div.passed else FAIL,
                 div.reason or "identical greedy tokens",
                 {"step": div.step, "rank_in_golden": div.rank_in_golden, "margin": div.margin,
                  "golden_id": div.golden_id, "candidate_id": div.candidate_id,
                  "within_top_k": tol.within_top_k, "max_margin": tol.max_margin})
