"""The one backend interface, and the plain-array results it returns.

A backend is a runtime + device + dtype. It loads a model source, generates greedily
with per-step top-k log-probabilities, scores a given sequence teacher-forced, optionally
returns per-layer hidden states, describes its environment and closes. Every array is
numpy, every log-probability is computed in float32 from the raw logits.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from specengine.errors import BackendCrashed, BackendUnavailable, SpecEngineError, brief


@dataclass
class Generation:
    """One greedy continuation.

    `topk_ids[i]` / `topk_logprobs[i]` are the backend's own top-k at generated step i
    (the distribution the i-th output token was picked from); `tail_logprob[i]` is the
    log of the probability mass outside those k ids.

    A runtime that cannot see log-probs (a served model whose API returns none) leaves
    the three arrays None: checks that need them are then reported `not-run`, never
    passed. `text` is the continuation as the runtime returned it; `ids_from_text` says
    the ids were re-tokenized from that text (the server returned no token ids) and
    `stopped` whether the runtime ended at a stop token (appended to `output_ids`).
    """

    prompt_ids: list[int]
    output_ids: list[int]
    topk_ids: np.ndarray | None        # (steps, k) int64
    topk_logprobs: np.ndarray | None   # (steps, k) float32, sorted descending
    tail_logprob: np.ndarray | None    # (steps,) float32
    timings: dict[str, float] = field(default_factory=dict)  # ttft_s, total_s[, tpot_s]
    text: str | None = None
    ids_from_text: bool = False
    stopped: bool = False
    # with `generate(..., gather=...)`: the log-probs this run gave the requested ids at
    # each step (rows up to the shorter of the two lengths) and the log of the mass
    # outside them — the decode path measured on the very steps that chose the tokens
    gathered_logprobs: np.ndarray | None = None   # (steps, k) float32
    gathered_tail: np.ndarray | None = None       # (steps,) float32

    @property
    def has_logprobs(self) -> bool:
        return self.topk_logprobs is not None


@dataclass
class Scores:
    """Teacher-forced scores of a target sequence after a prompt.

    Row i is the distribution that predicts target token i. `gathered_logprobs[i, j]` is
    the log-probability of `gather_ids[i, j]`; `gathered_tail[i]` is the log of the mass
    outside the gathered ids (exact, from the full logits); `top_ids` / `top_logprobs` are
    the backend's own top-k at that position.
    """

    gathered_logprobs: np.ndarray   # (n, k) float32
    gathered_tail: np.ndarray       # (n,) float32
    top_ids: np.ndarray             # (n, k) int64
    top_logprobs: np.ndarray        # (n, k) float32
    note: str = ""                  # how exact the numbers are (e.g. served top-k only)


@dataclass
class Embedded:
    """One forward pass of an embedding model (text encoder or vision tower), float32.

    `pooler_output` is the model's own pooler head output when it returns one; pooling
    over tokens is done by the engine (kinds.embedding.pooling), the same for every backend.
    """

    last_hidden_state: np.ndarray           # (batch, tokens, hidden) float32
    pooler_output: np.ndarray | None = None  # (batch, hidden) float32


@dataclass
class BackendConfig:
    """What a backend is asked to be: a built-in entry or one from a spec's `backends:`."""

    name: str
    runtime: str                    # torch | onnx | openai | ...
    device: str = "cpu"
    dtype: str = "float32"
    options: dict[str, Any] = field(default_factory=dict)  # runtime-specific settings
    # declared weight / activation / KV-cache formats of a quantized deployment
    # (e.g. {"weights": "int8", "activations": "int8"}); None for a plain float model
    quantization: dict[str, Any] | None = None


class ScoringUnavailable(Exception):
    """This one input cannot be scored teacher-forced by a backend that can score others
    (a server whose prompt log-probs skip or re-spell some of its tokens). The check is
    then `not-run` with this reason, not an error."""


# the methods whose runtime errors the base class converts (see Backend.__init_subclass__)
GUARDED = ("load", "generate", "score", "score_incremental", "score_positions", "hidden_states",
           "decode_hidden_states", "embed", "run_op")


