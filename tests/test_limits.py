"""Limits that belong to a numeric class, pure and on the command line: class blocks and
their order (spec, backend, case), relative limits against a plain numpy oracle, the
refusal of flat blocks and `specengine migrate`, the localize jump rule, the batch filler
and expectations that fail on the reference too."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_clean_error, cli, write_spec
from specengine.compare.layers import default_jump_floor, flag_layers
from specengine.compare.limits import LimitSource, NoiseNotRecorded
from specengine.compare.tolerances import DEFAULTS, FLOAT32, HALF, NOISE_FLOORS
from specengine.errors import GoldenError, SpecError
from specengine.kinds.causal_lm.batch import filler
from specengine.kinds.causal_lm.expect import expectation_checks
from specengine.kinds.causal_lm.golden import CaseNoise, LmCaseRecord, Steps
from specengine.kinds.causal_lm.limits import case_limits
from specengine.spec import parse_spec
from specengine.spec.migrate import migrate_text

SPEC = """\
specengine: 1
name: demo
model: {path: m}
backends:
  npu-like:
    runtime: torch
    dtype: bfloat16
    tolerance: {half: {logprob_atol: 1.5, kl_max: 0.2}}
defaults:
  tolerance:
    half: {kl_mean_max: 0.02, kl_max: 0.1}
    float32:
      kl_mean_max: {noise: 5, floor: 2.0e-6}
      logprob_atol: {noise: 10}
cases:
  - id: a
    prompt: p
  - id: b
    prompt: q
    tolerance: {half: {kl_max: 0.3}}
