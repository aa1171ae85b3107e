"""Numeric classes end to end, as a user runs them:

- ports with their own modeling code (a model folder with `auto_map`, the reference's
  weights bit for bit) run as float32 candidates against the shipped stand-in specs and
  their committed goldens: a gated-attention gate skipped in one layer (qwen3_5) and a
  shared expert added without its gate (qwen3_5_moe) fail every case under the float32
  class (limits relative to the reference's recorded float32 noise), the clean port
  passes; the half block, sized on bf16 noise, never judges them;
- a port that ignores the attention mask fails batch invariance on every case, the
  longest one included (every case runs left-padded);
- `check --localize all` warns about a passing case whose layers show a jump;
- on the real SmolLM2: a reference that fails its own expectation is refused, recorded
  only with --allow-failing-expectations, and then reported as failing on the reference
  too; `--noise half` records the reference's own bf16 error, a relative half limit
  judges cpu-bf16 by it and every report shows candidate error ÷ noise; a relative
  limit whose noise the golden lacks is exit 2 naming `record-golden --noise`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REPO, SMOLLM2_SPEC, assert_clean_error, cli, load_json, write_spec
from port_bugs import candidate_backend, port_folder, with_backends

TINY = REPO / "specs" / "tiny"
GOLDEN = REPO / "golden"


def _hf_dir(spec: Path) -> Path:
    from specengine.loading.sources import resolve
    from specengine.spec import load_spec

    return resolve(load_spec(spec).model).hf_dir


def _cases(path: Path) -> list[dict]:
    return [c for run in load_json(path)["runs"] for c in run["cases"]]


def _check(case: dict, name: str) -> dict:
    return next(c for c in case["checks"] if c["name"] == name)


@pytest.fixture(scope="module")
def ports(tmp_path_factory) -> dict[str, Path]:
    """Spec copies of two stand-ins with their ports as backends: `bug` (the planted
    bug), `clean` (the same code without it)."""
    root = tmp_path_factory.mktemp("ports")
    bugs = {"qwen35-tiny": ("attn_gate_skip", 7), "intern-s2-tiny": ("shared_expert_gate_skip", 3)}
    out = {}
    for name, (bug, layer) in bugs.items():
        spec = TINY / f"{name}.yaml"
        base = _hf_dir(spec)
        entries = (candidate_backend(port_folder(base, root / f"{name}-bug", bug, layer), "bug")
                   + candidate_backend(port_folder(base, root / f"{name}-clean"), "clean"))
        text = with_backends(spec.read_text("utf-8"), entries)
        out[name] = write_spec(root / f"{name}.yaml",
                               text.replace("determinism: {runs: 2}", "determinism: {runs: 1}"))
    return out


@pytest.mark.parametrize("backend", ["bug", "clean"])
def test_float32_ports_are_judged_by_the_float32_class(ports, backend, tmp_path):
    out = tmp_path / "r.json"
    res = cli("check", *ports.values(), "--backend", backend, "--golden-dir", GOLDEN,
              "--json", out)
    runs = load_json(out)["runs"]
    assert {r["tolerance_class"] for r in runs} == {"float32"}
    assert all(r["candidate"]["modeling"]["folder_code_ran"] for r in runs)
    cases = _cases(out)
    assert len(cases) == 12
    for case in cases:
        tf = _check(case, "teacher-forced")
        sources = tf["metrics"]["limit_sources"]
        assert "× float32 noise" in sources["kl_mean_max"], sources
        assert tf["metrics"]["tolerance_set"].startswith("float32: kl_mean_max"), tf["metrics"]
        assert "noise_ratio" in tf["metrics"]
    if backend == "bug":
        assert res.rc == 1, res.text
        assert all(c["status"] == "fail" for c in cases), [(c["id"], c["status"]) for c in cases]
        # under the spec's half block (bf16-sized) these numbers would have passed
        assert all(_check(c, "teacher-forced")["metrics"]["kl_mean"] < 0.02 for c in cases
                   if c["id"] != "python-fn")
        assert "÷noise" in res.out
    else:
        assert res.rc == 0, res.text
        ratios = [_check(c, "teacher-forced")["metrics"]["noise_ratio"]["kl_mean"] for c in cases]
        assert max(ratios) < 5, ratios          # a clean port sits at the reference's own noise


def test_a_passing_case_with_a_flagged_layer_gets_a_warning(ports, tmp_path):
    spec = ports["qwen35-tiny"]
    text = spec.read_text("utf-8")
    assert "{noise: 10, floor: 3.0e-6}" in text
    loose = write_spec(tmp_path / "loose.yaml", text.replace(
        "      kl_mean_max: {noise: 10, floor: 3.0e-6}\n      kl_max: {noise: 10, floor: 3.0e-5}\n"
        "      logprob_atol: {noise: 10, floor: 2.0e-3}\n",
        "      kl_mean_max: 1.0\n      kl_max: 1.0\n      logprob_atol: 5.0\n"
        "      top1_agreement_min: 0.0\n      divergence: {within_top_k: 10, max_margin: 5.0}\n"))
    out = tmp_path / "r.json"
    res = cli("check", loose, "--backend", "bug", "--golden-dir", GOLDEN, "--case", "capital-fr",
              "--localize", "all", "--json", out)
    assert res.rc == 0, res.text
    run = load_json(out)["runs"][0]
    assert run["cases"][0]["localization"]["first_flagged_name"]
    assert any("passes its limits, but localize flags" in n for n in run["notes"]), run["notes"]
    assert "passes its limits, but localize flags" in res.out


def test_ignored_padding_fails_batch_invariance_on_every_case(tmp_path):
    spec = TINY / "internlm25-tiny.yaml"
    port = port_folder(_hf_dir(spec), tmp_path / "port", "ignore_padding")
    text = with_backends(spec.read_text("utf-8"), candidate_backend(port, "nopad"))
    path = write_spec(tmp_path / "spec.yaml", text.replace(
        "determinism: {runs: 2}", "determinism: {runs: 1, batch_sizes: [2]}"))
    out = tmp_path / "r.json"
    res = cli("check", path, "--backend", "nopad", "--golden-dir", GOLDEN, "--json", out)
    assert res.rc == 1, res.text
    cases = _cases(out)
    for case in cases:
        batch = _check(case, "batch-invariance")
        assert batch["status"] == "fail", (case["id"], batch["message"])
        assert "left-padded" in batch["message"]
        assert "the port's own code" in batch["message"], batch["message"]
        # alone, the port is exact: only the batch sees the bug
        assert _check(case, "teacher-forced")["status"] == "pass"
    longest = max(cases, key=lambda c: c["prompt_length"])
    assert "filler" in _check(longest, "batch-invariance")["message"]


# --- the real SmolLM2: expectations of the reference, its own noise -----------------------

def _smol(tmp_path: Path, tolerance: str = "", expect: str = '{contains: "Berlin"}') -> Path:
    """Two of the embedded spec's cases; capital-fr expects what the model does not say."""
    text = SMOLLM2_SPEC.read_text("utf-8")
    head = text[:text.index("cases:")]
    if tolerance:
        head = head.replace("  determinism: {runs: 2}\n", tolerance + "  determinism: {runs: 1}\n")
    else:
        head = head.replace("determinism: {runs: 2}", "determinism: {runs: 1}")
    body = ("cases:\n  - id: capital-fr\n    prompt: \"The capital of France is\"\n"
            f"    expect: {expect}\n  - id: relativity\n"
            "    prompt: \"The theory of relativity was proposed by\"\n"
            "    expect: {contains: \"Einstein\"}\n")
    return write_spec(tmp_path / "spec.yaml", head + body)


