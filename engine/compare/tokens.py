"""Comparison semantics of token distributions, as pure functions: numpy in, result dataclasses out.

No backend, spec or file I/O here: every function takes arrays (or the text it judges)
and returns a dataclass with `passed` and the measured numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from specengine.compare.tolerances import Tolerance


@dataclass
class TeacherForced:
    """Candidate scored on the golden's sequence, position by position."""

    passed: bool
    kl_mean: float
    kl_max: float
    top1_agreement: float
    max_abs_dlogprob: float
    max_abs_dp: float
    worst_position: int
    kl: list[float]                 # per position
    abs_dlogprob: list[float]       # per position, max over the golden's top-k
    top1_agreement_all: float = 1.0     # over every position, near-ties included
    near_ties: int = 0                  # positions excluded from top1_agreement
    failures: list[str] = field(default_factory=list)
    nonfinite: bool = False
    dp: list[float] = field(default_factory=list)         # per position, signed: p_C − p_G of G's token
    same_top1: list[bool] = field(default_factory=list)   # per position: C's argmax is G's top-1
    within: list[str] = field(default_factory=list)       # each limit it kept: value ≤ limit

    def verdict(self) -> str:
        """The failures, or every limit kept with its value (for -v and the reports)."""
        return "; ".join(self.failures) or "within limits: " + ", ".join(self.within)


@dataclass
class Divergence:
    """First step where the free-running candidate left the golden's tokens."""

    step: int | None                # None: no divergence
    golden_id: int | None = None
    candidate_id: int | None = None
    rank_in_golden: int | None = None   # 1-based rank of the candidate's token in G's top-k
    margin: float | None = None         # G's top-1 logprob minus G's logprob of C's token
    benign: bool = True
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.benign


@dataclass
class Expectation:
    name: str
    passed: bool
    detail: str
    want: str = ""          # what was expected, as written (`contains 'Paris'`): its identity

    @property
    def key(self) -> str:
        return f"{self.name} {self.want}"


@dataclass
class Repeatability:
    """Repeated (or batched) runs of the same case compared with the first run."""

    passed: bool
    runs: int
    identical_tokens: bool
    max_abs_dlogprob: float
    first_diff_step: int | None
    where: str = ""                 # e.g. "run 2" or "batch of 4"


def kl_partition(golden_lp: np.ndarray, golden_tail: np.ndarray,
                 cand_lp: np.ndarray, cand_tail: np.ndarray) -> np.ndarray:
    """KL(G‖C) per position on the partition {G's top-k ids, tail}.

    golden_lp / cand_lp: (n, k) log-probs of the same ids; *_tail: (n,) log tail mass.
    Computed in float64; a zero-mass cell of G contributes nothing.
    """
    g = np.concatenate([golden_lp, golden_tail[:, None]], axis=1).astype(np.float64)
    c = np.concatenate([cand_lp, cand_tail[:, None]], axis=1).astype(np.float64)
    p = np.exp(g)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (g - c), 0.0)
    return np.maximum(terms.sum(axis=1), 0.0)


