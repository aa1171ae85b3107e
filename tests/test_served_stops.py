"""A served model whose server stops in the middle of a run, and the request sequence that
kills a pip-built llama-cpp-python — with small stdlib servers, no model:

* `ReplayServer` speaks vLLM's dialect and answers from the committed cpu golden (the
  golden's tokens and top-k as the server's own), so the cases it answers pass; at the
  first request for a chosen case it dies — closing the connection and then refusing
  connections, or cutting a stream off after its first event. The check must stop there
  with exit 3 and one line naming how many requests the server answered, why it stopped,
  the request and the case, and keep the cases already judged in the JSON as judged.
* `CachingLlamaStub` mimics llama-cpp-python 0.3.36's server as far as specengine's
  capability probes go: a request that repeats the previous request's whole evaluated
  prompt is answered from its cache without a forward pass, and the pip-built server
  then dies (SIGSEGV) on the next request. The probes must never send that sequence.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import REPO, SMOLLM2_SPEC, cli, load_json, write_spec
from specengine.backends.base import BackendConfig
from specengine.errors import BackendStopped

GOLDEN = REPO / "golden" / "smollm2-135m" / "cpu.json"
RAW_CASES = ("capital-fr", "relativity", "capital-zh", "python-fn")


class _Server:
    """A ThreadingHTTPServer on loopback whose handler calls `self.get` / `self.post`;
    `die(handler)` ends it the way a killed process would: the connection closes without
    a reply and the port then refuses connections."""

    def __init__(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.get(self)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.post(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.dead = False

    def die(self, handler) -> None:
        self.dead = True
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.httpd.shutdown()       # from a handler thread: serve_forever runs in another
        self.httpd.server_close()

    def close(self) -> None:
        if not self.dead:
            self.httpd.shutdown()
            self.httpd.server_close()

    @staticmethod
    def send(handler, data, status=200) -> None:
        raw = json.dumps(data).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)


class ReplayServer(_Server):
    """vLLM's dialect, answered from the golden; dies at the first request whose prompt
    is `die_on` (ids; "perf": a perf measurement's, which is no case's and not a probe's),
    by `mode`: 'refuse' or 'cut' (a stream cut after one event)."""

    def __init__(self, die_on: list[int] | str, mode: str):
        self.cases = load_json(GOLDEN)["cases"]
        self.die_on, self.mode = die_on, mode
        self.answered = 0          # replies to /v1/* requests (what the client counts)
        super().__init__()

    def get(self, handler):
        if handler.path == "/v1/models":
            self.answered += 1
            return self.send(handler, {"data": [{"id": "replay", "owned_by": "vllm"}]})
        if handler.path == "/version":
            return self.send(handler, {"version": "replay"})
        self.send(handler, {"error": "not found"}, 404)

    def _case(self, ids: list[int]):
        for case in self.cases.values():
            if case["prompt_ids"] == ids or case["prompt_ids"] + case["output_ids"] == ids:
                return case
        return None

    def post(self, handler, body):
        ids = [int(i) for i in body["prompt"]]
        perf = self.die_on == "perf" and self._case(ids) is None and len(ids) >= 16
        if ids == self.die_on or perf:
            if self.mode == "cut" and body.get("stream"):
                handler.send_response(200)
                handler.send_header("Content-Type", "text/event-stream")
                handler.end_headers()
                event = {"choices": [{"index": 0, "text": "x", "finish_reason": None}]}
                handler.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                handler.wfile.flush()
            return self.die(handler)
        case = self._case(ids)
        if body.get("prompt_logprobs"):
            reply = {"choices": [{"index": 0, "text": "", "finish_reason": "length",
                                  "prompt_logprobs": self._prompt_rows(ids, case)}]}
        else:
            reply = self._generation(case, int(body["max_tokens"]))
        self.answered += 1
        if not body.get("stream"):
            return self.send(handler, reply)
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        handler.wfile.write(f"data: {json.dumps(reply)}\n\ndata: [DONE]\n\n".encode())

    def _prompt_rows(self, ids, case) -> list:
        rows: list = [None]
        start = len(case["prompt_ids"]) if case else len(ids)
        for j in range(1, len(ids)):
            if j < start:
                rows.append({str(ids[j]): {"logprob": -1.0}})
            else:
                step = case["steps"][j - start]
                rows.append({str(t): {"logprob": lp}
                             for t, lp in zip(step["ids"], step["logprobs"])})
        return rows

    def _generation(self, case, max_tokens: int) -> dict:
        if case is None:   # the log-prob probe
            out, steps, text = [0], [{"ids": [0], "logprobs": [-1.0]}], ""
        else:
            out, steps, text = case["output_ids"], case["steps"], case["output_text"]
        n = min(max_tokens, len(out))
        logprobs = {"tokens": [f"token_id:{t}" for t in out[:n]],
                    "token_logprobs": [s["logprobs"][0] for s in steps[:n]],
                    "top_logprobs": [{f"token_id:{t}": lp for t, lp in zip(s["ids"], s["logprobs"])}
                                     for s in steps[:n]]}
        finish = "length" if n == max_tokens else "stop"
        return {"choices": [{"index": 0, "text": text, "logprobs": logprobs,
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": 0, "completion_tokens": n}}


def _spec(tmp_path, base_url):
    opts = json.dumps({"base_url": base_url, "timeout_s": 20, "retries": 1, "backoff_s": 1.0})
    text = SMOLLM2_SPEC.read_text(encoding="utf-8").replace(
        "\ndefaults:",
        f"\nbackends:\n  served:\n    runtime: openai\n    options: {opts}\ndefaults:", 1)
    return write_spec(tmp_path / "served.yaml", text)


@pytest.mark.parametrize("mode,why", [("refuse", "connection refused"),
                                      ("cut", "the stream broke off")])
def test_a_server_that_stops_mid_run_is_named_exit_3_and_judged_cases_stay(tmp_path, mode, why):
    server = ReplayServer(load_json(GOLDEN)["cases"]["capital-zh"]["prompt_ids"], mode)
    try:
        out = tmp_path / "out.json"
        args = ["check", _spec(tmp_path, server.base_url), "--backend", "served",
                "--golden-dir", REPO / "golden", "--json", out, "--markdown", tmp_path / "out.md"]
        for case in RAW_CASES:
            args += ["--case", case]
        result = cli(*args, timeout=600)
    finally:
        server.close()
    assert result.rc == 3, result.text
    assert "Traceback" not in result.text
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0] == (f"specengine: backend 'served': the server at {server.base_url} answered "
                        f"{server.answered} requests, then stopped ({why}) during a streamed "
                        "generation on /completions for case 'capital-zh'")
    assert server.answered > 3       # the model list, both probes, the first two cases
    run = load_json(out)["runs"][0]
    cases = {c["id"]: c for c in run["cases"]}
    assert list(cases) == ["capital-fr", "relativity", "capital-zh"]   # python-fn never ran
    for judged in ("capital-fr", "relativity"):     # kept as judged: every check passed
        assert cases[judged]["status"] == "pass"
        assert {c["name"] for c in cases[judged]["checks"]} >= {"greedy", "teacher-forced",
                                                                 "determinism"}
    assert cases["capital-zh"]["status"] == "error" and why in cases["capital-zh"]["error"]
    assert run["status"] == "error"
    assert any(n.startswith("stopped at case 'capital-zh'") for n in run["notes"])
    assert f"then stopped ({why})" in (tmp_path / "out.md").read_text(encoding="utf-8")


class CachingLlamaStub(_Server):
    """llama-cpp-python's identity (its OpenAPI title), `echo`, and its exact-prompt cache:
    a request whose prompt is exactly what the previous request evaluated (a one-token
    prompt that generated one token, sent again) is answered without a forward pass, and
    the next request then finds the server dead."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.prompts: list[str] = []
        self.evaluated: list[int] | None = None
        self.poisoned = False
        super().__init__()

    def get(self, handler):
        if handler.path == "/v1/models":
            return self.send(handler, {"data": [{"id": "stub.gguf", "owned_by": "me"}]})
        if handler.path == "/openapi.json":
            return self.send(handler, {"info": {"title": "\U0001f999 llama.cpp Python API",
                                                "version": "0.3.36"}})
        self.send(handler, {"error": "not found"}, 404)

    def post(self, handler, body):
        if self.poisoned:
            return self.die(handler)
        prompt = body["prompt"]
        self.prompts.append(prompt)
        ids = list(self.tok(prompt, add_special_tokens=False)["input_ids"])
        self.poisoned = ids == self.evaluated
        gen = self.tok(" world", add_special_tokens=False)["input_ids"][:1]
        n = int(body.get("max_tokens", 1))
        out = (gen * n)[:n]
        # what stays evaluated: the prompt and every generated token but the last
        self.evaluated = ids + out[:-1]
        shown = (ids if body.get("echo") else []) + out
        texts = [self.tok.decode([t]) for t in shown]
        logprobs = {"tokens": texts, "token_logprobs": [-0.5] * len(shown),
                    "top_logprobs": [{t: -0.5} for t in texts]}
        if body.get("echo"):
            logprobs["token_logprobs"][0] = logprobs["top_logprobs"][0] = None
        self.send(handler, {"choices": [{"index": 0, "text": "".join(texts), "logprobs": logprobs,
                                         "finish_reason": "length"}]})


def _llama_backend(smollm2_dir, base_url):
    from specengine.backends.openai.backend import OpenAIBackend
    from specengine.loading.tokenizer import HFTokenizer

    backend = OpenAIBackend(BackendConfig("llama", "openai", options={
        "base_url": base_url, "timeout_s": 10, "retries": 0, "stream": False}))
    backend.use_tokenizer(HFTokenizer(smollm2_dir))
    return backend


def test_the_probes_never_repeat_a_prompt_a_caching_server_would_replay(smollm2_dir):
    from specengine.loading.tokenizer import HFTokenizer

    stub = CachingLlamaStub(HFTokenizer(smollm2_dir).tok)
    try:
        backend = _llama_backend(smollm2_dir, stub.base_url)
        backend.load(None)
        assert backend.dialect == "llamacpp" and backend.server["engine"] == "llama-cpp-python"
        assert backend.supports_logprobs and backend.supports_scoring, backend.unsupported
        first, second = (stub.tok(p, add_special_tokens=False)["input_ids"] for p in stub.prompts)
        assert first[0] != second[0]          # no prefix shared with the probe before
        gen = backend.generate([stub.tok("The capital of France is")["input_ids"]], 2, 1)[0]
        assert len(gen.output_ids) == 2 and not stub.poisoned and not stub.dead
    finally:
        stub.close()


def test_the_old_probe_sequence_is_what_kills_it(smollm2_dir, monkeypatch):
    """The stub is faithful to the failure: the probes as they were (the same one-token
    prompt twice) poison it, and the next request finds it dead — named as a server that
    stopped, not as one that never answered."""
    from specengine.backends.openai import scoring
    from specengine.loading.tokenizer import HFTokenizer

    monkeypatch.setattr(scoring, "PROBE", ("Hello", "Hello"))
    stub = CachingLlamaStub(HFTokenizer(smollm2_dir).tok)
    try:
        backend = _llama_backend(smollm2_dir, stub.base_url)
        backend.load(None)
        assert stub.poisoned
        with pytest.raises(BackendStopped) as caught:
            backend.generate([stub.tok("The capital of France is")["input_ids"]], 2, 1)
    finally:
        stub.close()
    assert re.search(r"answered 3 requests, then stopped \((connection closed without a reply|"
                     r"connection reset)\) during a generation on /completions$", str(caught.value))


def test_a_server_that_stops_while_perf_is_measured_keeps_the_judged_cases(tmp_path):
    server = ReplayServer("perf", "refuse")
    try:
        out = tmp_path / "out.json"
        result = cli("check", _spec(tmp_path, server.base_url), "--backend", "served",
                     "--golden-dir", REPO / "golden", "--json", out, "--case", "capital-fr",
                     "--case", "relativity", "--perf", timeout=600)
    finally:
        server.close()
    assert result.rc == 3, result.text
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.text, result.err
    assert lines[0].endswith(f"answered {server.answered} requests, then stopped (connection "
                             "refused) during a streamed generation on /completions while "
                             "measuring perf"), lines[0]
    run = load_json(out)["runs"][0]
    assert [(c["id"], c["status"]) for c in run["cases"]] == [("capital-fr", "pass"),
                                                              ("relativity", "pass")]
    assert run["perf"]["status"] == "error" and run["status"] == "error"
    assert "while measuring perf" in run["perf"]["failures"][0]
