"""Golden files: layout, integrity, staleness, atomic writes, path confinement."""

import json

import pytest

from helpers import TINY_MODEL, assert_clean_error, cli, load_json, write_spec
from specengine.errors import GoldenError, UsageError
from specengine.kinds.causal_lm.golden import build_golden, load_data, load_golden, step_record
from specengine.golden.store import dumps, golden_path, write_golden

TINY = """\
# yaml-language-server: $schema=../schemas/spec.schema.json
specengine: 1
name: tiny-llama
""" + TINY_MODEL + """defaults:
  max_new_tokens: 6
cases:
  - id: hello
    prompt: "Hello there"
  - id: chat
    messages: [{role: user, content: "<script>alert(1)</script> & friends"}]
"""


def _golden(cases=None):
    step = step_record([5, 3], [-0.1, -2.5], -3.0)
    cases = cases or {"a": {"hash": "0" * 64, "prompt": "p", "prompt_ids": [1, 2],
                            "output_ids": [5], "output_text": "x", "settings": {},
                            "steps": [step]}}
    return build_golden("demo", "cpu", "sha256:abc", "synthetic", {"backend": "cpu"}, cases)


def test_dump_is_reviewable_and_verifiable(tmp_path):
    data = _golden()
    text = dumps(data)
    assert '{"ids": [5, 3], "logprobs": [-0.1, -2.5], "tail": -3.0}' in text  # one step per line
    assert list(json.loads(text)) == sorted(json.loads(text))
    path = golden_path(tmp_path, "demo", "cpu")
    write_golden(path, data)
    assert load_data(path, "demo") == data
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]   # no temp left


@pytest.mark.parametrize("spec_name,backend", [("..", "cpu"), ("demo", "../x"), ("a/b", "cpu"),
                                               ("demo", ".hidden"), ("demo", "")])
def test_golden_path_cannot_escape(tmp_path, spec_name, backend):
    with pytest.raises(UsageError):
        golden_path(tmp_path, spec_name, backend)


def _write(tmp_path, text):
    path = tmp_path / "demo" / "cpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("mutate,fragment", [
    (lambda t: t[: len(t) // 2], "corrupted or truncated"),
    (lambda t: "\x00\xff" + t, "corrupted"),
    (lambda t: t.replace('"logprobs": [-0.1', '"logprobs": [-0.2'), "edited by hand"),
    (lambda t: t.replace('"format": 1', '"format": 7'), "format 7"),
    (lambda t: t.replace('"tail": -3.0', '"tail": "x"'), "golden schema"),
    (lambda t: "[1, 2]", "not a JSON object"),
])
def test_tampered_golden_is_refused(tmp_path, mutate, fragment):
    path = _write(tmp_path, mutate(dumps(_golden())))
    with pytest.raises(GoldenError) as info:
        load_golden(path, "demo")
    assert fragment in str(info.value)


def test_golden_of_another_spec(tmp_path):
    path = _write(tmp_path, dumps(_golden()))
    with pytest.raises(GoldenError, match="belongs to spec 'demo'"):
        load_golden(path, "other")


@pytest.fixture
def tiny_spec(tmp_path):
    return write_spec(tmp_path / "specs" / "tiny.yaml", TINY)


