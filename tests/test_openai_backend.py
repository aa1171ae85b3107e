"""The `openai` runtime: a served model checked against the committed cpu golden.

Three servers, all on loopback, started and stopped by the tests themselves:

* `transformers serve` (the real server of the installed transformers) serving the
  converted SmolLM2 folder. It returns text only — no log-probs, no token ids — so
  tokens, expectations and determinism pass while the log-prob checks are `not-run`.
* `StubServer` below, a minimal OpenAI-compatible server in the vLLM dialect (prompt ids
  in, `token_id:N` tokens, top log-probs, `prompt_logprobs`) backed by the torch model:
  the log-prob path (teacher-forced metrics, log-prob determinism) end to end. The same
  stub with log-probs switched off covers the text-only path where transformers serve
  cannot be installed.
* a socket that accepts and never answers, and a closed port: exit 3 with the URL and
  the timeout, no hang.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from helpers import (REPO, assert_clean_error, checks_by_case, cli, free_port,
                     served_smollm2_spec)
from specengine.backends.base import BackendConfig
from specengine.backends.openai.dialects import parse_options
from specengine.backends.openai.replies import choice_steps, latency_summary
from specengine.backends.openai.tokens import resegment
from specengine.errors import UsageError

GOLDEN_DIR = REPO / "golden"
CASES = ["capital-fr", "add-chat", "capital-zh"]   # raw English, chat, byte-split Chinese


def served_spec(tmp_path: Path, base_url: str, **options) -> Path:
    """The embedded SmolLM2 spec (same cases, so the committed golden applies) with a
    `served` backend of runtime openai."""
    return served_smollm2_spec(tmp_path / "served.yaml", "served",
                               {"base_url": base_url, "timeout_s": 120, **options})


def run_check(spec: Path, tmp_path: Path, *extra, timeout: float = 900, cases=CASES):
    out = tmp_path / "out.json"
    args = ["check", spec, "--backend", "served", "--golden-dir", GOLDEN_DIR, "--json", out,
            "--html", tmp_path / "out.html"]
    for case in cases:
        args += ["--case", case]
    result = cli(*args, *extra, timeout=timeout)
    data = json.loads(out.read_text()) if out.exists() else None
    return result, (data["runs"][0] if data else None)


# -- pure parts ----------------------------------------------------------------------

def test_options_are_validated():
    with pytest.raises(UsageError, match="did you mean 'timeout_s'"):
        parse_options(BackendConfig("s", "openai", options={"base_url": "http://x", "timeout": 1}))
    with pytest.raises(UsageError, match="needs options.base_url"):
        parse_options(BackendConfig("s", "openai", options={}))
    with pytest.raises(UsageError, match="not an http"):
        parse_options(BackendConfig("s", "openai", options={"base_url": "127.0.0.1:80"}))
    opts = parse_options(BackendConfig("s", "openai", options={"base_url": "http://h:1"}))
    assert opts["base_url"] == "http://h:1/v1" and opts["retries"] == 2


def test_base_url_reads_the_environment(monkeypatch):
    monkeypatch.setenv("SE_TEST_URL", "http://10.0.0.1:8000/v1")
    opts = parse_options(BackendConfig("s", "openai",
                                       options={"base_url": "${SE_TEST_URL:-http://d/v1}"}))
    assert opts["base_url"] == "http://10.0.0.1:8000/v1"


def test_spec_schema_rejects_unknown_openai_option(tmp_path):
    spec = served_spec(tmp_path, "http://127.0.0.1:9/v1", timeoutt_s=3)
    line = assert_clean_error(cli("validate", spec), 2)
    assert "timeoutt_s" in line and "served.yaml:" in line


def test_resegment_follows_the_golden_where_the_text_agrees():
    vocab = {1: "ab", 2: "a", 3: "b", 4: "c", 5: "\ufffd", 6: "cd"}

    def decode(ids):
        return "".join(vocab[i] for i in ids)

    def retok(text):   # a greedy tokenizer that prefers long pieces; 0 = unknown char
        out, i = [], 0
        while i < len(text):
            for tid, piece in sorted(vocab.items(), key=lambda kv: -len(kv[1])):
                if piece != "\ufffd" and text.startswith(piece, i):
                    out.append(tid)
                    i += len(piece)
                    break
            else:
                out.append(0)
                i += 1
        return out

    # the golden spelled "ab" as a + b; the served text is the same: read it the same way
    assert resegment([2, 3, 4], "abc", decode, retok) == [2, 3, 4]
    # texts part after "ab": golden ids up to there, the tokenizer's own after
    assert resegment([2, 3, 4], "abcd", decode, retok)[:2] == [2, 3]
    assert resegment([2, 3, 6], "abc", decode, retok) == [2, 3, 4]
    # a golden ending inside a character matches a text that goes on
    assert resegment([2, 5], "ax", decode, retok)[:2] == [2, 5]


def test_reply_parsing_both_formats():
    chat = {"logprobs": {"content": [{"token": "token_id:7", "logprob": -0.1, "bytes": [72],
                                      "top_logprobs": [{"token": "token_id:7", "logprob": -0.1},
                                                       {"token": "token_id:9", "logprob": -2.5}]}]}}
    steps = choice_steps(chat)
    assert steps[0].token == "token_id:7" and steps[0].top[1][:2] == ("token_id:9", -2.5)
    legacy = {"logprobs": {"tokens": [" Paris"], "token_logprobs": [-0.2],
                           "top_logprobs": [{" Paris": -0.2, " Lyon": -3.0}]}}
    steps = choice_steps(legacy)
    assert steps[0].logprob == -0.2 and len(steps[0].top) == 2
    assert choice_steps({"text": "x", "logprobs": None}) == []
    assert "TTFT p50 200.0 ms" in latency_summary([(0.1, 0.02), (0.3, None)])


# -- a minimal OpenAI-compatible server (vLLM dialect) backed by the torch model --------

class StubServer:
    """/v1/models, /v1/completions, /v1/chat/completions on loopback. With `logprobs`
    it answers like vLLM (ids in, token_id:N out, top log-probs, prompt_logprobs);
    without, it returns text only, like transformers serve."""

    def __init__(self, hf_dir: Path, logprobs: bool):
        from specengine.backends.torch.backend import TorchBackend
        from specengine.loading.sources import ResolvedSource
        from specengine.spec import ModelSpec
        from specengine.loading.tokenizer import HFTokenizer

        self.logprobs = logprobs
        self.default_penalty = 1.0
        source = ResolvedSource(ModelSpec(source="path", path=str(hf_dir)), hf_dir, "stub", "stub")
        self.backend = TorchBackend(BackendConfig("stub", "torch"))
        self.backend.load(source)
        self.tok = HFTokenizer(hf_dir).tok
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.endswith("/models"):
                    owner = "vllm" if stub.logprobs else "stub"
                    return self._json({"object": "list", "data": [
                        {"id": "smollm2", "owned_by": owner, "max_model_len": 8192}]})
                if self.path == "/version":
                    return self._json({"version": "stub-1"})
                self._json({"error": "not found"}, 404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                chat = self.path.endswith("/chat/completions")
                try:
                    events, reply = stub.answer(body, chat)
                except ValueError as exc:
                    return self._json({"error": str(exc)}, 400)
                if not body.get("stream"):
                    return self._json(reply)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(0.002)
                self.wfile.write(b"data: [DONE]\n\n")

            def _json(self, data, status=200):
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.backend.close()

    # the model side
    def _prompt_ids(self, body: dict, chat: bool) -> list[int]:
        if chat:
            text = self.tok.apply_chat_template(body["messages"], add_generation_prompt=True,
                                                tokenize=False, **body.get("chat_template_kwargs", {}))
            return list(self.tok(text, add_special_tokens=False)["input_ids"])
        prompt = body["prompt"]
        if isinstance(prompt, list):
            if not self.logprobs:
                raise ValueError("prompt must be a string")
            return [int(i) for i in prompt]
        return list(self.tok(prompt)["input_ids"])

    def _name(self, tid: int, as_ids: bool) -> str:
        return f"token_id:{tid}" if as_ids else self.tok.decode([tid])

    def answer(self, body: dict, chat: bool):
        ids = self._prompt_ids(body, chat)
        top = int(body.get("top_logprobs") or 0) if chat else int(body.get("logprobs") or 0)
        want_lp = self.logprobs and (bool(body.get("logprobs")) if chat else top > 0)
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        stops = body.get("stop_token_ids") or [self.tok.eos_token_id]
        # like vLLM with a model's generation_config.json: a repetition penalty applies
        # unless the request sets its own (the log-probs stay the raw model's)
        penalty = float(body.get("repetition_penalty", self.default_penalty))
        with self.lock:
            if penalty != 1.0:
                gen = self._penalized(ids, int(body.get("max_tokens", 16)), max(top, 1), stops,
                                      penalty)
            else:
                gen = self.backend.generate([ids], int(body.get("max_tokens", 16)), max(top, 1),
                                            stops)[0]
            prompt_rows = self._prompt_logprobs(ids, int(body["prompt_logprobs"])) \
                if self.logprobs and body.get("prompt_logprobs") else None
        out = gen.output_ids
        finish = "stop" if out and out[-1] in stops else "length"
        steps = []
        for i, tid in enumerate(out):
            tops = [(int(a), float(b)) for a, b in zip(gen.topk_ids[i][:top], gen.topk_logprobs[i][:top])]
            steps.append((tid, dict(tops).get(tid, float(gen.topk_logprobs[i][-1])), tops))
        # like a real server, hold back a character that is still incomplete (U+FFFD)
        texts = [self.tok.decode(out[:i + 1], skip_special_tokens=True).rstrip("\ufffd")
                 for i in range(len(out))]
        deltas = [t[len(p):] for p, t in zip([""] + texts[:-1], texts)]
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(out),
                 "total_tokens": len(ids) + len(out)}

        def lp_block(chunk):
            if not want_lp:
                return None
            if chat:
                return {"content": [{"token": self._name(t, as_ids), "logprob": lp,
                                     "top_logprobs": [{"token": self._name(a, as_ids), "logprob": b}
                                                      for a, b in tops]} for t, lp, tops in chunk]}
            return {"tokens": [self._name(t, as_ids) for t, _, _ in chunk],
                    "token_logprobs": [lp for _, lp, _ in chunk],
                    "top_logprobs": [{self._name(a, as_ids): b for a, b in tops} for _, _, tops in chunk]}

        def choice(text, chunk, final):
            c = {"index": 0, "logprobs": lp_block(chunk), "finish_reason": finish if final else None}
            if chat:
                c["message" if not body.get("stream") else "delta"] = {"role": "assistant", "content": text}
            else:
                c["text"] = text
            return c

        whole = {"id": "x", "object": "chat.completion" if chat else "text_completion",
                 "choices": [choice(texts[-1] if texts else "", steps, True)], "usage": usage}
        if prompt_rows is not None:
            whole["choices"][0]["prompt_logprobs"] = prompt_rows
        events = [{"id": "x", "choices": [choice(d, [s], i == len(steps) - 1)]}
                  for i, (d, s) in enumerate(zip(deltas, steps))]
        events.append({"id": "x", "choices": [], "usage": usage})
        return events, whole

    def _penalized(self, ids: list[int], max_tokens: int, top: int, stops, penalty: float):
        """Greedy on logits with vLLM's repetition penalty over prompt and output tokens;
        the returned top-k is the raw distribution's, as vLLM reports it."""
        import torch

        from specengine.backends.base import Generation

        seq, out, top_ids, top_lp = list(ids), [], [], []
        feed, past = seq, None
        for _ in range(max_tokens):
            with torch.inference_mode():
                step = self.backend.model(input_ids=torch.tensor([feed]), past_key_values=past,
                                          use_cache=True)
            past, logits = step.past_key_values, step.logits[0, -1].float()
            lp = torch.log_softmax(logits, -1)
            values, index = lp.topk(top)
            seen = torch.tensor(sorted(set(seq)))
            picked = logits.clone()
            picked[seen] = torch.where(picked[seen] > 0, picked[seen] / penalty,
                                       picked[seen] * penalty)
            tid = int(picked.argmax())
            out.append(tid)
            top_ids.append(index.numpy())
            top_lp.append(values.numpy())
            seq.append(tid)
            feed = [tid]
            if tid in stops:
                break
        return Generation(list(ids), out, np.array(top_ids), np.array(top_lp, np.float32), None)

    def _prompt_logprobs(self, ids: list[int], top: int) -> list:
        import torch

        model = self.backend.model
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        rows: list = [None]
        for j in range(1, len(ids)):
            values, index = lp[j - 1].topk(top)
            row = {str(int(i)): {"logprob": float(v)} for v, i in zip(values, index)}
            row.setdefault(str(ids[j]), {"logprob": float(lp[j - 1, ids[j]])})
            rows.append(row)
        return rows


