"""The Markdown report, fit for `$GITHUB_STEP_SUMMARY` and pull-request comments.

GitHub refuses step summaries over 1 MiB, so the report stays under `MARKDOWN_LIMIT`
bytes: when the full text is longer, case sections are left out whole (failing cases
are kept first, then passing ones in order) and a note says how many were dropped.
"""

from __future__ import annotations

from specengine.results import PASS, RunResult
from specengine.report.render import environment
from specengine.report.views import Omitted, ReportView, markdown_case, markdown_view, report_view

MARKDOWN_LIMIT = 1_000_000          # bytes, below GitHub's 1 MiB (1,048,576)
SUMMARY_ROWS = 400                  # summary-table rows per spec before eliding passes
_NOTE_RESERVE = 2_000               # room for the truncation note


def _size(text: str) -> int:
    return len(text.encode("utf-8", errors="backslashreplace"))


def _sections(page: ReportView) -> list[list[str]]:
    template = environment().get_template("case.md.j2")
    return [[template.render(case=case) for case in run.cases] for run in page.runs]


def _select(runs: list[RunResult], sections: list[list[str]], budget: int) -> list[list[bool]]:
    """Which case sections fit in `budget` bytes: non-passing cases first, then passing
    ones, each in report order; a case is kept or left out whole."""
    keep = [[False] * len(s) for s in sections]
    order = [(ri, ci) for ri, run in enumerate(runs) for ci, c in enumerate(run.cases)
             if c.status != PASS]
    order += [(ri, ci) for ri, run in enumerate(runs) for ci, c in enumerate(run.cases)
              if c.status == PASS]
    used = 0
    for ri, ci in order:
        size = _size(sections[ri][ci])
        if used + size > budget:
            break
        keep[ri][ci] = True
        used += size
    return keep


def _render(page: ReportView, sections: list[list[str]], omitted: Omitted | None) -> str:
    return environment().get_template("report.md.j2").render(
        page=markdown_view(page, sections, SUMMARY_ROWS, omitted))


def render_markdown(runs: list[RunResult], limit: int = MARKDOWN_LIMIT) -> str:
    """The Markdown report, at most `limit` bytes of UTF-8."""
    page = report_view(runs, markdown_case)
    sections = _sections(page)
    text = _render(page, sections, None)
    if _size(text) <= limit:
        return text
    skeleton = _size(_render(page, [[] for _ in runs], None))
    keep = _select(runs, sections, limit - skeleton - _NOTE_RESERVE)
    kept = [[s for s, k in zip(secs, ks) if k] for secs, ks in zip(sections, keep)]
    dropped = [c for run, ks in zip(runs, keep) for c, k in zip(run.cases, ks) if not k]
    passing = sum(c.status == PASS for c in dropped)
    omitted = Omitted(cases=len(dropped), passing=passing, not_passing=len(dropped) - passing,
                      total=sum(len(r.cases) for r in runs))
    text = _render(page, kept, omitted)
    if _size(text) > limit:         # only when the skeleton alone is too big
        cut = text.encode("utf-8")[: limit - _NOTE_RESERVE].decode("utf-8", errors="ignore")
        text = cut[: cut.rfind("\n") + 1] + (
            "\n\n> **Report truncated** here to stay under 1 MiB; "
            "the JSON and HTML reports have everything.\n")
    return text
