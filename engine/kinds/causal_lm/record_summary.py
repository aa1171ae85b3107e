"""What `record-golden` prints about a golden it just wrote: each case's continuation
(readable: multi-byte characters merged back from their byte tokens) and the near-tie steps that
make a text expectation fragile.

A step is a near-tie when the reference's top-1 leads its runner-up by less than the
case's divergence `max_margin`: a candidate may take the runner-up there, which the
divergence rule accepts, and everything the candidate writes after it is another text.
An `expect` on that later text then fails although the port is fine.
"""

from __future__ import annotations

from pathlib import Path

from specengine.compare.tolerances import HALF
from specengine.errors import SpecEngineError
from specengine.kinds.causal_lm.golden import LmCaseRecord, Steps, load_golden
from specengine.report.text import one_line, truncate
from specengine.token_display import joined, token_pieces
from specengine.loading.sources import resolve
from specengine.loading.tokenizer import load_tokenizer

TEXT_WIDTH = 160


def _margin(case) -> float:
    """The near-tie margin a half-precision candidate of this case is judged by (the
    class whose ties a text expectation meets most)."""
    return float(case.limits(HALF, absolute_only=True).values.max_margin or 0.5)


def near_ties(steps: Steps, margin: float) -> list[tuple[int, float, int, int]]:
    """(step, lead in nats, top-1 id, runner-up id) of every near-tie step."""
    out = []
    if steps.ids.shape[1] < 2:
        return out
    for step in range(len(steps)):
        lead = float(steps.logprobs[step][0] - steps.logprobs[step][1])
        if lead < margin:
            out.append((step, lead, int(steps.ids[step][0]), int(steps.ids[step][1])))
    return out


def settled_step(expect: dict, ids: list[int], decode) -> int:
    """The first step from which no token choice can change the text expectations'
    verdict: once a `contains` string or a `startswith` prefix is in the text, later
    tokens cannot take it away. Other expectations (equals, regex, not_contains) depend on
    the whole text."""
    keys = [k for k in expect if k not in ("token_ids", "min_prob")]
    if not keys:
        return 0
    settled = 0
    for key in keys:
        value = expect[key]
        if key not in ("contains", "startswith") or not isinstance(value, str):
            return len(ids)
        step = next((k for k in range(len(ids) + 1)
                     if (value in decode(ids[:k]) if key == "contains"
                         else decode(ids[:k]).startswith(value))), len(ids))
        settled = max(settled, step)
    return settled


def _tokenizer(spec):
    try:
        return load_tokenizer(resolve(spec.model))
    except Exception:      # noqa: BLE001 - the summary is a courtesy; ids are shown instead
        return None


def summary_lines(spec, path: Path) -> list[str]:
    """Per case: its continuation, and a warning per near-tie step when the case has a
    text expectation (a note otherwise)."""
    if spec.kind != "causal-lm":
        return []                    # embedding and ops goldens have no continuation
    try:
        golden = load_golden(path, spec.name)
    except SpecEngineError:
        return []
    tok = _tokenizer(spec)
    lines = []
    for case in spec.cases:
        record = golden.cases.get(case.id)
        if record is None:
            continue
        lines += _case_lines(case, record, tok)
    return lines


def _case_lines(case, record: LmCaseRecord, tok) -> list[str]:
    ids = [int(i) for i in record.output_ids]
    text = (joined(token_pieces(tok.token_strings(ids), tok.token_bytes(ids), ids))
            if tok is not None else record.output_text)
    lines = [f"  {one_line(case.id)}: {truncate(one_line(text), TEXT_WIDTH)}"]
    textual = [k for k in (case.expect or {}) if k not in ("token_ids", "min_prob")]
    ties = near_ties(record.steps, _margin(case))
    if not ties:
        return lines
    if textual and tok is not None:
        # a tie after the expectation is already met cannot fail it
        settled = settled_step(case.expect, ids, tok.decode)
        if all(t[0] >= settled for t in ties):
            textual = []
    step, lead, top, runner = ties[0]
    if tok is not None:
        a, b = (one_line(s) for s in tok.token_strings([top, runner]))
    else:
        a, b = f"id {top}", f"id {runner}"
    steps = ", ".join(str(t[0]) for t in ties)
    first = (f"near-tie step{'s' if len(ties) > 1 else ''} {steps} (top-1 leads its "
             f"runner-up by < max_margin {_margin(case):g} nats; at step {step} "
             f"‘{a}’ leads ‘{b}’ by {lead:.3f})")
    if textual:
        lines.append(f"    warning: expect.{', expect.'.join(textual)} is fragile: {first}; "
                     "a candidate may take the runner-up, which the divergence rule "
                     "accepts, and write another text from there")
    else:
        lines.append(f"    {first}")
    return lines
