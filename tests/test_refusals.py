"""Hostile specs and odd files are refused early, and nothing they name is executed.

Test-only runtimes are unknown to the product, `pkg://` imports nothing, non-finite and
out-of-range numbers are refused where they stand, names cannot end in a newline, file
names and arguments reach the terminal and CI logs escaped, only regular files are read
(and never more than the limit), YAML stays fast up to the size limit with `line:col`
on every error, goldens are strict JSON within a size cap, a full disk is one line, and
SIGINT is exit 130 whenever it lands.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import CLI_MAIN, REPO, TINY_MODEL, assert_clean_error, write_spec
from specengine.errors import GoldenError, OutputError, SpecError
from specengine.spec import parse_spec, schema

BASE = """\
specengine: 1
name: advtiny
""" + TINY_MODEL + """defaults:
  max_new_tokens: 3
cases:
  - id: a
    prompt: "Hello"
"""


def _product(*args, cwd=None, env=None, timeout=120):
    """The product as installed (`python -m specengine`), without the suite's runtimes."""
    full = {**os.environ, "SPECENGINE_PROGRESS": "0", **(env or {})}
    full.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-m", "specengine", *map(str, args)], cwd=cwd,
                          env=full, capture_output=True, text=True, timeout=timeout)
    from helpers import Result

    return Result(proc.returncode, proc.stdout, proc.stderr)


# -- 1. foreign code --------------------------------------------------------------------

def test_test_runtimes_are_unknown_to_the_product_and_nothing_from_cwd_runs(tmp_path):
    marker = tmp_path / "ran"
    for module in ("fault_backend", "slow_backend"):
        (tmp_path / f"{module}.py").write_text(
            f"open({str(marker)!r}, 'w').write('{module}')\n")
    for runtime in ("test-fault", "test-slow"):
        spec = write_spec(tmp_path / f"{runtime}.yaml", BASE + f"""\
backends:
  evil: {{runtime: {runtime}}}
""")
        for command in (("validate", spec),
                        ("record-golden", spec, "--backend", "evil", "--golden-dir",
                         tmp_path / "g")):
            line = assert_clean_error(_product(*command, cwd=tmp_path), 2)
            assert f"unknown runtime '{runtime}'" in line and ":" in line, line
    assert not marker.exists()


def test_registered_runtimes_only_through_python():
    from specengine.backends import registry

    assert "test-fault" not in registry.RUNTIMES.values()
    assert not any(runtime.startswith("test-") for runtime, _ in registry.RUNTIMES)
    assert "test-fault" in registry.known_runtimes()          # the suite registered it
    with pytest.raises(ValueError):
        registry.register_runtime("torch", "x:Y")


@pytest.fixture
def planted_package(tmp_path, monkeypatch):
    root = tmp_path / "site"
    marker = tmp_path / "imported"
    pkg = root / "evilpkg"
    (pkg / "sub" / "x").mkdir(parents=True)
    code = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    (pkg / "__init__.py").write_text(code)
    (pkg / "sub" / "__init__.py").write_text(code)
    monkeypatch.syspath_prepend(str(root))
    return pkg, marker


def test_pkg_paths_import_nothing(planted_package):
    from specengine.loading.sources import resolve_path
    from specengine.spec import ModelSpec

    pkg, marker = planted_package
    model = ModelSpec(source="path", where="s.yaml:5:9")
    assert resolve_path("pkg://evilpkg/sub/x", model) == pkg / "sub" / "x"
    from specengine.errors import ModelSourceError

    for value in ("pkg://evilpkg.sub/x", "pkg://this.x/y", "pkg://evilpkg/../../etc"):
        with pytest.raises(ModelSourceError):
            resolve_path(value, model)
    assert not marker.exists()
    assert "evilpkg" not in sys.modules and "this" not in sys.modules


def test_pkg_dotted_name_in_a_spec_runs_nothing(planted_package, tmp_path):
    pkg, marker = planted_package
    spec = write_spec(tmp_path / "s.yaml", BASE.replace(TINY_MODEL, """\
model:
  path: "pkg://evilpkg.sub/x"
  tokenizer: bytes
"""))
    result = _product("record-golden", spec, "--golden-dir", tmp_path / "g",
                      env={"PYTHONPATH": str(pkg.parent)})
    line = assert_clean_error(result, 2)
    assert "top-level package" in line
    assert not marker.exists()
    zen = _product("record-golden", write_spec(tmp_path / "z.yaml", spec.read_text().replace(
        "evilpkg.sub", "this.x")), "--golden-dir", tmp_path / "g")
    assert "Beautiful is better" not in zen.text
    assert_clean_error(zen, 2)


