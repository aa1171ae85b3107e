"""The command line as people read it: progress lines outside a terminal, the closing
line, colour switches, -q / -v, `check DIR` that keeps going past a spec that cannot run,
a closed pipe, the `backends` command, where goldens live, per-kind terminal columns and
the near-tie-branch hint."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import CLI_MAIN, write_spec
from test_ci_outputs import GATE_SPEC, gate_repo  # noqa: F401  (fixture)

from specengine.results import CaseResult, Check, RunResult, Side


def run_main(*args, env: dict | None = None, unset: tuple = ()) -> tuple[int, str, str]:
    from specengine.cli import main

    saved = {k: os.environ.get(k) for k in (*(env or {}), *unset)}
    os.environ.update(env or {})
    for key in unset:
        os.environ.pop(key, None)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in args])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return rc, out.getvalue(), err.getvalue()


def _check(repo, *extra, **kw):
    return run_main("check", repo.spec, "--golden-dir", repo.golden, "--backend", "cpu",
                    *extra, **kw)


# --- progress ----------------------------------------------------------------------------

def test_one_progress_line_per_case_outside_a_terminal(gate_repo):
    rc, out, err = _check(gate_repo, unset=("SPECENGINE_PROGRESS",))
    assert rc == 0, out + err
    lines = [line for line in err.splitlines() if line.startswith("check ci-tiny on cpu")]
    assert [line.split()[5] for line in lines] == ["hello", "chat", "count"], err
    assert all(" pass " in line and line.endswith(" s") for line in lines), err
    assert "[1/3]" in lines[0] and "[3/3]" in lines[2]
    assert "\033[" not in err                      # not a terminal: no colour
    closing = out.strip().splitlines()[-1]
    assert closing.startswith("3 passed, 0 failed, 0 errors in ") and closing.endswith(" s")


def test_quiet_turns_progress_off_and_hides_passing_cases(gate_repo):
    rc, out, err = _check(gate_repo, "-q", unset=("SPECENGINE_PROGRESS",))
    assert rc == 0
    assert "check ci-tiny on cpu" not in err
    assert "hello" not in out and out.strip().startswith("3 passed")


def test_verbose_lists_every_check(gate_repo):
    rc, out, _ = _check(gate_repo, "-v")
    assert rc == 0
    assert "✓ teacher-forced" in out and "✓ divergence" in out


SLOW_SPEC = GATE_SPEC.replace("backends:\n", "backends:\n  slow:\n    runtime: test-slow\n"
                              "    options: {sleep_ms: 120}\n", 1)


def test_progress_lines_stream_while_the_check_runs(gate_repo, tmp_path):
    """A subprocess with stderr on a pipe: the first case's line arrives while later
    cases are still running (the slow backend sleeps 120 ms per forward step)."""
    spec = write_spec(tmp_path / "slow.yaml", SLOW_SPEC)
    env = {k: v for k, v in os.environ.items() if k != "SPECENGINE_PROGRESS"}
    proc = subprocess.Popen([sys.executable, str(CLI_MAIN), "check", str(spec), "--backend",
                             "slow", "--golden-dir", str(gate_repo.golden)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    for line in proc.stderr:
        if line.startswith("check ci-tiny on slow"):
            first = line
            break
    still_running = proc.poll() is None
    rest = proc.stderr.read()
    proc.wait(timeout=300)
    assert first is not None and "hello" in first, rest
    assert still_running, "the first progress line only came when the command ended"
    assert proc.returncode == 0, rest


# --- colour ------------------------------------------------------------------------------

class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_color_switches(monkeypatch):
    from specengine.progress import use_color

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    assert use_color(_Tty(), "auto") and not use_color(io.StringIO(), "auto")
    assert use_color(io.StringIO(), "always") and not use_color(_Tty(), "never")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(_Tty(), "auto")
    assert use_color(_Tty(), "always")
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert use_color(io.StringIO(), "auto")
    assert not use_color(io.StringIO(), "never")


def test_color_flag_reaches_the_summary(gate_repo):
    _, plain, _ = _check(gate_repo, "--color", "never", env={"FORCE_COLOR": "1"})
    _, colored, _ = _check(gate_repo, "--color", "always")
    _, forced, _ = _check(gate_repo, env={"FORCE_COLOR": "1"})
    assert "\033[" not in plain
    assert "\033[32m" in colored and "\033[32m" in forced


# --- check DIR keeps going ---------------------------------------------------------------

MISSING = """\
specengine: 1
name: missing-model
model: {path: "${SPECENGINE_TEST_NOWHERE:-./no-such-model}"}
cases:
  - {id: a, prompt: "hi"}
