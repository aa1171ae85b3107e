"""Decode-path localization: which layer breaks when the candidate decodes incrementally?

A decode-only bug (a KV-cache position off by one, a decode kernel, a rope offset) leaves
the one-pass forward exact, so comparing layers against the reference on the one-pass
sequence finds nothing. The candidate itself is the reference here: at the first bad
decode step — the first generated position where its incremental log-probs leave its own
one-pass log-probs by more than the per-position limits (else the worst such position) —
its per-layer hidden states from that one incremental step are compared with its own
one-pass hidden states at the same sequence position. The first layer that departs (the
same growth/floor rule as the one-pass localization, at the candidate's own dtype) is
where the decode path goes wrong; when no layer departs, the difference arises after the
final norm (output head, logits processing).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from specengine.compare import tokens as compare
from specengine.kinds.causal_lm.consistency import clear_of_ties
from specengine.kinds.causal_lm.golden import LmCaseRecord
from specengine.compare.layers import (GROWTH, Localization, default_floor, default_jump_floor,
                                       localize_states)
from specengine.kinds.causal_lm.layers import capture
from specengine.compare.tolerances import DEFAULTS, dtype_class
from specengine.errors import BackendUnavailable


def first_bad_decode_step(backend: Any, record: LmCaseRecord, dtype: str,
                          quantization: dict | None = None) -> tuple[int | None, str]:
    """The generated position (≥ 1: position 0 comes from the prompt's prefill) where the
    candidate's decode path first leaves its own one-pass path, and why it was chosen."""
    prompt, out = list(record.prompt_ids or ()), list(record.output_ids)
    if len(out) < 2:
        return None, "the golden has fewer than two generated tokens: no decode step"
    tol = DEFAULTS[dtype_class(dtype, quantization)]
    ids = record.steps.ids
    top_k = max(ids.shape[1], 1)
    one = backend.score(prompt, out, ids, top_k)
    inc = backend.score_incremental(prompt, out, ids, top_k)
    cons = compare.consistency(inc.gathered_logprobs, inc.gathered_tail, inc.top_ids[:, 0],
                               one.gathered_logprobs, one.gathered_tail, one.top_ids[:, 0],
                               clear_of_ties(one.top_logprobs, tol.max_margin), tol)
    bad = compare.first_bad_position(cons.kl[1:], cons.abs_dlogprob[1:], tol)
    if bad is not None:
        step = bad + 1
        return step, (f"first decode step beyond the per-position limits (KL {cons.kl[step]:.3g}"
                      f", max |Δ logprob| {cons.abs_dlogprob[step]:.3g} against its own "
                      "one-pass forward)")
    step = int(np.argmax(cons.kl[1:])) + 1
    return step, (f"no decode step beyond the per-position limits; the largest departure "
                  f"from its own one-pass forward is at step {step} (KL {cons.kl[step]:.3g})")


def localize_decode_record(backend: Any, record: LmCaseRecord, case_id: str, *, candidate: str,
                           dtype: str, quantization: dict | None = None,
                           growth: float = GROWTH, floor: float | None = None,
                           step: int | None = None) -> Localization:
    """Localize one case's decode path on a loaded candidate (see the module docstring)."""

    if not backend.supports_incremental:
        raise BackendUnavailable(f"backend '{candidate}' cannot be fed tokens through its KV "
                                 "cache, so its decode path cannot be localized")
    floor = default_floor(dtype) if floor is None else float(floor)
    why = "step given"
    if step is None:
        step, why = first_bad_decode_step(backend, record, dtype, quantization)
    if step is None:
        raise BackendUnavailable(f"case '{case_id}': {why}")
    prompt, out = list(record.prompt_ids or ()), list(record.output_ids)
    names, one_pass = capture(backend, prompt + out[:step])
    dec_names, decoded = capture(backend, [], run=lambda: backend.decode_hidden_states(
        prompt, out, step))
    if list(dec_names) != list(names):
        raise BackendUnavailable(f"case '{case_id}': the decode step returns layers "
                                 f"{dec_names[:3]}… unlike the one-pass forward")
    last = [np.asarray(s)[-1:] for s in one_pass]
    loc = localize_states(case_id, names, last, [np.asarray(s)[-1:] for s in decoded],
                          reference=f"{candidate} one-pass", candidate=f"{candidate} decode",
                          growth=growth, floor=floor,
                          jump_floor=min(floor, default_jump_floor(dtype)))
    loc.mode = "decode"
    loc.notes.append(f"decode step {step} (sequence position {len(prompt) + step - 1}): {why}")
    if loc.first_flagged is None:
        loc.notes.append("no layer departs: the decode path's difference arises after the "
                         "final norm (output head or logits processing), or is within noise")
    return loc
