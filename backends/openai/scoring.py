"""What a server can do (its log-prob probes), teacher-forced scoring through its prompt
log-probs, and served tokens back to ids. A mixin of the openai runtime: vLLM's
`prompt_logprobs` (ids in, ids out) or the legacy `echo` + `logprobs`, whose echoed
tokens are matched to the prompt's ids one by one (some servers leave their BOS token out
of the echo, or send a special token or an incomplete character as empty text)."""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

from specengine.errors import BackendCrashed

from specengine.backends.base import ScoringUnavailable, Scores
from specengine.backends.openai.http import ServerRejected
from specengine.backends.openai.replies import (FLOOR, NoPromptLogprobs, Step, completion_steps,
    tail_of)
from specengine.backends.openai.tokens import align_echo, byte_decoder, is_byte_level

TOKEN_ID = re.compile(r"^token_id:(-?\d+)$")
# what the capability probes send: per-step log-probs for one token generated after the
# first, prompt log-probs over the second (prompts that share no first token)
PROBE = ("Hello", "The sky is blue.")


class ServedScoring:
    """Capability probes, scoring and token-id mapping for a backend with `client`,
    `tokenizer`, `opts`, `dialect`, `sampling`, `_text`, `_completion_body`, `_finish_body`
    and `_call` (the openai runtime)."""

    _maps: tuple[dict, dict] | None = None

    # -- token string -> id ---------------------------------------------------------
    def _token_id(self, token: Any, raw: list[int] | None = None) -> int | None:
        if isinstance(token, int):
            return token
        match = TOKEN_ID.match(str(token))
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
            table = byte_decoder() if is_byte_level(hf) else None
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

    # -- what the server can do -------------------------------------------------------
    def _probe_capabilities(self) -> None:
        """Whether the server returns per-step log-probs (one token generated for PROBE[0])
        and prompt log-probs (PROBE[1] scored). The two prompts differ from their first
        token on, so a server's prompt cache answers neither from the other."""
        url = self.client.url("completions")
        self.supports_logprobs = self.supports_scoring = False
        if not self.opts["logprobs"]:
            self.unsupported["logprobs"] = "log-probs are switched off (options.logprobs: false)"
            self.unsupported["scoring"] = self.unsupported["logprobs"]
            return
        ids = self.tokenizer.encode(PROBE[0])
        body = self._completion_body(ids, 1, top=1, stream=False)
        try:
            resp = self._call(lambda: self.client.post_json("completions", body),
                              "the log-prob probe (/completions)")
            steps = completion_steps(resp)
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
        how = "prompt_logprobs" if self.dialect == "vllm" else "echo + logprobs"
        scored = self.tokenizer.encode(PROBE[1])
        try:
            rows = self._call(lambda: self._score_rows(scored, 1),
                              f"the prompt log-prob probe ({how} on /completions)")
            if len(scored) > 1 and not any(rows[1:]):
                raise NoPromptLogprobs("every prompt position came back empty")
            self.supports_scoring = True
        except (ServerRejected, NoPromptLogprobs) as exc:
            self.unsupported["scoring"] = (f"the server at {url} returned no prompt log-probs "
                                           f"(asked with {how}): {exc}")

    # -- teacher-forced scoring via prompt log-probs --------------------------------
    def score(self, prompt_ids: Sequence[int], target_ids: Sequence[int],
              gather_ids: np.ndarray, top_k: int) -> Scores:
        if not self.supports_scoring:
            raise BackendCrashed(f"backend '{self.name}' cannot score: "
                                 f"{self.unsupported.get('scoring', 'no prompt log-probs')}")
        full = [int(i) for i in prompt_ids] + [int(i) for i in target_ids]
        top = min(max(top_k, gather_ids.shape[1]), int(self.opts["max_logprobs"]))
        try:
            how = "prompt_logprobs" if self.dialect == "vllm" else "echo + logprobs"
            rows = self._call(lambda: self._score_rows(full, top),
                              f"teacher-forced scoring ({how} on /completions)")
        except ServerRejected as exc:
            raise BackendCrashed(f"backend '{self.name}': {exc}") from None
        except NoPromptLogprobs as exc:   # this sequence only: the check is not-run
            raise ScoringUnavailable(f"the server's prompt log-probs cannot score this case: "
                                     f"{exc}") from None
        rows = rows[len(prompt_ids):len(full)]
        if any(row is None for row in rows):
            gap = next(i for i, row in enumerate(rows) if row is None)
            raise ScoringUnavailable(f"the server's echo leaves out generated token {gap} "
                                     f"({self._text([int(target_ids[gap])])!r}), so its "
                                     "log-probs are not served")
        n, k = gather_ids.shape
        gathered = np.empty((n, k), np.float32)
        missing = 0
        for i, row in enumerate(rows):
            # the upper bound for an id the server did not show is its `top`-th value,
            # not the row's minimum (a scored token outside the top is in the row too)
            shown = sorted(row.values(), reverse=True)[:top]
            floor = shown[-1] if shown else FLOOR
            for j, gid in enumerate(gather_ids[i]):
                if int(gid) in row:
                    gathered[i, j] = row[int(gid)]
                else:
                    gathered[i, j] = floor
                    missing += 1
        tail = tail_of(gathered)
        kk = max(1, top_k)   # rows with fewer served entries are padded (id -1, the lowest shown log-prob)
        top_ids = np.full((n, kk), -1, np.int64)
        top_lp = np.full((n, kk), FLOOR, np.float32)
        for i, row in enumerate(rows):
            best = sorted(row.items(), key=lambda kv: -kv[1])[:kk]
            for j, (tid, lp) in enumerate(best):
                top_ids[i, j], top_lp[i, j] = tid, lp
            if best:   # padding: the lowest shown log-prob (an upper bound), id -1
                top_lp[i, len(best):] = best[-1][1]
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
            body = {"prompt": full, "max_tokens": 1, **self.sampling, "prompt_logprobs": top,
                    "return_tokens_as_token_ids": True}
            resp = self.client.post_json("completions", self._finish_body(body, False))
            got = (resp.get("choices") or [{}])[0].get("prompt_logprobs")
            if not got:
                raise NoPromptLogprobs("no prompt_logprobs in the reply")
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
                raise NoPromptLogprobs(f"{len(rows)} prompt_logprobs rows for {len(full)} tokens")
            return rows
        body = {"prompt": self._text(full), "max_tokens": 1, **self.sampling, "echo": True,
                "logprobs": top}
        resp = self.client.post_json("completions", self._finish_body(body, False))
        steps = completion_steps(resp)
        if not steps:
            raise NoPromptLogprobs("echo returned no log-probs for the prompt tokens")
        special = set(getattr(getattr(self.tokenizer, "tok", None), "all_special_ids", None) or [])
        where = align_echo(full, len(steps), lambda k, tid: self._step_is(steps[k], tid),
                           special.__contains__)
        if isinstance(where, int):
            got = repr(steps[where].token) if where < len(steps) else "nothing"
            raise NoPromptLogprobs(f"the echoed prompt does not follow the prompt ids (token "
                                   f"{where}: the server echoed {got}, the prompt has "
                                   f"{self._text([full[where]])!r})")
        # llama-cpp-python pairs echoed token i with the distribution *after* it unless
        # the prompt starts with its BOS token (which it then drops): read the row that
        # predicts token j from step j-1, whose entries are all of that distribution
        shifted = (self.server.get("engine") == "llama-cpp-python" and bool(full)
                   and full[0] != getattr(getattr(self.tokenizer, "tok", None), "bos_token_id", None))
        rows: list[dict[int, float] | None] = []
        for j, k in enumerate(where):
            if shifted:
                k = where[j - 1] if j else None
            if k is None:   # a special token the server's echo leaves out (its BOS)
                rows.append({} if j == 0 else None)
                continue
            row: dict[int, float] = {}
            own_extra = shifted and len(steps[k].top) > top   # the echoed token's own entry
            for tok, lp, raw in steps[k].top:
                if own_extra and tok == steps[k].token:
                    continue   # not one of the shown top: it would lower their floor
                alt = self._token_id(tok, raw)
                if alt is not None and lp is not None:
                    row[alt] = max(row.get(alt, -math.inf), float(lp))
            if steps[k].logprob is not None and not shifted:
                row[full[j]] = float(steps[k].logprob)
            rows.append(row)
        return rows

    def _step_is(self, step: Step, tid: int) -> bool:
        """Whether an echoed step is token `tid`: by id where the server gives one, else
        by bytes or text (a special token or an incomplete character may come back as
        empty text)."""
        got = self._token_id(step.token, step.bytes) if TOKEN_ID.match(str(step.token)) else None
        if got is not None:
            return got == tid
        text = self._text([tid])
        if step.token == text:
            return True
        if step.bytes is not None and self._token_id(step.token, step.bytes) == tid:
            return True
        return step.token == "" and (text == "" or "\ufffd" in text or
                                     tid in set(getattr(getattr(self.tokenizer, "tok", None),
                                                        "all_special_ids", None) or []))
