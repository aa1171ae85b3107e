"""The one way through a record and a check, which every kind fills in.

`check(kind, request)` is the template method: open the reference (a verified, fresh
golden, or a live run of the reference backend), open the candidate, start the run
result, check each case with the one error policy (kinds.policy), let the kind finish
the run (notes, perf, whole-spec statistics), close both sides. `record(kind, request)`
is its twin for goldens: amend an existing golden where the kind can (causal-lm noise),
else refuse to overwrite without --update, record each case on the reference, let the
kind turn the records into the golden's sealed JSON (its codec), write it atomically and
show what changed.

A kind is a `Kind` subclass: small hooks, each about one thing (open the reference,
open the candidate, check one case, record one case, its golden's data) — the loops,
progress lines, --fail-fast, time limits, error capture and stop-on-out-of-memory live
here once.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Mapping, Sequence

from specengine.errors import BackendCrashed, BackendStopped
from specengine.golden.store import golden_path, previous_golden, replace_golden
from specengine.kinds.policy import record_one
from specengine.progress import cases as progress_cases
from specengine.results import ERROR, PASS, CaseResult, RunResult, Side, comparison_label
from specengine.spec import AnyCase, Spec


@dataclass(frozen=True)
class CheckOptions:
    fail_fast: bool = False
    perf: bool = False
    localize: bool | str = False        # True / "failing": failing cases; "all": every case


@dataclass(frozen=True)
class CheckRequest:
    """One check: the spec, the candidate backend (canonical name), the cases, where the
    golden is (or the live reference `against`), and the options."""

    spec: Spec
    candidate: str
    cases: tuple[AnyCase, ...]
    golden_dir: Path | None = None
    against: str | None = None
    options: CheckOptions = CheckOptions()


@dataclass(frozen=True)
class RecordRequest:
    """One recording: the spec, the reference backend (canonical name), the golden
    folder, whether an existing golden may be replaced, where lines go, and the kind's
    own options (Kind.record_options)."""

    spec: Spec
    backend: str
    golden_dir: Path
    update: bool = False
    echo: Callable[[str], None] = print
    allow_inconsistent: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return golden_path(self.golden_dir, self.spec.name, self.backend)


class Kind:
    """The hooks of one kind of spec (causal-lm, embedding, ops). The optional commands
    (`localize`, `calibrate`, `record_perf`) are None where a kind has no such thing."""

    name: str = ""
    unit: str = "case"                       # what the progress lines and notes call a case
    record_options: frozenset[str] = frozenset()
    localize: Callable[..., Any] | None = None
    calibrate: Callable[..., Any] | None = None
    record_perf: Callable[..., Path] | None = None

    # -- checking ---------------------------------------------------------------------
    def reference(self, req: CheckRequest) -> ContextManager[Any]:
        """The reference side, ready to compare against (verified and fresh)."""
        raise NotImplementedError

    def candidate(self, req: CheckRequest, ref: Any) -> ContextManager[Any]:
        """The candidate, loaded; closed when the check is over."""
        raise NotImplementedError

    def start(self, req: CheckRequest, cand: Any, ref: Any
              ) -> tuple[RunResult, Sequence[AnyCase]]:
        """The run's result skeleton and the cases to check (a backend without the kind's
        capability marks them not-run and checks none)."""
        raise NotImplementedError

    def check_case(self, req: CheckRequest, cand: Any, ref: Any, case: AnyCase) -> CaseResult:
        raise NotImplementedError

    def after_case(self, req: CheckRequest, cand: Any, ref: Any, run: RunResult,
                   case: AnyCase, result: CaseResult) -> None:
        """What follows a judged case (a note, a localization)."""

    def finish(self, req: CheckRequest, cand: Any, ref: Any, run: RunResult) -> None:
        """What follows the case loop while the candidate is still open (notes, perf)."""

    # -- recording ----------------------------------------------------------------------
    def amend(self, req: RecordRequest) -> Path | None:
        """Add to an existing golden without recording its cases again, where the
        request asks for that; None when it does not."""
        return None

    def load_data(self, path: Path, spec_name: str) -> dict:
        """An existing golden's verified JSON (what a re-record compares with)."""
        raise NotImplementedError

    def describe_changes(self, old: dict, new: dict) -> list[str]:
        raise NotImplementedError

    def recorder(self, req: RecordRequest) -> ContextManager[Any]:
        """The reference backend, loaded for recording."""
        raise NotImplementedError

    def record_case(self, req: RecordRequest, session: Any, case: AnyCase) -> Any:
        raise NotImplementedError

    def golden_data(self, req: RecordRequest, session: Any, side: Side,
                    records: Mapping[str, Any]) -> dict:
        """The golden's sealed JSON from the records (refusing a reference that is not a
        golden); called once the reference is closed."""
        raise NotImplementedError


