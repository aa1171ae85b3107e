"""The policy every kind's case loop follows: which cases a command selects, the time
limit of one case, and what a failure inside a case becomes — the case's error, or (a
backend out of memory or stopped, the engine's own errors) the end of the run."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Callable, Sequence

from specengine.errors import BackendCrashed, BackendStopped, SpecEngineError, UsageError, brief
from specengine.results import ERROR, FAIL, NOT_RUN, PASS, CaseResult, Check, RunResult
from specengine.spec import AnyCase, Spec


# -- selecting cases -------------------------------------------------------------------

def select_cases(spec: Spec, ids: list[str] | None = None, tags: list[str] | None = None,
                 expr: str | None = None) -> list[AnyCase]:
    """--case ID (exact), --tag T (any), -k EXPR (substring of the id; 'not X' excludes)."""
    cases = list(spec.cases)
    if ids:
        unknown = [i for i in ids if i not in {c.id for c in cases}]
        if unknown:
            raise UsageError(f"{spec.path}: no case {', '.join(map(repr, unknown))}")
        cases = [c for c in cases if c.id in ids]
    if tags:
        cases = [c for c in cases if set(tags) & set(c.tags)]
    if expr:
        cases = [c for c in cases if _match_expr(expr, c)]
    return cases


def _match_expr(expr: str, case: AnyCase) -> bool:
    words = expr.split()
    if len(words) == 2 and words[0] == "not":
        return words[1] not in case.id and words[1] not in case.tags
    return expr in case.id or expr in case.tags


# -- the time limit --------------------------------------------------------------------

class CaseTimedOut(BaseException):
    """A case ran past `defaults.timeout_s`. A BaseException (like KeyboardInterrupt), so
    that a runtime's own `except Exception` cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise CaseTimedOut in this (main) thread once `seconds` have passed.

    SIGALRM interrupts Python code and blocking waits (a sleep, a socket read, a
    generation loop between steps); a single native call (one huge kernel) is interrupted
    when it returns. Off the main thread, or where there is no SIGALRM, nothing is timed.
    """
    if (not seconds or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def fire(signum, frame):
        raise CaseTimedOut()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- the one per-case error policy -----------------------------------------------------

def out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def runtime_cause(exc: BackendCrashed) -> Exception | None:
    """The runtime's own exception a backend call was converted from (Backend's guard),
    or None when the engine raised the BackendCrashed itself."""
    cause = exc.__cause__
    return cause if isinstance(cause, Exception) and not isinstance(cause, SpecEngineError) \
        else None


def described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {brief(exc)}"


def run_checks(result: CaseResult, checks: Callable[[], None], timeout_s: float | None
               ) -> CaseResult:
    """Run one case's checks into `result`; whatever goes wrong becomes the case's error,
    never a lost run: a time limit, a backend failure, a runtime's own exception. Three
    things stop the run instead: the engine's own errors (SpecEngineError: a bad spec, a
    stale golden), a backend out of memory (BackendCrashed), and a backend that stopped
    (BackendStopped: a server that no longer answers); neither backend can go on.
    The case's status follows from its checks; its duration is measured."""
    start = time.perf_counter()
    try:
        with time_limit(timeout_s):
            checks()
    except CaseTimedOut:
        result.error = (f"timed out after {timeout_s:g} s (defaults.timeout_s); "
                        "the remaining checks of this case were not run")
    except BackendCrashed as exc:
        if out_of_memory(exc) or isinstance(exc, BackendStopped):
            raise
        cause = runtime_cause(exc)
        result.error = described(cause) if cause else exc.one_line()
    except SpecEngineError:
        raise
    except Exception as exc:  # one broken case must not lose the others' results
        result.error = described(exc)
    statuses = {c.status for c in result.checks}
    result.status = ERROR if result.error or ERROR in statuses else FAIL if FAIL in statuses else PASS
    result.duration_s = time.perf_counter() - start
    return result


def record_one(backend: str, case_id: str, record: Callable[[], dict],
               timeout_s: float | None, what: str = "case") -> dict:
    """Record one case on the reference; any failure stops the recording (exit 3 naming
    the case), since a golden with a hole is no golden: nothing is written."""
    try:
        with time_limit(timeout_s):
            return record()
    except CaseTimedOut:
        raise BackendCrashed(f"backend '{backend}': {what} '{case_id}' timed out after "
                             f"{timeout_s:g} s (defaults.timeout_s); nothing was "
                             "recorded") from None
    except BackendStopped as exc:
        raise exc.at(f"for {what} '{case_id}'") from None
    except BackendCrashed as exc:
        cause = runtime_cause(exc)
        if cause is None or out_of_memory(exc):
            raise
        raise BackendCrashed(f"backend '{backend}' failed on {what} '{case_id}': "
                             f"{described(cause)}; nothing was recorded") from None
    except SpecEngineError:
        raise
    except Exception as exc:  # a runtime's own bug: exit 3 naming the case, no golden
        raise BackendCrashed(f"backend '{backend}' failed on {what} '{case_id}': "
                             f"{described(exc)}; nothing was recorded") from None


def not_run_cases(run: RunResult, cases: Sequence[AnyCase], check: str, reason: str,
                  describe: Callable[[AnyCase], str] = lambda case: "") -> None:
    """Every case `not-run` with the reason: a backend without the capability the kind
    needs (an optional feature, never an error); the run is then not-run, not a pass."""
    for case in cases:
        run.cases.append(CaseResult(id=case.id, status=NOT_RUN, line=case.line,
                                    tags=list(case.tags), prompt=describe(case),
                                    checks=[Check(check, NOT_RUN, reason)]))
    run.notes.append(reason)
