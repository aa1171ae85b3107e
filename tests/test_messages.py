"""One error, one message: `validate`, `check` and pytest collection word a spec error
the same way, with file:line:col; YAML syntax errors are in plain words."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import TINY_MODEL, assert_clean_error, cli, write_spec

TYPO = "specengine: 1\nname: typo\n" + TINY_MODEL + "cases:\n  - id: a\n    promt: hello\n"
LINE = TYPO.splitlines().index("    promt: hello") + 1
EXPECTED = f"typo.yaml:{LINE}:5: unknown key 'promt' in cases/0; did you mean 'prompt'?"


def test_the_same_typo_gets_the_same_message_everywhere(tmp_path):
    spec = write_spec(tmp_path / "typo.yaml", TYPO)
    validate = cli("validate", spec)
    assert validate.rc == 2 and EXPECTED in validate.err, validate.text
    check = cli("check", spec, "--backend", "cpu")
    assert check.rc == 2, check.text
    assert EXPECTED in check.err.splitlines()[0], check.err
    collect = subprocess.run([sys.executable, "-m", "pytest", str(spec), "-p", "no:cacheprovider",
                              "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert collect.returncode == 2, collect.stdout
    assert EXPECTED in collect.stdout, collect.stdout
    for text in (validate.err, check.err, collect.stdout):
        assert "exactly one of prompt" not in text, text


@pytest.mark.parametrize("text, where, words", [
    ("specengine: 1\nname: x\ncases:\n\t- id: a\n", "4:1", "a tab character: YAML indents "
     "with spaces only"),
    ("specengine: 1\nname: x\nmodel:\n  path: m\n kind: causal-lm\n", "5:2",
     "bad indentation: this line does not line up with the block it belongs to (the block "
     "starting at line 1, column 1)"),
    ("specengine: 1\nname: \"x\ncases: []\n", "2:7", "a quoted string is never closed: the "
     "quote opened at line 2, column 7"),
    ("specengine: 1\nname: x\nname: y\n", "3:1", "duplicate key 'name' (first at line 2"),
])
def test_yaml_syntax_errors_in_plain_words(tmp_path, text, where, words):
    spec = write_spec(tmp_path / "bad.yaml", text)
    for command in (["validate", spec], ["check", spec, "--backend", "cpu"]):
        result = cli(*command)
        line = result.err.splitlines()[0] if result.err else ""
        assert result.rc == 2 and f"bad.yaml:{where}: {words}" in line, result.text
        assert "Traceback" not in result.text
        for jargon in ("<block end>", "scanning", "token", "stream"):
            assert jargon not in line, line
    assert_clean_error(cli("validate", spec, "-q"), 2)


QUIET_PROBE = """
import logging, sys
from specengine.progress import quiet_libraries, silence_library_bars
quiet_libraries()                       # what every command does first
from tqdm.auto import tqdm
for _ in tqdm(range(3), desc="A-LIBRARY-BAR"):
    pass
silence_library_bars()
from transformers.utils import logging as hf_logging
hf_logging.get_logger("transformers.modeling_utils").warning(
    "\\x1b[1mLlamaForCausalLM LOAD REPORT\\x1b[0m from: x")
"""


def test_libraries_bars_and_colours_stay_out_of_a_log(tmp_path):
    """Off a terminal (stderr to a pipe, as in CI), another library's tqdm bar draws
    nothing and transformers' bold load report loses its escape codes."""
    result = subprocess.run([sys.executable, "-c", QUIET_PROBE], capture_output=True, text=True,
                            timeout=300, env={k: v for k, v in os.environ.items()
                                              if k != "TQDM_DISABLE"})
    assert result.returncode == 0, result.stderr
    assert "A-LIBRARY-BAR" not in result.stderr, result.stderr
    assert "LlamaForCausalLM LOAD REPORT from: x" in result.stderr, result.stderr
    assert "\x1b" not in result.stderr
