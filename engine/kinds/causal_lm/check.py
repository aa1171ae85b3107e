"""Checking one causal-LM case: the ordered list of checks, each a function
`(CaseContext) -> Check | list[Check] | None` in the module of its concept, run over one
context with the one error policy (kinds.policy.run_checks).

1. the free-running greedy run: finite log-probs, a served model really greedy, the first
   divergence judged by the near-tie rule (greedy);
2. the case's expectations on the candidate's text (expect);
3. the one-pass path: the golden's sequence scored in one forward, and a long prompt's
   sampled positions (one_pass);
4. the decode path: the candidate's incremental log-probs at every generated position
   (decode), and its two paths against each other (consistency);
5. repeats (determinism) and the case inside batches (batch);
6. with check --against, the live reference's own consistency (consistency).
"""

from __future__ import annotations

from typing import Callable, Sequence

from specengine.kinds.causal_lm import batch, consistency, decode, determinism, expect, greedy
from specengine.kinds.causal_lm import one_pass
from specengine.kinds.causal_lm.context import CaseContext
from specengine.kinds.policy import run_checks
from specengine.results import CaseResult, Check

CHECKS: tuple[Callable[[CaseContext], Check | Sequence[Check] | None], ...] = (
    greedy.finite, greedy.served_greedy, expect.expectations, greedy.divergence,
    one_pass.teacher_forced, one_pass.prompt_positions, decode.decode, consistency.consistency,
    determinism.determinism, batch.batch_invariance, consistency.reference_consistency)


def check_case(ctx: CaseContext, timeout_s: float | None) -> CaseResult:
    """Every check of one case into its result; an exception becomes an `error` case
    (the run goes on), the time limit included."""
    return run_checks(ctx.result, lambda: _run(ctx), timeout_s)


def _run(ctx: CaseContext) -> None:
    result, tok, gen = ctx.result, ctx.tokenizer, ctx.gen
    result.candidate_ids = list(gen.output_ids)
    result.candidate_text = tok.decode(gen.output_ids)
    result.candidate_tokens = tok.token_strings(gen.output_ids)
    result.candidate_token_bytes = _hex(tok.token_bytes(gen.output_ids))
    for check in CHECKS:
        found = check(ctx)
        if isinstance(found, Check):
            result.checks.append(found)
        elif found:
            result.checks += list(found)


def new_result(ctx_case, record, tokenizer) -> CaseResult:
    """A case's result before its checks: the golden side, for every report."""
    result = CaseResult(id=ctx_case.id, status="pass", line=ctx_case.line,
                        tags=list(ctx_case.tags), prompt=record.prompt,
                        golden_text=record.output_text, golden_ids=list(record.output_ids))
    result.prompt_length = record.prompt_length
    result.golden_tokens = tokenizer.token_strings(record.output_ids)
    result.golden_token_bytes = _hex(tokenizer.token_bytes(record.output_ids))
    return result


def _hex(pieces) -> list[str | None]:
    return [None if b is None else b.hex() for b in pieces]
