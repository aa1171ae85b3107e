"""The causal-lm kind's hooks into the one record/check skeleton (kinds.base): where its
reference comes from (a verified, fresh golden, or the reference backend run live), how
its candidate is opened, how one case is checked and recorded, and what follows the case
loop (localization, notes, perf, the whole-spec distribution)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from specengine.backends.registry import config_for
from specengine.compare.distribution import spec_distribution
from specengine.compare.tolerances import coarser, dtype_class
from specengine.errors import BackendStopped, SpecEngineError
from specengine.golden.store import golden_path, replace_golden
from specengine.kinds.base import CheckRequest, Kind, RecordRequest, closing_session, new_run
from specengine.kinds.causal_lm import check as checks
from specengine.kinds.causal_lm import golden as codec
from specengine.kinds.causal_lm.golden_changes import describe_changes
from specengine.kinds.causal_lm.context import CaseContext
from specengine.kinds.causal_lm.greedy import greedy_note
from specengine.kinds.causal_lm.limits import CaseLimits, case_limits
from specengine.kinds.causal_lm.localize import localize_after_check
from specengine.kinds.causal_lm.noise import noise_config, with_noise
from specengine.kinds.causal_lm.perf_gate import check_perf
from specengine.kinds.causal_lm.record import live_reference, record_case, refuse_unless_golden
from specengine.kinds.causal_lm.sweep import sweep_notes
from specengine.kinds.policy import described
from specengine.loading.session import (Session, open_session, prompt_ids_for, reference_source,
                                        tokenizer_for)
from specengine.results import ERROR, RunResult, Side
from specengine.spec import Case


@dataclass
class Reference:
    """What a candidate is compared with: the golden (its prompt ids resolved), the side
    that recorded it, and with check --against each case's hidden states (localize) and
    the live reference's own consistency."""

    golden: codec.LmGolden
    side: Side
    kind: str                                   # golden | live
    states: dict = field(default_factory=dict)
    consistency: dict = field(default_factory=dict)


@dataclass
class Candidate:
    """The loaded candidate and what judges each case with it."""

    session: Session
    klass: str
    own_class: str
    limits: dict[str, CaseLimits]
    batch_prompts: list[tuple[str, list[int]]]


