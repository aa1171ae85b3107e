"""The ONNX Runtime backend: automatic export of every architecture family we gate
(tiny stand-ins + the real SmolLM2), logits against torch float32, the export cache
(a second load exports nothing, a changed weight exports anew), unavailable providers and
runtimes, readable export failures.

Measured (torch 2.13, transformers 5.23, onnxruntime 1.31, CPU EP), max |Δ logit| of the
exported graph against a torch float32 forward over a 40-token sequence (30 prefilled, 10
single steps):
  llama (internlm25-tiny, dynamic NTK rope)  2.0e-5  (logits up to 9.3)
  qwen3_5_text (qwen35-tiny)                 1.9e-4  (up to 4.9; torch's own prefill and
                                                      token-by-token paths differ by 1.9e-4)
  qwen3_5_moe_text (intern-s2-tiny)          8.8e-6  (up to 2.0)
  ernie4_5_moe (ernie45-tiny)                5.3e-6  (up to 5.4)
  SmolLM2-135M                               1.0e-4  (up to 34)
The assertions allow 2e-4 x max(1, |logit| max) + 1e-5 (about 1e-3 for the stand-ins,
7e-3 for SmolLM2): a few times the measured error, far below what a real bug does (a
flipped layer moves logits by whole units). Log-probs from generate/score: atol 5e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, SMOLLM2_SPEC, cli, copy_model, load_json, write_spec

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from specengine.backends.onnx import export as onnx_export
from specengine.backends.base import BackendConfig  # noqa: E402
from specengine.errors import BackendUnavailable  # noqa: E402

INIT_STD = 0.08
TINY = {  # family -> spec file of its stand-in (the model section is reused here)
    "llama": "internlm25-tiny.yaml",
    "qwen3_5_text": "qwen35-tiny.yaml",
    "qwen3_5_moe_text": "intern-s2-tiny.yaml",
    "ernie4_5_moe": "ernie45-tiny.yaml",
}
TEXT = "The capital of France is Paris. 法国的首都是巴黎。 def f(n): return n + 1"


def tiny_model_spec(family: str):
    """The stand-in's synthetic model section (its own init_std when it sets a number)."""
    from ruamel.yaml import YAML

    from specengine.spec import ModelSpec

    data = YAML(typ="safe").load((REPO / "specs" / "tiny" / TINY[family]).read_text("utf-8"))
    syn = dict(data["model"]["synthetic"])
    if not isinstance(syn.get("init_std"), (int, float)):
        syn["init_std"] = INIT_STD
    return ModelSpec(source="synthetic", synthetic=syn, tokenizer="bytes")


def onnx_backend(**options):
    from specengine.backends.onnx.backend import OnnxBackend

    return OnnxBackend(BackendConfig("onnx", "onnx", "cpu", "float32", options))


def torch_logits(resolved, ids: list[int]) -> np.ndarray:
    import torch

    from specengine.backends.torch.models import load_torch_model

    model = load_torch_model(resolved, "float32", "cpu")
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float().numpy()


def tolerance(reference: np.ndarray) -> float:
    return 2e-4 * max(1.0, float(np.abs(reference).max())) + 1e-5


def text_ids(vocab: int, n: int = 40) -> list[int]:
    return [3 + (b % (vocab - 3)) for b in TEXT.encode("utf-8")][:n]


@pytest.fixture(scope="module", params=sorted(TINY))
def family(request):
    from specengine.loading.sources import resolve

    resolved = resolve(tiny_model_spec(request.param))
    backend = onnx_backend()
    backend.load(resolved)
    yield request.param, resolved, backend
    backend.close()


def test_family_logits_match_torch(family):
    name, resolved, backend = family
    vocab = int(resolved.spec.synthetic["config"]["vocab_size"])
    ids = text_ids(vocab)
    ref = torch_logits(resolved, ids)
    got, cursor = backend.graph.prefill(ids[:30])
    steps = [backend.graph.advance(cursor, t) for t in ids[30:]]
    got = np.concatenate([got, np.stack(steps)])
    diff = float(np.abs(got - ref).max())
    assert diff <= tolerance(ref), (name, diff, float(np.abs(ref).max()))
    assert backend.meta["validation"]["max_abs_logit_diff"] <= tolerance(ref)
    env = backend.environment()
    assert env["runtime"] == "onnxruntime" and env["device"] == "cpu"
    assert env["versions"]["onnxruntime"] == ort.__version__
    assert env["export_key"] == backend.meta["key"]


