"""Backend faults: the gate keeps working and loses nothing.

NaN/Inf logits are a reported failure of that case; an exception in one case is that
case's `error` while the others are still judged and written; a hung case times out
(defaults.timeout_s) and the run goes on; out of memory is exit 3 with the message and
the JSON still holds the cases done; a backend that cannot start or load is exit 3.

The faults come from tests/fault_backend.py (runtime `test-fault`), injected on the cases
whose prompt holds a marker. Runs are in-process through `specengine.cli.main`: the same
code as the console script (whose __main__ is `sys.exit(main())`), minus the interpreter
start.
"""

from __future__ import annotations

import json
import time

import pytest

from fault_backend import publish_figures, run_cli
from helpers import TINY_MODEL, assert_clean_error, load_json, write_spec

FIGURES: dict = {}

MODEL = TINY_MODEL

SPEC = """\
specengine: 1
name: tiny-faults
""" + MODEL + """\
defaults:
  max_new_tokens: 4
  timeout_s: 2
backends:
  faulty:
    runtime: test-fault
    options: {nan_on: NANCASE, inf_on: INFCASE, raise_on: BOOM, crash_on: LOST,
              hang_on: HANG, hang_s: 600}
  oomy:
    runtime: test-fault
    options: {oom_on: OOMCASE}
  no-start:
    runtime: test-fault
    options: {fail_init: true}
  no-load:
    runtime: test-fault
    options: {fail_load: true}
cases:
  - id: first
    prompt: "Hello there"
  - id: nan
    prompt: "NANCASE here"
  - id: inf
    prompt: "INFCASE here"
  - id: bug
    prompt: "BOOM goes the backend"
  - id: lost
    prompt: "LOST device"
  - id: hang
    prompt: "HANG on forever"
  - id: oom
    prompt: "OOMCASE big"
  - id: last
    prompt: "The last one"
"""


def spec_with(*ids: str) -> str:
    """SPEC with only the named cases."""
    head, body = SPEC.split("cases:\n")
    blocks = ["  - id: " + b for b in body.split("  - id: ")[1:]]
    return head + "cases:\n" + "".join(b for b in blocks if b.split()[2] in ids)