class CausalLm(Kind):
    name = "causal-lm"
    record_options = frozenset({"noise", "allow_failing"})

    # -- checking -------------------------------------------------------------------------
    @contextlib.contextmanager
    def reference(self, req: CheckRequest):
        spec = req.spec
        if req.against:
            ref_name = config_for(req.against, spec.backends).name
            own = self._class_of(req, req.candidate)     # relative limits: exit 2 first
            _limits(req, Reference(_empty(spec.name, ref_name), Side(ref_name), "live"), own,
                    coarser(own, self._class_of(req, req.against)))
            states: dict = {}
            golden, side, cons = live_reference(spec, ref_name, list(req.cases),
                                                states if req.options.localize else None)
            yield Reference(golden, side, "live", states, cons)
            return
        resolved = reference_source(spec, spec.reference)  # a missing model names its variable
        golden = codec.load_golden(golden_path(req.golden_dir, spec.name, spec.reference),
                                   spec.name)
        tok = tokenizer_for(spec)
        verdict = codec.staleness(golden, resolved.fingerprint,
                                  [(c, prompt_ids_for(tok, c)) for c in req.cases], str(spec.path))
        yield Reference(verdict.raise_if_stale(), golden.side(), "golden")

    def _class_of(self, req: CheckRequest, backend: str) -> str:
        config = config_for(backend, req.spec.backends)
        return dtype_class(config.dtype, config.quantization)

    @contextlib.contextmanager
    def candidate(self, req: CheckRequest, ref: Reference):
        own = self._class_of(req, req.candidate)
        klass = coarser(own, dtype_class(ref.side.dtype, ref.side.quantization))
        limits = _limits(req, ref, own, klass)           # before any model loads
        session = open_session(req.spec, req.candidate)
        session.bind_chats()
        with closing_session(session):
            prompts = ([(c.id, session.prompt_ids(c)) for c in req.spec.cases]
                       if any(max(c.determinism.batch_sizes, default=1) > 1 for c in req.cases)
                       else [])
            yield Candidate(session, klass, own, limits, prompts)

    def start(self, req: CheckRequest, cand: Candidate, ref: Reference):
        session = cand.session
        side = session.side()
        own = dtype_class(side.dtype, side.quantization)
        klass = coarser(own, dtype_class(ref.side.dtype, ref.side.quantization))
        if (klass, own) != (cand.klass, cand.own_class):   # the runtime reported another dtype
            cand.klass, cand.own_class = klass, own
            cand.limits = _limits(req, ref, own, klass)
        run = new_run(req.spec, side, ref.side, ref.kind, tolerance_class=klass)
        if session.model_override:
            run.notes.append(f"candidate '{req.candidate}' runs its own model: "
                             f"{session.resolved.origin}")
        backend = session.backend
        if not (backend.supports_logprobs and backend.supports_scoring):
            why = (backend.unsupported.get("scoring") or backend.unsupported.get("logprobs")
                   or f"backend '{backend.name}' returned none")
            run.notes.append(f"candidate '{req.candidate}' gives no log-probs, so the checks "
                             f"that need them are not run: {why}")
        return run, req.cases

    def check_case(self, req: CheckRequest, cand: Candidate, ref: Reference, case: Case):
        session, record = cand.session, ref.golden.case(case.id)
        session.check_length(case, list(record.prompt_ids or ()))
        live = ref.kind == "live"
        ctx = CaseContext(
            case=case, record=record, limits=cand.limits[case.id], backend=session.backend,
            tokenizer=session.tokenizer,
            result=checks.new_result(case, record, session.tokenizer),
            batch_prompts=cand.batch_prompts,
            reference_consistency=ref.consistency.get(case.id),
            reference_limits=(req.spec.limits(case, dtype_class(ref.side.dtype,
                                                                ref.side.quantization))
                              if live else None),
            reference_name=ref.side.backend if live else "")
        return checks.check_case(ctx, req.spec.timeout_s)

    def after_case(self, req: CheckRequest, cand: Candidate, ref: Reference, run: RunResult,
                   case: Case, result) -> None:
        localize_after_check(req.options.localize, cand.session, result,
                             ref.golden.case(case.id), ref.side, ref.states.get(case.id),
                             ref.kind == "live", run.notes)

    def finish(self, req: CheckRequest, cand: Candidate, ref: Reference, run: RunResult) -> None:
        judged = {c.id: cand.limits[c.id].prefill.values for c in req.cases
                  if not c.limit_source.relative_keys(cand.klass)}
        run.notes += sweep_notes(list(req.cases), run.cases, judged)
        note = greedy_note(req.candidate, run.cases)
        if note:
            run.notes.append(note)
        try:
            if req.options.perf:
                run.perf = _measure_perf(cand.session, req)
        except BackendStopped as exc:   # the judged cases stay in the reports
            exc.at("while measuring perf")
            run.perf = {"status": ERROR, "failures": [exc.one_line()]}
            raise
        finally:
            run.candidate = cand.session.side()
            run.distribution = spec_distribution(run.cases, req.spec.distribution)

    # -- recording ------------------------------------------------------------------------
    def amend(self, req: RecordRequest) -> Path | None:
        """`--noise` on an existing golden without --update: the reference's noise is
        measured and added; the recorded outputs are kept byte for byte."""
        noise = tuple(req.options.get("noise") or ())
        for klass in noise:
            noise_config(config_for(req.backend, req.spec.backends), klass)  # usage first
        if not noise or req.update or not req.path.exists():
            return None
        spec = req.spec
        old = codec.load_data(req.path, spec.name)
        golden = codec.decode(old, req.path)
        tok = tokenizer_for(spec)
        resolved = reference_source(spec, req.backend)
        golden = codec.staleness(golden, resolved.fingerprint,
                                 [(c, prompt_ids_for(tok, c)) for c in spec.cases],
                                 str(spec.path)).raise_if_stale()
        golden = with_noise(spec, req.backend, golden, noise, req.echo)
        return replace_golden(req.path, codec.encode(golden), old, describe_changes,
                              req.echo)

    def load_data(self, path: Path, spec_name: str) -> dict:
        return codec.load_data(path, spec_name)

    def describe_changes(self, old: dict, new: dict) -> list[str]:
        return describe_changes(old, new)

    @contextlib.contextmanager
    def recorder(self, req: RecordRequest):
        session = open_session(req.spec, req.backend)
        session.bind_chats()
        with closing_session(session):
            yield session

    def record_case(self, req: RecordRequest, session: Session, case: Case):
        return record_case(session, case)

    def golden_data(self, req: RecordRequest, session: Session, side: Side,
                    records: Mapping[str, Any]) -> dict:
        allow = bool(req.allow_inconsistent)
        inconsistent = refuse_unless_golden(req.backend, records, req.echo, allow,
                                            bool(req.options.get("allow_failing")))
        golden = codec.LmGolden(req.path, req.spec.name, req.backend,
                                session.resolved.fingerprint, session.resolved.origin,
                                side.recorded(), {cid: rec for cid, (rec, _) in records.items()},
                                tuple(inconsistent) if allow else ())
        noise = tuple(req.options.get("noise") or ())
        if noise:
            golden = with_noise(req.spec, req.backend, golden, noise, req.echo)
        return codec.encode(golden)


def _empty(spec_name: str, backend: str) -> codec.LmGolden:
    return codec.LmGolden(Path(f"<live {backend}>"), spec_name, backend, "", "", {}, {})


def _limits(req: CheckRequest, ref: Reference, own: str, klass: str | None = None
            ) -> dict[str, CaseLimits]:
    """Each case's limits for this candidate (GoldenError, exit 2, when a relative limit's
    noise is not recorded)."""
    klass = klass or own
    where = (f"the live reference '{ref.side.backend}' (check --against)"
             if ref.kind == "live" else f"golden {ref.golden.path}")
    return {c.id: case_limits(req.spec, c, klass, own, req.candidate, ref.golden.cases.get(c.id),
                              where) for c in req.cases}


def _measure_perf(session: Session, req: CheckRequest) -> dict:
    """Perf section of a check; a crash while measuring is an `error` perf section."""
    try:
        return check_perf(session, req.spec, req.golden_dir)
    except SpecEngineError:
        raise
    except Exception as exc:
        return {"status": ERROR, "failures": [f"perf measurement failed: {described(exc)}"]}