RELATIVE_HALF = ("  tolerance:\n    half:\n      kl_mean_max: {noise: 3, floor: 1.0e-4}\n"
                 "      kl_max: {noise: 3}\n      logprob_atol: {noise: 2}\n")


@pytest.mark.slow
def test_reference_expectations_and_noise_on_smollm2(tmp_path):
    spec = _smol(tmp_path, RELATIVE_HALF)
    gdir = tmp_path / "golden"
    refused = cli("record-golden", spec, "--golden-dir", gdir)
    line = assert_clean_error(refused, 1)
    assert "capital-fr" in line and "Berlin" in line and "--allow-failing-expectations" in line
    assert "relativity" not in line.split("fails its own")[1].split(";")[0]
    assert not (gdir / "smollm2-135m" / "cpu.json").exists()

    rec = cli("record-golden", spec, "--golden-dir", gdir, "--allow-failing-expectations",
              "--noise", "half")
    assert rec.rc == 0, rec.text
    golden = load_json(gdir / "smollm2-135m" / "cpu.json")
    assert golden["cases"]["capital-fr"]["reference_fails"] == ["contains 'Berlin'"]
    assert "reference_fails" not in golden["cases"]["relativity"]
    assert golden["noise"]["half"]["dtype"] == "bfloat16"
    noise = golden["cases"]["capital-fr"]["noise"]["half"]
    assert 0 < noise["prefill"]["kl_mean"] < 0.01 and 0 < noise["decode"]["max_abs_dlogprob"]

    out = tmp_path / "r.json"
    res = cli("check", spec, "--backend", "cpu-bf16", "--golden-dir", gdir, "--json", out,
              "--markdown", tmp_path / "r.md")
    assert res.rc == 0, res.text
    fr = next(c for c in _cases(out) if c["id"] == "capital-fr")
    expect = _check(fr, "expect.contains")
    assert expect["status"] == "not-run" and "fails on the reference too" in expect["message"]
    assert "near-tie" not in " ".join(c["message"] for c in fr["checks"] if c["name"] == "expect.contains")
    tf = _check(fr, "teacher-forced")["metrics"]
    # cpu-bf16 is the half noise run itself: error ÷ noise is 1
    assert tf["noise_ratio"]["kl_mean"] == pytest.approx(1.0, rel=0.01)
    assert tf["tolerance"]["kl_mean_max"] == pytest.approx(max(3 * noise["prefill"]["kl_mean"],
                                                               1e-4), rel=1e-6)
    assert "3 × half noise" in tf["limit_sources"]["kl_mean_max"]
    markdown = (tmp_path / "r.md").read_text("utf-8")
    assert "÷ reference noise" in markdown and "1×" in markdown

    # a float32 comparison with relative float32 limits needs the float32 noise: exit 2
    f32 = _smol(tmp_path, RELATIVE_HALF.replace("half:", "float32:"))
    line = assert_clean_error(cli("check", f32, "--backend", "cpu", "--golden-dir", gdir), 2)
    assert "record-golden" in line and "--noise float32" in line