def teacher_forced(golden_ids: np.ndarray, golden_lp: np.ndarray, golden_tail: np.ndarray,
                   cand_lp: np.ndarray, cand_tail: np.ndarray, cand_top1: np.ndarray,
                   tol: Tolerance) -> TeacherForced:
    """Metrics of a candidate scored at the golden's top-k ids (G's ids[:, 0] is its top-1).

    golden_ids (n, k); golden_lp (n, k); golden_tail (n,); cand_lp (n, k) log-probs the
    candidate gives those same ids; cand_tail (n,) its mass outside them; cand_top1 (n,)
    the candidate's own argmax ids.
    """
    n = golden_ids.shape[0]
    if n == 0:
        return TeacherForced(True, 0.0, 0.0, 1.0, 0.0, 0.0, 0, [], [])
    # -inf is a legitimate log-probability (zero mass); NaN and +inf are not
    finite = not (np.isnan(cand_lp).any() or np.isposinf(cand_lp).any()
                  or np.isnan(cand_tail).any() or np.isposinf(cand_tail).any())
    kl = kl_partition(golden_lp, golden_tail, cand_lp, cand_tail)
    dlp = np.abs(cand_lp.astype(np.float64) - golden_lp.astype(np.float64)).max(axis=1)
    dp = np.abs(np.exp(cand_lp[:, 0].astype(np.float64)) - np.exp(golden_lp[:, 0].astype(np.float64)))
    # positions where the golden's top-1 leads its runner-up by less than the near-tie
    # margin are ties: a flip there is rounding noise, not disagreement
    if golden_lp.shape[1] > 1:
        clear = (golden_lp[:, 0] - golden_lp[:, 1]) >= tol.max_margin
    else:
        clear = np.ones(n, dtype=bool)
    hits = cand_top1 == golden_ids[:, 0]
    agree = float(hits[clear].mean()) if clear.any() else 1.0
    raw_agree = float(hits.mean())
    kl = np.where(np.isfinite(kl), kl, np.inf)
    dlp = np.where(np.isfinite(dlp), dlp, np.inf)
    res = TeacherForced(
        passed=True, kl_mean=float(kl.mean()), kl_max=float(kl.max()), top1_agreement=agree,
        max_abs_dlogprob=float(dlp.max()), max_abs_dp=float(np.nan_to_num(dp, nan=1.0).max()),
        worst_position=int(np.argmax(kl)), kl=[float(x) for x in kl],
        top1_agreement_all=raw_agree, near_ties=int((~clear).sum()),
        abs_dlogprob=[float(x) for x in dlp], nonfinite=not finite,
        dp=[float(x) for x in np.nan_to_num(
            np.exp(cand_lp[:, 0].astype(np.float64)) - np.exp(golden_lp[:, 0].astype(np.float64)),
            nan=-1.0)],
        same_top1=[bool(x) for x in hits],
    )
    checks = [
        (not finite, "candidate log-probs contain NaN or Inf", ""),
        (res.kl_mean > tol.kl_mean_max, f"KL mean {res.kl_mean:.4g} > {tol.kl_mean_max:g}",
         f"KL mean {res.kl_mean:.3g} ≤ {tol.kl_mean_max:g}"),
        (res.kl_max > tol.kl_max, f"KL max {res.kl_max:.4g} > {tol.kl_max:g} (position {res.worst_position})",
         f"KL max {res.kl_max:.3g} ≤ {tol.kl_max:g}"),
        (agree < tol.top1_agreement_min, f"top-1 agreement {agree:.3f} < {tol.top1_agreement_min:g} "
                                          f"({res.near_ties} near-tie positions excluded)",
         f"top-1 agreement {agree:.3f} ≥ {tol.top1_agreement_min:g}"),
        (res.max_abs_dlogprob > tol.logprob_atol,
         f"max |Δ logprob| {res.max_abs_dlogprob:.4g} > {tol.logprob_atol:g}",
         f"max |Δ logprob| {res.max_abs_dlogprob:.3g} ≤ {tol.logprob_atol:g}"),
        (tol.prob_atol is not None and res.max_abs_dp > tol.prob_atol,
         f"max |Δp| of the golden token {res.max_abs_dp:.4g} > {tol.prob_atol}",
         f"max |Δp| {res.max_abs_dp:.3g} ≤ {tol.prob_atol}" if tol.prob_atol is not None else ""),
    ]
    res.within = [ok for bad, _, ok in checks if not bad and ok]
    res.failures = [msg for bad, msg, _ in checks if bad]
    res.passed = not res.failures
    return res


