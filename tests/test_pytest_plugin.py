"""The pytest plugin: `pytest specs/` runs the gate.

Inner pytest sessions run in-process (pytester) in a scratch repository holding
specs/ci-tiny.yaml (from test_ci_outputs), a YAML file that is not a spec, and the
spec's cpu golden. The outer process has already imported torch and the model code
(the golden is recorded in-process first), so each inner session is cheap.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from test_ci_outputs import GATE_SPEC, case_line, make_gate_repo

pytest_plugins = ["pytester"]

IDS = ["hello", "chat", "count"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_gate_repo(tmp_path_factory.mktemp("plugin-gate"))


@pytest.fixture
def gate(pytester, repo):
    """pytester's folder (the cwd of the inner session) as the scratch repository."""
    shutil.copytree(repo.root / "specs", pytester.path / "specs")
    shutil.copytree(repo.golden, pytester.path / "golden")
    return pytester


def inner(pytester, *args):
    return pytester.runpytest_inprocess("specs", "-p", "no:cacheprovider", *args)


def _collected(result) -> list[str]:
    return [line.split("::", 1)[1] for line in result.stdout.lines
            if line.startswith("specs/") and "::" in line]


# --- collection ---------------------------------------------------------------------------

def test_collects_spec_files_and_cases_only(gate):
    (gate.path / "specs" / "other.yml").write_text("name: not-a-spec\ncases: []\n")
    (gate.path / "specs" / "nested").mkdir()
    (gate.path / "specs" / "nested" / "quoted.yaml").write_text(
        GATE_SPEC.replace("specengine: 1", '"specengine": 1').replace("ci-tiny", "ci-nested"))
    result = inner(gate, "--collect-only", "-q")
    assert result.ret == 0, result.stdout.str()
    lines = [line for line in result.stdout.lines if "::" in line]
    assert lines == [f"specs/ci-tiny.yaml::{i}" for i in IDS] + \
        [f"specs/nested/quoted.yaml::{i}" for i in IDS]


@pytest.mark.parametrize("args,expected", [
    (("-m", "chat"), ["chat"]),
    (("-m", "english and not smoke"), ["count"]),
    (("-m", "specengine"), IDS),
    (("-k", "hello or count"), ["hello", "count"]),
    (("-k", "english"), ["hello", "count"]),          # tags are keywords too
    (("-k", "ci-tiny and not chat"), ["hello", "count"]),
])
def test_markers_and_k_select_cases(gate, args, expected):
    result = inner(gate, "--collect-only", "-q", "--strict-markers", *args)
    assert result.ret == 0, result.stdout.str()
    assert _collected(result) == expected