"""


def _spec(tmp_path, text=SPEC):
    return parse_spec(text, str(tmp_path / "s.yaml"))


def test_a_backend_block_sits_between_the_spec_and_the_case(tmp_path):
    spec = _spec(tmp_path)
    a, b = spec.cases
    plain = spec.limits(a, HALF, "cpu-bf16")
    assert (plain.values.kl_mean_max, plain.values.kl_max, plain.values.logprob_atol) == \
        (0.02, 0.1, DEFAULTS[HALF].logprob_atol)
    npu = spec.limits(a, HALF, "npu-like")
    assert (npu.values.kl_max, npu.values.logprob_atol) == (0.2, 1.5)
    assert npu.origin("kl_max") == "backend 'npu-like'" and npu.origin("kl_mean_max") == "spec"
    case_wins = spec.limits(b, HALF, "npu-like")
    assert case_wins.values.kl_max == 0.3 and case_wins.origin("kl_max") == "case"
    assert case_wins.label() == ("half: kl_mean_max from spec; kl_max from case; logprob_atol "
                                 "from backend 'npu-like'; the rest class defaults")
    # the backend's half block never judges a float32 comparison with it
    f32 = spec.limits(a, FLOAT32, "npu-like", noise={"kl_mean": 1e-7, "kl_max": 1e-6,
                                                       "max_abs_dlogprob": 1e-5})
    assert f32.values.kl_max == DEFAULTS[FLOAT32].kl_max


def test_relative_limits_match_a_numpy_oracle():
    rng = np.random.default_rng(7)
    noise = 10.0 ** rng.uniform(-9, -1, size=(50, 3))
    mult = rng.uniform(0.5, 20, size=50)
    floors = 10.0 ** rng.uniform(-7, -2, size=50)
    for i in range(50):
        blocks = {"float32": {"kl_mean_max": {"noise": float(mult[i]), "floor": float(floors[i])},
                              "kl_max": {"noise": float(mult[i])},
                              "logprob_atol": {"noise": float(mult[i]), "floor": 0.0}}}
        measured = dict(zip(("kl_mean", "kl_max", "max_abs_dlogprob"), map(float, noise[i])))
        lim = LimitSource.of(blocks).resolve(FLOAT32, DEFAULTS[FLOAT32], measured)
        expect = (np.maximum(mult[i] * noise[i, 0], floors[i]),
                  np.maximum(mult[i] * noise[i, 1], NOISE_FLOORS["kl_max"]),
                  mult[i] * noise[i, 2])
        got = (lim.values.kl_mean_max, lim.values.kl_max, lim.values.logprob_atol)
        np.testing.assert_allclose(got, expect, rtol=1e-12)
        assert lim.values.top1_agreement_min == DEFAULTS[FLOAT32].top1_agreement_min
        assert "× float32 noise" in lim.origin("kl_max")


def _record(noise: dict | None = None) -> LmCaseRecord:
    return LmCaseRecord("a", "x", "p", (1,), "t", {}, Steps.rounded([[1]], [[-0.1]], [-2.0]),
                        prompt_ids=(5,),
                        noise={k: CaseNoise.decode_from(v) for k, v in (noise or {}).items()})


def test_a_relative_limit_without_its_noise_is_a_golden_error_naming_the_command(tmp_path):
    spec = _spec(tmp_path)
    with pytest.raises(NoiseNotRecorded):
        spec.limits(spec.cases[0], FLOAT32)
    with pytest.raises(GoldenError) as info:
        case_limits(spec, spec.cases[0], FLOAT32, FLOAT32, "cpu", _record(), "golden g.json")
    text = info.value.one_line()
    assert "record-golden" in text and "--noise float32" in text and "kl_mean_max" in text
    # with the golden's noise the same case resolves, per path, with ratios
    record = _record({"float32": {
        "prefill": {"kl_mean": 1e-7, "kl_max": 5e-7, "max_abs_dlogprob": 4e-5},
        "decode": {"kl_mean": 5e-8, "kl_max": 3e-7, "max_abs_dlogprob": 2e-6}}})
    lim = case_limits(spec, spec.cases[0], FLOAT32, FLOAT32, "cpu", record)
    assert lim.prefill.values.kl_mean_max == pytest.approx(5e-7 if 5e-7 > 2e-6 else 2e-6)
    assert lim.prefill.values.logprob_atol == pytest.approx(max(10 * 4e-5, 1e-3))
    assert lim.decode.values.logprob_atol == pytest.approx(1e-3)
    ratios = lim.ratios("prefill", {"kl_mean": 3e-7, "kl_max": 5e-7, "max_abs_dlogprob": 8e-5})
    assert ratios == pytest.approx({"kl_mean": 3.0, "kl_max": 1.0, "max_abs_dlogprob": 2.0})
    # a half comparison needs no float32 noise
    assert case_limits(spec, spec.cases[0], HALF, HALF, "cpu", _record()).klass == HALF


def test_a_flat_block_is_refused_where_it_stands(tmp_path):
    text = SPEC.replace("    tolerance: {half: {kl_max: 0.3}}\n", "    tolerance: {kl_max: 0.3}\n")
    with pytest.raises(SpecError) as info:
        _spec(tmp_path, text)
    err = info.value
    assert err.line == 20 and "cases/1/tolerance" in str(err) and "migrate" in str(err)
    assert "float32:, half: or quantized:" in str(err)


MIGRATE_IN = """\
defaults:
  # sized on bf16 noise
  tolerance:
    # limits
    kl_mean_max: 0.02    # KL
    divergence: {within_top_k: 10,
                 max_margin: 0.5}

  determinism: {runs: 2}
cases:
  - id: a
    tolerance: {kl_max: 0.3, divergence: {within_top_k: 2}}   # a case override
  - id: b
    tolerance: {half: {kl_max: 0.3}}
"""

MIGRATE_OUT = """\
defaults:
  # sized on bf16 noise
  tolerance:
    half:
      # limits
      kl_mean_max: 0.02    # KL
      divergence: {within_top_k: 10,
                   max_margin: 0.5}

  determinism: {runs: 2}
cases:
  - id: a
    tolerance: {half: {kl_max: 0.3, divergence: {within_top_k: 2}}}   # a case override
  - id: b
    tolerance: {half: {kl_max: 0.3}}
