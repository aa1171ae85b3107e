"""The view of the Markdown page: the shared report view with each run's case sections
already rendered (the page may leave some out to stay under its size limit), the case
matrix cut to the rows a long summary keeps, and what was left out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from specengine.report.views.page import MatrixColumn, MatrixGroup, MatrixRow, ReportView


@dataclass(frozen=True)
class MarkdownGroup:
    """A spec's case matrix as Markdown lists it: every row, or only the rows that did not
    pass when there are more than the summary keeps."""

    spec: str
    columns: tuple[MatrixColumn, ...]
    listed: tuple[MatrixRow, ...]
    unlisted: int             # rows left out of the table


@dataclass(frozen=True)
class Omitted:
    """Case sections left out to stay under the size limit."""

    cases: int
    passing: int
    not_passing: int
    total: int


@dataclass(frozen=True)
class MarkdownView:
    page: ReportView          # each run's cases: its case sections that are shown, as text
    groups: tuple[MarkdownGroup, ...]
    summary_rows: int         # the most rows a spec's summary table lists
    omitted: Omitted | None


def _listed(group: MatrixGroup, limit: int) -> MarkdownGroup:
    rows = group.rows if len(group.rows) <= limit else \
        tuple(r for r in group.rows if r.bad)[:limit]
    return MarkdownGroup(group.spec, group.columns, rows, len(group.rows) - len(rows))


def markdown_view(page: ReportView, sections: Sequence[Sequence[str]], summary_rows: int,
                  omitted: Omitted | None = None) -> MarkdownView:
    """The Markdown page of `page` showing `sections` (per run, its case sections)."""
    runs = tuple(replace(run, cases=tuple(secs)) for run, secs in zip(page.runs, sections))
    return MarkdownView(page=replace(page, runs=runs),
                        groups=tuple(_listed(g, summary_rows) for g in page.groups),
                        summary_rows=summary_rows, omitted=omitted)
