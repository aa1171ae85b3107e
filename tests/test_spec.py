"""Spec loading and validation: every broken spec is exit 2 with file:line:col, one line,
no traceback, nothing executed, nothing written."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, assert_clean_error, cli, write_spec
from specengine.errors import SpecError
from specengine.spec import parse_spec

GOOD = """\
specengine: 1
name: demo
model:
  path: ${DEMO_MODELS:-models}/tiny
defaults:
  max_new_tokens: 8
  tolerance: {half: {kl_mean_max: 0.02}}
cases:
  - id: a
    prompt: "The capital of France is"
  - id: b
    messages: [{role: user, content: hi}]
    tolerance: {half: {kl_max: 0.3, divergence: {within_top_k: 2}}}
    max_new_tokens: 4
"""

BROKEN = {
    "yaml-syntax": ("specengine: 1\nname: x\nmodel: {path: a\ncases: []\n", 4,
                    "the '{' opened at line 3, column 8 is not closed"),
    "unknown-key": ("specengine: 1\nname: x\nmodel: {path: a}\ncases:\n  - id: a\n    prompt: p\n"
                    "    promt: q\n", 7, "unknown key 'promt'"),
    "wrong-type": ("specengine: 1\nname: x\nmodel: {path: a}\ndefaults:\n  max_new_tokens: many\n"
                   "cases: [{id: a, prompt: p}]\n", 5, "not of type 'integer'"),
    "duplicate-ids": ("specengine: 1\nname: x\nmodel: {path: a}\ncases:\n  - {id: a, prompt: p}\n"
                      "  - {id: a, prompt: q}\n", 6, "duplicate case id 'a'"),
    "negative-tolerance": ("specengine: 1\nname: x\nmodel: {path: a}\ncases:\n  - id: a\n    prompt: p\n"
                           "    tolerance: {half: {kl_max: -0.5}}\n", 7, "less than the minimum"),
    "python-tag": ("specengine: 1\nname: x\nmodel: !!python/object/apply:os.system ['touch PWNED']\n"
                   "cases: [{id: a, prompt: p}]\n", 3, "tag"),
    "name-escape": ("specengine: 1\nname: ../../etc\nmodel: {path: a}\ncases: [{id: a, prompt: p}]\n",
                    2, "not a valid name"),
    "unknown-backend": ("specengine: 1\nname: x\nmodel: {path: a}\nreference: cpu-fp16\n"
                        "cases: [{id: a, prompt: p}]\n", 4, "unknown backend 'cpu-fp16'"),
    "two-sources": ("specengine: 1\nname: x\nmodel: {path: a, synthetic: {model_type: llama}}\n"
                    "cases: [{id: a, prompt: p}]\n", 3, "exactly one of path, gguf, synthetic"),
    "no-prompt": ("specengine: 1\nname: x\nmodel: {path: a}\ncases:\n  - id: a\n", 5,
                  "exactly one of prompt, messages"),
    "tolerance-order": ("specengine: 1\nname: x\nmodel: {path: a}\ndefaults:\n  tolerance: "
                        "{half: {kl_mean_max: 0.5, kl_max: 0.1}}\ncases: [{id: a, prompt: p}]\n", 5,
                        "larger than kl_max"),
    "flat-tolerance": ("specengine: 1\nname: x\nmodel: {path: a}\ndefaults:\n  tolerance:\n"
                       "    kl_max: 0.1\ncases: [{id: a, prompt: p}]\n", 6,
                       "limits are keyed by numeric class"),
    "misspelt-class": ("specengine: 1\nname: x\nmodel: {path: a}\ncases:\n  - id: a\n    prompt: p\n"
                       "    tolerance: {hafl: {kl_max: 0.1}}\n", 7, "did you mean 'half'"),
    "bad-regex": ("specengine: 1\nname: x\nmodel: {path: a}\ncases:\n  - id: a\n    prompt: p\n"
                  "    expect: {regex: '([a-'}\n", 7, "bad regular expression"),
    "duplicate-key": ("specengine: 1\nname: x\nname: y\nmodel: {path: a}\ncases: [{id: a, prompt: p}]\n",
                      3, "duplicate key 'name'"),
    "unset-variable": ("specengine: 1\nname: x\nmodel:\n  path: ${SPECENGINE_TEST_UNSET}/m\n"
                       "cases: [{id: a, prompt: p}]\n", 4, "SPECENGINE_TEST_UNSET is not set"),
    "empty": ("", 1, "empty"),
    "not-a-map": ("- a\n- b\n", 1, "not of type 'object'"),
}


def test_good_spec_resolves_defaults_and_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("DEMO_MODELS", raising=False)
    spec = parse_spec(GOOD, str(tmp_path / "s.yaml"))
    a, b = spec.cases
    assert spec.model.path == str(tmp_path / "models" / "tiny")
    assert spec.model.env_vars == ("DEMO_MODELS",)
    assert a.max_new_tokens == 8 and b.max_new_tokens == 4
    half_a, half_b = (c.limits("half").values for c in (a, b))
    assert half_a.kl_mean_max == 0.02 and half_a.kl_max == 0.05
    assert half_b.kl_mean_max == 0.02 and half_b.kl_max == 0.3
    assert half_b.within_top_k == 2 and half_a.within_top_k == 5
    # the half block never judges a float32 comparison
    assert a.limits("float32").values.kl_mean_max == 1e-4
    assert b.messages == [{"role": "user", "content": "hi"}]
    assert a.line == 9 and b.line == 11


def test_env_interpolation(monkeypatch, tmp_path):
    monkeypatch.setenv("DEMO_MODELS", "/opt/m")
    assert parse_spec(GOOD, str(tmp_path / "s.yaml")).model.path == "/opt/m/tiny"
    # only ${VAR} forms expand: no $VAR, no command substitution
    text = GOOD.replace("${DEMO_MODELS:-models}/tiny", "'$(touch PWNED)/$HOME/`id`'")
    spec = parse_spec(text, str(tmp_path / "s.yaml"))
    assert spec.model.path.endswith("$(touch PWNED)/$HOME/`id`")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_spec_errors_name_the_place(name, tmp_path):
    text, line, fragment = BROKEN[name]
    with pytest.raises(SpecError) as info:
        parse_spec(text, "broken.yaml")
    err = info.value
    assert err.line == line, str(err)
    assert fragment in str(err), str(err)
    assert re.match(rf"broken\.yaml:{line}:\d+: ", str(err)), str(err)
    assert "\n" not in err.one_line()


@pytest.mark.parametrize("name", ["yaml-syntax", "unknown-key", "duplicate-ids", "python-tag",
                                  "name-escape", "negative-tolerance", "wrong-type",
                                  "flat-tolerance"])
def test_broken_spec_cli_exit_2_one_line(name, tmp_path):
    text, line, fragment = BROKEN[name]
    spec = write_spec(tmp_path / "broken.yaml", text)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for args in (["validate", spec], ["check", spec, "--backend", "cpu", "--golden-dir", tmp_path / "g"],
                 ["record-golden", spec, "--golden-dir", tmp_path / "g"]):
        result = cli(*args, cwd=tmp_path)
        msg = assert_clean_error(result, 2)
        assert f"broken.yaml:{line}:" in msg and fragment in msg, msg
    assert sorted(p.name for p in tmp_path.rglob("*")) == before   # nothing written
    assert not (tmp_path / "PWNED").exists()


def test_validate_folder_and_shipped_specs():
    result = cli("validate", REPO / "specs")
    assert result.rc == 0, result.text
    assert "smollm2-135m" in result.out


def test_validate_reports_every_bad_file(tmp_path):
    write_spec(tmp_path / "a.yaml", BROKEN["unknown-key"][0])
    write_spec(tmp_path / "b.yaml", BROKEN["duplicate-ids"][0])
    result = cli("validate", tmp_path)
    assert result.rc == 2
    assert "a.yaml:7:" in result.err and "b.yaml:6:" in result.err


def test_missing_spec_file(tmp_path):
    assert_clean_error(cli("validate", tmp_path / "nope.yaml"), 2)


def test_light_commands_do_not_import_heavy_libraries(tmp_path):
    """import specengine, --help and validate never import torch/transformers/onnxruntime."""
    spec = write_spec(tmp_path / "s.yaml", GOOD)
    code = (
        "import sys, runpy\n"
        "import specengine, specengine.cli\n"
        "from specengine.cli import main\n"
        f"rc1 = main(['validate', {str(spec)!r}])\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "main(['schema'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'onnx') if m in sys.modules]\n"
        "print('HEAVY', heavy, rc1)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY [] 0" in out.stdout, out.stdout + out.stderr


def test_schema_describes_every_key():
    from specengine.spec import schema

    missing = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, sub in (node.get("properties") or {}).items():
                if isinstance(sub, dict) and "description" not in sub and "$ref" not in sub:
                    missing.append(f"{path}/{key}")
            for key, sub in node.items():
                walk(sub, f"{path}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}/{i}")

    walk(schema("spec"), "")
    assert not missing, missing


def test_schema_command_prints_schema():
    import json

    result = cli("schema")
    assert result.rc == 0
    assert json.loads(result.out)["title"] == "specengine spec"


def test_shipped_specs_have_schema_line():
    for path in (REPO / "specs").rglob("*.yaml"):
        first = path.read_text("utf-8").splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
