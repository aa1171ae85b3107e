"""Running a causal-LM ONNX graph on an ONNX Runtime session: prefill, one step, all logits.

Graphs it understands (batch 1; names as written by transformers' and Optimum's
exporters):

- `kv`: `input_ids [1, S]` (+ optional `position_ids`, `attention_mask`,
  `cache_position`) and state inputs `input.past_key_values.*` / `past_key_values.*` /
  `past.*`, giving `logits` and the state after the step under the same names with
  `output.` / `present` instead. S may be dynamic (the prompt goes in one call) or 1 (the
  prompt goes one token at a time). The empty state's shapes come from the export's
  metadata, else from the graph (symbolic axes: batch 1, past length 0).
- `full`: `input_ids [1, L]` -> `logits [1, L, vocab]` without state. Each step re-runs
  the whole prefix. A fixed L is served by right padding: a causal model's logits at a
  position never depend on later positions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specengine.errors import BackendUnavailable

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(double)": np.float64, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
_IN_PREFIX = re.compile(r"^(input\.)?(past_key_values|past)[._]")
_OUT_PREFIX = re.compile(r"^(output\.)?(past_key_values|present_key_values|present)[._]")
_KNOWN = {"input_ids", "position_ids", "attention_mask", "cache_position"}


def onnx_runtime(backend_name: str) -> Any:
    """The `onnxruntime` module, or BackendUnavailable naming the backend and how to install
    it."""
    try:
        import onnxruntime
    except ImportError:
        from specengine.install import install_hint

        raise BackendUnavailable(f"backend '{backend_name}' needs ONNX Runtime, which is not "
                                 f"installed: {install_hint('onnx')}") from None
    return onnxruntime


@dataclass
class Cursor:
    """A sequence being extended: its ids so far and the graph state after them."""

    ids: list[int]
    state: dict[str, np.ndarray] = field(default_factory=dict)


class GraphError(ValueError):
    """A graph whose inputs or outputs this runner does not understand."""


class OnnxGraph:
    def __init__(self, session, meta: dict[str, Any] | None = None):
        self.session = session
        meta = meta or {}
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        if "input_ids" not in inputs:
            raise GraphError(f"the graph has no input_ids input (inputs: {', '.join(inputs)})")
        self.logits_name = "logits" if "logits" in outputs else outputs[0]
        self.state_out: dict[str, str] = {}       # state input name -> output name
        by_key = {_OUT_PREFIX.sub("", name): name for name in outputs if _OUT_PREFIX.match(name)}
        for name in inputs:
            if name in _KNOWN:
                continue
            if not _IN_PREFIX.match(name):
                raise GraphError(f"the graph input {name!r} is neither input_ids, position_ids, "
                                 "attention_mask, cache_position nor a past state")
            key = _IN_PREFIX.sub("", name)
            if key not in by_key:
                raise GraphError(f"the graph input {name!r} has no matching present-state output")
            self.state_out[name] = by_key[key]
        self.inputs = inputs
        self.kind = "kv" if self.state_out else "full"
        width = inputs["input_ids"].shape[1] if len(inputs["input_ids"].shape) > 1 else None
        self.fixed_length = width if isinstance(width, int) and width > 1 else None
        self.multi_token = not (isinstance(width, int) and width == 1)
        if self.kind == "kv" and self.fixed_length:
            raise GraphError(f"a graph with past state must take a free or unit step length, "
                             f"not {self.fixed_length}")
        self._empty = self._empty_state(meta.get("state_shapes") or {})

    # -- state -------------------------------------------------------------------------
    def _empty_state(self, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
        state = {}
        for name in self.state_out:
            info = self.inputs[name]
            key = re.sub(r"^input\.(past_key_values\.)?", "", name)
            shape = shapes.get(key) or shapes.get(name) or _guess_shape(info.shape)
            state[name] = np.zeros(shape, dtype=_NP_TYPES.get(info.type, np.float32))
        return state

    # -- running -----------------------------------------------------------------------
    def _run(self, new_ids: list[int], cursor: Cursor) -> np.ndarray:
        past = len(cursor.ids)
        n = len(new_ids)
        feed: dict[str, np.ndarray] = {"input_ids": np.asarray([new_ids], dtype=np.int64)}
        if "position_ids" in self.inputs:
            feed["position_ids"] = _positions(self.inputs["position_ids"], past, n)
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, past + n), dtype=_NP_TYPES.get(
                self.inputs["attention_mask"].type, np.int64))
        if "cache_position" in self.inputs:
            feed["cache_position"] = np.arange(past, past + n, dtype=np.int64)
        feed.update(cursor.state)
        names = [self.logits_name] + list(self.state_out.values())
        values = self.session.run(names, feed)
        cursor.state = dict(zip(self.state_out, values[1:]))
        cursor.ids = cursor.ids + list(new_ids)
        return np.asarray(values[0][0], dtype=np.float32)

    def _full(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        padded = list(ids)
        if self.fixed_length:
            if n > self.fixed_length:
                raise GraphError(f"the graph takes at most {self.fixed_length} tokens (a fixed "
                                 f"input length), this sequence has {n}: export it with a "
                                 "longer or a dynamic sequence axis")
            padded = padded + [0] * (self.fixed_length - n)   # right padding: causal
        logits = self._run(padded, Cursor([]))
        return logits[:n]

    def prefill(self, ids: list[int]) -> tuple[np.ndarray, Cursor]:
        """Logits at every position of `ids` (n, vocab), and a cursor after them."""
        ids = [int(x) for x in ids]
        if self.kind == "full":
            return self._full(ids), Cursor(ids)
        cursor = Cursor([], dict(self._empty))
        if self.multi_token:
            return self._run(ids, cursor), cursor
        rows = [self._run([token], cursor)[0] for token in ids]
        return np.stack(rows), cursor

    def advance(self, cursor: Cursor, token: int) -> np.ndarray:
        """Append one token; the logits (vocab,) that predict the next one."""
        if self.kind == "full":
            cursor.ids = cursor.ids + [int(token)]
            return self._full(cursor.ids)[-1]
        return self._run([int(token)], cursor)[-1]

    def describe(self) -> str:
        if self.kind == "full":
            fixed = f", fixed length {self.fixed_length}" if self.fixed_length else ""
            return f"full sequence, no cache{fixed}"
        return "kv, prompt in one call" if self.multi_token else "kv, one token per call"


def _guess_shape(shape: list) -> list[int]:
    """Empty-state shape from a graph input's declared shape: batch 1, symbolic axes 0."""
    out = []
    for axis, dim in enumerate(shape):
        if isinstance(dim, int) and dim >= 0:
            out.append(dim)
        else:
            out.append(1 if axis == 0 else 0)
    return out


def _positions(info, past: int, n: int) -> np.ndarray:
    pos = np.arange(past, past + n, dtype=np.int64)
    rank = len(info.shape)
    if rank == 3:                                   # (sections, batch, seq): M-RoPE style
        sections = info.shape[0] if isinstance(info.shape[0], int) else 3
        return np.broadcast_to(pos, (sections, 1, n)).copy()
    return pos[None]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-softmax of raw logits rows (the reduction in float64)."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(axis=-1, keepdims=True)) + m
    return (x - lse).astype(np.float32)
