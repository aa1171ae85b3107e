"""CI outputs of `specengine check`: GitHub annotations at the failing case's line, JUnit
XML a JUnit parser accepts, Markdown under GitHub's 1 MiB step-summary limit, exit
codes, run selection (--case, --tag, -k, --fail-fast), `report` re-rendering, the
pre-commit hook and the editor-schema line.

Commands run in-process (`specengine.cli.main`) on a tiny synthetic llama: the spec
defines a `near` backend (a slightly rescaled copy of the model: passes) and a
`broken` one (rescaled more: fails `hello` and `chat` with a real divergence, while
`count` has a tolerance loose enough to pass).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO, load_json, write_spec

_CONFIG = """{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
                 num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 300,
                 max_position_embeddings: 256}"""


def _synthetic(init_std: float, indent: str) -> str:
    return (f"{indent}synthetic:\n{indent}  model_type: llama\n{indent}  seed: 3\n"
            f"{indent}  init_std: {init_std}\n{indent}  config: {_CONFIG}\n")


GATE_SPEC = f"""\
# yaml-language-server: $schema=../schemas/spec.schema.json
specengine: 1
name: ci-tiny
model:
{_synthetic(0.4, "  ")}backends:
  near:
    runtime: torch
    model:
{_synthetic(0.402, "      ")}  broken:
    runtime: torch
    model:
{_synthetic(0.5, "      ")}defaults:
  max_new_tokens: 8
  # float32 limits pinned at half-precision size: `near` is a float32 copy rescaled by
  # 0.5 %, which the float32 defaults (rightly) would fail
  tolerance: {{float32: {{kl_mean_max: 0.01, kl_max: 0.05, logprob_atol: 0.5,
                        divergence: {{within_top_k: 5, max_margin: 0.5}}}}}}
cases:
  - id: hello
    prompt: "Hello there"
    tags: [english, smoke]
  - id: chat
    messages: [{{role: user, content: "<script>alert(1)</script> & friends, 100%"}}]
    tags: [chat]
  - id: count
    prompt: "1, 2, 3,"
    tags: [english]
    tolerance: {{float32: {{kl_mean_max: 2.0, kl_max: 5.0, logprob_atol: 10.0,
                          top1_agreement_min: 0.5,
                          divergence: {{within_top_k: 10, max_margin: 5.0}}}}}}
