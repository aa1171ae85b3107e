"""The view of a report page over runs: the verdict, the summary table, the case matrix
per spec, and one `RunView` per run (environment, notes, performance, distribution and
its cases). The HTML page (`report_view`) and the Markdown page (`markdown_view`) share
it; what differs is the view of a case each one holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from specengine import __version__
from specengine.results import PASS, CaseResult, RunResult
from specengine.report.distribution import DistributionRow, distribution_rows
from specengine.report.limits import class_line
from specengine.report.model import (SELF_CHECK, SELF_CHECK_TEXT, EnvRow, all_self_check,
                                     case_metrics, counts, env_rows, overall_status, run_status,
                                     run_title, tolerance)
from specengine.report.views.perf import PerfSection, perf_section

# builds the view of one case of a run, given its anchor in the page
CaseBuilder = Callable[[RunResult, CaseResult, str], Any]

_REFERENCE_FROM = {"golden": "a recorded golden", "live": "a live run"}


@dataclass(frozen=True)
class MatrixCell:
    status: str
    anchor: str
    kl_max: Any
    kl_max_limit: Any         # the limit that judged it


@dataclass(frozen=True)
class MatrixColumn:
    candidate: str
    reference: str
    self_check: bool


@dataclass(frozen=True)
class MatrixRow:
    case_id: str
    cells: tuple[MatrixCell | None, ...]    # None: the run has no such case
    bad: bool                               # some run did not pass it


@dataclass(frozen=True)
class MatrixGroup:
    """One spec: a column per run of it, a row per case id (in first-seen order)."""

    spec: str
    columns: tuple[MatrixColumn, ...]
    rows: tuple[MatrixRow, ...]


@dataclass(frozen=True)
class SideNotice:
    """A side that ran something other than the spec's model, or ran the folder's code."""

    label: str                # reference | candidate
    backend: str
    model_source: str
    model_override: bool
    trust_remote_code: bool


@dataclass(frozen=True)
class DistributionSection:
    tolerance_class: str
    rows: tuple[DistributionRow, ...]
    failures: tuple[str, ...]


@dataclass(frozen=True)
class RunView:
    index: int
    anchor: str
    status: str
    spec_name: str
    spec_path: str
    command: str
    candidate: str            # backends
    reference: str
    reference_kind: str
    reference_from: str       # "a recorded golden" | "a live run"
    comparison: str
    self_check: bool
    title: str                # candidate vs reference (golden|live)
    passed: int
    failed: int
    errors: int
    duration_s: Any
    error: str
    class_line: str           # which class judged the run, where its limits came from
    notices: tuple[SideNotice, ...]
    env: tuple[EnvRow, ...]
    notes: tuple[str, ...]
    perf: PerfSection | None
    distribution: DistributionSection | None
    cases: tuple[Any, ...]    # the page's view of each case


@dataclass(frozen=True)
class ReportView:
    verdict: str
    verdict_class: str        # the header's colour: self-check for an all-self-check pass
    specs: str                # the spec names, in order, each once
    all_self_check: bool
    counts: str               # "3 passed, 1 failed, 0 errors"
    run_count: int
    runs_word: str            # run | runs
    version: str
    self_check_text: str
    groups: tuple[MatrixGroup, ...]
    runs: tuple[RunView, ...]


def case_anchor(run_index: int, case_index: int) -> str:
    return f"run{run_index}-case{case_index}"


def _matrix(spec: str, members: list[tuple[int, RunResult]]) -> MatrixGroup:
    order: dict[str, int] = {}
    for _, run in members:
        for case in run.cases:
            order.setdefault(case.id, len(order))
    cells: list[list[MatrixCell | None]] = [[None] * len(members) for _ in order]
    for col, (ri, run) in enumerate(members):
        for ci, case in enumerate(run.cases):
            cells[order[case.id]][col] = MatrixCell(case.status, case_anchor(ri, ci),
                                                    case_metrics(case).kl_max,
                                                    tolerance(case).get("kl_max"))
    rows = tuple(MatrixRow(cid, tuple(row), any(c is not None and c.status != PASS for c in row))
                 for cid, row in zip(order, cells))
    columns = tuple(MatrixColumn(run.candidate.backend, run.reference.backend,
                                 run.comparison == SELF_CHECK) for _, run in members)
    return MatrixGroup(spec, columns, rows)


def matrix_groups(runs: list[RunResult]) -> tuple[MatrixGroup, ...]:
    """The case matrix of each spec that has cases."""
    groups: dict[str, list[tuple[int, RunResult]]] = {}
    for ri, run in enumerate(runs):
        groups.setdefault(run.spec_name, []).append((ri, run))
    matrices = (_matrix(spec, members) for spec, members in groups.items())
    return tuple(m for m in matrices if m.rows)


def _distribution(run: RunResult) -> DistributionSection | None:
    rows = distribution_rows(run)
    if not rows:
        return None
    return DistributionSection(run.tolerance_class, tuple(rows),
                               tuple((run.distribution or {}).get("failures", [])))


def _notices(run: RunResult) -> tuple[SideNotice, ...]:
    return tuple(SideNotice(label, side.backend, side.model_source, bool(side.model_override),
                            bool(side.trust_remote_code))
                 for side, label in ((run.reference, "reference"), (run.candidate, "candidate"))
                 if side.model_override or side.trust_remote_code)


def run_view(run: RunResult, index: int, case_view: CaseBuilder) -> RunView:
    s = run.summary()
    return RunView(
        index=index, anchor=f"run{index}", status=run_status(run), spec_name=run.spec_name,
        spec_path=run.spec_path, command=run.command, candidate=run.candidate.backend,
        reference=run.reference.backend, reference_kind=run.reference_kind,
        reference_from=_REFERENCE_FROM.get(run.reference_kind, run.reference_kind),
        comparison=run.comparison, self_check=run.comparison == SELF_CHECK,
        title=run_title(run), passed=s["passed"], failed=s["failed"], errors=s["errors"],
        duration_s=run.duration_s, error=run.error, class_line=class_line(run),
        notices=_notices(run), env=tuple(env_rows(run)), notes=tuple(run.notes),
        perf=perf_section(run.perf, f"run{index}-perf"), distribution=_distribution(run),
        cases=tuple(case_view(run, case, case_anchor(index, ci))
                    for ci, case in enumerate(run.cases)))


def _unique(names: Iterable[str]) -> list[str]:
    """Each name once, in order; names differing only in case count as one."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.lower(), name)
    return list(seen.values())


def report_view(runs: list[RunResult], case_view: CaseBuilder) -> ReportView:
    """The view of a report page over `runs`, each case viewed by `case_view`."""
    verdict = overall_status(runs)
    self_check = all_self_check(runs)
    return ReportView(
        verdict=verdict,
        verdict_class="self-check" if self_check and verdict == PASS else verdict,
        specs=", ".join(_unique(r.spec_name for r in runs)),
        all_self_check=self_check, counts=counts(runs).line(), run_count=len(runs),
        runs_word="run" if len(runs) == 1 else "runs", version=__version__,
        self_check_text=SELF_CHECK_TEXT, groups=matrix_groups(runs),
        runs=tuple(run_view(run, ri, case_view) for ri, run in enumerate(runs)))
