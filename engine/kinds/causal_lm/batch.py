"""Batch invariance: a case alone vs the same case inside a batch.

For each size in `determinism.batch_sizes` larger than 1, the case runs in row 0 of a
batch whose other rows are the spec's other cases, in spec order, cycling (the case
itself is repeated only when the spec has no other case). Prompts of different lengths
are left-padded by the backend, so the check covers padding, attention masks and the
different kernel shapes a batch brings. A case that would be the longest in its batch
is never padded, and a padding-mask bug would stay invisible on it: then the last row is
a filler longer than the case (the other prompts' tokens, cycled), so every case runs
left-padded in every batch. The case's greedy tokens must be identical to
its run alone, and its per-step top-k log-probs within `determinism.batch_atol`.

The judging (`compare_in_batch`, `judge`) is pure; `batch_invariance_check` drives a
backend and turns the verdict into a `Check` whose message names the first batch size
and the first step that differ, and which deterministic settings were in force.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from specengine.results import FAIL, NOT_RUN, PASS, Check


@dataclass
class BatchDiff:
    """The case inside one batch, against the case alone."""

    batch_size: int
    companions: list[str]               # ids of the cases in rows 1..
    identical_tokens: bool
    max_abs_dlogprob: float             # over the steps before the first token difference
    first_diff_step: int | None         # first step whose token or log-probs differ
    token_diff_step: int | None = None  # first step whose token differs
    alone_token: int | None = None      # the tokens at that step (None: one side ended)
    batched_token: int | None = None
    passed: bool = True


@dataclass
class BatchInvariance:
    passed: bool
    atol: float
    diffs: list[BatchDiff] = field(default_factory=list)

    @property
    def first_failure(self) -> BatchDiff | None:
        return next((d for d in self.diffs if not d.passed), None)


def companions(case_ids: Sequence[str], index: int, size: int) -> list[int]:
    """Indices of the cases filling rows 1..size-1 around case `index` (pure)."""
    others = [i for i in range(len(case_ids)) if i != index] or [index]
    return [others[j % len(others)] for j in range(size - 1)]


FILLER_EXTRA = 8      # a filler is this many tokens longer than the case it pads


def filler(case_ids: Sequence[int], others: Sequence[Sequence[int]]) -> list[int]:
    """A prompt longer than `case_ids`, made of the other prompts' tokens (cycled; the
    case's own when there are none), so the case is left-padded beside it (pure)."""
    pool = [t for ids in others for t in ids] or list(case_ids) or [0]
    want = len(case_ids) + FILLER_EXTRA
    return [pool[i % len(pool)] for i in range(want)]


def compare_in_batch(alone_ids: Sequence[int], alone_lp: np.ndarray,
                     batched_ids: Sequence[int], batched_lp: np.ndarray, atol: float,
                     batch_size: int, companion_ids: Sequence[str] = ()) -> BatchDiff:
    """Tokens must match; top-k log-probs must match within atol until they diverge."""
    alone_ids, batched_ids = list(alone_ids), list(batched_ids)
    n = min(len(alone_ids), len(batched_ids))
    token_diff = next((i for i in range(n) if alone_ids[i] != batched_ids[i]), None)
    if token_diff is None and len(alone_ids) != len(batched_ids):
        token_diff = n
    m = min(len(alone_lp), len(batched_lp), n if token_diff is None else token_diff + 1)
    per_step = (np.abs(np.asarray(alone_lp[:m], np.float64) - np.asarray(batched_lp[:m], np.float64))
                .max(axis=1) if m else np.zeros(0))
    over = np.nonzero(per_step > atol)[0]
    lp_diff = int(over[0]) if len(over) else None
    steps = [s for s in (token_diff, lp_diff) if s is not None]
    first = min(steps) if steps else None
    diff = BatchDiff(batch_size, list(companion_ids), token_diff is None,
                     float(per_step.max()) if m else 0.0, first, token_diff)
    if token_diff is not None:
        diff.alone_token = alone_ids[token_diff] if token_diff < len(alone_ids) else None
        diff.batched_token = batched_ids[token_diff] if token_diff < len(batched_ids) else None
    diff.passed = diff.identical_tokens and diff.max_abs_dlogprob <= atol
    return diff


def judge(diffs: list[BatchDiff], atol: float) -> BatchInvariance:
    return BatchInvariance(all(d.passed for d in diffs), atol, diffs)