def test_collection_does_not_import_torch(repo):
    code = ("import sys, pytest\n"
            "rc = pytest.main(['specs', '--collect-only', '-q', '-p', 'no:cacheprovider'])\n"
            "heavy = [m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n"
            "sys.exit(int(rc))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo.root, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "3 tests collected" in proc.stdout


def test_invalid_spec_is_a_collection_error_with_its_position(gate):
    (gate.path / "specs" / "bad.yaml").write_text(GATE_SPEC.replace("ci-tiny", "ci-bad")
                                                  .replace("max_new_tokens: 8", "max_new_tokenz: 8"))
    result = inner(gate, "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    text = result.stdout.str()
    assert "specs/bad.yaml:" in text and "max_new_tokenz" in text
    assert "Traceback" not in text


# --- running the gate -----------------------------------------------------------------------

def test_passing_gate_with_junitxml(gate):
    result = inner(gate, "--specengine-backend", "near", "--junitxml", "j.xml")
    result.assert_outcomes(passed=3)
    assert "ci-tiny: near vs cpu (golden)" in result.stdout.str()
    root = ET.parse(gate.path / "j.xml").getroot()
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == IDS
    assert {c.get("classname") for c in cases} == {"specs.ci-tiny.yaml"}
    junitparser = pytest.importorskip("junitparser")
    xml = junitparser.JUnitXml.fromfile(str(gate.path / "j.xml"))
    assert all(case.is_passed for suite in xml for case in suite)


def test_failing_gate_shows_the_report_text(gate, monkeypatch):
    import specengine.run as run_module
    from specengine.report import render_terminal

    loads = []
    real_check = run_module.check_spec
    runs = []

    def counting_check(*args, **kwargs):
        loads.append(args[1])
        runs.append(real_check(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(run_module, "check_spec", counting_check)
    result = inner(gate, "--specengine-backend", "broken", "--junitxml", "j.xml", "-rf")
    result.assert_outcomes(passed=1, failed=2)
    assert loads == ["broken"]                 # one model load for the three cases
    text = result.stdout.str()
    # the failing checks print exactly as in the terminal report of `specengine check`
    terminal = render_terminal(runs)
    for line in terminal.splitlines():
        if line.strip().startswith("✗"):
            assert line in text, line
    assert "first divergence at step" in text and "top-k at the worst position" in text
    assert "FAILED specs/ci-tiny.yaml::chat - chat fail: divergence" in text
    root = ET.parse(gate.path / "j.xml").getroot()
    failures = {c.get("name"): c.find("failure") for c in root.findall(".//testcase")}
    assert failures["count"] is None
    assert "KL mean" in failures["hello"].text and "teacher-forced" in failures["chat"].text


def test_exitfirst_checks_no_further(gate, monkeypatch):
    import specengine.run as run_module

    seen = {}
    real_check = run_module.check_spec

    def spy(*args, **kwargs):
        run = real_check(*args, **kwargs)
        seen["cases"] = [c.id for c in run.cases]
        return run

    monkeypatch.setattr(run_module, "check_spec", spy)
    result = inner(gate, "--specengine-backend", "broken", "-x")
    result.assert_outcomes(failed=1)
    assert seen["cases"] == ["hello"]


def test_deselected_cases_are_not_run(gate, monkeypatch):
    import specengine.run as run_module

    seen = {}
    real_check = run_module.check_spec

    def spy(spec, backend, golden_dir, against, cases, *rest, **kw):
        seen["cases"] = [c.id for c in cases]
        return real_check(spec, backend, golden_dir, against, cases, *rest, **kw)

    monkeypatch.setattr(run_module, "check_spec", spy)
    result = inner(gate, "--specengine-backend", "broken", "-k", "count")
    result.assert_outcomes(passed=1)
    assert seen["cases"] == ["count"]


def test_default_backend_is_the_reference_and_labelled_self_check(gate):
    result = inner(gate)
    result.assert_outcomes(passed=3)
    text = result.stdout.str()
    assert "ci-tiny: cpu vs cpu (golden) [self-check]" in text
    assert "not a cross-backend pass" in text


def test_ini_options(gate, repo):
    shutil.rmtree(gate.path / "golden")
    gate.makeini(f"[pytest]\nspecengine_backend = near\nspecengine_golden_dir = {repo.golden}\n")
    result = inner(gate)
    result.assert_outcomes(passed=3)
    assert "ci-tiny: near vs cpu (golden)" in result.stdout.str()


def test_against_compares_live(gate):
    shutil.rmtree(gate.path / "golden")       # no golden needed
    result = inner(gate, "--specengine-backend", "near", "--specengine-against", "cpu", "-k",
                   "hello")
    result.assert_outcomes(passed=1)
    assert "near vs cpu (live)" in result.stdout.str()


def test_missing_golden_is_an_error(gate, tmp_path):
    result = inner(gate, "--specengine-golden-dir", str(tmp_path / "nowhere"))
    result.assert_outcomes(errors=3)
    text = result.stdout.str()
    assert "no golden at" in text and "Traceback" not in text


def test_unavailable_backend_errors_unless_skipping_is_asked(gate):
    result = inner(gate, "--specengine-backend", "npu")
    result.assert_outcomes(errors=3)
    text = result.stdout.str()
    assert "torch_npu" in text and "--specengine-skip-unavailable" in text
    result = inner(gate, "--specengine-backend", "npu", "--specengine-skip-unavailable", "-rs")
    result.assert_outcomes(skipped=3)
    assert "torch_npu" in result.stdout.str()


def test_reports_and_annotations_from_pytest(gate, monkeypatch):
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    result = inner(gate, "--specengine-backend", "broken", "--specengine-json", "r.json",
                   "--specengine-html", "r.html", "--specengine-markdown", "r.md",
                   "--specengine-annotations", "github")
    result.assert_outcomes(passed=1, failed=2)
    for name in ("r.json", "r.html", "r.md"):
        assert (gate.path / name).stat().st_size > 500, name
    errors = [line for line in result.stdout.lines if line.startswith("::error ")]
    assert len(errors) == 2
    assert errors[0].startswith(f"::error file=specs/ci-tiny.yaml,line={case_line(GATE_SPEC, 'hello')},")
    assert errors[1].startswith(f"::error file=specs/ci-tiny.yaml,line={case_line(GATE_SPEC, 'chat')},")
