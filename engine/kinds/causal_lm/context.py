"""What the checks of one causal-LM case share: the case, its golden record, the limits
that judge it, the loaded candidate, the result being filled in, and what the candidate
produced — its free-running generation (run once, gathering the golden's top-k ids at
each step), its one-pass scores of the golden's sequence and its decode-path rows, each
computed once on first use. A check is a function `(CaseContext) -> Check | list[Check] |
None` in the module of its concept; `check.CHECKS` lists them in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from specengine.backends.base import Backend, Generation, Scores, ScoringUnavailable
from specengine.compare.tokens import Consistency, Divergence
from specengine.kinds.causal_lm.decode import DecodeRows, decode_rows
from specengine.kinds.causal_lm.golden import LmCaseRecord
from specengine.kinds.causal_lm.limits import CaseLimits
from specengine.results import CaseResult
from specengine.spec import Case


@dataclass
class CaseContext:
    """One case being checked. `batch_prompts` are the spec's cases' prompt ids in spec
    order (the batch-invariance check fills batches with them); `reference_consistency`
    is a live reference's own prefill/decode consistency on the case (check --against)
    and `reference_limits` what judges it."""

    case: Case
    record: LmCaseRecord
    limits: CaseLimits
    backend: Backend
    tokenizer: Any
    result: CaseResult
    batch_prompts: Sequence[tuple[str, list[int]]] = ()
    reference_consistency: Consistency | None = None
    reference_limits: Any = None
    reference_name: str = ""
    divergence: Divergence | None = None
    one_pass_unavailable: str = field(default="", init=False)

    # -- what the golden holds ----------------------------------------------------------
    @property
    def prompt_ids(self) -> list[int]:
        return list(self.record.prompt_ids or ())

    @property
    def golden_ids(self) -> list[int]:
        return list(self.record.output_ids)

    @property
    def golden_steps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.record.steps.arrays()

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.token_strings([token_id])[0]

    def unsupported(self, what: str) -> str:
        """Why the candidate returned no `what` (logprobs, scoring, ...)."""
        reasons = self.backend.unsupported
        return (reasons.get(what) or reasons.get("logprobs")
                or f"backend '{self.backend.name}' returned none")

    # -- what the candidate produced, each once -------------------------------------------
    def generate(self, gather: bool = False) -> Generation:
        """The candidate's greedy run of the case; ids that a served model's text was
        re-tokenized into are re-read along the golden's (Backend.align_to_golden). With
        `gather` a backend that supports it also returns the log-probs it gave the
        golden's top-k ids at every step."""
        case, tok = self.case, self.tokenizer
        extra = ({"gather": [self.golden_steps[0]]} if gather and self.backend.supports_gather
                 else {})
        gen = self.backend.generate([self.prompt_ids], case.max_new_tokens, case.top_k,
                                    tok.stop_ids, **extra)[0]
        return self.backend.align_to_golden(gen, self.golden_ids, tok, case.max_new_tokens)

    @cached_property
    def gen(self) -> Generation:
        return self.generate(gather=True)

    @cached_property
    def scores(self) -> Scores | None:
        """The candidate's one-pass scores of the golden's sequence at the golden's top-k
        ids; None (and `one_pass_unavailable` says why) when it cannot score."""
        if not self.golden_ids:
            self.one_pass_unavailable = "the golden has no generated tokens"
            return None
        if not self.backend.supports_scoring:
            self.one_pass_unavailable = f"needs log-probs: {self.unsupported('scoring')}"
            return None
        try:
            return self.backend.score(self.prompt_ids, self.golden_ids, self.golden_steps[0],
                                      self.case.top_k)
        except ScoringUnavailable as exc:   # this input only: a missing optional feature
            self.one_pass_unavailable = f"needs log-probs: {exc}"
            return None

    @cached_property
    def decode_rows(self) -> DecodeRows:
        """The candidate's decode-path log-probs at the golden's top-k ids: its own steps
        up to the first divergence, then the golden's tokens through its KV cache."""
        step = self.divergence.step if self.divergence is not None else None
        return decode_rows(self.backend, self.prompt_ids, self.golden_ids, self.golden_steps[0],
                           self.gen, step, self.case.top_k)

    @property
    def first_logprob(self) -> float | None:
        gen = self.gen
        if len(gen.output_ids) and gen.has_logprobs and len(gen.topk_logprobs):
            return float(gen.topk_logprobs[0][0])
        return None
