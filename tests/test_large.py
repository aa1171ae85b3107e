"""Large inputs: a 1,000-case spec validates in under a second, its golden grows linearly
with the cases, a 100 KB prompt is refused with the numbers, and oversized or explosive
YAML is refused quickly. The timings are printed in the terminal summary.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import pytest

from fault_backend import publish_figures, run_cli
from helpers import TINY_MODEL, assert_clean_error, cli, write_spec
from specengine.kinds.causal_lm.golden import build_golden, load_data, load_golden
from specengine.golden.store import golden_path, write_golden
from specengine.spec import load_spec

FIGURES: dict = {}

HEAD = """\
specengine: 1
name: NAME
""" + TINY_MODEL + """defaults:
  max_new_tokens: NEW
  determinism: {runs: 1}
cases:
"""


def spec_text(n: int, name: str = "large", new: int = 8) -> str:
    body = "".join(
        f"  - id: case-{i:04d}\n"
        f"    prompt: \"Prompt number {i}: the quick brown fox jumps over the lazy dog\"\n"
        f"    expect: {{contains: 'fox'}}\n"
        f"    tags: [bulk, group-{i % 7}]\n"
        + ("    tolerance: {half: {kl_max: 0.2}}\n" if i % 5 == 0 else "")
        for i in range(n))
    return HEAD.replace("NAME", name).replace("NEW", str(new)) + body


@pytest.fixture(scope="module", autouse=True)
def _figures(request):
    yield
    publish_figures(request.config, "large", FIGURES)


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_thousand_case_spec_validates_in_under_a_second(tmp_path):
    path = write_spec(tmp_path / "big.yaml", spec_text(1000))
    load_spec(path)                                   # imports and schema loading done
    wall, cpu = [], []
    for _ in range(3):
        w0, c0 = time.perf_counter(), time.process_time()
        spec = load_spec(path)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    assert len(spec.cases) == 1000 and spec.cases[999].id == "case-0999"
    assert spec.cases[5].limits("half").values.kl_max == 0.2
    assert spec.cases[6].limits("half").values.kl_max == 0.05
    # CPU time: what the validator costs, whatever else shares the machine
    assert min(cpu) < 1.0, cpu

    c0, w0 = _cpu_children(), time.perf_counter()
    result = cli("validate", path)
    sub_wall, sub_cpu = time.perf_counter() - w0, _cpu_children() - c0
    assert result.rc == 0 and "1000 cases" in result.out, result.text
    assert sub_cpu < 3.0, sub_cpu                    # interpreter start and imports included

    tabbed = write_spec(tmp_path / "tabbed.yaml", spec_text(1000).replace(
        "Prompt number 1:", "Prompt\tnumber 1:"))   # a raw tab inside a quoted prompt
    c0 = time.process_time()
    load_spec(tabbed)                                 # a tab: the pure-Python YAML path
    slow_cpu = time.process_time() - c0
    FIGURES["1,000-case spec (144 KB) load + validate"] = (
        f"{min(cpu):.2f} s CPU / {min(wall):.2f} s wall in-process (best of 3); "
        f"`specengine validate` {sub_cpu:.2f} s CPU / {sub_wall:.2f} s wall including "
        f"interpreter start; {slow_cpu:.2f} s CPU when it holds a tab (pure-Python YAML)")


def test_golden_size_is_linear_in_the_cases(tmp_path):
    """Record 25 real cases, then write goldens of 100 and 1,000 cases made of those
    records (distinct ids): the file grows linearly and loads back verified."""
    spec = write_spec(tmp_path / "s.yaml", spec_text(25, name="lin", new=3))
    start = time.perf_counter()
    # the seeded model never writes the cases' 'fox': recorded with those marked
    result = run_cli("record-golden", spec, "--golden-dir", tmp_path / "g",
                     "--allow-failing-expectations")
    record_s = time.perf_counter() - start
    assert result.rc == 0, result.text
    real = load_data(tmp_path / "g" / "lin" / "cpu.json", "lin")
    records = list(real["cases"].values())
    sizes, loads = {}, {}
    for n in (100, 1000):
        cases = {f"case-{i:04d}": records[i % len(records)] for i in range(n)}
        data = build_golden(f"lin-{n}", "cpu", real["model"]["fingerprint"],
                            real["model"]["source"], real["recorded_with"], cases)
        path = golden_path(tmp_path / "g", f"lin-{n}", "cpu")
        write_golden(path, data)
        sizes[n] = path.stat().st_size
        c0 = time.process_time()
        assert len(load_golden(path, f"lin-{n}").cases) == n
        loads[n] = time.process_time() - c0
    ratio = sizes[1000] / sizes[100]
    assert 9.5 < ratio < 10.5, sizes                 # linear: no index, no quadratic part
    lines = (tmp_path / "g" / "lin-1000" / "cpu.json").read_text().count("\n")
    FIGURES["golden size"] = (
        f"100 cases {sizes[100] / 1e3:.0f} KB, 1,000 cases {sizes[1000] / 1e3:.0f} KB "
        f"(x{ratio:.2f}, {sizes[1000] / 1000:.0f} bytes and {lines / 1000:.0f} lines per case "
        f"of 3 steps x top-10); load + verify {loads[100]:.2f} s / {loads[1000]:.2f} s CPU; "
        f"25 real cases recorded in {record_s:.1f} s")


def test_hundred_kilobyte_prompt_is_refused_clearly(tmp_path):
    prompt = ("All work and no play makes Jack a dull boy. " * 2400)[:100_000]
    text = HEAD.replace("NAME", "huge-prompt").replace("NEW", "4") + (
        "  - id: short\n    prompt: \"Hello\"\n"
        f"  - id: huge\n    prompt: \"{prompt}\"\n")
    spec = write_spec(tmp_path / "huge.yaml", text)
    start = time.perf_counter()
    assert run_cli("validate", spec).rc == 0          # valid as a spec
    validate_s = time.perf_counter() - start
    start = time.perf_counter()
    line = assert_clean_error(run_cli("record-golden", spec, "--golden-dir", tmp_path / "g"), 2)
    record_s = time.perf_counter() - start
    assert f"{spec}:17:5: case 'huge': the prompt is 100001 tokens" in line, line
    assert "context of 256 tokens" in line
    assert not (tmp_path / "g").exists()
    # a golden recorded without the huge case, then the case added: check refuses it too
    write_spec(spec, text.split("  - id: huge")[0])
    assert run_cli("record-golden", spec, "--golden-dir", tmp_path / "g").rc == 0
    write_spec(spec, text)
    line = assert_clean_error(run_cli("check", spec, "--backend", "cpu",
                                      "--golden-dir", tmp_path / "g"), 2)
    assert "case 'huge'" in line
    FIGURES["100 KB prompt"] = (f"validates in {validate_s:.2f} s; record-golden refuses it "
                                f"(100,001 tokens > context 256) in {record_s:.2f} s, exit 2")


@pytest.mark.parametrize("kind", ["alias-bomb", "deep-flow", "deep-block", "oversized", "wide"])
def test_explosive_or_oversized_yaml_is_refused_quickly(tmp_path, kind):
    if kind == "alias-bomb":
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
        text = "\n".join(lines) + "\n"
        fragment = "document too large"
    elif kind == "deep-flow":
        text = "cases: " + "[" * 10_000 + "]" * 10_000 + "\n"
        fragment = "YAML"
    elif kind == "deep-block":
        text = "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n"
        fragment = "nested too deeply"
    elif kind == "oversized":
        text = "# " + "x" * (9 * 1024 * 1024) + "\n"
        fragment = "the limit is"
    else:
        text = "specengine: 1\nname: w\nmodel: {path: m}\ncases: [" + ", ".join(
            f"{{id: c{i}, prompt: p}}" for i in range(5_000)) + "]\n"
        fragment = None
    spec = write_spec(tmp_path / "s.yaml", text)
    start = time.perf_counter()
    result = run_cli("validate", spec)
    elapsed = time.perf_counter() - start
    if fragment is None:
        assert result.rc == 0 and "5000 cases" in result.out, result.text
    else:
        line = assert_clean_error(result, 2)
        assert fragment in line, line
    assert elapsed < 30, elapsed
    FIGURES[f"{kind} YAML"] = f"{'validated' if fragment is None else 'refused'} in {elapsed:.2f} s"
