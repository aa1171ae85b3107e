"""The one Jinja2 environment every template goes through, and the pages rendered from
their views: the HTML report, the JUnit XML and the `localize` page.

Autoescaping is on for `*.html.j2` and `*.xml.j2` and off for Markdown (whose templates
escape explicitly with the `md*` filters). A `finalize` hook makes control characters
visible in every `{{ }}` of every template, so no format can emit characters that XML
forbids or that a terminal or browser would act on. Templates get their page's view and
filters only: no template calls into the report's logic.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from specengine.compare.layers import Localization
from specengine.results import RunResult
from specengine.report.text import (fmt, fmt_ratio, fmt_seconds, icon, md_cell, md_escape,
                                    md_pre, token_text, truncate, visible)
from specengine.report.views import html_case, junit_view, localize_view, report_view


def _finalize(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    return visible(value)


@lru_cache(maxsize=1)
def environment() -> Environment:
    folder = resources.files("specengine").joinpath("templates")
    env = Environment(
        loader=FileSystemLoader(str(folder)),
        autoescape=select_autoescape(enabled_extensions=("html.j2", "xml.j2"),
                                     disabled_extensions=("md.j2",),
                                     default_for_string=True, default=True),
        undefined=StrictUndefined, finalize=_finalize,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(
        fmt=fmt, ratio=fmt_ratio, seconds=fmt_seconds, md=md_escape, mdcell=md_cell,
        mdpre=md_pre, tok=token_text, trunc=truncate, icon=icon)
    return env


def render_html(runs: list[RunResult]) -> str:
    """One self-contained HTML page (embedded CSS and inline SVG, no script, no network)."""
    return environment().get_template("report.html.j2").render(
        page=report_view(runs, html_case))


def render_junit(runs: list[RunResult]) -> str:
    """JUnit XML: `<testsuites>` holding one `<testsuite>` per run; each case one
    `<testcase classname="SPEC.BACKEND" name="CASE_ID">`; a `perf` testcase when the
    run measured performance."""
    return environment().get_template("junit.xml.j2").render(page=junit_view(runs))


def render_localize(locs: Sequence[Localization], spec_name: str) -> str:
    """The self-contained HTML page of `specengine localize --html`: a summary table and
    one section per case, each with its per-layer chart and table."""
    return environment().get_template("localize.html.j2").render(
        page=localize_view(locs, spec_name))
