"""A case's expectations (`expect:`) on a continuation: judged on the candidate's text at
check time, and on the reference's own text when a golden is recorded — a reference that
fails its own spec is not a golden unless the recording allows it, and then the golden
names those expectations, which a check reports as failing on the reference too."""

from __future__ import annotations

from typing import Sequence

from specengine.compare import tokens as compare
from specengine.results import FAIL, NOT_RUN, PASS, Check
from specengine.spec import Case


def judged(case: Case, text: str, ids: Sequence[int], first_logprob: float | None
           ) -> list[compare.Expectation]:
    return compare.expectations(case.expect, text, ids, first_logprob)


def reference_failures(case: Case, text: str, ids: Sequence[int],
                       first_logprob: float | None) -> list[str]:
    """The expectations the reference's own continuation fails, by identity
    (`contains 'Paris'`)."""
    return [exp.key for exp in judged(case, text, ids, first_logprob) if not exp.passed]


def expectation_checks(case: Case, text: str, ids: Sequence[int],
                       first_logprob: float | None, reference_fails: Sequence[str],
                       no_logprobs: str) -> list[Check]:
    """One `expect.*` check per expectation on the candidate's continuation. One that the
    reference fails too (the golden names it) is not the candidate's fault: not judged,
    said so. `no_logprobs` is why min_prob cannot be judged when there are none."""
    out = []
    for exp in judged(case, text, ids, first_logprob):
        name = f"expect.{exp.name}"
        if exp.name == "min_prob" and first_logprob is None and len(ids):
            out.append(Check(name, NOT_RUN, f"needs log-probs: {no_logprobs}"))
        elif not exp.passed and exp.key in reference_fails:
            out.append(Check(name, NOT_RUN, f"fails on the reference too, so not the "
                             f"candidate's fault: {exp.detail}", {"reference_fails": True}))
        else:
            out.append(Check(name, PASS if exp.passed else FAIL, exp.detail))
    return out


def expectations(ctx) -> list[Check]:
    """The case's `expect.*` checks on the candidate's continuation (those the golden
    says its reference fails too are not run, said so)."""
    return expectation_checks(ctx.case, ctx.result.candidate_text, ctx.gen.output_ids,
                              ctx.first_logprob, ctx.record.reference_fails,
                              ctx.unsupported("logprobs"))