@pytest.fixture(scope="module")
def stub_with_logprobs(smollm2_dir):
    server = StubServer(smollm2_dir, logprobs=True)
    yield server
    server.close()


@pytest.fixture(scope="module")
def stub_text_only(smollm2_dir):
    server = StubServer(smollm2_dir, logprobs=False)
    yield server
    server.close()


def test_logprob_path_against_a_vllm_dialect_server(stub_with_logprobs, tmp_path):
    spec = served_spec(tmp_path, stub_with_logprobs.base_url)
    result, run = run_check(spec, tmp_path)
    assert result.rc == 0, result.text
    assert run["comparison"] == "cross-backend"
    settings = run["candidate"]["settings"]
    assert settings["dialect"] == "vllm" and settings["prompt"] == "token ids"
    assert settings["logprobs"].startswith("top 20") and settings["chat_requests"] >= 2
    assert "TTFT p50" in settings["latency"] and "TPOT p50" in settings["latency"]
    assert run["candidate"]["versions"]["server"] == "vllm stub-1"   # engine + GET /version
    assert settings["server.engine"] == "vllm" and settings["server.max_model_len"] == "8192"
    checks = checks_by_case(run)
    for case in CASES:
        tf = checks[case]["teacher-forced"]
        assert tf["status"] == "pass" and tf["metrics"]["kl_max"] < 1e-4, tf
        assert checks[case]["determinism"]["status"] == "pass"
        assert "determinism.logprobs" not in checks[case]
        assert checks[case]["divergence"]["message"] == "identical greedy tokens"
        assert checks[case]["greedy"]["status"] == "pass", checks[case]["greedy"]
    assert settings["sampling"].startswith("neutral: temperature=0, top_p=1.0")
    # prompt ids went over the wire as ids, chats through the chat endpoint; every
    # request spelled out vLLM's neutral sampling settings
    sent = stub_with_logprobs.requests
    assert all(b["repetition_penalty"] == 1.0 and b["top_k"] == -1 and b["min_p"] == 0
               and b["temperature"] == 0 for b in sent if "max_tokens" in b)
    assert any(isinstance(b.get("prompt"), list) for b in sent)
    assert any("messages" in b and b.get("top_logprobs") for b in sent)
    assert any(b.get("prompt_logprobs") for b in sent)