class Backend(ABC):
    """Interface every runtime implements. Instances are created by the registry.

    Every capability the engine uses is declared here with a default, so the engine never
    probes for a method: a runtime overrides what it has.

    Capabilities: a runtime that cannot return per-step log-probs or score a sequence
    teacher-forced (a served model behind an API without them) sets `supports_logprobs`
    / `supports_scoring` False after `load` and says why in `unsupported[...]`
    ("logprobs" / "scoring"); checks needing them are then `not-run` with that reason.

    Errors: a runtime's own exception in one of the GUARDED methods (a kernel failure, a
    driver error, out of memory) reaches the engine as BackendCrashed (exit 3) naming the
    backend, the method and the error on one line; the conversion is done once, here
    (like Polygraphy's `infer` around `infer_impl`), for every subclass. The engine's
    own errors, ScoringUnavailable and BaseExceptions (interrupts, time limits) pass.
    """

    supports_logprobs: bool = True
    supports_scoring: bool = True
    # `generate(..., gather=...)` returns the log-probs of given ids at every step
    supports_gather: bool = False
    # `score_incremental`: given tokens fed one at a time through the KV cache
    supports_incremental: bool = False
    # `score_positions`: one pass scored at chosen prompt positions (long prompts)
    supports_positions: bool = False
    # `embed`: embedding models (text encoders, vision towers)
    supports_embedding: bool = False
    # `run_op`: operator specs
    supports_ops: bool = False
    # the runtime tokenizes chats itself (served): `use_tokenizer` / `bind_chats` matter
    wants_tokenizer: bool = False
    # why a served model may not be greedy at temperature 0 (None: it always is)
    greedy_causes: str | None = None

    def __init__(self, config: BackendConfig):
        self.config = config
        self.unsupported: dict[str, str] = {}
        self.load_s: float | None = None     # seconds `load` took, once loaded
        self.model: Any = None               # the in-process model object, if any

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for method in GUARDED:
            fn = cls.__dict__.get(method)
            if fn is not None and not getattr(fn, "_guarded", False):
                setattr(cls, method, _guarded(method, fn))

    @property
    def name(self) -> str:
        return self.config.name

    @abstractmethod
    def load(self, source: Any) -> None:
        """Load a model source (a `specengine.loading.sources.ResolvedSource`)."""

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, top_k: int,
                 stop_ids: Sequence[int] = ()) -> list[Generation]:
        """Greedy generation for a batch of prompts (each may stop early at a stop id)."""

    @abstractmethod
    def score(self, prompt_ids: Sequence[int], target_ids: Sequence[int],
              gather_ids: np.ndarray, top_k: int) -> Scores:
        """Teacher-forced scoring of `target_ids` after `prompt_ids`, in one forward pass."""

    def score_incremental(self, prompt_ids: Sequence[int], target_ids: Sequence[int],
                          gather_ids: np.ndarray, top_k: int, start: int = 0) -> Scores:
        """The decode path over a given continuation: the prompt is prefilled as in
        generation, then each target token is fed one at a time through the KV cache, and
        rows `start`…n−1 are returned (row i predicts target token i; `gather_ids` has a row
        per target token). Runtimes that cannot feed chosen tokens leave
        `supports_incremental` False and say why in `unsupported["incremental"]`."""
        raise BackendUnavailable(self.unsupported.get("incremental")
                                 or f"backend '{self.name}' cannot feed given tokens through "
                                    "its KV cache")

    def score_positions(self, ids: Sequence[int], positions: Sequence[int],
                        gather_ids: np.ndarray, top_k: int) -> Scores:
        """One forward pass over `ids`, scored at chosen positions only: row j is the
        distribution at position positions[j] (predicting ids[positions[j] + 1]), gathered
        at gather_ids[j] — the prompt positions of a long case, memory bounded by the
        number of positions, not the length."""
        raise BackendUnavailable(f"backend '{self.name}' cannot score chosen positions")

    def hidden_states(self, ids: Sequence[int]) -> list[np.ndarray] | None:
        """Per-layer hidden states (embedding, each decoder layer, final norm), or None."""
        return None

    def decode_hidden_states(self, prompt_ids: Sequence[int], target_ids: Sequence[int],
                             step: int) -> list[np.ndarray] | None:
        """Per-layer hidden states (each (1, d)) of the incremental decode step that
        predicts target token `step` (step ≥ 1: target token step−1 fed through the KV
        cache after the prompt and the tokens before it), or None when unsupported."""
        return None

    def embed(self, feeds: dict[str, np.ndarray]) -> Embedded:
        """Embedding models (`model.kind: embedding`): one forward pass on numpy feeds
        (input_ids / attention_mask / token_type_ids, or float32 pixel_values, which the
        backend casts to its dtype)."""
        raise BackendUnavailable(f"backend '{self.name}' ({self.config.runtime}) cannot run "
                                 "embedding models")

    def run_op(self, run: Callable, inputs: dict[str, np.ndarray], dims: dict, params: dict,
               dtype: str) -> dict[str, np.ndarray]:
        """Operator specs: run one operator on this backend's device in `dtype`, from
        float64 `inputs` (rounded to `dtype` on the CPU before they move). `run` is the
        operator's torch implementation, `run(torch, tensors, dims, params, dtype) ->
        {name: tensor}` (the catalog entry's, so a backend needs no catalog). Float
        outputs come back as float64 holding the dtype's values."""
        raise BackendUnavailable(f"backend '{self.name}' ({self.config.runtime}) cannot run "
                                 "operator specs")

    def align_to_golden(self, gen: Generation, golden_ids: Sequence[int], tokenizer: Any,
                        max_new_tokens: int) -> Generation:
        """A generation whose ids were re-tokenized from text, re-read along the golden's
        ids where the texts agree. Runtimes that return ids leave it unchanged."""
        return gen

    @abstractmethod
    def environment(self) -> dict[str, Any]:
        """Backend, runtime, device name, dtype and library versions."""

    def close(self) -> None:
        """Release the model and device memory."""

    # -- what perf and the served checks use; defaults for a runtime without them ------

    def synchronize(self) -> None:
        """Wait for queued device work (timing reads after it). Host runtimes: nothing."""

    def peak_memory_bytes(self) -> int | None:
        """Peak device memory since the last reset, or None when the runtime cannot say."""
        return None

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window."""

    def peak_memory_source(self) -> str:
        """Where `peak_memory_bytes` comes from ('' when it is not measured)."""
        return ""

    def use_tokenizer(self, tokenizer: Any) -> None:
        """The spec's tokenizer, given before `load` to runtimes with `wants_tokenizer`."""

    def bind_chats(self, chats: dict[tuple[int, ...], tuple[list[dict], dict]]) -> None:
        """Which prompt ids came from which chat messages (and template kwargs), for a
        runtime that renders chats itself. Others ignore it."""


