"""Multi-device loading for the torch runtime: the spec's `device_map` and `max_memory`
reach from_pretrained, and the placement (which module went to which device) is
recorded in the candidate's environment settings and shown in the JSON and HTML reports.

On this CPU-only machine every module lands on the CPU; the same path is what spreads
a model over two NPUs (`device_map: auto` with `max_memory: {0: 58GiB, 1: 58GiB}`).
"""

from __future__ import annotations

import json

import pytest

from helpers import write_spec
from specengine.run import check_spec, record_golden
from specengine.spec import load_spec

SPEC = """\
specengine: 1
name: tiny-multidevice
model:
  synthetic:
    model_type: llama
    seed: 5
    init_std: 0.4
    config: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
             num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 300,
             max_position_embeddings: 128}}
{placement}
defaults:
  max_new_tokens: 4
  determinism: {{runs: 1}}
cases:
  - id: hello
    prompt: "Hello there"
"""

PER_MODULE = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
              "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


@pytest.fixture
def spy(monkeypatch):
    """Record the keyword arguments from_pretrained is called with."""
    import transformers

    calls: list[dict] = []
    original = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def wrapped(cls, *args, **kwargs):
        calls.append(dict(kwargs))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        classmethod(wrapped))
    return calls


def _spec(tmp_path, placement: str):
    return load_spec(write_spec(tmp_path / "multi.yaml", SPEC.format(placement=placement)))


@pytest.mark.parametrize("placement, want_map, want_memory", [
    ('  device_map: {"": cpu}', {"": "cpu"}, None),
    ("  device_map: auto\n  max_memory: {cpu: 2GiB}", "auto", {"cpu": "2GiB"}),
    ("  device_map: " + json.dumps(PER_MODULE), PER_MODULE, None),
])
def test_device_map_and_max_memory_reach_from_pretrained(tmp_path, spy, placement, want_map,
                                                         want_memory):
    from specengine.loading.session import open_session

    spec = _spec(tmp_path, placement)
    session = open_session(spec, "cpu")
    try:
        loaded = [c for c in spy if "device_map" in c]
        assert loaded, spy
        assert loaded[-1]["device_map"] == want_map
        got_memory = loaded[-1].get("max_memory")
        if want_memory is None:
            assert got_memory is None
        else:   # as written, or already converted to bytes
            assert got_memory in (want_memory, {"cpu": 2 * 1024 ** 3}), got_memory
        placed = session.side().settings["device_map"]
        assert placed and set(placed.values()) == {"cpu"}
        if isinstance(want_map, dict):
            assert placed == {k: str(v) for k, v in want_map.items()}
    finally:
        session.close()


def test_without_device_map_nothing_is_placed(tmp_path, spy):
    from specengine.loading.session import open_session

    session = open_session(_spec(tmp_path, ""), "cpu")
    try:
        assert all("device_map" not in c for c in spy)
        assert "device_map" not in session.side().settings
    finally:
        session.close()


def test_placement_reaches_the_json_and_html_reports(tmp_path):
    from specengine.report.render import render_html

    spec = _spec(tmp_path, "  device_map: " + json.dumps(PER_MODULE))
    record_golden(spec, "cpu", tmp_path / "golden", echo=lambda *_: None)
    run = check_spec(spec, "cpu-bf16", tmp_path / "golden")
    data = json.loads(run.to_json())
    assert data["candidate"]["settings"]["device_map"] == PER_MODULE
    assert data["reference"]["settings"]["device_map"] == PER_MODULE   # recorded in the golden
    html = render_html([run])
    assert "setting: device_map" in html
    assert "model.layers.1" in html and "lm_head" in html
