"""What an OpenAI-compatible server sends back: completions and chat completions, whole
or assembled from a stream, parsed into steps (token, log-prob, top alternatives), plus
the small numeric helpers that turn a served top-k into arrays. Stdlib and numpy only."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

FLOOR = math.log(1e-9)   # log tail mass when the served top-k already sums to ~1


class NoPromptLogprobs(Exception):
    """The server gave no usable log-probs for the prompt tokens."""


class Step:
    __slots__ = ("token", "logprob", "top", "bytes")

    def __init__(self, token, logprob, top, raw=None):
        self.token, self.logprob, self.top, self.bytes = token, logprob, top, raw


class Reply:
    """A completion or chat completion, whole or assembled from stream events."""

    def __init__(self):
        self.text = ""
        self.steps: list[Step] = []
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
            steps = choice_steps(choice)
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


def choice_steps(choice: dict) -> list[Step]:
    lp = choice.get("logprobs")
    if not lp:
        return []
    if isinstance(lp.get("content"), list):          # chat format
        return [Step(e.get("token"), e.get("logprob"),
                      [(t.get("token"), t.get("logprob"), t.get("bytes"))
                       for t in (e.get("top_logprobs") or [])], e.get("bytes"))
                for e in lp["content"]]
    tokens = lp.get("tokens") or []                    # legacy completions format
    values = lp.get("token_logprobs") or [None] * len(tokens)
    tops = lp.get("top_logprobs") or [None] * len(tokens)
    return [Step(tok, val, [(t, v, None) for t, v in (top or {}).items()])
            for tok, val, top in zip(tokens, values, tops)]


def completion_steps(resp: dict) -> list[Step]:
    choices = resp.get("choices") or [] if isinstance(resp, dict) else []
    return choice_steps(choices[0]) if choices else []


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

def tail_of(top_lp: np.ndarray) -> np.ndarray:
    """log(1 - sum(exp(top-k))) per row, floored where the top-k already holds ~all mass."""
    mass = np.exp(top_lp.astype(np.float64)).sum(axis=-1)
    with np.errstate(divide="ignore"):
        tail = np.log(np.clip(1.0 - mass, 0.0, None))
    return np.maximum(tail, FLOOR).astype(np.float32)


def steps_to_arrays(steps: list, top_k: int, token_id, counts: dict):
    """Chosen ids and (steps, k) top-k arrays of served steps, mapping each returned token
    back to an id with `token_id(token, bytes)`; (None, (None,)*3) when a chosen token does
    not map back (the ids are then re-tokenized from the text). Unmapped tokens are
    counted in counts["unmapped_tokens"]."""
    chosen, rows = [], []
    for step in steps:
        tid = token_id(step.token, step.bytes)
        if tid is None:
            counts["unmapped_tokens"] += 1
            return None, (None, None, None)
        chosen.append(tid)
        row: dict[int, float] = {}
        for tok, lp, raw in step.top:
            alt = token_id(tok, raw)
            if alt is None:
                counts["unmapped_tokens"] += 1
                continue
            row[alt] = max(row.get(alt, -math.inf), float(lp))
        if step.logprob is not None:
            row.setdefault(tid, float(step.logprob))
        rows.append(sorted(row.items(), key=lambda kv: -kv[1]))
    # every row as wide as the case's top_k: a row with fewer served entries (tokens
    # that share a text, or that map to no id) is padded with id -1 at its lowest
    # shown log-prob, an upper bound for anything the server did not show
    k = max(1, top_k)
    rows = [(r + [(-1, r[-1][1] if r else FLOOR)] * k)[:k] for r in rows]
    top_ids = np.array([[i for i, _ in r] for r in rows], dtype=np.int64).reshape(-1, k)
    top_lp = np.array([[v for _, v in r] for r in rows], dtype=np.float32).reshape(-1, k)
    return chosen, (top_ids, top_lp, tail_of(top_lp))
