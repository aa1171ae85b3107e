"""The `openai` runtime: a model served behind an OpenAI-compatible API (vLLM and
vLLM-Ascend, `transformers serve`, llama.cpp's server, ...), checked through the engine
that really runs the deployment.

What is sent (DESIGN §3 greedy semantics, over HTTP):

* raw prompts go to `/v1/completions`; chat cases (`messages`) go to
  `/v1/chat/completions` (`options.chat: false` sends the rendered chat prompt to
  `/v1/completions` instead); always `temperature: 0`.
* the prompt is sent as **token ids** when the server takes them (dialect `vllm`), so
  tokenization is identical by construction; otherwise as text, and we check that the
  text re-tokenizes to the same ids (reported in the environment settings).
* top log-probs per step are asked for (`logprobs` / `top_logprobs`, at most
  `options.max_logprobs`, vLLM's limit is 20). Returned tokens are mapped back to ids:
  exactly with vLLM's `return_tokens_as_token_ids`, else through the tokenizer (by
  bytes, then by text); tokens that do not round-trip are counted and reported.
* teacher-forced scoring uses prompt log-probs: vLLM's `prompt_logprobs` (ids in, ids
  out), else the legacy `echo` + `logprobs`. A served top-k is all a server shows, so a
  golden top-k id outside it gets the server's k-th log-prob (an upper bound) and the
  check says how many did.
* TTFT and TPOT come from a streamed response (`options.stream`, default on).

Where the server returns no log-probs, `supports_logprobs` / `supports_scoring` are False
with the reason in `unsupported`, generations carry no log-prob arrays, and the checks
that need them are reported `not-run` — never passed. Token ids are then re-tokenized
from the returned text (asking `overshoot_tokens` more so that a character split over
several byte tokens is complete) and re-read along the golden's ids where the texts agree
(`align_to_golden`).

A server that is down or too slow is `BackendUnavailable` (exit 3) naming the URL and the
timeout; requests are retried a bounded number of times with exponential backoff.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from specengine.errors import BackendCrashed, BackendUnavailable, UsageError

from .base import Backend, BackendConfig, Generation, Scores
from .openai_http import HttpClient, ServerDown, ServerRejected

DEFAULTS: dict[str, Any] = {
    "base_url": None, "model": None, "api_key_env": None, "timeout_s": 60.0, "retries": 2,
    "backoff_s": 0.5, "stream": True, "chat": True, "logprobs": True, "max_logprobs": 20,
    "dialect": "auto", "overshoot_tokens": 8, "concurrency": 8, "extra_body": {},
}
DIALECTS = ("auto", "vllm", "openai")
_TOKEN_ID = re.compile(r"^token_id:(-?\d+)$")
_FLOOR = math.log(1e-9)   # log tail mass when the served top-k already sums to ~1


class OpenAIBackend(Backend):
    """A served model. The spec's model source supplies the tokenizer (and the
    fingerprint shown in reports); the weights are whatever the server loaded."""

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        self.opts = parse_options(config)
        key = None
        if self.opts["api_key_env"]:
            key = os.environ.get(self.opts["api_key_env"])
            if not key:
                raise BackendUnavailable(
                    f"backend '{config.name}': the API key variable {self.opts['api_key_env']} "
                    "(options.api_key_env) is not set")
        self.client = HttpClient(self.opts["base_url"], key, self.opts["timeout_s"],
                                 self.opts["retries"], self.opts["backoff_s"])
        self.tokenizer = None
        self.resolved = None
        self.load_s = 0.0
        self.dialect = "openai"
        self.model_name: str | None = self.opts["model"]
        self.server: dict[str, str] = {}
        self.chats: dict[tuple[int, ...], tuple[list[dict], dict]] = {}
        self.latencies: list[tuple[float, float | None]] = []   # (ttft_s, tpot_s)
        self.counts = {"requests": 0, "prompt_text_mismatch": 0, "prompt_len_mismatch": 0,
                       "unmapped_tokens": 0, "ids_from_text": 0, "chat_requests": 0}
        self._maps: tuple[dict, dict] | None = None

    # -- loading: reach the server, learn what it can do ---------------------------
    def load(self, source) -> None:
        from specengine.tokenizer import load_tokenizer

        start = time.perf_counter()
        self.resolved = source
        models = self._call(lambda: self._models())   # first: a server that is down fails fast
        self.tokenizer = load_tokenizer(source)
        if self.opts["dialect"] == "auto":
            owners = {str(m.get("owned_by", "")).lower() for m in models}
            self.dialect = "vllm" if "vllm" in owners else "openai"
        else:
            self.dialect = self.opts["dialect"]
        if self.model_name is None and len(models) == 1 and models[0].get("id"):
            self.model_name = str(models[0]["id"])
        if self.dialect == "vllm":
            self._server_version()
        self._probe_capabilities()
        self.load_s = time.perf_counter() - start

    def _models(self) -> list[dict]:
        try:
            data = self.client.get_json("models")
        except ServerRejected as exc:  # it answered: it is up, it just lists nothing
            self.server["models"] = f"GET /models answered HTTP {exc.status}"
            return []
        items = data.get("data", []) if isinstance(data, dict) else []
        self.server["models"] = ", ".join(str(m.get("id")) for m in items)[:200] or "none listed"
        owners = sorted({str(m.get("owned_by")) for m in items if m.get("owned_by")})
        if owners:
            self.server["owned_by"] = ", ".join(owners)
        return [m for m in items if isinstance(m, dict)]

    def _server_version(self) -> None:
        root = self.client.base_url.rsplit("/v1", 1)[0]
        probe = HttpClient(root, self.client.api_key, min(self.client.timeout_s, 10), 0)
        try:
            version = probe.get_json("version")
            if isinstance(version, dict) and version.get("version"):
                self.server["version"] = str(version["version"])
        except (ServerDown, ServerRejected, ValueError):
            pass

    def _probe_capabilities(self) -> None:
        url = self.client.url("completions")
        self.supports_logprobs = self.supports_scoring = False
        if not self.opts["logprobs"]:
            self.unsupported["logprobs"] = "log-probs are switched off (options.logprobs: false)"
            self.unsupported["scoring"] = self.unsupported["logprobs"]
            return
        ids = self.tokenizer.encode("Hello")
        body = self._completion_body(ids, 1, top=1, stream=False)
        try:
            resp = self._call(lambda: self.client.post_json("completions", body))
            steps = _completion_steps(resp)
            if steps:
                self.supports_logprobs = True
            else:
                self.unsupported["logprobs"] = (f"the server at {url} returned no log-probs "
                                                "(asked for logprobs=1 on /completions)")
        except ServerRejected as exc:
            self.unsupported["logprobs"] = f"the server refused a log-prob request: {exc}"
        if not self.supports_logprobs:
            self.unsupported["scoring"] = (f"no prompt log-probs either (teacher-forced scoring "
                                           f"needs them): {self.unsupported['logprobs']}")
            return
        try:
            self._score_rows(ids, 1)
            self.supports_scoring = True
        except (ServerRejected, _NoPromptLogprobs) as exc:
            how = "prompt_logprobs" if self.dialect == "vllm" else "echo + logprobs"
            self.unsupported["scoring"] = (f"the server at {url} returned no prompt log-probs "
                                           f"(asked with {how}): {exc}")

    def _call(self, fn):
        """Run one request; a server that does not answer is exit 3 with URL and timeout."""
        try:
            return fn()
        except ServerDown as exc:
            raise BackendUnavailable(f"backend '{self.name}': server {exc}") from None

    # -- prompts ------------------------------------------------------------------
    def bind_chats(self, chats: dict[tuple[int, ...], tuple[list[dict], dict]]) -> None:
        """Which prompt ids came from which chat messages (sent to /chat/completions)."""
        self.chats.update(chats)

    def _prompt_payload(self, ids: Sequence[int]) -> Any:
        if self.dialect == "vllm":
            return [int(i) for i in ids]
        text = self._text(ids)
        hf = getattr(self.tokenizer, "tok", None)
        again = self.tokenizer.encode(text)
        if again != list(ids) and hf is not None:
            again = list(hf(text, add_special_tokens=False)["input_ids"])
        if again != list(ids):
            self.counts["prompt_text_mismatch"] += 1
        return text

    def _text(self, ids: Sequence[int]) -> str:
        hf = getattr(self.tokenizer, "tok", None)
        if hf is not None:
            return hf.decode(list(ids), skip_special_tokens=False)
        return self.tokenizer.decode(ids)

    def _completion_body(self, ids: Sequence[int], max_tokens: int, top: int | None,
                         stream: bool, stop_ids: Sequence[int] = ()) -> dict:
        body: dict[str, Any] = {"prompt": self._prompt_payload(ids), "max_tokens": max_tokens,
                                "temperature": 0}
        if top:
            body["logprobs"] = top
        if self.dialect == "vllm":
            body["return_tokens_as_token_ids"] = True
            if stop_ids:
                body["stop_token_ids"] = [int(s) for s in stop_ids]
        return self._finish_body(body, stream)

    def _chat_body(self, messages: list[dict], kwargs: dict, max_tokens: int, top: int | None,
                   stream: bool, stop_ids: Sequence[int] = ()) -> dict:
        body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
        if kwargs:
            body["chat_template_kwargs"] = dict(kwargs)
        if top:
            body["logprobs"] = True
            body["top_logprobs"] = top
        if self.dialect == "vllm":
            body["return_tokens_as_token_ids"] = True
            if stop_ids:
                body["stop_token_ids"] = [int(s) for s in stop_ids]
        return self._finish_body(body, stream)

    def _finish_body(self, body: dict, stream: bool) -> dict:
        if self.model_name:
            body["model"] = self.model_name
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(self.opts["extra_body"])
        return body

    # -- generation ---------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, top_k: int,
                 stop_ids: Sequence[int] = ()) -> list[Generation]:
        if len(prompts) == 1:
            return [self._generate_one(prompts[0], max_new_tokens, top_k, stop_ids)]
        # a batch is sent as concurrent requests, so the server batches them its own way
        workers = max(1, min(len(prompts), int(self.opts["concurrency"])))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self._generate_one, p, max_new_tokens, top_k, stop_ids)
                       for p in prompts]
            return [f.result() for f in futures]

    def _generate_one(self, prompt: Sequence[int], max_new_tokens: int, top_k: int,
                      stop_ids: Sequence[int]) -> Generation:
        prompt = [int(i) for i in prompt]
        top = min(top_k, int(self.opts["max_logprobs"])) if self.supports_logprobs else None
        # without per-token ids the text is re-tokenized: ask a few more tokens so that a
        # character split over byte tokens is complete (greedy: the first N are the same)
        extra = 0 if self.supports_logprobs else int(self.opts["overshoot_tokens"])
        chat = self.chats.get(tuple(prompt)) if self.opts["chat"] else None
        stream = bool(self.opts["stream"])
        if chat is not None:
            path = "chat/completions"
            body = self._chat_body(chat[0], chat[1], max_new_tokens + extra, top, stream, stop_ids)
            self.counts["chat_requests"] += 1
        else:
            path = "completions"
            body = self._completion_body(prompt, max_new_tokens + extra, top, stream, stop_ids)
        self.counts["requests"] += 1
        reply = self._call(lambda: self._send(path, body, stream))
        return self._to_generation(prompt, reply, max_new_tokens, top_k, stop_ids)

    def _send(self, path: str, body: dict, stream: bool) -> "_Reply":
        reply = _Reply()
        start = time.perf_counter()
        try:
            if not stream:
                reply.absorb(self.client.post_json(path, body))
                reply.t_end = time.perf_counter()
            else:
                for arrived, event in self.client.stream(path, body):
                    if reply.absorb(event):
                        reply.t_first = reply.t_first if reply.t_first is not None else arrived
                        reply.t_last = arrived
                reply.t_end = time.perf_counter()
        except ServerRejected as exc:
            raise BackendCrashed(f"backend '{self.name}': {exc}") from None
        reply.t_start = start
        return reply

    def _to_generation(self, prompt: list[int], reply: "_Reply", max_new_tokens: int,
                       top_k: int, stop_ids: Sequence[int]) -> Generation:
        if reply.prompt_tokens is not None and reply.prompt_tokens != len(prompt):
            self.counts["prompt_len_mismatch"] += 1
        stopped = reply.finish_reason == "stop"
        ids: list[int] | None = None
        arrays = (None, None, None)
        if reply.steps:
            ids, arrays = self._steps_to_arrays(reply.steps, top_k)
        from_text = ids is None
        if from_text:
            self.counts["ids_from_text"] += 1
            ids = self._retokenize(reply.text)
        if len(ids) >= max_new_tokens:
            ids, stopped = ids[:max_new_tokens], False
            arrays = tuple(a[:max_new_tokens] if a is not None else None for a in arrays)
        elif stopped and from_text and stop_ids:
            ids = ids + [self._stop_id(reply, stop_ids)]
        elif stopped and stop_ids and (not ids or ids[-1] not in set(stop_ids)):
            # the server left the stop token out of its log-probs: the id is known, its
            # distribution is not (the arrays keep one row fewer than the ids)
            ids = ids + [self._stop_id(reply, stop_ids)]
        timings = reply.timings(len(ids) if from_text else len(reply.steps),
                                reply.completion_tokens)
        if "ttft_s" in timings:
            self.latencies.append((timings["ttft_s"], timings.get("tpot_s")))
        return Generation(prompt, ids, arrays[0], arrays[1], arrays[2], timings,
                          text=reply.text, ids_from_text=from_text, stopped=stopped)

    def _stop_id(self, reply: "_Reply", stop_ids: Sequence[int]) -> int:
        if isinstance(reply.stop_reason, int) and reply.stop_reason in set(stop_ids):
            return int(reply.stop_reason)
        hf = getattr(self.tokenizer, "tok", None)
        eos = getattr(hf, "eos_token_id", None)
        return int(eos) if eos is not None and eos in set(stop_ids) else int(stop_ids[0])

    def _retokenize(self, text: str) -> list[int]:
        hf = getattr(self.tokenizer, "tok", None)
        if hf is not None:
            return list(hf(text, add_special_tokens=False)["input_ids"])
        ids = self.tokenizer.encode(text)
        return ids[1:] if ids and ids[0] == getattr(self.tokenizer, "BOS", None) else ids

    def _steps_to_arrays(self, steps: list["_Step"], top_k: int):
        """Chosen ids and (steps, k) top-k arrays; (None, ...) when a chosen token does not
        map back to an id (the ids are then re-tokenized from the text)."""
        chosen, rows = [], []
        for step in steps:
            tid = self._token_id(step.token, step.bytes)
            if tid is None:
                self.counts["unmapped_tokens"] += 1
                return None, (None, None, None)
            chosen.append(tid)
            row: dict[int, float] = {}
            for tok, lp, raw in step.top:
                alt = self._token_id(tok, raw)
                if alt is None:
                    self.counts["unmapped_tokens"] += 1
                    continue
                row[alt] = max(row.get(alt, -math.inf), float(lp))
            if step.logprob is not None:
                row.setdefault(tid, float(step.logprob))
            rows.append(sorted(row.items(), key=lambda kv: -kv[1]))
        k = max(1, min([top_k] + [len(r) for r in rows]))
        top_ids = np.array([[i for i, _ in r[:k]] for r in rows], dtype=np.int64).reshape(-1, k)
        top_lp = np.array([[v for _, v in r[:k]] for r in rows], dtype=np.float32).reshape(-1, k)
        tail = _tail(top_lp)
        return chosen, (top_ids, top_lp, tail)

    # -- token string -> id ---------------------------------------------------------
    def _token_id(self, token: Any, raw: list[int] | None = None) -> int | None:
        if isinstance(token, int):
            return token
        match = _TOKEN_ID.match(str(token))
        if match:
            return int(match.group(1))
        by_bytes, by_text = self._vocab_maps()
        if raw is not None:
            hit = by_bytes.get(bytes(raw))
            if hit is not None and len(hit) == 1:
                return hit[0]
        hit = by_text.get(str(token))
        if hit is not None and len(hit) == 1:
            return hit[0]
        return None

    def _vocab_maps(self) -> tuple[dict, dict]:
        """bytes -> ids and text -> ids over the whole vocabulary (built once)."""
        if self._maps is None:
            by_bytes: dict[bytes, list[int]] = {}
            by_text: dict[str, list[int]] = {}
            hf = getattr(self.tokenizer, "tok", None)
            size = len(hf) if hf is not None else 259
            table = _byte_decoder() if _is_byte_level(hf) else None
            pieces = hf.convert_ids_to_tokens(list(range(size))) if hf is not None else None
            for tid in range(size):
                text = self._text([tid])
                by_text.setdefault(text, []).append(tid)
                piece = pieces[tid] if pieces is not None else None
                if table is not None and piece is not None and all(c in table for c in piece):
                    raw = bytes(table[c] for c in piece)
                else:
                    raw = text.encode("utf-8")
                by_bytes.setdefault(raw, []).append(tid)
            self._maps = (by_bytes, by_text)
        return self._maps

    # -- teacher-forced scoring via prompt log-probs --------------------------------
    def score(self, prompt_ids: Sequence[int], target_ids: Sequence[int],
              gather_ids: np.ndarray, top_k: int) -> Scores:
        if not self.supports_scoring:
            raise BackendCrashed(f"backend '{self.name}' cannot score: "
                                 f"{self.unsupported.get('scoring', 'no prompt log-probs')}")
        full = [int(i) for i in prompt_ids] + [int(i) for i in target_ids]
        top = min(max(top_k, gather_ids.shape[1]), int(self.opts["max_logprobs"]))
        try:
            rows = self._call(lambda: self._score_rows(full, top))
        except ServerRejected as exc:
            raise BackendCrashed(f"backend '{self.name}': {exc}") from None
        except _NoPromptLogprobs as exc:
            raise BackendCrashed(f"backend '{self.name}': {exc}") from None
        rows = rows[len(prompt_ids):len(full)]
        n, k = gather_ids.shape
        gathered = np.empty((n, k), np.float32)
        missing = 0
        for i, row in enumerate(rows):
            floor = min(row.values()) if row else _FLOOR
            for j, gid in enumerate(gather_ids[i]):
                if int(gid) in row:
                    gathered[i, j] = row[int(gid)]
                else:
                    gathered[i, j] = floor
                    missing += 1
        tail = _tail(gathered)
        kk = max(1, min(top_k, min((len(r) for r in rows), default=1)))
        top_ids = np.full((n, kk), -1, np.int64)
        top_lp = np.full((n, kk), -np.inf, np.float32)
        for i, row in enumerate(rows):
            best = sorted(row.items(), key=lambda kv: -kv[1])[:kk]
            for j, (tid, lp) in enumerate(best):
                top_ids[i, j], top_lp[i, j] = tid, lp
        note = (f"served prompt log-probs (top {top} per position + the scored token); the "
                f"tail mass is 1 minus the golden top-{k} mass")
        if missing:
            note += (f"; {missing} of {n * k} golden top-{k} entries were outside the served "
                     f"top-{top} and got its lowest log-prob (an upper bound)")
        return Scores(gathered, tail, top_ids, top_lp, note=note)

    def _score_rows(self, full: list[int], top: int) -> list[dict[int, float]]:
        """Per position j of `full`, {id: logprob} of the distribution predicting full[j]
        (row 0 is empty): the served top-`top` plus the token itself."""
        if self.dialect == "vllm":
            body = {"prompt": full, "max_tokens": 1, "temperature": 0, "prompt_logprobs": top,
                    "return_tokens_as_token_ids": True}
            resp = self.client.post_json("completions", self._finish_body(body, False))
            got = (resp.get("choices") or [{}])[0].get("prompt_logprobs")
            if not got:
                raise _NoPromptLogprobs("no prompt_logprobs in the reply")
            rows = []
            for entry in got[:len(full)]:
                row = {}
                for key, value in (entry or {}).items():
                    lp = value.get("logprob") if isinstance(value, dict) else value
                    tid = self._token_id(key if not str(key).lstrip("-").isdigit() else int(key))
                    if tid is not None and lp is not None:
                        row[tid] = float(lp)
                rows.append(row)
            if len(rows) < len(full):
                raise _NoPromptLogprobs(f"{len(rows)} prompt_logprobs rows for {len(full)} tokens")
            return rows
        body = {"prompt": self._text(full), "max_tokens": 1, "temperature": 0, "echo": True,
                "logprobs": top}
        resp = self.client.post_json("completions", self._finish_body(body, False))
        steps = _completion_steps(resp)
        if len(steps) < len(full):
            raise _NoPromptLogprobs("echo returned no log-probs for the prompt tokens")
        rows, ids = [], []
        for step in steps[:len(full)]:
            tid = self._token_id(step.token, step.bytes)
            ids.append(tid)
            row = {}
            for tok, lp, raw in step.top:
                alt = self._token_id(tok, raw)
                if alt is not None and lp is not None:
                    row[alt] = float(lp)
            if tid is not None and step.logprob is not None:
                row.setdefault(tid, float(step.logprob))
            rows.append(row)
        if ids != full:
            raise _NoPromptLogprobs("the echoed prompt tokens do not map back to the prompt ids")
        return rows

    # -- golden alignment, environment ------------------------------------------------
    def align_to_golden(self, gen: Generation, golden_ids: Sequence[int], tokenizer: Any,
                        max_new_tokens: int) -> Generation:
        if not gen.ids_from_text or gen.text is None:
            return gen
        stop = gen.output_ids[-1] if gen.stopped and gen.output_ids else None
        ids = resegment(list(golden_ids), gen.text, self._text, self._retokenize)
        ids = ids[:max_new_tokens]
        if stop is not None and len(ids) < max_new_tokens:
            ids.append(stop)
        gen.output_ids = ids
        return gen

    def environment(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "base_url": self.client.base_url, "model": self.model_name or "(server default)",
            "dialect": self.dialect, "stream": bool(self.opts["stream"]),
            "timeout_s": self.client.timeout_s, "retries": self.client.retries,
            "prompt": ("token ids" if self.dialect == "vllm" else
                       "text (re-tokenization checked: "
                       f"{self.counts['prompt_text_mismatch']} mismatches)"),
            "chat_endpoint": bool(self.opts["chat"]),
            "logprobs": (f"top {self.opts['max_logprobs']} per step" if self.supports_logprobs
                         else f"not available: {self.unsupported.get('logprobs', '')}"),
            "teacher_forced": ("prompt log-probs" if self.supports_scoring
                               else f"not available: {self.unsupported.get('scoring', '')}"),
            "requests": self.counts["requests"], "chat_requests": self.counts["chat_requests"],
            "retried_attempts": self.client.retried,
        }
        if self.counts["ids_from_text"]:
            settings["output_ids"] = (f"re-tokenized from the returned text in "
                                      f"{self.counts['ids_from_text']} generations (the server "
                                      "returned no token ids)")
        if self.counts["unmapped_tokens"]:
            settings["unmapped_tokens"] = (f"{self.counts['unmapped_tokens']} returned tokens did "
                                           "not map back to a single id")
        if self.counts["prompt_len_mismatch"]:
            settings["prompt_length_mismatch"] = (f"{self.counts['prompt_len_mismatch']} requests "
                                                  "where the server counted another prompt length")
        lat = latency_summary(self.latencies)
        if lat:
            settings["latency"] = lat
        settings.update({f"server.{k}": v for k, v in self.server.items()})
        return {"backend": self.name, "runtime": "openai", "device": self.config.device,
                "device_name": f"served at {self.client.base_url}", "dtype": self.config.dtype,
                "versions": {"server": self.server.get("version", self.server.get("owned_by", "?"))},
                "settings": settings}

    def peak_memory_bytes(self) -> None:
        return None

    def close(self) -> None:
        self._maps = None


# -- replies ----------------------------------------------------------------------

class _NoPromptLogprobs(Exception):
    pass


class _Step:
    __slots__ = ("token", "logprob", "top", "bytes")

    def __init__(self, token, logprob, top, raw=None):
        self.token, self.logprob, self.top, self.bytes = token, logprob, top, raw


class _Reply:
    """A completion or chat completion, whole or assembled from stream events."""

    def __init__(self):
        self.text = ""
        self.steps: list[_Step] = []
        self.finish_reason: str | None = None
        self.stop_reason: Any = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.t_start = self.t_end = 0.0
        self.t_first: float | None = None
        self.t_last: float | None = None

    def absorb(self, event: dict) -> bool:
        """Take one reply or stream event; True when it carried generated content."""
        usage = event.get("usage") if isinstance(event, dict) else None
        if usage:
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)
        content = False
        for choice in (event.get("choices") or [])[:1]:
            piece = choice.get("text")
            if piece is None:
                holder = choice.get("message") or choice.get("delta") or {}
                piece = holder.get("content")
            if piece:
                self.text += piece
                content = True
            steps = _choice_steps(choice)
            if steps:
                self.steps.extend(steps)
                content = True
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            if choice.get("stop_reason") is not None:
                self.stop_reason = choice["stop_reason"]
        return content

    def timings(self, tokens: int, server_tokens: int | None) -> dict[str, float]:
        out = {"total_s": (self.t_last or self.t_end) - self.t_start}
        if self.t_first is not None:
            out["ttft_s"] = self.t_first - self.t_start
            n = server_tokens or tokens
            if n > 1 and self.t_last is not None and self.t_last > self.t_first:
                out["tpot_s"] = (self.t_last - self.t_first) / (n - 1)
        return out


def _choice_steps(choice: dict) -> list[_Step]:
    lp = choice.get("logprobs")
    if not lp:
        return []
    if isinstance(lp.get("content"), list):          # chat format
        return [_Step(e.get("token"), e.get("logprob"),
                      [(t.get("token"), t.get("logprob"), t.get("bytes"))
                       for t in (e.get("top_logprobs") or [])], e.get("bytes"))
                for e in lp["content"]]
    tokens = lp.get("tokens") or []                    # legacy completions format
    values = lp.get("token_logprobs") or [None] * len(tokens)
    tops = lp.get("top_logprobs") or [None] * len(tokens)
    return [_Step(tok, val, [(t, v, None) for t, v in (top or {}).items()])
            for tok, val, top in zip(tokens, values, tops)]


def _completion_steps(resp: dict) -> list[_Step]:
    choices = resp.get("choices") or [] if isinstance(resp, dict) else []
    return _choice_steps(choices[0]) if choices else []


# -- pure helpers ---------------------------------------------------------------------

def parse_options(config: BackendConfig) -> dict[str, Any]:
    """The backend's options with defaults; unknown or bad ones are a UsageError (exit 2)."""
    from specengine.interp import MissingVariable, expand

    opts = dict(DEFAULTS)
    for key, value in (config.options or {}).items():
        if key not in DEFAULTS:
            close = difflib.get_close_matches(key, list(DEFAULTS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UsageError(f"backend '{config.name}': unknown openai option '{key}'{hint}")
        opts[key] = value
    if not opts["base_url"]:
        raise UsageError(f"backend '{config.name}': the openai runtime needs options.base_url "
                         "(e.g. http://127.0.0.1:8000/v1)")
    for key in ("base_url", "model"):
        if isinstance(opts[key], str):
            try:
                opts[key] = expand(opts[key])
            except MissingVariable as exc:
                raise UsageError(f"backend '{config.name}': options.{key} reads ${{{exc.name}}}, "
                                 "which is not set") from None
    url = opts["base_url"].rstrip("/")
    if not re.match(r"^https?://[^/]+", url):
        raise UsageError(f"backend '{config.name}': options.base_url {url!r} is not an "
                         "http(s) URL")
    if re.match(r"^https?://[^/]+$", url):
        url += "/v1"        # the API root is /v1 on every server we know
    opts["base_url"] = url
    if opts["dialect"] not in DIALECTS:
        raise UsageError(f"backend '{config.name}': options.dialect must be one of "
                         f"{', '.join(DIALECTS)}")
    if not isinstance(opts["extra_body"], dict):
        raise UsageError(f"backend '{config.name}': options.extra_body must be a mapping")
    return opts


def resegment(golden_ids: list[int], text: str, decode, retokenize) -> list[int]:
    """Ids for `text` that follow the golden's ids as far as the texts agree, then the
    tokenizer's own ids for the rest. `decode(ids) -> str`, `retokenize(str) -> ids`.

    A server that returns only text gives no segmentation; any ids that decode to the
    text are an equally valid reading of it, and reading it along the golden's makes the
    id comparison a comparison of text. A golden prefix that ends inside a character
    (byte tokens, shown as U+FFFD) counts only at the very end of the golden.
    """
    best, best_len = 0, 0
    for i in range(1, len(golden_ids) + 1):
        prefix = decode(golden_ids[:i])
        clean = prefix.rstrip("\ufffd")
        if clean != prefix and i < len(golden_ids):
            if not text.startswith(clean):
                break
            continue
        if not text.startswith(clean):
            break
        best, best_len = i, len(clean)
    rest = text[best_len:]
    return list(golden_ids[:best]) + (retokenize(rest) if rest else [])


def latency_summary(latencies: list[tuple[float, float | None]]) -> str:
    """'TTFT p50 x ms, TPOT p50 y ms over n streamed requests' (empty when none)."""
    if not latencies:
        return ""
    ttft = [t for t, _ in latencies]
    tpot = [p for _, p in latencies if p is not None]
    out = f"TTFT p50 {statistics.median(ttft) * 1e3:.1f} ms (max {max(ttft) * 1e3:.1f})"
    if tpot:
        out += f", TPOT p50 {statistics.median(tpot) * 1e3:.1f} ms"
    return out + f" over {len(latencies)} streamed requests"


def _tail(top_lp: np.ndarray) -> np.ndarray:
    """log(1 - sum(exp(top-k))) per row, floored where the top-k already holds ~all mass."""
    mass = np.exp(top_lp.astype(np.float64)).sum(axis=-1)
    with np.errstate(divide="ignore"):
        tail = np.log(np.clip(1.0 - mass, 0.0, None))
    return np.maximum(tail, _FLOOR).astype(np.float32)


def _is_byte_level(hf) -> bool:
    try:
        import json

        state = json.loads(hf.backend_tokenizer.to_str())
    except Exception:
        return False
    decoder = state.get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", []) or []}
    return "ByteLevel" in kinds


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte table (the inverse of bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}