def test_record_check_update_cycle_on_synthetic_model(tiny_spec, tmp_path):
    gdir = tmp_path / "golden"
    missing = cli("check", tiny_spec, "--backend", "cpu", "--golden-dir", gdir)
    assert "no golden at" in assert_clean_error(missing, 2)
    assert cli("record-golden", tiny_spec, "--golden-dir", gdir).rc == 0
    path = gdir / "tiny-llama" / "cpu.json"
    first = path.read_text()
    again = cli("record-golden", tiny_spec, "--golden-dir", gdir)
    assert "--update" in assert_clean_error(again, 2)
    assert path.read_text() == first
    ok = cli("check", tiny_spec, "--backend", "cpu", "--golden-dir", gdir,
             "--json", tmp_path / "r.json", "--html", tmp_path / "r.html")
    assert ok.rc == 0, ok.text
    assert path.read_text() == first          # check never writes goldens
    run = load_json(tmp_path / "r.json")["runs"][0]
    assert run["comparison"] == "self-check"
    html = (tmp_path / "r.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)" in html
    # a recorded golden is deterministic: re-recording changes nothing
    upd = cli("record-golden", tiny_spec, "--golden-dir", gdir, "--update")
    assert upd.rc == 0 and "no change" in upd.out, upd.text
    assert path.read_text() == first


def test_stale_case_names_the_case(tiny_spec, tmp_path):
    gdir = tmp_path / "golden"
    rec = cli("record-golden", tiny_spec, "--golden-dir", gdir)
    assert rec.rc == 0, rec.text
    tiny_spec.write_text(TINY.replace('"Hello there"', '"Hello again"'))
    msg = assert_clean_error(cli("check", tiny_spec, "--backend", "cpu", "--golden-dir", gdir), 2)
    assert "case 'hello'" in msg and "stale" in msg and "tiny.yaml:15" in msg
    tiny_spec.write_text(TINY.replace("max_new_tokens: 6", "max_new_tokens: 5"))
    assert "stale" in assert_clean_error(cli("check", tiny_spec, "--backend", "cpu",
                                             "--golden-dir", gdir), 2)
    tiny_spec.write_text(TINY.replace("seed: 3", "seed: 4"))
    assert "another model" in assert_clean_error(cli("check", tiny_spec, "--backend", "cpu",
                                                     "--golden-dir", gdir), 2)
    upd = cli("record-golden", tiny_spec, "--golden-dir", gdir, "--update")
    assert upd.rc == 0 and "model" in upd.out, upd.text
    final = cli("check", tiny_spec, "--backend", "cpu", "--golden-dir", gdir)
    assert final.rc == 0, final.text


def test_unavailable_backends_exit_3(tiny_spec, tmp_path):
    gdir = tmp_path / "golden"
    assert cli("record-golden", tiny_spec, "--golden-dir", gdir).rc == 0
    npu = assert_clean_error(cli("check", tiny_spec, "--backend", "npu", "--golden-dir", gdir), 3)
    assert "torch_npu" in npu and "install" in npu
    import torch

    if not torch.cuda.is_available():
        cuda = assert_clean_error(cli("check", tiny_spec, "--backend", "cuda", "--golden-dir", gdir), 3)
        assert "CUDA" in cuda
    unknown = assert_clean_error(cli("check", tiny_spec, "--backend", "cpu-bf61",
                                     "--golden-dir", gdir), 2)
    assert "did you mean 'cpu-bf16'" in unknown


def test_missing_model_source_names_the_variable(tmp_path):
    spec = write_spec(tmp_path / "m.yaml", TINY.replace(
        "  synthetic:\n    model_type: llama\n    seed: 3\n    init_std: 0.4\n"
        "    config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,\n"
        "             num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 300,\n"
        "             max_position_embeddings: 256}\n",
        "  path: ${SPECENGINE_TEST_MODELS:-missing}/Tiny-7B\n"))
    result = cli("record-golden", spec, "--golden-dir", tmp_path / "g",
                 env={"SPECENGINE_TEST_MODELS": str(tmp_path / "nowhere")})
    msg = assert_clean_error(result, 2)
    assert "SPECENGINE_TEST_MODELS" in msg and "Tiny-7B" in msg and "m.yaml:5:" in msg
    assert not (tmp_path / "g").exists()
    # a plain check names the variable too (before complaining about the missing golden)
    check = cli("check", spec, "--backend", "cpu", "--golden-dir", tmp_path / "g",
                env={"SPECENGINE_TEST_MODELS": str(tmp_path / "nowhere")})
    assert "SPECENGINE_TEST_MODELS" in assert_clean_error(check, 2)
