"""Every report page is laid out from one view model built in Python: the templates see
their page's view and formatting filters only, the views are frozen values (no results
objects, lists or dicts inside), and each page shows exactly what its view holds — on a
rich set of runs (passing, failing with a divergence, an error case, self-check, a long
case with a sequence chart and TTFT by length, a localization, a spec that could not
run)."""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET

import jinja2
from jinja2 import meta, nodes
from markupsafe import Markup

from specengine.compare.layers import LayerMetrics, Localization
from specengine.report import render_html, render_junit, render_localize, render_markdown
from specengine.report.render import environment
from specengine.report.views import (html_case, junit_view, localize_view, markdown_case,
                                     report_view)
from specengine.results import CaseResult, RunResult, Side

from test_long_reports import long_run
from test_reports import failing_run, passing_run, self_check_run

# what each template is handed: a page's view, or (for a partial) the part it lays out
TEMPLATE_INPUTS = {
    "report.html.j2": {"page"}, "report.md.j2": {"page"}, "junit.xml.j2": {"page"},
    "localize.html.j2": {"page"}, "case.html.j2": {"case"}, "case.md.j2": {"case"},
    "perf.html.j2": {"perf"}, "distribution.html.j2": {"dist"},
    "distribution.md.j2": {"dist"}, "localization.html.j2": {"loc"}, "report.css.j2": set(),
}


def _localization(case_id: str, flagged: int | None) -> Localization:
    layers = [LayerMetrics(i, f"layer.{i}", rel_err=1e-4 * 10 ** i, cosine=1 - 1e-5 * i,
                           norm_ratio=1.0, growth=None if i == 0 else 10.0,
                           flagged=flagged is not None and i >= flagged) for i in range(4)]
    return Localization(case_id, "sketch", "golden/cpu.json", "perturbed", 6, layers, flagged,
                        None if flagged is None else f"layer.{flagged}", rule="the rule")


def rich_runs() -> list[RunResult]:
    failing = failing_run()
    failing.cases[1].localization = _localization("add", 2).to_dict()
    failing.cases[0].localization = {"case_id": "capital-fr", "error": "no <sketch>"}
    broken = RunResult("broken", "specs/broken.yaml", "check", Side("npu"), Side("cpu"),
                       "cross-backend", "golden", error="backend npu unavailable")
    broken.finish()
    return [passing_run(), failing, self_check_run(), long_run(), broken]


def test_templates_see_their_view_and_filters_only():
    env = environment()
    assert set(env.globals) == set(jinja2.Environment().globals)     # Jinja's own only
    names = set(env.list_templates())
    assert names == set(TEMPLATE_INPUTS)
    for name in names:
        source = env.loader.get_source(env, name)[0]
        tree = env.parse(source)
        assert meta.find_undeclared_variables(tree) == TEMPLATE_INPUTS[name], name
        assert not list(tree.find_all(nodes.Call)), f"{name} calls a function or method"


def _walk(value, path="view"):
    """Every value inside a view, with where it is."""
    yield path, value
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _walk(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


def _assert_frozen_values(view):
    for path, value in _walk(view):
        assert not isinstance(value, (list, dict, set, RunResult, CaseResult, Side)), path
        if dataclasses.is_dataclass(value):
            assert type(value).__dataclass_params__.frozen, path


def test_views_are_frozen_values():
    runs = rich_runs()
    locs = [_localization("a", 1), _localization("b", None)]
    for view in (report_view(runs, html_case), report_view(runs, markdown_case),
                 junit_view(runs), localize_view(locs, "spec")):
        _assert_frozen_values(view)


def test_html_shows_what_its_view_holds():
    runs = rich_runs()
    page = report_view(runs, html_case)
    html = render_html(runs)
    assert page.verdict == "error" and f"<title>specengine ERROR: {page.specs}" in html
    assert page.counts in html and f"across {len(runs)} runs" in html
    for run in page.runs:
        assert f'<section class="card run" id="{run.anchor}">' in html
        for case in run.cases:
            assert f'id="{case.anchor}"' in html and case.headline in html
            assert all(isinstance(s.chips, tuple) for s in case.sides)
    long_case = page.runs[3].cases[1]
    assert isinstance(long_case.sequence_chart, Markup) and long_case.sequence_chart
    assert not long_case.position_chart                 # one chart per case, not both
    assert page.runs[3].perf.lengths and str(page.runs[3].perf.ttft_chart) in html
    loc = page.runs[1].cases[1].localization
    assert loc.flagged == "layer.2" and [m.badge for m in loc.layers] == \
        ["", "", "first flagged", "flagged"]
    assert 'id="run1-case1-layers"' in html and str(loc.chart) in html
    assert page.runs[1].cases[0].localization.error == "no <sketch>"
    assert "Localization not made:</strong> no &lt;sketch&gt;" in html
    assert [g.spec for g in page.groups] == ["smollm2-135m", "tiny", "long"]   # no empty one


def test_markdown_shows_what_its_view_holds():
    runs = rich_runs()
    page = report_view(runs, markdown_case)
    md = render_markdown(runs)
    for run in page.runs:
        assert f"## {'❌' if run.status == 'fail' else '✅' if run.status == 'pass' else '💥'} " \
               f"{run.spec_name}" in md
        assert len(run.cases) == sum(1 for c in runs[run.index].cases)
    assert md.count("\n#### ") == sum(len(r.cases) for r in runs)
    identical = page.runs[0].cases[0]
    assert identical.identical and not identical.candidate_pre
    diverged = page.runs[1].cases[1]
    assert not diverged.identical and "⟦" in diverged.golden_pre
    assert f"**Localization:** {diverged.localization.split(' (')[0]}" in md
    small = render_markdown(runs, limit=6_000)            # sections left out, counted
    match = re.search(r"(\d+) of (\d+) case sections were left out \((\d+) passing, (\d+) "
                      r"not passing\)", small)
    assert match and int(match[2]) == sum(len(r.cases) for r in runs)
    assert int(match[1]) == int(match[3]) + int(match[4]) > 0


def test_junit_shows_what_its_view_holds():
    runs = rich_runs()
    view = junit_view(runs)
    root = ET.fromstring(render_junit(runs).encode("utf-8"))
    assert root.get("tests") == str(view.tests) and root.get("failures") == str(view.failures)
    assert root.get("errors") == str(view.errors) and root.get("skipped") == str(view.skipped)
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [s.name for s in view.suites]
    for element, suite in zip(suites, view.suites):
        assert len(element.findall("testcase")) == len(suite.cases)
        assert element.get("failures") == str(suite.failures)
    assert view.suites[-1].cases[-1].name == "(spec)"     # the run that could not run


def test_localize_page_shows_what_its_view_holds():
    locs = [_localization("a<b", 1), _localization("c", None)]
    page = localize_view(locs, "spec")
    html = render_localize(locs, "spec")
    assert [r.state for r in page.rows] == ["fail", "pass"]
    assert [r.rel_err for r in page.rows] == ["0.001", "—"]
    assert '<a href="#loc-0">a&lt;b</a>' in html and 'id="loc-1"' in html
    assert html.count('class="localization"') == 2 and "layer.1" in html
    empty = render_localize([], "none")
    assert "<title>specengine localize: none on </title>" in empty