def test_family_generate_and_score_match_torch(family):
    from specengine.backends.torch.backend import TorchBackend

    name, resolved, backend = family
    vocab = int(resolved.spec.synthetic["config"]["vocab_size"])
    prompt = text_ids(vocab, 12)
    cpu = TorchBackend(BackendConfig("cpu", "torch", "cpu", "float32"))
    cpu.load(resolved)
    want = cpu.generate([prompt], 8, 5)[0]
    got = backend.generate([prompt], 8, 5)[0]
    assert got.output_ids == want.output_ids, name
    np.testing.assert_array_equal(got.topk_ids, want.topk_ids)
    np.testing.assert_allclose(got.topk_logprobs, want.topk_logprobs, atol=5e-4)
    np.testing.assert_allclose(got.tail_logprob, want.tail_logprob, atol=5e-4)
    gather = want.topk_ids
    s_cpu = cpu.score(prompt, want.output_ids, gather, 5)
    s_onnx = backend.score(prompt, want.output_ids, gather, 5)
    np.testing.assert_allclose(s_onnx.gathered_logprobs, s_cpu.gathered_logprobs, atol=5e-4)
    np.testing.assert_allclose(s_onnx.gathered_tail, s_cpu.gathered_tail, atol=5e-4)
    np.testing.assert_array_equal(s_onnx.top_ids, s_cpu.top_ids)
    cpu.close()


def test_second_load_performs_no_export(family):
    name, resolved, first = family
    before = onnx_export.EXPORTS
    again = onnx_backend()
    again.load(resolved)
    assert onnx_export.EXPORTS == before, name
    assert again.meta["exported_now"] is False
    assert again.meta["key"] == first.meta["key"]
    assert again.environment()["settings"]["onnx_exported_now"] is False


def test_changed_weight_gives_new_key_and_new_export(tmp_path, monkeypatch):
    """The cache cannot serve the graph of a different model: one weight changed -> a new
    fingerprint, a new key, a new export whose logits follow the new weight."""
    from safetensors.torch import load_file, save_file

    from specengine.loading.sources import resolve
    from specengine.spec import ModelSpec

    original = resolve(tiny_model_spec("llama"))
    first = onnx_backend()
    first.load(original)

    changed_dir = copy_model(original.hf_dir, tmp_path / "changed")
    weights = sorted(changed_dir.glob("*.safetensors"))[0]
    tensors = load_file(str(weights))
    key = "model.layers.1.mlp.down_proj.weight"
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] += 0.5
    weights.unlink()
    save_file(tensors, str(weights), metadata={"format": "pt"})

    monkeypatch.setenv("SPECENGINE_CACHE", str(tmp_path / "cache"))
    changed = resolve(ModelSpec(source="path", path=str(changed_dir), tokenizer="bytes"))
    assert changed.fingerprint != original.fingerprint
    before = onnx_export.EXPORTS
    second = onnx_backend()
    second.load(changed)
    assert onnx_export.EXPORTS == before + 1
    assert second.meta["key"] != first.meta["key"] and second.meta["exported_now"] is True
    ids = text_ids(384, 16)
    a, _ = first.graph.prefill(ids)
    b, _ = second.graph.prefill(ids)
    assert float(np.abs(a - b).max()) > 1e-4
    ref = torch_logits(changed, ids)
    assert float(np.abs(b - ref).max()) <= tolerance(ref)


def onnx_cache_root() -> Path:
    from specengine.files import cache_dir

    root = cache_dir() / "onnx"
    root.mkdir(parents=True, exist_ok=True)
    return root


def test_user_supplied_graph_is_used_without_export():
    from specengine.loading.sources import resolve

    resolved = resolve(tiny_model_spec("llama"))
    exported = onnx_backend()
    exported.load(resolved)
    path = onnx_cache_root() / exported.meta["key"] / "model.onnx"
    before = onnx_export.EXPORTS
    user = onnx_backend(onnx_file=str(path))
    user.load(resolved)
    assert onnx_export.EXPORTS == before
    assert user.environment()["settings"]["onnx_file"] == str(path.resolve())
    prompt = text_ids(384, 10)
    assert user.generate([prompt], 6, 3)[0].output_ids == \
        exported.generate([prompt], 6, 3)[0].output_ids


def test_missing_user_graph_is_a_clear_error(tmp_path):
    from specengine.errors import ModelSourceError
    from specengine.loading.sources import resolve

    backend = onnx_backend(onnx_file=str(tmp_path / "nope.onnx"))
    with pytest.raises(ModelSourceError, match="nope.onnx"):
        backend.load(resolve(tiny_model_spec("llama")))


def test_unavailable_provider_is_backend_unavailable():
    from specengine.backends.registry import create

    config = BackendConfig("onnx-npu", "onnx", "npu", "float32",
                           {"providers": ["CANNExecutionProvider"]})
    with pytest.raises(BackendUnavailable) as info:
        create(config)
    message = str(info.value)
    assert "CANNExecutionProvider" in message and "CPUExecutionProvider" in message
    assert info.value.exit_code == 3


