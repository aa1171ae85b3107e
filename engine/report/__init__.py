"""Reports of run results: a terminal summary, Markdown, self-contained HTML, JUnit XML
and the results JSON (which `load_results` reads back for `specengine report`).

Module map: `model` derives verdicts, metrics and environment rows from
`specengine.results`; `text` escapes and formats; `charts` (with `sequence`, `ttft`,
`layers`) draws inline SVG; `views` builds one view model per page (HTML, Markdown,
JUnit, the `localize` page) that its template only lays out; `render` holds the Jinja2
environment (templates in `specengine/templates`) and renders the HTML, JUnit and
`localize` pages; `markdown` the size-capped Markdown; `terminal` the plain-text summary;
`files` the JSON file and atomic writes.
"""

from __future__ import annotations

from specengine.report.files import dump_results, load_results, write_reports
from specengine.report.markdown import MARKDOWN_LIMIT, render_markdown
from specengine.report.model import SELF_CHECK_TEXT
from specengine.report.render import render_html, render_junit, render_localize
from specengine.report.terminal import render_terminal

__all__ = ["render_terminal", "render_markdown", "render_html", "render_junit", "render_localize",
           "write_reports", "load_results", "dump_results", "MARKDOWN_LIMIT",
           "SELF_CHECK_TEXT"]
