"""A served model whose server stops in the middle of a run — with a small stdlib server,
no model (a real llama-cpp-python that dies is in tests/test_llamacpp_server.py):

* `ReplayServer` speaks vLLM's dialect and answers from the committed cpu golden (the
  golden's tokens and top-k as the server's own), so the cases it answers pass; at the
  first request for a chosen case it dies — closing the connection and then refusing
  connections, or cutting a stream off after its first event. The check must stop there
  with exit 3 and one line naming how many requests the server answered, why it stopped,
  the request and the case, and keep the cases already judged in the JSON as judged.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import REPO, cli, load_json, served_smollm2_spec

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
    return served_smollm2_spec(tmp_path / "served.yaml", "served", {
        "base_url": base_url, "timeout_s": 20, "retries": 1, "backoff_s": 1.0})


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