def _guarded(method: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except (SpecEngineError, ScoringUnavailable):
            raise
        except Exception as exc:
            doing = (f"could not load {getattr(args[0] if args else None, 'origin', 'the model')}"
                     if method == "load" else f"failed in {method}")
            raise BackendCrashed(f"backend '{self.config.name}' {doing}: "
                                 f"{type(exc).__name__}: {brief(exc)}") from exc
    call._guarded = True
    return call


def topk_with_tail(logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k ids/log-probs (sorted descending) and log tail mass of log-softmax rows.

    Pure numpy helper shared by runtimes that hand back full logits (ONNX, tests).
    `logprobs` is (n, vocab) float32 log-softmax output.
    """
    k = min(k, logprobs.shape[-1])
    part = np.argpartition(-logprobs, k - 1, axis=-1)[:, :k]
    vals = np.take_along_axis(logprobs, part, axis=-1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    ids = np.take_along_axis(part, order, axis=-1).astype(np.int64)
    vals = np.take_along_axis(vals, order, axis=-1).astype(np.float32)
    tail = log_mass_excluding(logprobs, ids)
    return ids, vals, tail


def log_mass_excluding(logprobs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log(sum of exp(logprobs) over all ids not in `ids`), per row, computed stably."""
    masked = logprobs.astype(np.float64).copy()
    np.put_along_axis(masked, ids, -np.inf, axis=-1)
    m = masked.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.exp(masked - m).sum(axis=-1)) + m[:, 0]
    return out.astype(np.float32)
