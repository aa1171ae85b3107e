"""One view model per report page, built in Python and handed to that page's template,
which only lays it out (escaping and number formatting are the templates' filters).

- the HTML report: `report_view(runs, html_case)`, a `ReportView` whose runs hold
  `HtmlCase`s;
- the Markdown report: the same `ReportView` built with `markdown_case`, each case
  rendered as a section of its own, then `markdown_view` (what is shown, what was left out
  to stay under the size limit);
- the JUnit XML: `junit_view`;
- the `localize` page: `localize_view`.

Every view is a frozen dataclass of plain values, text, rows and SVG `Markup`.
"""

from __future__ import annotations

from specengine.report.views.case import HtmlCase, MarkdownCase, html_case, markdown_case
from specengine.report.views.junit import JUnitView, junit_view
from specengine.report.views.layers import LocalizePage, localize_view
from specengine.report.views.markdown import MarkdownView, Omitted, markdown_view
from specengine.report.views.page import ReportView, RunView, report_view

__all__ = ["HtmlCase", "MarkdownCase", "html_case", "markdown_case", "JUnitView", "junit_view",
           "LocalizePage", "localize_view", "MarkdownView", "Omitted", "markdown_view",
           "ReportView", "RunView", "report_view"]
