"""The `openai` runtime: a model served behind an OpenAI-compatible API (vLLM and
vLLM-Ascend, `transformers serve`, llama.cpp's server, ...), checked through the engine
that really runs the deployment.

What is sent (greedy decoding, over HTTP):

* raw prompts go to `/v1/completions`; chat cases (`messages`) go to
  `/v1/chat/completions` (`options.chat: false` sends the rendered chat prompt to
  `/v1/completions` instead); always greedy: `temperature: 0` with the dialect's neutral
  sampling settings spelled out (no top-p / top-k / min-p cut, penalties off), and every
  generated token checked against the server's own top-1 (the engine's `greedy` check).
* the prompt is sent as **token ids** when the server takes them (dialect `vllm`), so
  tokenization is identical by construction; otherwise as text, and we check that the
  text re-tokenizes to the same ids (reported in the environment settings).
* top log-probs per step are asked for (`logprobs` / `top_logprobs`, at most
  `options.max_logprobs`, vLLM's limit is 20). Returned tokens are mapped back to ids:
  exactly with vLLM's `return_tokens_as_token_ids`, else through the tokenizer (by
  bytes, then by text); tokens that do not round-trip are counted and reported.
* teacher-forced scoring uses prompt log-probs: vLLM's `prompt_logprobs` (ids in, ids
  out), else the legacy `echo` + `logprobs`; a case whose echo cannot be matched to its
  ids is `not-run` with the reason. A served top-k is all a server shows, so a
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
timeout; requests are retried a bounded number of times with exponential backoff. A server
that answered and then stops (killed, crashed, a stream cut off) is `BackendStopped`
(exit 3): how many replies it gave, the cause, and the request it died in; the run stops
there and keeps the cases already judged.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence


from specengine.errors import BackendCrashed, BackendStopped, BackendUnavailable

from specengine.backends.base import Backend, BackendConfig, Generation
from specengine.backends.openai.dialects import (NOT_GREEDY_CAUSES, SAMPLING_KEYS,
    describe_quantization, describe_sampling, identify, neutral_sampling, parse_options)
from specengine.backends.openai.http import HttpClient, ServerDown, ServerRejected
from specengine.backends.openai.replies import Reply, Step, latency_summary, steps_to_arrays
from specengine.backends.openai.scoring import ServedScoring
from specengine.backends.openai.tokens import resegment


class OpenAIBackend(ServedScoring, Backend):
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
        self.sampling: dict[str, Any] = {"temperature": 0}
        # a served model may not be greedy at temperature 0: every generation is checked
        # against the server's own top-1 (the engine's `greedy` check), with these causes
        self.greedy_causes = NOT_GREEDY_CAUSES["openai"]

    # -- loading: reach the server, learn what it can do ---------------------------
    wants_tokenizer = True

    def use_tokenizer(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def load(self, source) -> None:
        start = time.perf_counter()
        self.resolved = source
        models = self._call(self._models, "GET /models")   # first: a server that is down fails fast
        if self.tokenizer is None:
            raise BackendUnavailable(f"backend '{self.name}' needs the spec's tokenizer "
                                     "(Backend.use_tokenizer) before it loads")
        self.dialect, facts = identify(self.client, models, self.opts["dialect"])
        self.server.update(facts)
        if self.model_name is None and len(models) == 1 and models[0].get("id"):
            self.model_name = str(models[0]["id"])
        self.sampling = neutral_sampling(self.dialect) if self.opts["neutral_sampling"] else \
            {"temperature": 0}
        self.greedy_causes = NOT_GREEDY_CAUSES.get(self.dialect, NOT_GREEDY_CAUSES["openai"])
        overridden = sorted(set(self.opts["extra_body"]) & (set(self.sampling) | SAMPLING_KEYS))
        if not self.opts["neutral_sampling"]:
            self.greedy_causes = ("only temperature 0 is sent (options.neutral_sampling: "
                                  "false), so the server's own defaults apply: "
                                  + self.greedy_causes)
        elif overridden:
            self.greedy_causes = (f"extra_body sets {', '.join(overridden)}; otherwise "
                                  + self.greedy_causes)
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

    def _call(self, fn, during: str):
        """Run one request. A server that does not answer is exit 3: before it ever
        answered, naming the URL and the timeout (BackendUnavailable); once it has, as a
        server that stopped, with how many replies it gave and during what
        (BackendStopped: the run stops there, keeping what was judged)."""
        try:
            return fn()
        except ServerDown as exc:
            answered = self.client.answered
            if answered:
                raise BackendStopped(
                    f"backend '{self.name}': the server at {self.client.base_url} answered "
                    f"{answered} request{'s' if answered != 1 else ''}, then stopped "
                    f"({exc.reason}) during {during}") from None
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
                                **self.sampling}
        if top:
            body["logprobs"] = top
        if self.dialect == "vllm":
            body["return_tokens_as_token_ids"] = True
            if stop_ids:
                body["stop_token_ids"] = [int(s) for s in stop_ids]
        return self._finish_body(body, stream)

    def _chat_body(self, messages: list[dict], kwargs: dict, max_tokens: int, top: int | None,
                   stream: bool, stop_ids: Sequence[int] = ()) -> dict:
        body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, **self.sampling}
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
        reply = self._call(lambda: self._send(path, body, stream),
                           f"a {'streamed ' if stream else ''}generation on /{path}")
        return self._to_generation(prompt, reply, max_new_tokens, top_k, stop_ids)

    def _send(self, path: str, body: dict, stream: bool) -> Reply:
        reply = Reply()
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

    def _to_generation(self, prompt: list[int], reply: Reply, max_new_tokens: int,
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

    def _stop_id(self, reply: Reply, stop_ids: Sequence[int]) -> int:
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

    def _steps_to_arrays(self, steps: list[Step], top_k: int):
        """Chosen ids and (steps, k) top-k arrays; (None, ...) when a chosen token does not
        map back to an id (the ids are then re-tokenized from the text)."""
        return steps_to_arrays(steps, top_k, self._token_id, self.counts)

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
        settings["sampling"] = describe_sampling(self.sampling, self.opts["extra_body"],
                                                 self.opts["neutral_sampling"])
        settings.update(describe_quantization(self.config.quantization, self.config.dtype,
                                              self.server.get("quantization")))
        settings.update({f"server.{k}": v for k, v in self.server.items()})
        engine = self.server.get("engine", self.server.get("owned_by", "?"))
        version = self.server.get("version")
        return {"backend": self.name, "runtime": "openai", "device": self.config.device,
                "device_name": f"{engine} served at {self.client.base_url}",
                "dtype": self.config.dtype, "quantization": self.config.quantization,
                "versions": {"server": f"{engine} {version}" if version else engine},
                "settings": settings}

    def close(self) -> None:
        self._maps = None
