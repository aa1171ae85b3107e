"""Reports of run results: a terminal summary, Markdown, self-contained HTML, JUnit XML
and the results JSON (which `load_results` reads back for `specengine report`).

Module map: `model` derives verdicts, metrics and environment rows from
`specengine.results`; `text` escapes and formats; `charts` draws inline SVG; `render`
holds the Jinja2 environment (templates in `specengine/templates`) with HTML and JUnit;
`markdown` the size-capped Markdown; `terminal` the plain-text summary; `files` the
JSON file and atomic writes.
"""

from __future__ import annotations

from specengine.report.files import dump_results, load_results, write_reports
from specengine.report.markdown import MARKDOWN_LIMIT, render_markdown
from specengine.report.model import SELF_CHECK_TEXT
from specengine.report.render import render_html, render_junit
from specengine.report.terminal import render_terminal

__all__ = ["render_terminal", "render_markdown", "render_html", "render_junit",
           "write_reports", "load_results", "dump_results", "MARKDOWN_LIMIT",
           "SELF_CHECK_TEXT"]