def test_a_server_penalty_is_reported_as_not_greedy_and_neutral_settings_fix_it(
        stub_with_logprobs, tmp_path):
    """A server that applies a repetition penalty unless told otherwise (vLLM with a
    model's generation_config.json): with temperature 0 alone the report names it as not
    greedy; with the neutral settings (the default) the same server passes."""
    stub_with_logprobs.default_penalty = 1.3
    try:
        spec = served_spec(tmp_path, stub_with_logprobs.base_url, neutral_sampling=False)
        result, run = run_check(spec, tmp_path, cases=["capital-fr", "add-chat"])
        assert result.rc == 1, result.text
        greedy = {cid: c["greedy"] for cid, c in checks_by_case(run).items()}
        failed = {cid: g for cid, g in greedy.items() if g["status"] == "fail"}
        assert failed, greedy
        for g in failed.values():
            assert g["message"].startswith(f"server not greedy at step {g['metrics']['first_step']}")
            assert "generation_config.json" in g["message"] and "neutral_sampling" in g["message"]
        assert any("was not greedy at temperature 0" in note for note in run["notes"])
        assert "server defaults apply" in run["candidate"]["settings"]["sampling"]

        (tmp_path / "neutral").mkdir()
        spec = served_spec(tmp_path / "neutral", stub_with_logprobs.base_url)
        result, run = run_check(spec, tmp_path / "neutral", cases=["capital-fr", "add-chat"])
        assert result.rc == 0, result.text
        assert all(c["greedy"]["status"] == "pass" for c in checks_by_case(run).values())
        assert not any("not greedy" in note for note in run["notes"])
    finally:
        stub_with_logprobs.default_penalty = 1.0