# -- 2. numbers -------------------------------------------------------------------------

NUMBER_SITES = [
    ("defaults:\n  max_new_tokens: 3\n", "defaults:\n  max_new_tokens: 3\n  tolerance: {half: {kl_mean_max: VALUE}}\n"),
    ("defaults:\n  max_new_tokens: 3\n", "defaults:\n  max_new_tokens: 3\n  tolerance: {half: {kl_max: VALUE}}\n"),
    ("defaults:\n  max_new_tokens: 3\n", "defaults:\n  max_new_tokens: 3\n  tolerance: {half: {top1_agreement_min: VALUE}}\n"),
    ("defaults:\n  max_new_tokens: 3\n", "defaults:\n  max_new_tokens: 3\n  tolerance: {half: {logprob_atol: VALUE}}\n"),
    ("defaults:\n  max_new_tokens: 3\n", "defaults:\n  max_new_tokens: 3\n  tolerance: {half: {divergence: {max_margin: VALUE}}}\n"),
    ("defaults:\n  max_new_tokens: 3\n", "defaults:\n  max_new_tokens: 3\n  timeout_s: VALUE\n"),
    ("defaults:\n  max_new_tokens: 3\n", "defaults:\n  max_new_tokens: 3\n  determinism: {atol: VALUE}\n"),
    ("    seed: 3\n", "    seed: VALUE\n"),
    ("    init_std: 0.4\n", "    init_std: VALUE\n"),
    ("    prompt: \"Hello\"\n", "    prompt: \"Hello\"\n    tolerance: {half: {kl_mean_max: VALUE}}\n"),
    ("    prompt: \"Hello\"\n", "    prompt: \"Hello\"\n    expect: {min_prob: VALUE}\n"),
    ("cases:\n", "perf: {budgets: {cpu: {ttft_ms: {p50: VALUE}}}, regression_max: 0.1}\ncases:\n"),
    ("cases:\n", "perf: {regression_max: VALUE}\ncases:\n"),
    ("cases:\n", "backends:\n  srv: {runtime: openai, options: {base_url: 'http://x', timeout_s: VALUE}}\ncases:\n"),
]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
@pytest.mark.parametrize("site", range(len(NUMBER_SITES)))
def test_non_finite_numbers_are_refused_where_they_stand(value, site):
    old, new = NUMBER_SITES[site]
    assert old in BASE
    text = BASE.replace(old, new.replace("VALUE", value), 1)
    line_no = next(i for i, line in enumerate(text.splitlines(), 1) if value in line)
    with pytest.raises(SpecError) as info:
        parse_spec(text, "s.yaml")
    assert info.value.line == line_no, str(info.value)
    assert "finite" in str(info.value) or "not" in str(info.value)


@pytest.mark.parametrize("old,new,fragment", [
    ("    seed: 3\n", "    seed: 99999999999999999999999\n", "out of range"),
    ("    seed: 3\n", "    seed: 4294967296\n", "maximum"),
    ("defaults:\n", "defaults:\n  timeout_s: 1e300\n", "maximum"),
    ("defaults:\n", "defaults:\n  timeout_s: 0\n", "minimum"),
    ("cases:\n", "perf: {runs: 100000000}\ncases:\n", "maximum"),
    ("    prompt: \"Hello\"\n", "    prompt: \"Hello\"\n    expect: {token_ids: [99999999999]}\n", "maximum"),
])
def test_out_of_range_numbers_are_refused(old, new, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(BASE.replace(old, new, 1), "s.yaml")
    assert fragment in str(info.value) and info.value.line, str(info.value)


def test_nan_tolerance_on_the_command_line_is_exit_2(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", BASE.replace(
        "  max_new_tokens: 3\n", "  max_new_tokens: 3\n  tolerance: {half: {kl_mean_max: .nan}}\n"))
    line = assert_clean_error(_product("validate", spec), 2)
    assert re.match(r".*s\.yaml:13:35: ", line), line


# -- 3. names ----------------------------------------------------------------------------

