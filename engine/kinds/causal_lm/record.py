"""Recording a causal-lm case on the reference: its greedy continuation with the top-k
log-probs of each step, its own prefill/decode consistency, the layer sketch `localize`
reads, a long prompt's sampled positions, and the expectations its own text fails — as a
typed record (kinds.causal_lm.golden). Also the live reference of `check --against`, and
what refuses a reference as a golden (inconsistent paths, failing its own spec)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from specengine.compare.tokens import Consistency
from specengine.compare.tolerances import dtype_class
from specengine.errors import (BackendCrashed, BackendUnavailable, ReferenceFailsExpectations,
                               ReferenceInconsistent)
from specengine.kinds.causal_lm.consistency import generation_consistency, report_consistency
from specengine.kinds.causal_lm.expect import reference_failures
from specengine.kinds.causal_lm.golden import (LmCaseRecord, LmGolden, PromptSteps, Steps,
                                               case_hash)
from specengine.kinds.causal_lm.layers import capture, sketch_for_record, teacher_forced_ids
from specengine.kinds.policy import record_one
from specengine.loading.session import Session, open_session
from specengine.progress import cases as progress_cases
from specengine.results import Side
from specengine.spec import Case, Spec
from specengine.spec.long_prompt import prompt_positions


def record_case(session: Session, case: Case, sketch: bool = True
                ) -> tuple[LmCaseRecord, Consistency | None]:
    """Run one case on the reference: its record (with the layer sketch that `localize`
    needs when the backend returns hidden states and `sketch` is set), and its own
    prefill/decode consistency — its generation (incremental decode) against its one-pass
    scores of the same tokens, at its own class's absolute limits."""
    ids = session.prompt_ids(case)
    session.check_length(case, ids)
    gen = record_one(session.config.name, case.id,
                     lambda: session.backend.generate([ids], case.max_new_tokens, case.top_k,
                                                      session.tokenizer.stop_ids)[0],
                     session.spec.timeout_s)
    if not gen.has_logprobs or len(gen.topk_logprobs) < len(gen.output_ids):
        reason = (session.backend.unsupported.get("logprobs")
                  or f"backend '{session.config.name}' returned none")
        raise BackendUnavailable(f"backend '{session.config.name}' returned no log-probs for "
                                 f"case '{case.id}', so it cannot record a golden: {reason}")
    _check_finite(gen.topk_logprobs, session, case)
    own = session.spec.limits(case, dtype_class(session.config.dtype, session.config.quantization),
                              session.config.name, absolute_only=True).values
    consistency = generation_consistency(session.backend, ids, gen, case.top_k, own)
    n = len(gen.output_ids)
    text = session.tokenizer.decode(gen.output_ids)
    steps = Steps.rounded(gen.topk_ids[:n], gen.topk_logprobs[:n], gen.tail_logprob[:n])
    first = float(steps.logprobs[0][0]) if n else None
    record = LmCaseRecord(
        id=case.id, hash=case_hash(ids, case.settings(), session.resolved.fingerprint),
        prompt=session.prompt_text(case), output_ids=tuple(gen.output_ids), output_text=text,
        settings=case.settings(), steps=steps, prompt_ids=tuple(ids), prompt_length=len(ids),
        reference_fails=tuple(reference_failures(case, text, gen.output_ids, first)))
    if case.recipe is not None and session.backend.supports_positions:
        record = _with_prompt_steps(record, session, ids, case.top_k)
    if sketch and case.recipe is None:   # per-layer sketch, so localize works on the golden alone
        layer_sketch = sketch_for_record(session.backend, record)
        if layer_sketch:
            record = replace(record, sketch=layer_sketch)
    return record, consistency


def _with_prompt_steps(record: LmCaseRecord, session: Session, ids: list[int],
                       top_k: int) -> LmCaseRecord:
    """The reference's own top-k at a long prompt's sampled positions (one forward)."""
    positions = prompt_positions(len(ids))
    scores = session.backend.score_positions(ids, positions, np.zeros((len(positions), 1),
                                                                      np.int64), top_k)
    mass = np.exp(scores.top_logprobs.astype(np.float64)).sum(axis=1)
    with np.errstate(divide="ignore"):
        tail = np.log(np.clip(1.0 - mass, 0.0, None))
    steps = Steps.rounded(scores.top_ids, scores.top_logprobs, tail)
    return replace(record, prompt_steps=PromptSteps(tuple(positions), steps))


def _check_finite(lp: np.ndarray, session: Session, case: Case) -> None:
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise BackendCrashed(f"backend '{session.config.name}' produced NaN/Inf log-probs on "
                             f"case '{case.id}'; refusing to record it as a golden")


def refuse_unless_golden(name: str, records: Mapping[str, tuple[LmCaseRecord, Consistency]],
                         echo: Callable[[str], None], allow_inconsistent: bool,
                         allow_failing: bool) -> list[str]:
    """A reference is not a golden when its own decode and one-pass paths disagree on a
    case beyond its class's noise (ReferenceInconsistent, unless `allow_inconsistent`) or
    when its own text fails the case's expectations (ReferenceFailsExpectations, unless
    `allow_failing`); exit 1 either way, nothing written. Returns the inconsistent cases
    (what an allowed golden lists)."""
    inconsistent = report_consistency({cid: cons for cid, (_, cons) in records.items()}, echo)
    if inconsistent and not allow_inconsistent:
        raise ReferenceInconsistent(
            f"backend '{name}' disagrees with itself (incremental decode vs one-pass) on "
            f"{len(inconsistent)} case(s): {'; '.join(inconsistent)[:600]}; nothing was "
            "recorded — fix the reference, or pass --allow-inconsistent-reference to record it "
            "anyway (the golden says so)")
    failing = {cid: rec for cid, (rec, _) in records.items() if rec.reference_fails}
    if failing and not allow_failing:
        listed = "; ".join(f"{cid}: expect {', '.join(rec.reference_fails)} (its text: "
                           f"{rec.output_text[:60]!r})" for cid, rec in failing.items())
        raise ReferenceFailsExpectations(
            f"backend '{name}' fails its own spec's expectations on {len(failing)} case(s): "
            f"{listed[:700]}; nothing was recorded — fix the expectations or the reference, "
            "or pass --allow-failing-expectations (the golden marks those cases, and a check "
            "reports them as failing on the reference too)")
    return inconsistent


def live_reference(spec: Spec, ref_name: str, cases: list[Case], states: dict | None = None
                   ) -> tuple[LmGolden, Side, dict[str, Consistency | None]]:
    """The reference run live (check --against): its records as a golden, its side, and
    each case's prefill/decode consistency; with `states`, also each case's per-layer
    hidden states (for check --localize), by case id."""
    session = open_session(spec, ref_name)
    session.bind_chats()
    try:
        records, checks = {}, {}
        for case in progress_cases(cases, "reference", spec.name, ref_name):
            records[case.id], checks[case.id] = record_case(session, case, sketch=False)
        for cid, record in records.items() if states is not None else ():
            try:
                states[cid] = capture(session.backend, teacher_forced_ids(record))
            except BackendUnavailable:   # no hidden states: localization says so
                pass
        side = session.side()
    finally:
        session.close()
    golden = LmGolden(Path(f"<live {ref_name}>"), spec.name, ref_name,
                      session.resolved.fingerprint, session.resolved.origin, {}, records)
    return golden, side, checks
