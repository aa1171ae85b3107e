"""Served deployments: greedy means greedy, quantization is declared — the parts that need
no server (pure functions, spec validation). The real servers are in
test_openai_backend.py and test_llamacpp_server.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from helpers import SMOLLM2_SPEC, cli, write_spec
from specengine.backends.openai.dialects import (describe_quantization, describe_sampling,
                                                 neutral_sampling, quantization_in_name)
from specengine.backends.openai.tokens import align_echo
from specengine.kinds.causal_lm.greedy import greedy_check, greedy_note, greedy_steps
from specengine.results import CaseResult


def test_greedy_steps_finds_the_first_token_that_is_not_top1():
    ids = np.array([[5, 6, 7], [8, 9, 1], [2, 3, 4]])
    lp = np.array([[-0.1, -2.0, -3.0], [-0.5, -0.6, -4.0], [-0.2, -0.9, -5.0]], np.float32)
    assert greedy_steps([5, 8, 2], ids, lp).passed
    res = greedy_steps([5, 9, 2], ids, lp)           # step 1 took the runner-up
    assert (res.step, res.chosen_id, res.top1_id, res.violations) == (1, 9, 8, 1)
    assert res.chosen_logprob == pytest.approx(-0.6)
    res = greedy_steps([5, 8, 99], ids, lp)          # outside the returned top-k
    assert res.step == 2 and res.chosen_logprob is None
    # an exact tie (within rounding) is greedy; a stop token past the arrays is not judged
    tie = np.array([[-0.7, -0.7004, -3.0]], np.float32)
    assert greedy_steps([6, 0], np.array([[5, 6, 7]]), tie).passed


class _Gen:
    def __init__(self, ids, top_ids, top_lp):
        self.output_ids, self.topk_ids, self.topk_logprobs = ids, top_ids, top_lp

    @property
    def has_logprobs(self):
        return self.topk_logprobs is not None


class _Served:
    greedy_causes = "a repeat penalty"
    unsupported = {"logprobs": "the server returned none"}


def test_greedy_check_names_the_step_and_the_causes():
    ids = np.array([[5, 6], [8, 9]])
    lp = np.array([[-0.1, -2.0], [-0.5, -0.9]], np.float32)
    check = greedy_check(_Served(), _Gen([5, 9], ids, lp), lambda i: f"<{i}>")
    assert check.status == "fail"
    assert check.message.startswith("server not greedy at step 1: it returned '<9>'")
    assert "top-1 was '<8>'" in check.message and "a repeat penalty" in check.message
    assert check.metrics["first_step"] == 1
    ok = greedy_check(_Served(), _Gen([5, 8], ids, lp), str)
    assert ok.status == "pass" and "2 steps" in ok.message
    assert greedy_check(_Served(), _Gen([5, 8], None, None), str).status == "not-run"
    in_process = SimpleNamespace(greedy_causes=None, unsupported={})   # Backend's default
    assert greedy_check(in_process, _Gen([5, 9], ids, lp), str) is None   # torch: by construction

    case = CaseResult(id="c1", status="fail")
    case.checks.append(check)
    note = greedy_note("served", [case, CaseResult(id="c2", status="pass")])
    assert "not greedy" in note and "c1 (step 1)" in note and "c2" not in note
    assert greedy_note("served", [CaseResult(id="c2", status="pass")]) is None


def test_neutral_sampling_per_dialect():
    vllm, llama, std = (neutral_sampling(d) for d in ("vllm", "llamacpp", "openai"))
    for fields in (vllm, llama, std):
        assert fields["temperature"] == 0 and fields["top_p"] == 1.0
        assert fields["frequency_penalty"] == 0 and fields["presence_penalty"] == 0
    assert vllm["repetition_penalty"] == 1.0 and vllm["top_k"] == -1 and vllm["min_p"] == 0
    assert llama["repeat_penalty"] == 1.0 and llama["top_k"] == 0 and llama["min_p"] == 0
    assert llama["mirostat_mode"] == 0 and llama["dry_multiplier"] == 0
    assert "top_k" not in std and "repetition_penalty" not in std   # standard fields only
    assert "logit_bias" not in vllm   # no bias is sent at all
    line = describe_sampling(llama, {"repeat_penalty": 1.3, "ignore_eos": False}, True)
    assert line.startswith("neutral:") and "repeat_penalty=1.3" in line and "extra_body sets" in line
    assert "server defaults apply" in describe_sampling({"temperature": 0}, {}, False)


def test_quantization_in_a_model_name():
    assert quantization_in_name("/m/SmolLM2-135M-Instruct.Q4_1.gguf") == "Q4_1"
    assert quantization_in_name("qwen2.5-7b-instruct-q4_k_m.gguf") == "Q4_K_M"
    assert quantization_in_name("Qwen/Qwen3-8B-FP8") == "FP8"
    assert quantization_in_name("meta-llama/Llama-3.1-8B") is None
    assert quantization_in_name(None) is None
    out = describe_quantization({"weights": "q4_1", "method": "gguf"}, "q4_1", "Q4_1")
    assert out["quantization"] == "weights=q4_1, method=gguf" and "quantization_mismatch" not in out
    out = describe_quantization({"weights": "q8_0"}, "q8_0", "Q4_1")
    assert "declares q8_0 but the server serves Q4_1" in out["quantization_mismatch"]
    assert describe_quantization(None, "bfloat16", None) == {}


def test_align_echo_skips_a_left_out_bos_and_stops_at_a_mismatch():
    steps = ["a", "b", "c"]

    def matches(k, tid):
        return steps[k] == {1: "a", 2: "b", 3: "c", 9: "<bos>"}.get(tid)

    assert align_echo([9, 1, 2, 3], 3, matches, {9}.__contains__) == [None, 0, 1, 2]
    assert align_echo([1, 2, 3], 3, matches, {9}.__contains__) == [0, 1, 2]
    assert align_echo([1, 3], 3, matches, {9}.__contains__) == 1   # position 1 does not follow


# -- the spec side: dtype and quantization of a backend entry ------------------------

def _spec_with_backend(tmp_path, block: str):
    text = SMOLLM2_SPEC.read_text(encoding="utf-8")
    text = text.replace("\ndefaults:", "\nbackends:\n" + block + "defaults:", 1)
    return write_spec(tmp_path / "q.yaml", text)


def test_a_quantized_served_backend_validates_and_builds(tmp_path):
    from specengine.spec import load_spec
    from specengine.compare.tolerances import dtype_class

    spec = _spec_with_backend(tmp_path, (
        "  llama-q4:\n    runtime: openai\n    dtype: q4_1\n"
        "    quantization: {weights: q4_1, method: gguf}\n"
        "    options: {base_url: 'http://127.0.0.1:9/v1'}\n"
        "  w8a8:\n    runtime: openai\n    dtype: bfloat16\n"
        "    quantization: {weights: int8, activations: int8, kv_cache: fp8}\n"
        "    options: {base_url: 'http://127.0.0.1:9/v1'}\n"
        "  fake-quant:\n    runtime: torch\n    dtype: float32\n"
        "    quantization: {weights: q4_1}\n"))
    result = cli("validate", spec)
    assert result.rc == 0, result.text
    backends = load_spec(spec).backends
    assert backends["llama-q4"].dtype == "q4_1"
    assert backends["llama-q4"].quantization == {"weights": "q4_1", "method": "gguf"}
    assert backends["w8a8"].quantization["kv_cache"] == "fp8"
    for name in ("llama-q4", "w8a8", "fake-quant"):
        cfg = backends[name]
        assert dtype_class(cfg.dtype, cfg.quantization) == "quantized", name


@pytest.mark.parametrize("block, where, words", [
    ("  q:\n    runtime: torch\n    dtype: q4_1\n", "q.yaml:16:12",
     "the torch runtime computes in float32, bfloat16, float16, not 'q4_1'"),
    ("  q:\n    runtime: openai\n    dtype: q4_2\n    options: {base_url: 'http://h/v1'}\n",
     "q.yaml:16:12", "'q4_2' is not one of"),
    ("  q:\n    runtime: openai\n    quantization: {weights: int3}\n"
     "    options: {base_url: 'http://h/v1'}\n", "q.yaml:16:", "int3"),
    ("  q:\n    runtime: openai\n    quantization: {wieghts: int8}\n"
     "    options: {base_url: 'http://h/v1'}\n", "q.yaml:16:", "wieghts"),
])
def test_bad_quantized_declarations_are_exit_2_with_the_place(tmp_path, block, where, words):
    result = cli("validate", _spec_with_backend(tmp_path, block))
    assert result.rc == 2 and "Traceback" not in result.text, result.text
    line = result.err.strip().splitlines()[0]   # then validate's summary line
    assert where in line and words in line, line