def _patterns(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item)


def test_every_schema_pattern_is_anchored_at_both_ends_of_the_string():
    patterns = list(_patterns(schema("spec")))
    assert len(patterns) >= 10
    for pattern in patterns:
        assert pattern.startswith("\\A") and pattern.endswith("\\Z"), pattern
        assert "$" not in pattern, pattern


@pytest.mark.parametrize("old,new", [
    ("name: advtiny\n", 'name: "advtiny\\n"\n'),
    ("  - id: a\n", '  - id: "a\\n"\n'),
    ("cases:\n", 'backends:\n  "mine\\n": {runtime: torch}\ncases:\n'),
    ("cases:\n", 'backends:\n  mine: {runtime: torch, device: "cpu\\n"}\ncases:\n'),
    ("cases:\n", 'backends:\n  mine: {runtime: "torch\\n"}\ncases:\n'),
    ("    model_type: llama\n", '    model_type: "llama\\n"\n'),
    ("    prompt: \"Hello\"\n", '    prompt: "Hello"\n    tags: ["t\\n"]\n'),
    ("name: advtiny\n", 'name: "adv\\x1btiny"\n'),
])
def test_names_ending_in_a_newline_or_holding_controls_are_refused(old, new):
    with pytest.raises(SpecError) as info:
        parse_spec(BASE.replace(old, new, 1), "s.yaml")
    assert info.value.line, str(info.value)


# -- 4. terminal and CI output -------------------------------------------------------------

HOSTILE_NAME = "evil\n::warning file=x.yaml,line=1::owned\x1b]0;title\x07\x1b[2J.yaml"


def _no_raw_controls(text: str) -> None:
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f]", text), repr(text)
    assert not any(line.startswith("::") for line in text.splitlines()), text


def test_file_names_and_arguments_are_escaped_on_the_terminal(tmp_path):
    good = write_spec(tmp_path / HOSTILE_NAME, BASE)
    result = _product("validate", good)
    assert result.rc == 0, result.text
    _no_raw_controls(result.text)
    assert "\\x1b" in result.out and "\\x0a" in result.out
    for args in (("validate", tmp_path / ("missing" + HOSTILE_NAME)),
                 ("check", good, "--backend", "x\x1b[2J\n::error::y"),
                 ("report", tmp_path / HOSTILE_NAME, "--annotations", "x\x1b\n::e")):
        result = _product(*args)
        assert result.rc == 2, result.text
        _no_raw_controls(result.text)


def test_github_annotations_escape_every_control_character():
    from specengine.report.annotations import workflow_command

    line = workflow_command("error", "msg\x1b[31m\r\n::warning::x\x07",
                            file="a\x1b,b:c\n::d.yaml", line=3, title="t\x00")
    assert line.startswith("::error file=") and "\n" not in line and "\r" not in line
    assert not re.search("[\x00-\x1f\x7f]", line), repr(line)
    assert "file=a%1B%2Cb%3Ac%0A%3A%3Ad.yaml" in line and "%00" in line


# -- 5. special files ------------------------------------------------------------------