def test_text_only_server_reports_logprob_checks_not_run(stub_text_only, tmp_path):
    spec = served_spec(tmp_path, stub_text_only.base_url, overshoot_tokens=4)
    result, run = run_check(spec, tmp_path)
    assert result.rc == 0, result.text
    _assert_text_only_run(run)


def _assert_text_only_run(run: dict) -> None:
    checks = checks_by_case(run)
    for case in CASES:
        got = checks[case]
        assert got["teacher-forced"]["status"] == "not-run"
        assert "log-probs" in got["teacher-forced"]["message"]
        assert got["determinism"]["status"] == "pass"
        assert "log-probs not compared" in got["determinism"]["message"]
        assert got["determinism.logprobs"]["status"] == "not-run"
        assert got["divergence"]["status"] == "pass"
        assert got["greedy"]["status"] == "not-run" and "log-probs" in got["greedy"]["message"]
    assert checks["capital-fr"]["expect.contains"]["status"] == "pass"
    assert checks["add-chat"]["expect.contains"]["status"] == "pass"
    by_id = {c["id"]: c for c in run["cases"]}
    assert by_id["capital-zh"]["candidate_ids"] == by_id["capital-zh"]["golden_ids"]
    settings = run["candidate"]["settings"]
    assert settings["logprobs"].startswith("not available")
    assert "re-tokenized" in settings["output_ids"]
    assert "TTFT p50" in settings["latency"] and "TPOT p50" in settings["latency"]
    assert any("not run" in note for note in run["notes"])