def test_missing_onnxruntime_names_the_pip_command(monkeypatch):
    import sys

    from specengine.backends.onnx.backend import OnnxBackend

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailable, match=r"pip install"):
        OnnxBackend(BackendConfig("onnx", "onnx"))


def test_export_failure_names_the_operator(tmp_path, monkeypatch):
    from specengine.loading.sources import resolve

    def broken(resolved, settings, out):
        raise RuntimeError("Unsupported FX nodes: {'call_function': ['aten.diff.default']}")

    monkeypatch.setenv("SPECENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_export, "_trace_and_save", broken)
    resolved = resolve(tiny_model_spec("llama"))
    with pytest.raises(BackendUnavailable) as info:
        onnx_backend().load(resolved)
    message = str(info.value)
    assert "aten.diff" in message and "onnx_file" in message
    assert info.value.exit_code == 3
    assert not list((tmp_path / "cache" / "onnx").glob("*/model.onnx"))  # nothing cached


def test_failing_operator_patterns():
    assert onnx_export.failing_operator("No symbolic for aten::diff") == "aten.diff"
    assert onnx_export.failing_operator("torch.ops.fla.chunk_gated_delta_rule failed") == \
        "torch.ops.fla.chunk_gated_delta_rule"
    assert "data-dependent" in onnx_export.failing_operator(
        "GuardOnDataDependentSymNode: Could not guard on data-dependent expression u0 > 1")
    assert onnx_export.failing_operator("something else") is None


@pytest.mark.slow
def test_smollm2_export_matches_torch(smollm2_dir):
    """The real model: export once (minutes on two cores, then cached), logits vs torch."""
    from specengine.loading.sources import resolve
    from specengine.spec import load_spec

    resolved = resolve(load_spec(SMOLLM2_SPEC).model)
    backend = onnx_backend()
    backend.load(resolved)
    assert backend.graph.multi_token
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolved.hf_dir))
    ids = tok("The capital of France is Paris, and the capital of Germany is")["input_ids"]
    ref = torch_logits(resolved, ids)
    got, cursor = backend.graph.prefill(ids[:-4])
    got = np.concatenate([got, np.stack([backend.graph.advance(cursor, t) for t in ids[-4:]])])
    diff = float(np.abs(got - ref).max())
    assert diff <= tolerance(ref), diff
    before = onnx_export.EXPORTS
    again = onnx_backend()
    again.load(resolved)
    assert onnx_export.EXPORTS == before and again.meta["exported_now"] is False


# -- end to end through the command line -------------------------------------------------

E2E_SPEC = """\
specengine: 1
name: onnx-e2e-{family}
model:
  synthetic: {synthetic}
  tokenizer: bytes
backends:
  flipped:
    runtime: torch
    model: {{path: {flipped}}}
defaults:
  max_new_tokens: 8
  determinism: {{runs: 2}}
  tolerance: {{float32: {{kl_mean_max: 0.0001, kl_max: 0.0005, top1_agreement_min: 1.0,
                         logprob_atol: 0.001}}}}
cases:
  - id: capital
    prompt: "The capital of France is"
  - id: zh
    prompt: "法国的首都是"
"""


def _e2e_spec(tmp_path: Path, family: str) -> Path:
    import json

    from specengine.loading.sources import resolve

    from helpers import perturb_model

    model = tiny_model_spec(family)
    resolved = resolve(model)
    layer = 0 if family == "llama" else 3      # a full-attention layer of each stand-in

    def flip(tensors):
        key = f"model.layers.{layer}.self_attn.o_proj.weight"
        tensors[key] = -tensors[key]

    flipped = perturb_model(resolved.hf_dir, tmp_path / "flipped", flip)
    return write_spec(tmp_path / "spec.yaml", E2E_SPEC.format(
        family=family.replace("_", "-"), synthetic=json.dumps(model.synthetic),
        flipped=flipped))


@pytest.mark.parametrize("family", ["llama", "qwen3_5_moe_text"])
def test_cli_check_onnx_against_cpu_golden(family, tmp_path):
    spec = _e2e_spec(tmp_path, family)
    gdir = tmp_path / "golden"
    rec = cli("record-golden", spec, "--backend", "cpu", "--golden-dir", gdir)
    assert rec.rc == 0, rec.text
    ok = cli("check", spec, "--backend", "onnx", "--golden-dir", gdir,
             "--json", tmp_path / "r.json")
    assert ok.rc == 0, ok.text
    run = load_json(tmp_path / "r.json")["runs"][0]
    assert run["status"] == "pass" and run["comparison"] != "self-check", run
    assert run["candidate"]["runtime"] == "onnxruntime"
    # ONNX Runtime as the live reference still catches a perturbed candidate
    bad = cli("check", spec, "--backend", "flipped", "--against", "onnx", "--golden-dir", gdir)
    assert bad.rc == 1, bad.text


