"""Determinism of a causal-LM case: the case run again `determinism.runs - 1` times must
give the first run's tokens and, unless `atol` allows more, bit-identical log-probs."""

from __future__ import annotations

import numpy as np

from specengine.compare import tokens as compare
from specengine.results import FAIL, NOT_RUN, PASS, Check


def determinism(ctx) -> list[Check] | None:
    """`determinism` (and `determinism.logprobs` not-run when there are none to compare)."""
    det = ctx.case.determinism
    if det.runs <= 1:
        return None
    gen = ctx.gen
    reps, tokens_only = [], not gen.has_logprobs
    for run_no in range(2, det.runs + 1):
        again = ctx.generate()
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
    checks = [Check("determinism", PASS if worst.passed else FAIL, message,
                    {"runs": det.runs, "identical_tokens": worst.identical_tokens,
                     "max_abs_dlogprob": worst.max_abs_dlogprob, "atol": det.atol})]
    if tokens_only:
        checks.append(Check("determinism.logprobs", NOT_RUN,
                            f"needs log-probs: {ctx.unsupported('logprobs')}"))
    return checks


def _lp_or_none(gen) -> np.ndarray:
    """The generation's top-k log-probs, or no rows when it has none (tokens only)."""
    return gen.topk_logprobs if gen.has_logprobs else np.zeros((0, 1), np.float32)