"""

NOT_A_SPEC = "# some other YAML in the repository\nfoo: 1\nspecengine_version: 2\n"


def case_line(spec_text: str, case_id: str) -> int:
    """1-based line of `- id: CASE` in the spec text."""
    for number, line in enumerate(spec_text.splitlines(), 1):
        if re.match(rf"\s*- id: {re.escape(case_id)}\s*$", line):
            return number
    raise AssertionError(case_id)


@dataclass
class GateRepo:
    root: Path
    spec: Path
    golden: Path


def make_gate_repo(root: Path) -> GateRepo:
    """A scratch repository: specs/ci-tiny.yaml (+ a YAML that is not a spec) and its
    cpu golden under golden/ (recorded in-process)."""
    spec = write_spec(root / "specs" / "ci-tiny.yaml", GATE_SPEC)
    write_spec(root / "specs" / "notes.yaml", NOT_A_SPEC)
    golden = root / "golden"
    rc, out, err = run_cli("record-golden", spec, "--golden-dir", golden)
    assert rc == 0, out + err
    return GateRepo(root, spec, golden)


def run_cli(*args) -> tuple[int, str, str]:
    """`specengine ARGS` in this process (no new interpreter, no torch re-import)."""
    from specengine.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def gate_repo(tmp_path_factory) -> GateRepo:
    return make_gate_repo(tmp_path_factory.mktemp("gate"))


@dataclass
class FailingCheck:
    repo: GateRepo
    rc: int
    out: str
    reports: dict[str, Path]


@pytest.fixture(scope="session")
def failing_check(gate_repo, tmp_path_factory) -> FailingCheck:
    """`check --backend broken` with every report format (shared with the browser test)."""
    out_dir = tmp_path_factory.mktemp("reports")
    reports = {k: out_dir / f"report.{k}" for k in ("json", "html", "md", "xml")}
    rc, out, err = run_cli("check", gate_repo.spec, "--backend", "broken", "--golden-dir",
                           gate_repo.golden, "--json", reports["json"], "--html",
                           reports["html"], "--markdown", reports["md"], "--junit",
                           reports["xml"])
    assert rc == 1, out + err
    return FailingCheck(gate_repo, rc, out, reports)


# --- annotations --------------------------------------------------------------------------

def test_escaping_follows_githubs_rules():
    from specengine.report.annotations import escape_data, escape_property, workflow_command

    assert escape_data("100% done\r\nnext: a, b") == "100%25 done%0D%0Anext: a, b"
    assert escape_property("specs/a,b:c%.yaml\n") == "specs/a%2Cb%3Ac%25.yaml%0A"
    assert workflow_command("error", "x: 1%\ny", file="s, t.yaml", line=7, title="a: b") == \
        "::error file=s%2C t.yaml,line=7,title=a%3A b::x: 1%25%0Ay"
    assert workflow_command("warning", "m", file="f", line=None) == "::warning file=f::m"


def test_annotation_path_is_relative_to_the_workspace(tmp_path, monkeypatch):
    from specengine.report.annotations import annotation_path

    spec = tmp_path / "specs" / "x.yaml"
    assert annotation_path(str(spec), root=tmp_path) == "specs/x.yaml"
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    assert annotation_path(str(spec)) == "specs/x.yaml"
    assert annotation_path("specs/x.yaml") == "specs/x.yaml"
    assert annotation_path("/elsewhere/x.yaml") == "/elsewhere/x.yaml"


def _unescape(text: str) -> str:
    return text.replace("%0A", "\n").replace("%0D", "\r").replace("%3A", ":") \
        .replace("%2C", ",").replace("%25", "%")


def _annotations(out: str) -> list[dict]:
    found = []
    for line in out.splitlines():
        match = re.fullmatch(r"::(error|warning) ([^:]*)::(.*)", line)
        if match:
            props = dict(p.split("=", 1) for p in match.group(2).split(","))
            found.append({"kind": match.group(1), **{k: _unescape(v) for k, v in props.items()},
                          "message": _unescape(match.group(3))})
    return found


def test_github_annotations_point_at_the_failing_cases(gate_repo, monkeypatch):
    monkeypatch.chdir(gate_repo.root)
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    rc, out, err = run_cli("check", "specs/ci-tiny.yaml", "--backend", "broken",
                           "--golden-dir", "golden", "--annotations", "github")
    assert rc == 1, out + err
    notes = _annotations(out)
    assert [n["kind"] for n in notes] == ["error", "error"], out
    by_line = {int(n["line"]): n for n in notes}
    assert set(by_line) == {case_line(GATE_SPEC, "hello"), case_line(GATE_SPEC, "chat")}
    for note in notes:
        assert note["file"] == "specs/ci-tiny.yaml"
        assert note["title"].startswith("specengine: ci-tiny / ")
        assert "broken vs cpu (golden)" in note["message"]
        assert "KL mean" in note["message"] and "\n" in note["message"]
    hello = by_line[case_line(GATE_SPEC, "hello")]
    assert "teacher-forced:" in hello["message"]
    # the chat case diverges at a clear step (hello's divergence is a near-tie)
    assert "divergence: step" in by_line[case_line(GATE_SPEC, "chat")]["message"]
    # a passing run annotates nothing
    rc, out, _ = run_cli("check", "specs/ci-tiny.yaml", "--backend", "near",
                         "--golden-dir", "golden", "--annotations", "github")
    assert rc == 0 and "::error" not in out


def test_annotations_are_capped(gate_repo):
    from specengine.report.annotations import MAX_ANNOTATIONS, github_annotations

    run = _many_case_run(300, status="fail")
    lines = list(github_annotations([run]))
    assert len(lines) == MAX_ANNOTATIONS + 1
    assert lines[-1].startswith("::warning::250 more failing case(s)")


# --- JUnit ------------------------------------------------------------------------------

def test_junit_is_valid_and_carries_the_metrics(failing_check):
    path = failing_check.reports["xml"]
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1 and suites[0].get("name") == "ci-tiny.broken"
    suite = suites[0]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "2", "0")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == ["hello", "chat", "count"]
    for case in cases.values():
        assert case.get("classname") == "ci-tiny.broken"
        float(case.get("time"))
    assert cases["count"].find("failure") is None
    for name in ("hello", "chat"):
        failure = cases[name].find("failure")
        assert failure is not None and failure.get("message")
        assert "KL mean" in failure.text and "teacher-forced" in failure.text

    junitparser = pytest.importorskip("junitparser")
    xml = junitparser.JUnitXml.fromfile(str(path))
    parsed = {case.name: case for suite in xml for case in suite}
    assert set(parsed) == {"hello", "chat", "count"}
    assert parsed["count"].is_passed
    assert all(isinstance(r, junitparser.Failure) for r in parsed["hello"].result)
    assert "KL mean" in parsed["hello"].result[0].text


def test_report_rerenders_the_same_outputs(failing_check, tmp_path):
    rc, out, err = run_cli("report", failing_check.reports["json"], "--junit", tmp_path / "j.xml",
                           "--markdown", tmp_path / "m.md", "--annotations", "github")
    assert rc == 1, out + err          # the results hold failures: the verdict is kept
    assert (tmp_path / "j.xml").read_text() == failing_check.reports["xml"].read_text()
    assert (tmp_path / "m.md").read_text() == failing_check.reports["md"].read_text()
    assert len(_annotations(out)) == 2


# --- Markdown for $GITHUB_STEP_SUMMARY ------------------------------------------------------

def _many_case_run(n: int, status: str = "pass"):
    from specengine.results import Check, CaseResult, RunResult, Side

    run = RunResult(spec_name="big", spec_path="specs/big.yaml", command="check",
                    candidate=Side("npu", "torch", "npu", "Ascend", "bfloat16"),
                    reference=Side("cpu", "torch", "cpu", "x86", "float32"),
                    comparison="cross-backend", reference_kind="golden")
    for i in range(n):
        bad = status == "fail" or i % 7 == 0
        checks = [Check("teacher-forced", "fail" if bad else "pass",
                        "KL mean 0.3 > 0.01" if bad else "within tolerance",
                        {"kl_mean": 0.3 if bad else 0.001, "kl_max": 0.9, "top1_agreement": 0.8,
                         "max_abs_dlogprob": 2.0})]
        run.cases.append(CaseResult(
            id=f"case-{i:05d}", status="fail" if bad else "pass", line=10 + 3 * i,
            prompt="A long prompt that repeats. " * 40, golden_text="golden text " * 60,
            candidate_text="candidate text " * 60, golden_tokens=["tok"] * 64,
            candidate_tokens=["tok"] * 64, divergence_step=3 if bad else None, checks=checks,
            per_position={"kl": [0.01] * 64, "abs_dlogprob": [0.1] * 64}))
    run.finish()
    return run


def test_markdown_stays_under_one_mib_with_many_cases(tmp_path):
    from specengine.report import MARKDOWN_LIMIT, dump_results

    assert MARKDOWN_LIMIT < 1024 * 1024
    results = tmp_path / "big.json"
    results.write_text(dump_results([_many_case_run(700)]))   # ~1.4 MB of Markdown in full
    rc, out, err = run_cli("report", results, "--markdown", tmp_path / "summary.md")
    assert rc == 1, out + err
    data = (tmp_path / "summary.md").read_bytes()
    assert len(data) <= MARKDOWN_LIMIT
    text = data.decode("utf-8")
    assert "case-00007" in text            # failing cases are kept first
    assert re.search(r"omitted|left out|truncated", text, re.I), text[-2000:]


def test_markdown_of_a_real_check(failing_check):
    text = failing_check.reports["md"].read_text("utf-8")
    assert len(text.encode()) < 1024 * 1024
    for cid in ("hello", "chat", "count"):
        assert cid in text
    assert "<script>alert" not in text


# --- exit codes and run selection -------------------------------------------------------------

def _checked_ids(path: Path) -> list[str]:
    return [c["id"] for run in load_json(path)["runs"] for c in run["cases"]]


def test_exit_codes(gate_repo):
    base = (gate_repo.spec, "--golden-dir", gate_repo.golden)
    assert run_cli("check", *base, "--backend", "near")[0] == 0
    assert run_cli("check", *base, "--backend", "broken")[0] == 1
    rc, _, err = run_cli("check", *base, "--backend", "npu")
    assert rc == 3 and "torch_npu" in err
    rc, _, err = run_cli("check", gate_repo.spec, "--backend", "cpu", "--golden-dir",
                         gate_repo.root / "nowhere")
    assert rc == 2 and "no golden" in err
    rc, _, err = run_cli("check", *base, "--backend", "cpu", "--case", "nope")
    assert rc == 2 and "nope" in err


@pytest.mark.parametrize("selection,expected", [
    (("--case", "chat"), ["chat"]),
    (("--case", "chat", "--case", "hello"), ["hello", "chat"]),
    (("--tag", "english"), ["hello", "count"]),
    (("--tag", "chat", "--tag", "smoke"), ["hello", "chat"]),
    (("-k", "count"), ["count"]),
    (("-k", "not english"), ["chat"]),
    (("--tag", "english", "-k", "not hello"), ["count"]),
])
def test_run_selection(gate_repo, tmp_path, selection, expected):
    rc, out, err = run_cli("check", gate_repo.spec, "--backend", "near", "--golden-dir",
                           gate_repo.golden, "--json", tmp_path / "r.json", *selection)
    assert rc == 0, out + err
    assert _checked_ids(tmp_path / "r.json") == expected


def test_fail_fast_stops_at_the_first_failing_case(gate_repo, tmp_path):
    rc, out, err = run_cli("check", gate_repo.spec, "--backend", "broken", "--golden-dir",
                           gate_repo.golden, "--json", tmp_path / "r.json", "--fail-fast")
    assert rc == 1, out + err
    assert _checked_ids(tmp_path / "r.json") == ["hello"]
    assert "--fail-fast" in out
    # selection and fail-fast together: the first *selected* failing case stops the run
    rc, out, err = run_cli("check", gate_repo.spec, "--backend", "broken", "--golden-dir",
                           gate_repo.golden, "--json", tmp_path / "r2.json", "--fail-fast",
                           "-k", "not hello")
    assert rc == 1 and _checked_ids(tmp_path / "r2.json") == ["chat"]


# --- pre-commit and editor support ------------------------------------------------------------

def test_pre_commit_hook_validates_specs():
    from ruamel.yaml import YAML

    hooks = YAML(typ="safe").load((REPO / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "specengine-validate")
    assert hook["language"] == "python" and hook["entry"] == "specengine validate"
    files = re.compile(hook["files"])
    for path in ("specs/a.yaml", "specs/tiny/b.yml"):
        assert files.search(path), path
    for path in ("golden/a/cpu.json", "docs/specs/a.yaml", "specs/a.yaml.bak", ".github/x.yaml"):
        assert not files.search(path), path
    assert hook.get("pass_filenames", True) is True


def test_pre_commit_entry_rejects_a_broken_spec(gate_repo, tmp_path):
    bad = write_spec(tmp_path / "specs" / "bad.yaml", GATE_SPEC.replace("max_new_tokens: 8",
                                                                        "max_new_tokenz: 8"))
    rc, out, err = run_cli("validate", gate_repo.spec, bad)
    assert rc == 2
    assert "bad.yaml:" in err and "max_new_tokenz" in err
    assert f"ok {gate_repo.spec}" in out


def test_shipped_specs_start_with_the_schema_line():
    specs = sorted(REPO.glob("specs/**/*.yaml")) + sorted(REPO.glob("specs/**/*.yml"))
    assert specs
    for spec in specs:
        first = spec.read_text("utf-8").splitlines()[0]
        match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert match, f"{spec}: first line is {first!r}"
        assert (spec.parent / match.group(1)).resolve() == REPO / "schemas" / "spec.schema.json"


def test_schema_command_prints_the_spec_schema():
    from helpers import cli

    result = cli("schema")            # a fresh process: the schema as shipped right now
    assert result.rc == 0, result.err
    assert json.loads(result.out) == json.loads((REPO / "schemas" / "spec.schema.json").read_text())
