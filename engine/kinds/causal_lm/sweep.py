"""Where drift starts in a length sweep: the shortest failing sub-case of each swept case,
and the first sequence position in it whose per-position error exceeds the limits — over
the whole sequence, the sampled prompt positions (check `prompt-positions`) and the
generated ones on the one-pass path, and the decode path's generated ones
(report.sequence.drift_start; position p is the logits at p, predicting token p + 1)."""

from __future__ import annotations

from specengine.report.sequence import drift_start
from specengine.results import FAIL, CaseResult
from specengine.spec import Case


def sweep_notes(cases: list[Case], results: list[CaseResult], tolerances: dict) -> list[str]:
    """One note per swept case that has a failing sub-case (`tolerances`: case id →
    Tolerance that judged it)."""
    by_id = {r.id: r for r in results}
    groups: dict[str, list[tuple[int, CaseResult]]] = {}
    for case in cases:
        if case.sweep_of and case.id in by_id and case.recipe is not None:
            groups.setdefault(case.sweep_of, []).append((case.recipe.tokens, by_id[case.id]))
    notes = []
    for name, members in groups.items():
        members.sort(key=lambda m: m[0])
        failing = [(n, r) for n, r in members if r.status == FAIL]
        if not failing:
            continue
        n, result = failing[0]
        passing = [m for m, r in members if m < n and r.status != FAIL]
        tol = tolerances.get(result.id)
        where = ""
        drift = None if tol is None else drift_start(result.per_position, n, tol.kl_max,
                                                     tol.logprob_atol)
        if drift is not None:
            where = f", first past tolerance at {drift.describe()}"
        before = f"; shorter sub-cases ({', '.join(map(str, passing))}) pass" if passing else ""
        notes.append(f"length sweep '{name}': drift starts at prompt length {n} (sub-case "
                     f"{result.id}){where}{before}; failing lengths: "
                     f"{', '.join(str(m) for m, _ in failing)}")
    return notes