def attention_named(settings: dict, modeling: dict) -> dict:
    """The settings in force, with the attention implementation the model really ran:
    where the model folder's own code ran, the library's `attn_implementation` setting
    only says what the library would have dispatched to (pure)."""
    if modeling.get("folder_code_ran"):
        module = modeling.get("module") or "the folder's modeling code"
        configured = settings.pop("attn_implementation", "")
        settings["attention"] = (f"the port's own code ({module})"
                                 + (f"; library setting {configured}" if configured else ""))
    return settings


def describe(result: BatchInvariance, settings: dict, token_text=None) -> str:
    """One line for reports: the first failing batch and step, or the worst pass."""
    shown = token_text or (lambda i: f"id {i}")
    in_force = "; ".join(f"{k}={v}" for k, v in sorted(settings.items())
                         if k != "device_map") or "none reported"
    sizes = ", ".join(str(d.batch_size) for d in result.diffs)
    bad = result.first_failure
    if bad is None:
        worst = max((d.max_abs_dlogprob for d in result.diffs), default=0.0)
        return (f"identical tokens alone and at batch {sizes}; max |Δ logprob| {worst:.3g} "
                f"≤ atol {result.atol:g} (deterministic settings: {in_force})")
    where = f"batch {bad.batch_size} (row 0, left-padded, with {', '.join(bad.companions)})"
    if not bad.identical_tokens:
        a = "end" if bad.alone_token is None else shown(bad.alone_token)
        b = "end" if bad.batched_token is None else shown(bad.batched_token)
        what = f"token differs at step {bad.token_diff_step}: alone {a}, in batch {b}"
        if bad.first_diff_step != bad.token_diff_step:
            what = (f"log-probs differ from step {bad.first_diff_step} "
                    f"(max |Δ logprob| {bad.max_abs_dlogprob:.3g} > atol {result.atol:g}), "
                    f"then the tokens at step {bad.token_diff_step}: alone {a}, in batch {b}")
    else:
        what = (f"log-probs differ at step {bad.first_diff_step}: max |Δ logprob| "
                f"{bad.max_abs_dlogprob:.3g} > atol {result.atol:g} (tokens identical)")
    return f"{where}: {what} (deterministic settings: {in_force})"


def batch_invariance(ctx) -> Check | None:
    """`batch-invariance`: the case inside batches of `determinism.batch_sizes` (> 1),
    judged against its run alone (None when no batch size above 1 is asked)."""
    det = ctx.case.determinism
    if not any(size > 1 for size in det.batch_sizes):
        return None
    if not ctx.gen.has_logprobs:
        return Check("batch-invariance", NOT_RUN,
                     f"needs log-probs: {ctx.unsupported('logprobs')}")
    diffs = [_in_batch(ctx, size) for size in sorted({b for b in det.batch_sizes if b > 1})]
    result = judge(diffs, det.batch_atol)
    env = ctx.backend.environment()
    settings = attention_named(dict(env.get("settings", {})), env.get("modeling") or {})
    bad = result.first_failure
    metrics = {"batch_sizes": [d.batch_size for d in diffs], "atol": det.batch_atol,
               "identical_tokens": all(d.identical_tokens for d in diffs),
               "max_abs_dlogprob": max((d.max_abs_dlogprob for d in diffs), default=0.0),
               "first_diff_batch_size": bad.batch_size if bad else None,
               "first_diff_step": bad.first_diff_step if bad else None,
               "per_batch_size": [asdict(d) for d in diffs], "settings": settings}
    return Check("batch-invariance", PASS if result.passed else FAIL,
                 describe(result, settings, lambda i: f"{ctx.token_text(i)!r} (id {i})"),
                 metrics)


def _in_batch(ctx, size: int) -> BatchDiff:
    """The case in row 0 of a batch of `size`, left-padded beside the others."""
    ids = [cid for cid, _ in ctx.batch_prompts]
    index = ids.index(ctx.case.id) if ctx.case.id in ids else 0
    rows = companions(ids, index, size)
    prompt = ctx.prompt_ids
    others = [list(ctx.batch_prompts[i][1]) for i in rows]
    names = [ids[i] for i in rows]
    if max(map(len, others)) <= len(prompt):     # the case would not be padded
        others[-1] = filler(prompt, others)
        names[-1] = f"a {len(others[-1])}-token filler"
    case, alone = ctx.case, ctx.gen
    batched = ctx.backend.generate([prompt] + others, case.max_new_tokens, case.top_k,
                                   ctx.tokenizer.stop_ids)[0]
    return compare_in_batch(alone.output_ids, alone.topk_logprobs, batched.output_ids,
                            batched.topk_logprobs, case.determinism.batch_atol, size, names)