@pytest.mark.slow
def test_cli_check_smollm2_onnx_against_committed_golden(tmp_path):
    ok = cli("check", SMOLLM2_SPEC, "--backend", "onnx", "--golden-dir", REPO / "golden",
             "--json", tmp_path / "r.json")
    assert ok.rc == 0, ok.text
    run = load_json(tmp_path / "r.json")["runs"][0]
    assert run["status"] == "pass", run


# -- graphs of other shapes (user-supplied files), on hand-built ONNX models ----------------

V = 11   # vocab of the hand-built bigram graphs: token t's logits are row t of BIGRAM


def _bigram():
    rng = np.random.default_rng(0)
    return rng.normal(size=(V, V)).astype(np.float32) * 3


def _save(graph, path: Path) -> Path:
    import onnx

    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def full_graph(path: Path, length) -> Path:
    """input_ids [1, L] -> logits [1, L, V] (no state), L symbolic or fixed."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["W", "input_ids"], ["logits"], axis=0)], "bigram",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, length])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, length, V])],
        [numpy_helper.from_array(_bigram(), "W")])
    return _save(graph, path)


def optimum_kv_graph(path: Path) -> Path:
    """Optimum-style names: past_key_values.0.key -> present.0.key; the state is the ids
    seen so far (as floats), so the test can read what the runner fed it."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Gather", ["W", "input_ids"], ["logits"], axis=0),
             helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["ids_f", "axes"], ["new"]),
             helper.make_node("Concat", ["past_key_values.0.key", "new"], ["present.0.key"],
                              axis=2)]
    graph = helper.make_graph(
        nodes, "bigram-kv",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "S"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "T"]),
         helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT,
                                       ["B", 1, "P", 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "S", V]),
         helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, ["B", 1, "T", 1])],
        [numpy_helper.from_array(_bigram(), "W"),
         numpy_helper.from_array(np.asarray([1, 3], dtype=np.int64), "axes")])
    return _save(graph, path)


def _greedy_bigram(prompt: list[int], n: int) -> list[int]:
    out, last = [], prompt[-1]
    for _ in range(n):
        last = int(np.argmax(_bigram()[last]))
        out.append(last)
    return out


class _Causal:
    class spec:
        kind = "causal-lm"


@pytest.mark.parametrize("length", ["L", 8])
def test_full_graph_without_state(tmp_path, length):
    """No cache: every step re-runs the prefix; a fixed length is right-padded."""
    from specengine.backends.onnx.graph import GraphError

    backend = onnx_backend(onnx_file=str(full_graph(tmp_path / "m.onnx", length)))
    backend.load(_Causal())
    assert backend.graph.kind == "full"
    prompt = [1, 4, 2]
    gen = backend.generate([prompt], 5, 3)[0]
    assert gen.output_ids == _greedy_bigram(prompt, 5)
    lp = _bigram()[prompt[-1]].astype(np.float64)
    lp = lp - np.log(np.exp(lp - lp.max()).sum()) - lp.max()
    np.testing.assert_allclose(gen.topk_logprobs[0], np.sort(lp)[::-1][:3], atol=1e-6)
    if length == 8:
        assert "fixed length 8" in backend.environment()["settings"]["onnx_graph"]
        with pytest.raises(GraphError, match="at most 8 tokens"):
            backend.graph.prefill(list(range(9)))


def test_optimum_style_kv_graph(tmp_path):
    """past_key_values.N.key / present.N.key pairing, empty state from the declared shape
    (batch 1, past 0), the attention mask over past + new tokens."""
    backend = onnx_backend(onnx_file=str(optimum_kv_graph(tmp_path / "kv.onnx")))
    backend.load(_Causal())
    graph = backend.graph
    assert graph.kind == "kv" and graph.multi_token
    assert graph.state_out == {"past_key_values.0.key": "present.0.key"}
    logits, cursor = graph.prefill([1, 4, 2])
    np.testing.assert_array_equal(logits, _bigram()[[1, 4, 2]])
    graph.advance(cursor, 7)
    assert cursor.state["past_key_values.0.key"][0, 0, :, 0].tolist() == [1, 4, 2, 7]
    assert backend.generate([[3, 5]], 4, 2)[0].output_ids == _greedy_bigram([3, 5], 4)