"""


def test_check_dir_keeps_going_past_a_spec_that_cannot_run(gate_repo, tmp_path):
    specs = tmp_path / "specs"
    write_spec(specs / "a-missing.yaml", MISSING)
    write_spec(specs / "ci-tiny.yaml", GATE_SPEC)
    reports = {k: tmp_path / f"r.{k}" for k in ("json", "md", "html", "xml")}
    rc, out, err = run_main("check", specs, "--backend", "cpu", "--golden-dir",
                            gate_repo.golden, "--json", reports["json"], "--markdown",
                            reports["md"], "--html", reports["html"], "--junit", reports["xml"])
    assert rc == 2, out + err                          # the worst: a missing model
    assert "Traceback" not in err and "no-such-model" in err
    data = json.loads(reports["json"].read_text())
    runs = {r["spec_name"]: r for r in data["runs"]}
    assert runs["missing-model"]["status"] == "error"
    assert "no-such-model" in runs["missing-model"]["error"]
    assert runs["ci-tiny"]["status"] == "pass" and len(runs["ci-tiny"]["cases"]) == 3
    for key in ("md", "html", "xml"):
        text = reports[key].read_text()
        assert "missing-model" in text and "no-such-model" in text, key
    assert "could not run" in out and "3 passed, 0 failed, 1 errors" in out


def test_backend_unavailable_is_exit_3_and_the_row_names_what_to_install(gate_repo, tmp_path):
    rc, out, err = run_main("check", gate_repo.spec, "--backend", "npu", "--golden-dir",
                            gate_repo.golden, "--json", tmp_path / "r.json")
    assert rc == 3 and "torch_npu" in err
    run = json.loads((tmp_path / "r.json").read_text())["runs"][0]
    assert run["status"] == "error" and "torch_npu" in run["error"]


# --- a closed pipe ------------------------------------------------------------------------

def test_closed_stdout_is_not_a_traceback(gate_repo, tmp_path):
    rc, _, _ = _check(gate_repo, "--json", tmp_path / "r.json")
    assert rc == 0
    proc = subprocess.Popen([sys.executable, str(CLI_MAIN), "report", str(tmp_path / "r.json"),
                             "--markdown", str(tmp_path / "again.md")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                 # the reader is gone before anything is printed
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 0
    assert (tmp_path / "again.md").is_file()      # the command still did its work


# --- backends ----------------------------------------------------------------------------

def test_backends_lists_names_aliases_and_availability(gate_repo):
    rc, out, _ = run_main("backends", gate_repo.spec)
    assert rc == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "cpu-fp32" in rows["cpu"] and "available" in rows["cpu"]
    assert "unavailable" in rows["npu"] and "torch_npu" in out
    assert "near" in rows and "spec" in rows["near"]       # the spec's own backends
    assert "bfloat16" in rows["cpu-bf16"]


def test_backends_probe_imports_no_runtime():
    code = ("import sys; from specengine.cli.backends_cmd import backend_rows; "
            "rows = backend_rows(); "
            "print(sorted(m for m in ('onnxruntime', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.strip() == "[]", out.stderr


# --- where goldens live --------------------------------------------------------------------

def test_golden_dir_rule(tmp_path, monkeypatch):
    from specengine.golden.store import default_golden_dir

    monkeypatch.delenv("SPECENGINE_GOLDEN_DIR", raising=False)
    repo = tmp_path / "repo"
    spec = write_spec(repo / "specs" / "deep" / "x.yaml", "x: 1\n")
    (repo / "pyproject.toml").write_text("")
    assert default_golden_dir(spec) == repo / "golden"          # project root, no golden yet
    (repo / "golden").mkdir()
    (repo / "specs" / "golden").mkdir()
    assert default_golden_dir(spec) == repo / "specs" / "golden"  # the nearest golden/
    monkeypatch.chdir(repo / "specs" / "deep")
    assert default_golden_dir(Path("x.yaml")) == repo / "specs" / "golden"
    monkeypatch.setenv("SPECENGINE_GOLDEN_DIR", str(tmp_path / "elsewhere"))
    assert default_golden_dir(spec) == tmp_path / "elsewhere"


def test_check_from_inside_specs_finds_the_projects_goldens(gate_repo, monkeypatch):
    monkeypatch.delenv("SPECENGINE_GOLDEN_DIR", raising=False)
    monkeypatch.chdir(gate_repo.root / "specs")
    rc, out, err = run_main("check", "ci-tiny.yaml", "--backend", "cpu")
    assert rc == 0, out + err
    assert not (gate_repo.root / "specs" / "golden").exists()


# --- terminal columns per kind, near-tie branch ------------------------------------------------

def _run(cases, name="s") -> RunResult:
    side = Side(backend="cpu", runtime="torch", device="cpu", dtype="float32")
    return RunResult(spec_name=name, spec_path="s.yaml", command="check", candidate=side,
                     reference=side, comparison="cross-backend", reference_kind="golden",
                     cases=cases)


def test_terminal_columns_follow_the_kind():
    from specengine.report import render_terminal

    emb = CaseResult(id="e", status="pass", checks=[Check("pooled", "pass", "", {
        "cosine_min": 0.9999871, "max_abs_err": 0.00123, "max_rel_err": 0.0456})])
    ops = CaseResult(id="o", status="pass", checks=[Check("out", "pass", "", {
        "cosine_min": 0.99999, "max_abs_err": 0.5, "dtype_error_ratio": 3.25})])
    text = render_terminal([_run([emb], "emb"), _run([ops], "ops")])
    emb_block, ops_block = text.split("\n\n")[:2]
    assert "min cos" in emb_block and "max rel" in emb_block and "KL mean" not in emb_block
    assert "0.999987" in emb_block and "0.0456" in emb_block
    assert "err÷step" in ops_block and "3.25×" in ops_block and "—" not in ops_block


def test_near_tie_branch_is_explained_everywhere():
    from specengine.report import render_html, render_markdown, render_terminal

    case = CaseResult(id="tie", status="fail", divergence_step=0,
                      golden_tokens=[" Paris"], candidate_tokens=[" the"],
                      checks=[Check("divergence", "pass", "step 0: near-tie"),
                              Check("expect.contains", "fail", "'Paris' not in ' the'")])
    for text in (render_terminal([_run([case])]), render_markdown([_run([case])]),
                 render_html([_run([case])])):
        assert "near-tie at step 0" in text and "expect.contains" in text
    case.checks[0].status = "fail"          # a real divergence: no such hint
    assert "near-tie at step" not in render_terminal([_run([case])])


def test_terminal_bar_names_the_running_case(gate_repo):
    rc, out, err = _check(gate_repo, env={"SPECENGINE_PROGRESS": "bar"})
    assert rc == 0, out + err
    for cid in ("hello", "chat", "count"):
        assert "check ci-tiny on cpu" in err and cid in err, err[-2000:]
    assert "[1/3]" not in err                      # bar mode: no per-case lines


def test_library_progress_bars_are_silenced(gate_repo):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    rc, _, _ = _check(gate_repo, env={"SPECENGINE_PROGRESS": "lines"})   # progress on
    assert rc == 0
    assert not hf_logging.is_progress_bar_enabled()


def test_check_dir_skips_yaml_that_is_not_a_spec(gate_repo, tmp_path):
    specs = tmp_path / "specs"
    write_spec(specs / "ci-tiny.yaml", GATE_SPEC)
    write_spec(specs / "notes.yaml", "# some other YAML\nfoo: 1\n")
    rc, out, err = run_main("check", specs, "--backend", "cpu", "--golden-dir", gate_repo.golden)
    assert rc == 0, out + err
    assert "notes" not in out + err
    rc, out, err = run_main("check", specs / "notes.yaml", "--backend", "cpu")
    assert rc == 2 and "notes.yaml" in err               # named explicitly: an error