"""


def test_migrate_moves_flat_blocks_and_keeps_every_other_byte():
    out, moved = migrate_text(MIGRATE_IN, "half")
    assert out == MIGRATE_OUT
    assert moved == ["defaults/tolerance", "cases/0/tolerance"]
    assert migrate_text(out, "half") == (out, [])                 # idempotent
    crlf, _ = migrate_text(MIGRATE_IN.replace("\n", "\r\n"), "half")
    assert crlf == MIGRATE_OUT.replace("\n", "\r\n")


def test_migrate_on_the_command_line(tmp_path):
    path = write_spec(tmp_path / "s.yaml", SPEC.replace(
        "    half: {kl_mean_max: 0.02, kl_max: 0.1}\n    float32:\n"
        "      kl_mean_max: {noise: 5, floor: 2.0e-6}\n      logprob_atol: {noise: 10}\n",
        "    kl_mean_max: 0.02   # measured on cpu-bf16\n    kl_max: 0.1\n"))
    before = path.read_text()
    assert_clean_error(cli("validate", path), 2)
    # off a terminal the class must be named: nothing written
    line = assert_clean_error(cli("migrate", path), 2)
    assert "--class" in line and path.read_text() == before
    ok = cli("migrate", path, "--class", "half")
    assert ok.rc == 0 and "moved defaults/tolerance under half" in ok.out, ok.text
    assert "    half:\n      kl_mean_max: 0.02   # measured on cpu-bf16\n" in path.read_text()
    assert cli("validate", path).rc == 0
    # validate --fix does the same in one step
    other = write_spec(tmp_path / "t.yaml", before)
    fixed = cli("validate", other, "--fix", "--class", "half")
    assert fixed.rc == 0 and other.read_text() == path.read_text(), fixed.text


def test_localize_judges_a_jump_against_the_preceding_layers():
    f32 = default_jump_floor("float32", "float32")
    assert f32 == pytest.approx(1e-5) and default_jump_floor("bfloat16", "float32") == \
        pytest.approx(0.0977, rel=1e-2)
    # a float32 bug at layer 0: 329x its input, under the 0.001 floor
    errs = [1e-6, 3.29e-4, 3.3e-4, 3.4e-4]
    assert flag_layers(errs, 4.0, 1e-3)[2] is None                     # the floor alone: hidden
    assert flag_layers(errs, 4.0, 1e-3, f32)[2] == 1                   # the jump: flagged
    # float32 rounding noise that creeps up never jumps 32x over its own level
    noise = list(np.geomspace(1e-7, 2e-6, 30))
    assert flag_layers(noise, 4.0, 1e-3, f32)[2] is None
    # a slow rise stays unflagged even past jump_floor; the first sharp jump is the layer
    assert flag_layers([1e-6, 3e-6, 9e-6, 2.7e-5, 8.1e-5], 4.0, 1e-3, f32)[2] is None
    assert flag_layers([1e-6, 2e-6, 8e-5, 9e-5], 4.0, 1e-3, f32)[2] == 2
    # bf16 sides: the jump floor is the floor, the rule is as before
    assert flag_layers([0.01, 0.05], 4.0, 0.0977, default_jump_floor("bfloat16"))[2] is None


def test_every_case_is_left_padded_beside_a_longer_filler():
    case, others = [5, 6, 7, 8], [[1, 2], [3]]
    fill = filler(case, others)
    assert len(fill) > len(case) and set(fill) <= {1, 2, 3}
    assert len(filler([9] * 40, [])) == 48 and set(filler([9] * 40, [])) == {9}


def test_an_expectation_the_reference_fails_is_not_the_candidates_fault(tmp_path):
    spec = parse_spec("specengine: 1\nname: x\nmodel: {path: m}\ncases:\n  - id: a\n"
                      "    prompt: p\n    expect: {contains: [Paris, Berlin]}\n", "s.yaml")
    case = spec.cases[0]
    checks = expectation_checks(case, "Paris, of course", [1, 2], -0.1,
                                ["contains 'Berlin'"], "")
    by = {c.message.split(":")[0]: c for c in checks}
    assert [c.status for c in checks] == ["pass", "not-run"]
    assert checks[1].message.startswith("fails on the reference too")
    assert checks[1].metrics["reference_fails"] is True and by
    # the same expectation fails the candidate when the reference met it
    plain = expectation_checks(case, "Paris, of course", [1, 2], -0.1, [], "")
    assert [c.status for c in plain] == ["pass", "fail"]
