"""Localization: which layer does a candidate start to drift at? The per-layer
numbers and the flagging rule are pure functions (compare.layers, where the rule is
documented); this module runs the two sides (`specengine localize`, `check --localize`)
and returns the localizations, which the command line renders and writes."""

from __future__ import annotations

from typing import Any

import numpy as np

from specengine.backends.registry import config_for
from specengine.compare.layers import GROWTH, Localization
from specengine.errors import SpecEngineError, UsageError
from specengine.golden.store import golden_path
from specengine.kinds.policy import select_cases
from specengine.kinds.causal_lm.golden import LmCaseRecord, load_golden, staleness
from specengine.kinds.causal_lm.layers import (capture, localization_summary, localize_failed_case,
                                               localize_record, teacher_forced_ids)
from specengine.kinds.causal_lm.localize_decode import localize_decode_record
from specengine.kinds.causal_lm.record import record_case
from specengine.loading.session import (Session, open_session, prompt_ids_for, reference_source,
                                        tokenizer_for)
from specengine.progress import bar
from specengine.results import FAIL, PASS, CaseResult, Side


def localize_spec(spec: Any, case_ids: list[str] | None, backend: str, against: str | None,
                  golden_dir: Any, growth: float = GROWTH,
                  floor: float | None = None, path: str = "prefill") -> list[Localization]:
    """`specengine localize`: the selected cases of a spec, candidate `backend` against a
    live `against` backend (full hidden states) or against the golden's sketch alone.
    With `path="decode"` each case's decode path is localized against the candidate's own
    one-pass forward instead (on the golden's, or the live reference's, sequence)."""
    if spec.kind != "causal-lm":
        raise UsageError(f"{spec.path}: localize works on causal-lm specs (this one is "
                         f"kind: {spec.kind})")
    cases = select_cases(spec, case_ids)
    cand_name = config_for(backend, spec.backends).name
    ref_states: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    if against:
        ref_name = config_for(against, spec.backends).name
        session = open_session(spec, ref_name)
        try:
            records = {}
            for case in bar(cases, f"reference {spec.name} on {ref_name}", len(cases)):
                records[case.id] = record_case(session, case, sketch=False)[0]
                if path != "decode":
                    ref_states[case.id] = capture(session.backend,
                                                  teacher_forced_ids(records[case.id]))
            ref_dtype, reference = session.config.dtype, ref_name
        finally:
            session.close()
    else:
        ref_name = spec.reference
        golden = load_golden(golden_path(golden_dir, spec.name, ref_name), spec.name)
        tok = tokenizer_for(spec)
        golden = staleness(golden, reference_source(spec, ref_name).fingerprint,
                           [(c, prompt_ids_for(tok, c)) for c in cases],
                           str(spec.path)).raise_if_stale()
        records = {case.id: golden.case(case.id) for case in cases}
        ref_dtype = golden.side().dtype or None
        reference = f"golden {ref_name}"
    session = open_session(spec, cand_name)
    try:
        out = []
        for case in bar(cases, f"localize {spec.name} on {cand_name}", len(cases)):
            if path == "decode":
                out.append(localize_decode_record(
                    session.backend, records[case.id], case.id, candidate=cand_name,
                    dtype=session.config.dtype, quantization=session.config.quantization,
                    growth=growth, floor=floor))
                continue
            out.append(localize_record(session.backend, records[case.id], case.id,
                                       candidate=cand_name, reference=reference,
                                       ref_states=ref_states.get(case.id), growth=growth,
                                       floor=floor, dtypes=(session.config.dtype, ref_dtype)))
    finally:
        session.close()
    return out


def localize_after_check(wanted: bool | str, session: Session, result: CaseResult,
                         record: LmCaseRecord, ref_side: Side, ref_states: Any, live: bool,
                         notes: list[str]) -> None:
    """check --localize on one judged case: a failing case (every case with "all") gets
    its localization — on the decode path when only that path failed (the candidate's
    incremental states against its own one-pass states), else per layer against the
    reference; a passing case with a flagged layer gets a warning note."""
    if not (wanted == "all" or (wanted and result.status == FAIL)):
        return
    if result.status == FAIL and decode_only_failure(result):
        localize_decode(session, result, record)
    elif result.status in (FAIL, PASS):
        localize_failed_case(session, result, record, ref_side.backend, ref_side.dtype,
                             ref_states, live=live)
    flagged = (result.localization or {}).get("first_flagged_name")
    if result.status == PASS and flagged:
        notes.append(f"warning: case '{result.id}' passes its limits, but localize flags "
                     f"{flagged}: {localization_summary(result.localization)}")


def decode_only_failure(result: CaseResult) -> bool:
    """The decode path (or the candidate's prefill/decode consistency) failed while the
    one-pass comparison passed: the bug lives on the incremental-decode path."""
    status = {c.name: c.status for c in result.checks}
    return (FAIL in (status.get("decode"), status.get("consistency"))
            and status.get("teacher-forced") == PASS)


def localize_decode(session: Session, result: CaseResult, record: LmCaseRecord) -> None:
    """check --localize for a decode-path failure: the first layer whose incremental state
    departs from the candidate's own one-pass state (a problem becomes the `error`)."""
    try:
        loc = localize_decode_record(session.backend, record, result.id,
                                     candidate=session.config.name, dtype=session.config.dtype,
                                     quantization=session.config.quantization)
        result.localization = loc.to_dict()
    except SpecEngineError as exc:
        result.localization = {"case_id": result.id, "error": exc.one_line()}
