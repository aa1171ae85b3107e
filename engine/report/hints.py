"""Explanations a report adds to a case when two checks only make sense together.

A near-tie divergence is benign by the divergence rule (the candidate took a token the
golden's own distribution nearly preferred), but from that step on the candidate writes a
different continuation, so an expectation on the text (`expect.contains`, ...) can fail
on that other branch. The case then fails through the expectation although the
divergence was judged benign; the hint says so, and that the expectation is fragile.
"""

from __future__ import annotations

from specengine.results import FAIL, PASS, CaseResult


def near_tie_branch(case: CaseResult) -> bool:
    """A passing divergence check at a real divergence step, plus a failing text
    expectation."""
    if case.divergence_step is None:
        return False
    div = next((c for c in case.checks if c.name == "divergence"), None)
    if div is None or div.status != PASS:
        return False
    return any(c.name.startswith("expect.") and c.name != "expect.min_prob"
               and c.status == FAIL for c in case.checks)


def near_tie_hints(case: CaseResult) -> list[str]:
    if not near_tie_branch(case):
        return []
    failed = ", ".join(c.name for c in case.checks
                       if c.name.startswith("expect.") and c.status == FAIL)
    return [f"{failed} failed on the branch a near-tie at step {case.divergence_step} "
            "took: the divergence rule accepted the tie, the text after it differs; the "
            "expectation is fragile there (loosen it, or give the case more context)"]