@pytest.fixture(scope="module", autouse=True)
def _figures(request):
    yield
    publish_figures(request.config, "faults", FIGURES)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The spec and its cpu golden (the markers change nothing on the cpu backend)."""
    root = tmp_path_factory.mktemp("faults")
    spec = write_spec(root / "faults.yaml", SPEC)
    gdir = root / "golden"
    rec = run_cli("record-golden", spec, "--golden-dir", gdir)
    assert rec.rc == 0, rec.text
    return spec, gdir, root


def _cases(path) -> dict:
    run = load_json(path)["runs"][0]
    return {c["id"]: c for c in run["cases"]}


def test_faulty_cases_are_marked_and_the_others_survive(recorded):
    spec, gdir, root = recorded
    out = root / "faulty"
    start = time.perf_counter()
    result = run_cli("check", spec, "--backend", "faulty", "--golden-dir", gdir,
                     "-k", "not oom", "--json", out / "r.json", "--html", out / "r.html",
                     "--markdown", out / "r.md", "--junit", out / "r.xml")
    elapsed = time.perf_counter() - start
    assert result.rc == 1, result.text                  # some failed, not a crash
    assert "Traceback" not in result.text
    cases = _cases(out / "r.json")
    assert list(cases) == ["first", "nan", "inf", "bug", "lost", "hang", "last"]
    assert cases["first"]["status"] == "pass" and cases["last"]["status"] == "pass"

    for cid in ("nan", "inf"):                          # NaN/Inf: a failure of that case
        case = cases[cid]
        assert case["status"] == "fail", case
        finite = [c for c in case["checks"] if c["name"] == "finite"]
        assert finite and finite[0]["status"] == "fail" and "NaN or Inf" in finite[0]["message"]
        tf = [c for c in case["checks"] if c["name"] == "teacher-forced"][0]
        assert tf["status"] == "fail", tf               # a NaN metric never passes

    assert cases["bug"]["status"] == "error"
    assert "ValueError: injected fault" in cases["bug"]["error"]
    assert cases["lost"]["status"] == "error" and "device lost" in cases["lost"]["error"]
    assert cases["hang"]["status"] == "error"
    assert "timed out after 2 s" in cases["hang"]["error"]
    assert elapsed < 60                                 # the hang (600 s) was cut at 2 s
    FIGURES["check with 4 faulty + 1 hung case of 7"] = f"{elapsed:.1f} s (timeout_s 2, hang 600 s)"

    # every report format names the faulty cases
    md = (out / "r.md").read_text()
    html = (out / "r.html").read_text()
    xml = (out / "r.xml").read_text()
    for text in (md, html, xml):
        assert "timed out after 2 s" in text and "injected fault" in text
    import xml.etree.ElementTree as ET

    suite = ET.fromstring(xml)
    assert suite.iter("testcase") is not None


def test_out_of_memory_is_exit_3_and_the_json_keeps_the_cases_done(recorded):
    spec, gdir, root = recorded
    out = root / "oom"
    result = run_cli("check", spec, "--backend", "oomy", "--golden-dir", gdir,
                     "--json", out / "r.json", "--junit", out / "r.xml")
    line = assert_clean_error(result, 3)
    assert "out of memory" in line and "oomy" in line
    cases = _cases(out / "r.json")
    assert [c for c in cases] == ["first", "nan", "inf", "bug", "lost", "hang", "oom"]
    assert all(cases[c]["status"] == "pass" for c in ("first", "nan", "bug"))
    assert cases["oom"]["status"] == "error" and "out of memory" in cases["oom"]["error"]
    run = load_json(out / "r.json")["runs"][0]
    assert run["status"] == "error" and any("stopped at case 'oom'" in n for n in run["notes"])
    assert (out / "r.xml").is_file()


@pytest.mark.parametrize("backend,fragment", [
    ("no-start", "could not start: RuntimeError: injected fault: the device failed"),
    ("no-load", "could not load synthetic llama seed 3: RuntimeError: injected fault"),
])
def test_backend_that_cannot_start_is_exit_3(recorded, backend, fragment):
    spec, gdir, root = recorded
    for command in (["check", spec, "--backend", backend],
                    ["record-golden", spec, "--backend", backend]):
        before = sorted(p.relative_to(root) for p in root.rglob("*"))
        line = assert_clean_error(run_cli(*command, "--golden-dir", gdir), 3)
        assert fragment in line, line
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("case,fragment", [
    ("nan", "produced NaN/Inf log-probs on case 'nan'; refusing to record it"),
    ("inf", "produced NaN/Inf log-probs on case 'inf'"),
    ("bug", "failed on case 'bug': ValueError: injected fault"),
    ("hang", "case 'hang' timed out after 2 s"),
    ("oom", "out of memory"),
])
def test_recording_on_a_faulty_backend_writes_nothing(recorded, case, fragment, tmp_path):
    spec = write_spec(tmp_path / "one.yaml", spec_with("first", case))
    gdir = tmp_path / "golden"
    backend = "oomy" if case == "oom" else "faulty"
    line = assert_clean_error(run_cli("record-golden", spec, "--backend", backend,
                                      "--golden-dir", gdir), 3)
    assert fragment in line, line
    assert not gdir.exists() or not list(gdir.rglob("*"))


def test_an_existing_golden_survives_a_failed_re_record(recorded, tmp_path):
    spec, _, root = recorded
    gdir = tmp_path / "golden"
    write_spec(tmp_path / "good.yaml", spec_with("first", "last"))   # healthy cases only
    assert run_cli("record-golden", tmp_path / "good.yaml", "--backend", "faulty",
                   "--golden-dir", gdir).rc == 0
    path = gdir / "tiny-faults" / "faulty.json"
    before = path.read_bytes()
    line = assert_clean_error(run_cli("record-golden", spec, "--backend", "faulty", "--update",
                                      "--golden-dir", gdir), 3)
    assert "case 'nan'" in line
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["faulty.json"]   # no temp left


def test_results_json_of_a_faulty_run_is_valid_and_re_renders(recorded, tmp_path):
    spec, gdir, root = recorded
    result = run_cli("check", spec, "--backend", "faulty", "--golden-dir", gdir,
                     "--case", "nan", "--case", "bug", "--json", tmp_path / "r.json")
    assert result.rc == 1, result.text
    text = (tmp_path / "r.json").read_text()
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    json.loads(text, parse_constant=no_constants)          # strict JSON: no NaN/Infinity
    again = run_cli("report", tmp_path / "r.json", "--html", tmp_path / "again.html")
    assert again.rc == 1, again.text
    assert "injected fault" in (tmp_path / "again.html").read_text()