def first_divergence(golden_ids: Sequence[int], cand_ids: Sequence[int],
                     golden_topk_ids: np.ndarray, golden_topk_lp: np.ndarray,
                     tol: Tolerance) -> Divergence:
    """The near-tie rule at the first step where the candidate's greedy tokens differ.

    A candidate that stops earlier or runs longer than the golden diverges at the first
    step one has and the other lacks; that is judged like any other token (a missing
    token is never in the golden's top-k, so a length change at a clear step fails).
    """
    n = min(len(golden_ids), len(cand_ids))
    step = next((i for i in range(n) if golden_ids[i] != cand_ids[i]), None)
    if step is None:
        if len(golden_ids) == len(cand_ids):
            return Divergence(step=None)
        step = n
        if step >= len(golden_ids):
            return Divergence(step=step, candidate_id=int(cand_ids[step]), benign=False,
                              reason=f"candidate continued past the golden's end at step {step}")
        return Divergence(step=step, golden_id=int(golden_ids[step]), benign=False,
                          reason=f"candidate stopped at step {step}; the golden continued")
    cand = int(cand_ids[step])
    ids = list(int(x) for x in golden_topk_ids[step])
    div = Divergence(step=step, golden_id=int(golden_ids[step]), candidate_id=cand)
    if cand in ids:
        rank = ids.index(cand)
        div.rank_in_golden = rank + 1
        div.margin = float(golden_topk_lp[step][0] - golden_topk_lp[step][rank])
    if div.rank_in_golden is None:
        div.benign = False
        div.reason = f"step {step}: candidate token not in the golden's top-{len(ids)}"
    elif div.rank_in_golden > tol.within_top_k:
        div.benign = False
        div.reason = (f"step {step}: candidate token is the golden's #{div.rank_in_golden}, "
                      f"outside the near-tie rank {tol.within_top_k}")
    elif div.margin > tol.max_margin:
        div.benign = False
        div.reason = (f"step {step}: candidate token is {div.margin:.3f} nats below the golden's "
                      f"top-1 (near-tie margin {tol.max_margin:g})")
    else:
        div.reason = (f"step {step}: near-tie (golden's #{div.rank_in_golden}, "
                      f"{div.margin:.3f} nats below its top-1)")
    return div


def expectations(expect: dict, text: str, ids: Sequence[int],
                 first_token_logprob: float | None) -> list[Expectation]:
    """Each expectation of a case judged on the candidate's continuation."""
    out: list[Expectation] = []
    short = _short(text)
    for key, want in expect.items():
        if key == "startswith":
            out.append(Expectation(key, text.startswith(want), f"{short} starts with {want!r}",
                                   repr(want)))
        elif key == "equals":
            out.append(Expectation(key, text == want, f"{short} == {want!r}", repr(want)))
        elif key in ("contains", "not_contains"):
            items = [want] if isinstance(want, str) else list(want)
            for item in items:
                ok = (item in text) == (key == "contains")
                verb = "contains" if key == "contains" else "does not contain"
                out.append(Expectation(key, ok, f"{short} {verb} {item!r}", repr(item)))
        elif key == "regex":
            out.append(Expectation(key, re.search(want, text) is not None,
                                   f"{short} matches /{want}/", f"/{want}/"))
        elif key == "token_ids":
            ok = list(ids[:len(want)]) == list(want)
            out.append(Expectation(key, ok, f"ids {list(ids[:len(want)])} start with {list(want)}",
                                   str(list(want))))
        elif key == "min_prob":
            p = float(np.exp(first_token_logprob)) if first_token_logprob is not None else 0.0
            out.append(Expectation(key, p >= want, f"first-token probability {p:.4f} >= {want}",
                                   str(want)))
    return out


def repeatability(first_ids: Sequence[int], first_lp: np.ndarray,
                  other_ids: Sequence[int], other_lp: np.ndarray, atol: float,
                  where: str, runs: int = 2) -> Repeatability:
    """Compare another run of the same case with the first: tokens, then top-k log-probs."""
    same_tokens = list(first_ids) == list(other_ids)
    n = min(len(first_ids), len(other_ids))
    first_diff = next((i for i in range(n) if first_ids[i] != other_ids[i]), None)
    if first_diff is None and len(first_ids) != len(other_ids):
        first_diff = n
    m = min(first_lp.shape[0], other_lp.shape[0], first_diff if first_diff is not None else n)
    if m:
        diff = np.abs(first_lp[:m].astype(np.float64) - other_lp[:m].astype(np.float64))
        per_step = diff.max(axis=1)
        max_d = float(per_step.max())
        if first_diff is None and max_d > atol:
            first_diff = int(np.argmax(per_step > atol))
    else:
        max_d = 0.0
    passed = same_tokens and max_d <= atol
    return Repeatability(passed, runs, same_tokens, max_d, None if passed else first_diff, where)


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


