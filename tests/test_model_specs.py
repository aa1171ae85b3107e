"""The specs of specs/: every one validates, and the real-model specs (whose weights are
not in the repository) fail cleanly — exit 2, the environment variable to set named, no
traceback, no download — when the model folder is missing."""

from __future__ import annotations

import pytest

from helpers import REPO, assert_clean_error, cli

SPECS = REPO / "specs"
REAL = ["qwen35", "intern-s2-preview", "internlm25-7b-chat", "ernie45-21b-a3b-base"]


def test_every_spec_validates():
    result = cli("validate", SPECS)
    assert result.rc == 0, result.text
    for name in REAL + [f"tiny/{n}" for n in ("internlm25-tiny", "qwen35-tiny",
                                             "intern-s2-tiny", "ernie45-tiny")]:
        assert f"ok {SPECS / name}.yaml (" in result.out, (name, result.out)


def test_real_specs_describe_the_reports():
    """The settings the reports call for are in the specs (read without loading anything)."""
    from specengine.spec import load_spec

    specs = {n: load_spec(SPECS / f"{n}.yaml") for n in REAL}
    for spec in specs.values():
        assert spec.reference == "cpu"
        assert spec.model.source == "path" and spec.model.env_vars == ("SPECENGINE_MODELS",)
        budget = spec.perf["budgets"]["npu"]
        assert "report" in budget["note"]
    # remote code only where the architecture is not in transformers
    assert [n for n, s in specs.items() if s.model.trust_remote_code] == ["internlm25-7b-chat"]
    s2 = specs["intern-s2-preview"]
    npu = s2.backend_models["npu"]
    assert npu.device_map == "auto" and set(map(str, npu.max_memory)) == {"0", "1"}
    assert s2.model.device_map is None          # the cpu reference stays on the CPU
    kwargs = {c.id: c.chat_template_kwargs for c in s2.cases}
    assert kwargs["add-think-off"] == {"enable_thinking": False}
    assert kwargs["add-think-on"] == {"enable_thinking": True}
    assert s2.case("add-think-off").expect["min_prob"] == 0.99
    assert specs["qwen35"].cases[0].determinism.runs == 3
    assert specs["internlm25-7b-chat"].cases[0].determinism.runs == 2


@pytest.mark.parametrize("name", REAL)
def test_missing_model_names_the_variable(name, tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    env = {"SPECENGINE_MODELS": str(empty)}
    spec = SPECS / f"{name}.yaml"
    golden = tmp_path / "golden"

    # recording the golden needs the model
    line = assert_clean_error(cli("record-golden", spec, "--backend", "cpu", "--golden-dir",
                                  golden, env=env), 2)
    assert "SPECENGINE_MODELS" in line and str(empty) in line, line
    # a live comparison needs it too
    line = assert_clean_error(cli("check", spec, "--backend", "cpu-bf16", "--against", "cpu",
                                  "--golden-dir", golden, env=env), 2)
    assert "SPECENGINE_MODELS" in line, line
    # a check without a golden stops at the missing golden (exit 2), still no traceback
    assert_clean_error(cli("check", spec, "--backend", "cpu-bf16", "--golden-dir", golden,
                           env=env), 2)
    assert not golden.exists() or not any(golden.rglob("*.json"))