def _with_served_backend(spec_file: Path, tmp_path: Path, base_url: str) -> Path:
    """A copy of a spec with a `served` openai backend (these specs name no relative
    path, so the copy lives in tmp_path, out of the way of tests that read specs/)."""
    text = spec_file.read_text(encoding="utf-8").replace("\nreference:", "\nbackends:\n  served:\n"
                                                         "    runtime: openai\n    options: "
                                                         + json.dumps({"base_url": base_url,
                                                                       "timeout_s": 60})
                                                         + "\nreference:", 1)
    assert "\n  path: ./" not in text and "file: ./" not in text
    path = tmp_path / spec_file.name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("spec_file,what", [
    (REPO / "specs" / "ops" / "ernie45-ops.yaml", "operator specs"),
    (REPO / "specs" / "minilm-l6.yaml", "embedding models"),
])
def test_kinds_a_server_cannot_run_are_not_run_never_an_error_or_a_pass(
        stub_with_logprobs, tmp_path, spec_file, what):
    """An ops or embedding spec on a served (openai) backend: every case is `not-run` with
    the reason (a missing optional feature), the run is not-run, and the gate does not pass
    (exit 1: nothing was compared)."""
    spec = _with_served_backend(spec_file, tmp_path, stub_with_logprobs.base_url)
    out = tmp_path / "out.json"
    result = cli("check", spec, "--backend", "served", "--golden-dir", GOLDEN_DIR,
                 "--json", out, "--junit", tmp_path / "out.xml", timeout=600)
    assert result.rc == 1, result.text
    assert "Traceback" not in result.text
    run = json.loads(out.read_text())["runs"][0]
    assert run["status"] == "not-run"
    assert run["cases"] and all(c["status"] == "not-run" for c in run["cases"])
    assert all(c["checks"][0]["status"] == "not-run" and what in c["checks"][0]["message"]
               for c in run["cases"])
    assert "not run" in result.text