def check(kind: Kind, req: CheckRequest) -> RunResult:
    """The one check skeleton (see the module docstring)."""
    started = time.perf_counter()
    with kind.reference(req) as ref, kind.candidate(req, ref) as cand:
        run, cases = kind.start(req, cand, ref)
        check_cases(run, req.spec, req.candidate, cases,
                    lambda case: kind.check_case(req, cand, ref, case), req.options.fail_fast,
                    lambda case, result: kind.after_case(req, cand, ref, run, case, result),
                    kind.unit)
        try:
            kind.finish(req, cand, ref, run)
        except BackendStopped as exc:          # the judged cases stay in the reports
            exc.partial_run = finish_run(run, started)
            raise
    return finish_run(run, started)


def record(kind: Kind, req: RecordRequest) -> Path:
    """The one record skeleton (see the module docstring)."""
    amended = kind.amend(req)
    if amended is not None:
        return amended
    old = previous_golden(req.path, req.update, lambda p: kind.load_data(p, req.spec.name),
                          req.echo)
    with kind.recorder(req) as session:
        records = record_cases(req.spec.cases, req.spec, req.backend,
                               lambda case: kind.record_case(req, session, case))
        side = session.side()
    data = kind.golden_data(req, session, side, records)
    return replace_golden(req.path, data, old, kind.describe_changes, req.echo)


@contextlib.contextmanager
def closing_session(session: Any):
    """A loaded backend session as a context manager: closed however the block ends."""
    try:
        yield session
    finally:
        session.close()


def record_cases(cases: Iterable[AnyCase], spec: Spec, backend: str,
                 record_one_case: Callable[[AnyCase], Any], action: str = "record"
                 ) -> dict[str, Any]:
    """Each case's record by id, with the progress lines and the recording error policy."""
    return {case.id: record_one(backend, case.id, lambda c=case: record_one_case(c),
                                spec.timeout_s)
            for case in progress_cases(cases, action, spec.name, backend)}


def new_run(spec: Spec, candidate: Side, reference: Side, reference_kind: str,
            **extra) -> RunResult:
    """The result skeleton of a check: both sides and the comparison's label."""
    return RunResult(spec_name=spec.name, spec_path=str(spec.path), command="check",
                     candidate=candidate, reference=reference,
                     comparison=comparison_label(candidate, reference),
                     reference_kind=reference_kind, **extra)


def check_cases(run: RunResult, spec: Spec, backend: str, cases: Sequence[AnyCase],
                check_one: Callable[[AnyCase], CaseResult], fail_fast: bool = False,
                after: Callable[[AnyCase, CaseResult], None] | None = None,
                what: str = "case") -> None:
    """Check each case into `run.cases`, with the progress lines; `after` sees each
    result (notes, localization). --fail-fast stops at the first case that does not pass.
    A backend that runs out of memory or stops (a server that died) stops the run: the
    case is an error, the run so far travels on the exception (`partial_run`) so the CLI
    still writes its reports, with the cases already judged as they were judged."""
    for case in progress_cases(cases, "check", spec.name, backend, run.cases):
        try:
            result = check_one(case)
        except BackendCrashed as exc:   # out of memory or stopped: it cannot go on
            if isinstance(exc, BackendStopped):
                exc.at(f"for {what} '{case.id}'")
            run.cases.append(CaseResult(id=case.id, status=ERROR, line=case.line,
                                        tags=list(case.tags), error=exc.one_line()))
            run.notes.append(f"stopped at {what} '{case.id}': {exc.one_line()}")
            run.finish()
            exc.partial_run = run
            raise
        run.cases.append(result)
        if after is not None:
            after(case, result)
        if fail_fast and result.status != PASS:
            run.notes.append(f"stopped at the first failing {what} (--fail-fast)")
            break


def finish_run(run: RunResult, started: float) -> RunResult:
    """Status from the cases (an errored perf section makes the run an error), duration."""
    run.finish()
    if run.perf and run.perf.get("status") == ERROR:
        run.status = ERROR
    run.duration_s = time.perf_counter() - started
    return run
