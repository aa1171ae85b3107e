"""Report layer: terminal, Markdown, HTML, JUnit and the results JSON, on RunResults
built by hand (a passing cross-backend run, a failing run with a divergence and a
failing teacher-forced check, an error case, a self-check run)."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import fields
from html.parser import HTMLParser

import pytest
from jsonschema import Draft202012Validator

from specengine.errors import SpecEngineError, UsageError
from specengine.report import (load_results, render_html, render_junit, render_markdown,
                               render_terminal, write_reports)
from specengine.report.charts import nice_ceiling
from specengine.report.markdown import MARKDOWN_LIMIT
from specengine.report.model import SELF_CHECK_TEXT, case_metrics
from specengine.report.text import md_cell, visible
from specengine.results import CaseResult, Check, RunResult, Side, TopKRow, from_dict
from specengine.spec import schema

EVIL = "<script>alert('x')</script>"


def side(backend: str, dtype: str = "float32", **kw) -> Side:
    base = dict(runtime="torch", device="cpu", device_name="AMD EPYC 9654", dtype=dtype,
                versions={"torch": "2.5.1", "transformers": "5.0.0"},
                model_fingerprint="sha256:" + "ab12" * 16, model_source="models/SmolLM2-135M")
    base.update(kw)
    return Side(backend=backend, **base)


def tf_check(kl_mean: float, kl_max: float, top1: float, dlp: float, ok: bool,
             message: str = "") -> Check:
    return Check("teacher-forced", "pass" if ok else "fail", message or "within tolerance",
                 {"kl_mean": kl_mean, "kl_max": kl_max, "top1_agreement": top1,
                  "max_abs_dlogprob": dlp, "positions": 4,
                  "tolerance": {"kl_mean_max": 0.01, "kl_max": 0.05, "logprob_atol": 0.5}})


def passing_case(cid: str, prompt: str = "The capital of France is") -> CaseResult:
    toks = [" Paris", ".", " It", " is"]
    return CaseResult(
        id=cid, status="pass", line=12, prompt=prompt, golden_text="".join(toks),
        candidate_text="".join(toks), golden_tokens=toks, candidate_tokens=list(toks),
        golden_ids=[1, 2, 3, 4], candidate_ids=[1, 2, 3, 4],
        checks=[Check("expect", "pass", "' Paris. It is' starts with ' Paris'"),
                Check("divergence", "pass", "no divergence"),
                tf_check(0.0012, 0.0061, 1.0, 0.22, True)],
        per_position={"kl": [0.001, 0.002, 0.0061, 0.0001],
                      "abs_dlogprob": [0.1, 0.22, 0.15, 0.05]},
        worst_position=2,
        worst_topk=[TopKRow(" It", 3, 0.61, 0.6, -0.01), TopKRow(" The", 9, 0.2, 0.21, 0.01)],
        duration_s=0.12)


def failing_case() -> CaseResult:
    golden = [" 5", "\n", "The", " answer", " is", " 5"]
    cand = [" 5", "\n", EVIL, "|pipe|", "`tick`", "\x1b[31m"]
    return CaseResult(
        id="add", status="fail", line=20,
        prompt=f"What is 2 + 3? {EVIL} | `code` \x00\x07 end",
        golden_text="".join(golden), candidate_text="".join(cand),
        golden_tokens=golden, candidate_tokens=cand,
        golden_ids=[10, 11, 12, 13, 14, 15], candidate_ids=[10, 11, 99, 98, 97, 96],
        divergence_step=2,
        checks=[Check("expect", "pass", "contains '5'"),
                Check("divergence", "fail",
                      f"step 2: candidate token {EVIL}\x1b[2J not in the golden's top-10",
                      {"step": 2, "margin": None}),
                tf_check(0.231, 1.52, 0.625, 3.1, False,
                         "KL mean 0.231 > 0.01; KL max 1.52 > 0.05 (position 3)")],
        per_position={"kl": [0.001, 0.01, 1.2, 1.52, float("nan"), float("inf")],
                      "abs_dlogprob": [0.1, 0.3, 2.5, 3.1, 1.0, 0.5]},
        worst_position=3,
        worst_topk=[TopKRow(" answer", 13, 0.7, 0.1, -0.6), TopKRow(EVIL + "|pipe|`tick`", 99, 0.05, 0.8, 0.75)],
        duration_s=0.5)


def error_case() -> CaseResult:
    return CaseResult(id="boom", status="error", prompt="x",
                      error="backend crashed: RuntimeError: NPU out of memory")


def passing_run() -> RunResult:
    run = RunResult(spec_name="smollm2-135m", spec_path="specs/smollm2-135m.yaml",
                    command="check", candidate=side("cpu-bf16", "bfloat16"),
                    reference=side("cpu"), comparison="cross-backend", reference_kind="golden",
                    cases=[passing_case("capital-fr"), passing_case("zh", "中国的首都是")],
                    duration_s=3.2,
                    perf={"status": "pass", "load_s": 1.5, "rows": [
                        {"backend": "cpu-bf16", "batch_size": 1, "ttft_ms": {"p50": 20.0, "p90": 25.0, "p99": 31.0},
                         "tpot_ms": {"p50": 8.0}, "tokens_per_s": 120.0, "peak_mem_gib": 1.2},
                        {"backend": "cpu-bf16", "batch_size": 8, "tokens_per_s": 610.0},
                        {"backend": "cpu-bf16", "batch_size": 4}]})
    run.finish()
    return run


def failing_run() -> RunResult:
    run = RunResult(spec_name="smollm2-135m", spec_path="specs/smollm2-135m.yaml",
                    command="check",
                    candidate=side("perturbed", "float32", model_override=True,
                                   model_source=f"models/perturbed {EVIL}",
                                   device_name=EVIL),
                    reference=side("cpu"), comparison="cross-backend", reference_kind="golden",
                    cases=[passing_case("capital-fr"), failing_case(), error_case()],
                    notes=[f"candidate model overridden: {EVIL}"], duration_s=4.0)
    run.finish()
    return run


def self_check_run() -> RunResult:
    run = RunResult(spec_name="tiny", spec_path="specs/tiny.yaml", command="check",
                    candidate=side("cpu"), reference=side("cpu"), comparison="self-check",
                    reference_kind="golden", cases=[passing_case("one")])
    run.finish()
    return run


def _no_errors(run: RunResult) -> RunResult:
    run.cases = [c for c in run.cases if c.status != "error"]
    run.finish()
    return run


@pytest.fixture
def runs() -> list[RunResult]:
    return [passing_run(), failing_run(), self_check_run()]


# --- terminal ---------------------------------------------------------------------------

def test_terminal_summary(runs):
    out = render_terminal(runs)
    assert out.endswith("\n4 passed, 1 failed, 1 errors")
    assert "cpu-bf16 vs cpu (golden)" in out and "[cross-backend]" in out
    assert SELF_CHECK_TEXT in out
    row = next(line for line in out.splitlines() if line.strip().startswith("add "))
    assert "fail" in row and "0.231" in row and "1.52" in row and "0.625" in row and "3.1" in row
    assert re.search(r"\b2\s*$", row)          # divergence step, not a near-tie
    assert "teacher-forced: KL mean 0.231 > 0.01" in out
    assert "error: backend crashed" in out
    assert "\x1b" not in out and "\\x1b" in out   # model text cannot drive the terminal
    assert "\033[" not in out
    assert "\033[31m" in render_terminal(runs, color=True)


def test_terminal_near_tie_and_empty():
    case = passing_case("tie")
    case.divergence_step = 3
    run = RunResult("s", "s.yaml", "check", side("a"), side("b"), "cross-backend", "live",
                    cases=[case])
    assert "3 (tie)" in render_terminal([run])
    assert render_terminal([]).strip() == "0 passed, 0 failed, 0 errors"


# --- HTML -------------------------------------------------------------------------------

class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_escapes_and_is_self_contained(runs):
    html = render_html(runs)
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    parser = _Collector()
    parser.feed(html)
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags and "link" not in tags and "img" not in tags
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "\x00" not in html and "\\x00" in html
    assert html.count("<html") == 1 and "<style>" in html


def test_html_content(runs):
    html = render_html(runs)
    assert ">ERROR<" in html.split("</header>")[0]        # overall verdict up top
    assert ">FAIL<" in render_html([passing_run(), _no_errors(failing_run())]).split("</header>")[0]
    assert SELF_CHECK_TEXT in html
    assert "model override" in html and "own model" in html
    assert "sha256:ab12ab12ab12" in html and "ab12" * 16 in html   # short shown, full as title
    # continuations: the first divergence marked on both sides, later candidate tokens dimmed
    assert html.count('class="tok diverged"') == 2
    assert 'class="tok after"' in html
    # top-k table at the worst position, perf table and notes
    assert "Top-2 at the worst position (3)" in html
    assert "TTFT (ms)" in html and "610" in html
    assert "candidate model overridden" in html
    # summary matrix links to the case sections
    anchors = re.findall(r'id="(run\d+-case\d+)"', html)
    assert anchors == ["run0-case0", "run0-case1", "run1-case0", "run1-case1", "run1-case2",
                       "run2-case0"]
    assert all(f'href="#{a}"' in html for a in anchors)


def test_html_charts_are_inline_svg(runs):
    html = render_html(runs)
    parser = _Collector()
    parser.feed(html)
    svgs = [a for t, a in parser.tags if t == "svg"]
    position = [a for a in svgs if "position-chart" in a.get("class", "")]
    assert len(position) == 5                   # every case with per-position data
    assert any("perf-chart" in a.get("class", "") for a in svgs)
    assert sum(1 for t, _ in parser.tags if t == "polyline") >= 10
    assert sum(1 for t, a in parser.tags if t == "line" and a.get("class") == "divergence") == 1
    assert sum(1 for t, a in parser.tags if t == "path" and a.get("class") == "inf") == 1
    # tolerances drawn where they fall inside the plotted range (only the failing case)
    assert sum(1 for t, a in parser.tags if t == "line" and a.get("class") == "limit") == 2
    assert "limit 0.05" in html


def test_html_marks_the_metrics_that_broke_their_limit(runs):
    html = render_html(runs)
    failing = html[html.index('id="run1-case1"'):html.index('id="run1-case2"')]
    assert failing.count('class="tile bad"') == 3        # KL mean, KL max, divergence
    passing = html[html.index('id="run1-case0"'):html.index('id="run1-case1"')]
    assert 'class="tile bad"' not in passing


def test_html_self_check_never_looks_cross_backend():
    html = render_html([self_check_run()]).split("</style>")[1]
    assert SELF_CHECK_TEXT in html
    assert "self-check only" in html
    assert "cmp-cross-backend" not in html and ">cross-backend<" not in html
    assert "cross-backend" not in html.replace(SELF_CHECK_TEXT, "").replace(
        "this is not a cross-backend pass", "")


def test_empty_and_sparse_runs_render():
    bare = RunResult("rec", "rec.yaml", "record-golden", Side("cpu"), Side("cpu"), "self-check",
                     "golden", cases=[CaseResult("only-text", "pass", golden_text="hi",
                                                 candidate_text="hi")])
    empty = RunResult("none", "none.yaml", "check", Side("a"), Side("b"), "cross-backend", "live")
    for runs in ([], [bare], [empty], [bare, empty]):
        html, md, xml = render_html(runs), render_markdown(runs), render_junit(runs)
        ET.fromstring(xml.encode("utf-8"))
        assert "<svg" not in html.split("</style>")[1] and md and render_terminal(runs)
    assert ">hi<" in render_html([bare])
    assert "NOT-RUN" in render_html([])


# --- Markdown ---------------------------------------------------------------------------

def test_markdown_escapes(runs):
    md = render_markdown(runs)
    assert "<script" not in md.lower()
    assert "&lt;script&gt;" in md
    assert "\x00" not in md and "\x1b" not in md and "\\x1b" in md
    for line in md.splitlines():                # every table row keeps its column count
        if line.startswith("| KL mean"):
            assert line.count(" | ") == 4
    assert "\\|pipe\\|" in md and "\\`tick\\`" in md
    assert SELF_CHECK_TEXT in md
    assert "⟦" in md and "KL mean 0.231 &gt; 0.01" in md
    assert "| 1 ❌ fail" not in md and "❌ fail" in md


def test_markdown_table_cells():
    cell = md_cell("a|b`c<d>\n" + "x" * 200, limit=40)
    assert "\n" not in cell and "<" not in cell and "|b" not in cell.replace("\\|b", "")
    assert cell.endswith("…")


def test_markdown_truncates_huge_run_at_case_boundary():
    big = failing_run()
    template = passing_case("c")
    template.prompt = "p" * 3000
    template.golden_tokens = template.candidate_tokens = ["tok"] * 400
    big.cases = []
    for i in range(1500):
        case = passing_case(f"case-{i:04d}")
        case.prompt, case.golden_tokens, case.candidate_tokens = (
            template.prompt, template.golden_tokens, template.candidate_tokens)
        big.cases.append(case)
    big.cases.insert(1000, failing_case())
    md = render_markdown([big])
    size = len(md.encode("utf-8"))
    assert size < MARKDOWN_LIMIT < 1024 * 1024
    assert size > MARKDOWN_LIMIT // 2
    match = re.search(r"(\d+) of 1501 case sections were left out", md)
    assert match and 0 < int(match.group(1)) < 1501
    shown = md.count("\n#### ")
    assert shown + int(match.group(1)) == 1501
    assert "#### ❌ add" in md                  # the failing case is kept first
    assert md.count("<pre>") == md.count("</pre>")      # cut between cases, not inside


# --- JUnit ------------------------------------------------------------------------------

def test_junit_is_valid_and_counts_match(runs):
    xml = render_junit(runs)
    root = ET.fromstring(xml.encode("utf-8"))
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 3
    assert [int(s.get("tests")) for s in suites] == [3, 3, 1]     # perf is a testcase
    assert [int(s.get("failures")) for s in suites] == [0, 1, 0]
    assert [int(s.get("errors")) for s in suites] == [0, 1, 0]
    assert int(root.get("tests")) == 7 and int(root.get("failures")) == 1
    fail_suite = suites[1]
    assert fail_suite.get("name") == "smollm2-135m.perturbed"
    cases = {c.get("name"): c for c in fail_suite.findall("testcase")}
    assert set(cases) == {"capital-fr", "add", "boom"}
    assert all(c.get("classname") == "smollm2-135m.perturbed" for c in cases.values())
    failure = cases["add"].find("failure")
    assert "KL mean 0.231" in failure.get("message")
    assert "kl_max=1.52" in failure.text and "top1_agreement=0.625" in failure.text
    assert EVIL in failure.get("message")          # escaped in the file, intact when parsed
    assert cases["boom"].find("error") is not None
    assert cases["capital-fr"].find("failure") is None
    assert "<script>" not in xml and "&lt;script&gt;" in xml
    props = {p.get("name"): p.get("value") for p in fail_suite.iter("property")}
    assert props["comparison"] == "cross-backend" and props["candidate.device_name"] == EVIL
    assert SELF_CHECK_TEXT in suites[2].find("system-out").text


def test_junit_strips_characters_illegal_in_xml():
    run = failing_run()
    run.cases[1].error = "".join(chr(i) for i in range(32)) + "\ud800\ufffe"
    run.cases[1].id = "bad\x00id\x08"
    xml = render_junit([run])
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe]", xml)
    root = ET.fromstring(xml.encode("utf-8"))
    assert root.find(".//testcase[@name='bad\\x00id\\x08']") is not None


# --- JSON -------------------------------------------------------------------------------

def test_json_round_trip_and_schema(tmp_path, runs):
    path = tmp_path / "deep" / "er" / "results.json"
    write_reports(runs, json_path=path)
    data = json.loads(path.read_text("utf-8"))
    Draft202012Validator(schema("results")).validate(data)
    assert data["format"] == 1 and [r["comparison"] for r in data["runs"]] == [
        "cross-backend", "cross-backend", "self-check"]
    assert data["runs"][1]["cases"][1]["per_position"]["kl"][4:] == [None, None]
    back = load_results(path)
    assert [r.spec_name for r in back] == [r.spec_name for r in runs]
    assert back[0].to_dict() == runs[0].to_dict()        # finite run: exact round trip
    assert back[1].cases[1].checks[2].metrics["kl_max"] == 1.52
    assert back[1].candidate.model_override is True
    # everything re-renders from the loaded results
    assert render_terminal(back) == render_terminal(runs)
    assert "position-chart" in render_html(back)
    assert list(tmp_path.glob("deep/er/.*")) == []       # no temp files left behind


def test_write_reports_writes_every_format(tmp_path, runs):
    out = {"json_path": tmp_path / "r.json", "markdown": tmp_path / "md" / "r.md",
           "html": tmp_path / "r.html", "junit": tmp_path / "j" / "r.xml"}
    write_reports(runs, **out)
    for path in out.values():
        assert path.stat().st_size > 100
    assert (tmp_path / "md" / "r.md").read_text("utf-8") == render_markdown(runs)
    ET.parse(out["junit"])


def test_non_finite_floats_do_not_crash(tmp_path):
    run = failing_run()
    nan, inf = float("nan"), float("inf")
    case = run.cases[1]
    case.checks[2].metrics.update(kl_mean=nan, kl_max=inf, top1_agreement=nan, max_abs_dlogprob=-inf)
    case.per_position = {"kl": [nan, inf, -inf, None], "abs_dlogprob": [inf, inf]}
    case.worst_topk = [TopKRow("x", 1, nan, inf, -inf)]
    case.duration_s = nan
    run.duration_s = inf
    run.perf = {"status": "fail", "rows": [{"backend": "b", "batch_size": 1, "tokens_per_s": nan,
                                            "ttft_ms": nan}], "failures": ["TTFT over budget"]}
    path = tmp_path / "r.json"
    write_reports([run], json_path=path, markdown=tmp_path / "r.md", html=tmp_path / "r.html",
                  junit=tmp_path / "r.xml")
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    back = load_results(path)
    assert back[0].cases[1].per_position["kl"] == [None, None, None, None]
    for runs in ([run], back):
        assert "nan" in render_terminal(runs) or "—" in render_terminal(runs)
        render_html(runs), render_markdown(runs)
        ET.fromstring(render_junit(runs).encode("utf-8"))
    assert "TTFT over budget" in render_junit([run])


def test_numpy_values_are_written(tmp_path):
    np = pytest.importorskip("numpy")
    run = passing_run()
    run.cases[0].checks[2].metrics.update(kl_mean=np.float32(0.5), worst_position=np.int64(2),
                                          series=np.array([1.0, np.nan]))
    run.candidate.settings["cache"] = tmp_path           # a Path: written as its text
    write_reports([run], json_path=tmp_path / "r.json")
    back = load_results(tmp_path / "r.json")
    assert back[0].cases[0].checks[2].metrics["series"] == [1.0, None]
    assert back[0].cases[0].checks[2].metrics["worst_position"] == 2
    assert back[0].candidate.settings["cache"] == str(tmp_path)


@pytest.mark.parametrize("content, fragment", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[]", "not a specengine results file"),
    (b'{"format": 2, "runs": []}', "format 2 is not supported"),
    (b'{"format": 1, "runs": [{"spec_name": "x"}]}', "not a valid results file"),
    (b'{"format": 1, "runs": [], "extra": 1}', "not a valid results file"),
])
def test_corrupt_results_file_is_a_usage_error(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(UsageError) as info:
        load_results(path)
    message = str(info.value)
    assert fragment in message and str(path) in message and "\n" not in message
    assert isinstance(info.value, SpecEngineError) and info.value.exit_code == 2


def test_bad_status_in_results_file(tmp_path, runs):
    path = tmp_path / "r.json"
    write_reports(runs, json_path=path)
    data = json.loads(path.read_text())
    data["runs"][0]["cases"][0]["status"] = "weird"
    data["runs"][0]["comparison"] = "same"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="not a valid results file: at runs/0"):
        load_results(path)


def test_missing_results_file(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_results(tmp_path / "nope.json")


# --- schema and helpers -----------------------------------------------------------------

def _walk(node, where="#"):
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            yield f"{where}/{name}", sub
        for key, sub in node.items():
            yield from _walk(sub, f"{where}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _walk(sub, f"{where}/{i}")


def test_schema_describes_every_property():
    results = schema("results")
    Draft202012Validator.check_schema(results)
    missing = [where for where, sub in _walk(results) if "description" not in sub]
    assert missing == []


def test_schema_matches_the_results_model():
    defs = schema("results")["$defs"]
    for name, cls in (("run", RunResult), ("side", Side), ("case", CaseResult),
                      ("check", Check), ("topkRow", TopKRow)):
        props = set(defs[name]["properties"]) - {"summary"}
        assert props == {f.name for f in fields(cls)}, name
    assert defs["run"]["properties"]["comparison"]["enum"] == ["self-check", "cross-model", "cross-backend"]


def test_from_dict_of_to_dict():
    run = failing_run()
    assert from_dict(run.to_dict()).to_dict() == run.to_dict()


def test_case_metrics_fall_back_on_per_position():
    case = passing_case("c")
    case.checks = []
    m = case_metrics(case)
    assert m.kl_max == 0.0061 and m.dlogprob == 0.22 and m.top1 is None
    assert math.isclose(m.kl_mean, (0.001 + 0.002 + 0.0061 + 0.0001) / 4)


def test_visible_and_nice_ceiling():
    assert visible("a\x1b[0m\tb\n\ud800") == "a\\x1b[0m\tb\n\\ud800"
    assert [nice_ceiling(x) for x in (0, 0.0061, 0.3, 1.52, 7)] == [1.0, 0.01, 0.5, 2, 10]