@pytest.fixture
def special_files(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    (tmp_path / "random.yaml").symlink_to("/dev/urandom")
    (tmp_path / "loop-a.yaml").symlink_to(tmp_path / "loop-b.yaml")
    (tmp_path / "loop-b.yaml").symlink_to(tmp_path / "loop-a.yaml")
    with open(tmp_path / "huge.yaml", "wb") as fh:     # sparse: 1 GiB, nothing on disk
        fh.truncate(1 << 30)
    (tmp_path / "folder.yaml").mkdir()
    return tmp_path


@pytest.mark.parametrize("name,fragment", [
    ("fifo.yaml", "FIFO"), ("zero.yaml", "character device"),
    ("random.yaml", "character device"), ("loop-a.yaml", "symbolic link loop"),
    ("huge.yaml", "1073741824 bytes; the limit is"), ("folder.yaml", "folder"),
])
def test_special_files_are_refused_at_once(special_files, name, fragment):
    from specengine.spec import load_spec

    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_spec(special_files / name)
    assert time.perf_counter() - start < 2
    assert fragment in str(info.value), str(info.value)


def test_special_files_on_the_command_line(special_files):
    for name in ("fifo.yaml", "zero.yaml", "random.yaml", "loop-a.yaml", "huge.yaml"):
        line = assert_clean_error(_product("validate", special_files / name, timeout=30), 2)
        assert name in line


def test_a_growing_file_is_read_no_further_than_the_limit(tmp_path):
    from specengine.files import FileRefused, read_limited

    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert read_limited(path, 100) == b"x" * 100
    with pytest.raises(FileRefused):
        read_limited(path, 99)


# -- 6./7. YAML ----------------------------------------------------------------------------

def test_yaml_at_the_size_limit_is_refused_fast(tmp_path):
    from specengine.spec import MAX_SPEC_BYTES, load_spec

    head = BASE + "x:\n"
    lines, size, n = [], len(head), 0
    while size < MAX_SPEC_BYTES - 40:
        line = f"  k{n}: {n}\n"
        lines.append(line)
        size += len(line)
        n += 1
    path = tmp_path / "big.yaml"
    path.write_text(head + "".join(lines))
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_spec(path)
    elapsed = time.perf_counter() - start
    assert "too large" in str(info.value) and info.value.line > 1000, str(info.value)
    assert elapsed < 15, elapsed          # 119 s before the event pre-scan (loaded machine)
    # the slow parser's path (a tab forces it) is bounded the same way
    path.write_text(head.replace("Hello", "Hel\tlo") + "".join(lines))
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "too large" in str(info.value) and time.perf_counter() - start < 60


LAST = BASE.count("\n") + 1      # the line after BASE


@pytest.mark.parametrize("text,line,col,fragment", [
    (BASE.replace('prompt: "Hello"', 'prompt: "Hel\x00lo"'), LAST - 1, 17, "#x0000"),
    (BASE.replace("name: advtiny", "name: adv\x00tiny"), 2, 10, "#x0000"),
    (BASE.replace("name: advtiny", "name: adv\ttiny\x00"), 2, 15, "#x0000"),
    (BASE + "x: " + "[" * 100000 + "\n", LAST, 68, "nested too deeply"),
    (BASE + "x: " + "{a: " * 5000 + "\n", LAST, 260, "nested too deeply"),
    (BASE + "x:\n" + "".join("  " * i + "- \n" for i in range(200)), None, None, "nested"),
])
def test_every_yaml_error_has_line_and_column(text, line, col, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(text, "s.yaml")
    error = info.value
    assert error.line and error.col, str(error)
    assert fragment in str(error), str(error)
    if line:
        assert error.line == line, str(error)
    if col:
        assert error.col == col, str(error)


# -- 8. goldens -----------------------------------------------------------------------

def _golden_data():
    from specengine.kinds.causal_lm.golden import build_golden, step_record

    step = step_record([5, 3], [-0.1, -2.5], -3.0)
    cases = {"a": {"hash": "0" * 64, "prompt": "p", "prompt_ids": [1, 2], "output_ids": [5],
                   "output_text": "x", "settings": {}, "steps": [step]}}
    return build_golden("demo", "cpu", "sha256:abc", "synthetic", {"backend": "cpu"}, cases)


def test_golden_with_a_key_twice_is_refused(tmp_path):
    from specengine.golden.store import dumps
    from specengine.kinds.causal_lm.golden import load_golden

    text = dumps(_golden_data())
    doubled = text.replace('"cases": {', '"cases": {}, "cases": {', 1)
    assert doubled != text
    path = tmp_path / "demo" / "cpu.json"
    path.parent.mkdir()
    path.write_text(doubled)
    with pytest.raises(GoldenError, match="'cases' twice"):
        load_golden(path, "demo")


def test_golden_size_cap_symlink_loop_and_special_files(tmp_path, monkeypatch):
    from specengine import files as fileio
    from specengine.kinds.causal_lm.golden import load_golden
    from specengine.golden.store import write_golden

    path = tmp_path / "demo" / "cpu.json"
    write_golden(path, _golden_data())
    load_golden(path, "demo")
    monkeypatch.setattr(fileio, "MAX_GOLDEN_BYTES", 100)
    monkeypatch.setattr(fileio.read_golden_json, "__defaults__", ("golden", 100))
    with pytest.raises(GoldenError, match="the limit is 100"):
        load_golden(path, "demo")
    monkeypatch.undo()
    loop = tmp_path / "loop" / "cpu.json"
    loop.parent.mkdir()
    loop.symlink_to(loop)
    with pytest.raises(GoldenError, match="symbolic link loop"):
        load_golden(loop, "loop")
    zero = tmp_path / "zero" / "cpu.json"
    zero.parent.mkdir()
    zero.symlink_to("/dev/zero")
    with pytest.raises(GoldenError, match="character device"):
        load_golden(zero, "zero")


def test_all_minus_inf_golden_is_refused_without_numpy_warnings(tmp_path):
    """A golden whose log-probabilities are all -inf (JSON -Infinity, hash recomputed)
    is refused as corrupted; run under -W error, so a numpy warning fails the test."""
    from specengine.golden.store import content_hash, dumps

    data = _golden_data()
    data["cases"]["a"]["steps"][0]["logprobs"] = [float("-inf")] * 2
    data["content_sha256"] = content_hash(data)
    path = tmp_path / "demo" / "cpu.json"
    path.parent.mkdir()
    path.write_text(dumps(data))
    code = ("import sys; from specengine.kinds.causal_lm.golden import load_golden\n"
            "from specengine.errors import GoldenError\n"
            "try:\n    load_golden(sys.argv[1], 'demo')\n"
            "except GoldenError as e:\n    print(e.one_line()); sys.exit(2)\n")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code, str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "not finite" in proc.stdout and not proc.stderr, proc.stderr


# -- 9. full disk ----------------------------------------------------------------------

def test_full_disk_while_writing_a_golden_keeps_the_old_one(tmp_path, monkeypatch):
    from specengine.golden.store import write_golden

    path = tmp_path / "demo" / "cpu.json"
    write_golden(path, _golden_data())
    before = path.read_bytes()

    def full(fd):
        raise OSError(28, "No space left on device")

    from specengine import files as cache

    monkeypatch.setattr(cache.os, "fsync", full)
    with pytest.raises(OutputError) as info:
        write_golden(path, {**_golden_data(), "spec": "other"})
    monkeypatch.undo()
    message = info.value.one_line()
    assert str(path) in message and "No space left on device" in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["cpu.json"]


def test_full_disk_on_one_report_still_writes_the_others(tmp_path, monkeypatch):
    from fault_backend import run_cli
    from specengine.report import files

    spec = write_spec(tmp_path / "s.yaml", BASE)
    gdir = tmp_path / "g"
    assert run_cli("record-golden", spec, "--golden-dir", gdir).rc == 0
    real_fsync, calls = os.fsync, []

    def fsync(fd):                      # reports are written json, markdown, html, junit
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    result = run_cli("check", spec, "--backend", "cpu", "--golden-dir", gdir,
                     "--json", tmp_path / "r.json", "--html", tmp_path / "r.html",
                     "--junit", tmp_path / "r.xml")
    monkeypatch.undo()
    line = assert_clean_error(result, 2)
    assert str(tmp_path / "r.html") in line and "No space left" in line, line
    assert json.loads((tmp_path / "r.json").read_text())
    assert (tmp_path / "r.xml").stat().st_size > 0
    assert not (tmp_path / "r.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # a report path whose folder cannot exist is the same one line
    result = run_cli("check", spec, "--backend", "cpu", "--golden-dir", gdir,
                     "--junit", "/dev/null/r.xml")
    assert "/dev/null/r.xml" in assert_clean_error(result, 2)


# -- 10. SIGINT after the work is done -----------------------------------------------------

SLOW_EXIT = """\
import sys, time
sys.argv[0] = {cli!r}
sys.path.insert(0, {tests!r})
import runtimes; runtimes.register()
import specengine.cli as cli
real = cli.main
def main(argv=None):
    code = real(argv)
    sys.stdout.flush()
    time.sleep(3)           # the moment after "recorded": flushing, shutting down
    return code
cli.main = main
cli.entry()
"""


def test_sigint_right_after_recorded_is_exit_130_one_line(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", BASE)
    code = SLOW_EXIT.format(cli=str(CLI_MAIN), tests=str(CLI_MAIN.parent))
    proc = subprocess.Popen([sys.executable, "-c", code, "record-golden", str(spec),
                             "--golden-dir", str(tmp_path / "g")],
                            env={**os.environ, "SPECENGINE_PROGRESS": "0"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for first in proc.stdout:
        if first.startswith("recorded"):
            break
    assert first.startswith("recorded"), first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == ["specengine: interrupted"]