# -- transformers serve ------------------------------------------------------------------

def _serve_available() -> bool:
    try:
        from transformers.utils.import_utils import is_serve_available
    except ImportError:
        return False
    return is_serve_available()


@pytest.fixture(scope="module")
def transformers_serve(smollm2_dir, tmp_path_factory):
    if not _serve_available():
        pytest.skip("transformers serve needs fastapi, uvicorn and openai: "
                    "pip install -e '.[test]'")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-c", "from transformers.cli.transformers import main; main()",
           "serve", str(smollm2_dir), "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", "--dtype", "float32"]
    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited ({proc.returncode}): "
                            f"{log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not come up in 240 s: "
                            f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(1)
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def test_transformers_serve_against_the_cpu_golden(transformers_serve, tmp_path):
    spec = served_spec(tmp_path, transformers_serve, overshoot_tokens=4)
    result, run = run_check(spec, tmp_path)
    assert result.rc == 0, result.text
    _assert_text_only_run(run)
    assert run["candidate"]["runtime"] == "openai"
    assert run["candidate"]["settings"]["chat_requests"] >= 2
    html = (tmp_path / "out.html").read_text(encoding="utf-8")
    assert "not-run" in html and "TTFT p50" in html


# -- a server that is down or too slow ----------------------------------------------------

class SilentServer:
    """Accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except OSError:
                continue

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_slow_server_is_exit_3_with_url_and_timeout(tmp_path):
    silent = SilentServer()
    try:
        url = f"http://127.0.0.1:{silent.port}/v1"
        spec = served_spec(tmp_path, url, timeout_s=1, retries=1, backoff_s=0.1)
        start = time.monotonic()
        result = cli("check", spec, "--backend", "served", "--golden-dir", GOLDEN_DIR,
                     "--case", "capital-fr", timeout=300)
        line = assert_clean_error(result, 3)
        assert url in line and "timeout 1 s" in line and "timed out" in line
        assert time.monotonic() - start < 240
    finally:
        silent.close()


def test_down_server_is_exit_3_with_url(tmp_path):
    port = free_port()   # nothing listens there
    spec = served_spec(tmp_path, f"http://127.0.0.1:{port}/v1", timeout_s=2, retries=1,
                       backoff_s=0.1)
    line = assert_clean_error(cli("check", spec, "--backend", "served", "--golden-dir",
                                  GOLDEN_DIR, "--case", "capital-fr", timeout=300), 3)
    assert f"http://127.0.0.1:{port}/v1/models" in line and "timeout 2 s" in line


def test_missing_api_key_variable_is_exit_3(tmp_path):
    spec = served_spec(tmp_path, "http://127.0.0.1:9/v1", api_key_env="SE_NO_SUCH_KEY_VAR")
    assert "SE_NO_SUCH_KEY_VAR" not in os.environ
    line = assert_clean_error(cli("check", spec, "--backend", "served", "--golden-dir",
                                  GOLDEN_DIR, "--case", "capital-fr"), 3)
    assert "SE_NO_SUCH_KEY_VAR" in line


def test_text_only_server_cannot_record_a_golden(stub_text_only, tmp_path):
    spec = served_spec(tmp_path, stub_text_only.base_url)
    line = assert_clean_error(cli("record-golden", spec, "--backend", "served", "--golden-dir",
                                  tmp_path / "g"), 3)
    assert "no log-probs" in line and not (tmp_path / "g" / "smollm2-135m" / "served.json").exists()