@dataclass
class Consistency:
    """One backend's two paths over the same sequence: its incremental decode (KV cache)
    against its own one-pass forward. Needs no golden; judged at that backend's own dtype
    noise."""

    passed: bool
    kl_mean: float
    kl_max: float
    max_abs_dlogprob: float
    top1_agreement: float
    worst_position: int
    kl: list[float]
    abs_dlogprob: list[float]
    failures: list[str] = field(default_factory=list)
    within: list[str] = field(default_factory=list)

    def verdict(self) -> str:
        return "; ".join(self.failures) or "within limits: " + ", ".join(self.within)


def consistency(decode_lp: np.ndarray, decode_tail: np.ndarray, decode_top1: np.ndarray,
                prefill_lp: np.ndarray, prefill_tail: np.ndarray, prefill_top1: np.ndarray,
                clear: np.ndarray, tol: Tolerance) -> Consistency:
    """KL(decode‖one-pass) on the partition {the gathered ids, tail}, max |Δ logprob| over
    the gathered ids and argmax agreement at the positions `clear` of a near-tie — both
    paths' log-probs taken at the same ids, row i predicting the same token."""
    n = decode_lp.shape[0]
    if n == 0:
        return Consistency(True, 0.0, 0.0, 0.0, 1.0, 0, [], [])
    kl = kl_partition(decode_lp, decode_tail, prefill_lp, prefill_tail)
    dlp = np.abs(decode_lp.astype(np.float64) - prefill_lp.astype(np.float64)).max(axis=1)
    bad = ~np.isfinite(kl) | ~np.isfinite(dlp)
    kl, dlp = np.where(bad, np.inf, kl), np.where(bad, np.inf, dlp)
    hits = np.asarray(decode_top1) == np.asarray(prefill_top1)
    clear = np.asarray(clear, dtype=bool)
    agree = float(hits[clear].mean()) if clear.any() else 1.0
    res = Consistency(True, float(kl.mean()), float(kl.max()), float(dlp.max()), agree,
                      int(np.argmax(kl)), [float(x) for x in kl], [float(x) for x in dlp])
    checks = [
        (res.kl_mean > tol.kl_mean_max, f"KL mean {res.kl_mean:.4g} > {tol.kl_mean_max:g}",
         f"KL mean {res.kl_mean:.3g} ≤ {tol.kl_mean_max:g}"),
        (res.kl_max > tol.kl_max, f"KL max {res.kl_max:.4g} > {tol.kl_max:g} "
                                  f"(position {res.worst_position})",
         f"KL max {res.kl_max:.3g} ≤ {tol.kl_max:g}"),
        (agree < tol.top1_agreement_min, f"argmax agreement {agree:.3f} < "
                                         f"{tol.top1_agreement_min:g}",
         f"argmax agreement {agree:.3f} ≥ {tol.top1_agreement_min:g}"),
        (res.max_abs_dlogprob > tol.logprob_atol,
         f"max |Δ logprob| {res.max_abs_dlogprob:.4g} > {tol.logprob_atol:g}",
         f"max |Δ logprob| {res.max_abs_dlogprob:.3g} ≤ {tol.logprob_atol:g}"),
    ]
    res.within = [ok for failed, _, ok in checks if not failed]
    res.failures = [msg for failed, msg, _ in checks if failed]
    res.passed = not res.failures
    return res


def first_bad_position(kl: Sequence[float], abs_dlogprob: Sequence[float],
                       tol: Tolerance) -> int | None:
    """The first position whose KL or |Δ logprob| alone exceeds the per-position limits
    (kl_max, logprob_atol); None when every position is within them."""
    for i, (k, d) in enumerate(zip(kl, abs_dlogprob)):
        if not (k <= tol.kl_max and d <= tol.logprob_atol):
            return i
    return None
