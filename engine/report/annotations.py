"""CI-facing text for one case: GitHub Actions annotations and the failure text that the
pytest plugin shows.

`github_annotations(runs)` yields workflow commands
`::error file=SPEC,line=N,title=TITLE::MESSAGE`, one per failing or erroring case, at
the case's line in the spec, escaped per GitHub's rules: in the message `%`, CR and LF
become `%25`, `%0D`, `%0A`; in property values also `:` and `,` become `%3A`, `%2C`.

`case_failure_text(run, case)` is a one-line verdict, then the terminal report's block
for that one case (the same header, row and `✗` lines that `specengine check` prints),
then the details a reviewer needs to read the failure without opening the HTML report:
the prompt, both continuations with the first divergence marked, and the top-k table at
the worst teacher-forced position.

Nothing here imports torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

from specengine.results import ERROR, FAIL, CaseResult, RunResult
from specengine.report.model import case_metrics, failing_checks, perf_view, run_title
from specengine.report.terminal import render_terminal
from specengine.report.text import fmt, fmt_ratio, one_line, token_text, truncate
from specengine.report.tokens import decoded, divergence_texts, marked

ANNOTATION_FORMATS = ("github",)
MAX_ANNOTATIONS = 50          # GitHub shows at most 50 annotations of a kind per job
MESSAGE_LIMIT = 4000          # characters of one annotation's message before escaping


# --- escaping -----------------------------------------------------------------------

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_data(text: str) -> str:
    """A workflow command's message: `%`, CR and LF escaped as GitHub decodes them; every
    other control character (ESC, BEL, NUL, line separators) percent-encoded as well, so
    that it reaches neither the log viewer nor a terminal."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return _CONTROL.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")),
                        text)


def escape_property(text: str) -> str:
    """A workflow command's property value: as the message, plus `:` and `,`."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workflow_command(command: str, message: str, **properties) -> str:
    props = ",".join(f"{key}={escape_property(str(value))}"
                     for key, value in properties.items() if value not in (None, ""))
    return f"::{command}{' ' + props if props else ''}::{escape_data(message)}"


# --- GitHub annotations -----------------------------------------------------------------

def annotation_path(spec_path: str, root: str | os.PathLike | None = None) -> str:
    """The spec's path as GitHub wants it: relative to the workspace (GITHUB_WORKSPACE,
    else the current folder) when the spec is inside it, with forward slashes."""
    path = Path(spec_path)
    if path.is_absolute():
        base = Path(root or os.environ.get("GITHUB_WORKSPACE") or os.getcwd()).resolve()
        try:
            path = path.resolve().relative_to(base)
        except ValueError:
            pass
    return path.as_posix()


def case_message(run: RunResult, case: CaseResult) -> str:
    """A short multi-line message: verdict, each failing check, the headline metrics."""
    lines = [f"case '{case.id}' {'failed' if case.status == FAIL else 'errored'}: "
             f"{run_title(run)} [{run.comparison}]"]
    for check in failing_checks(case):
        lines.append(f"{check.name}: {check.message or check.status}")
    if case.error:
        lines.append(f"error: {case.error}")
    m = case_metrics(case)
    if any(v is not None for v in (m.kl_mean, m.kl_max, m.top1, m.dlogprob)):
        lines.append(f"KL mean {fmt(m.kl_mean)}, KL max {fmt(m.kl_max)}, top-1 "
                     f"{fmt_ratio(m.top1)}, max |Δ logprob| {fmt(m.dlogprob)}"
                     + (f", first divergence at step {m.divergence}"
                        if m.divergence is not None else ""))
    return truncate("\n".join(one_line(line) for line in lines), MESSAGE_LIMIT)


def github_annotations(runs: Iterable[RunResult], root: str | os.PathLike | None = None,
                       limit: int = MAX_ANNOTATIONS) -> Iterator[str]:
    """`::error` workflow commands for every failing/erroring case (and perf section)."""
    emitted = skipped = 0
    for run in runs:
        file = annotation_path(run.spec_path, root)
        items: list[tuple[int | None, str, str]] = []
        for case in run.cases:
            if case.status in (FAIL, ERROR):
                items.append((case.line or None, f"specengine: {run.spec_name} / {case.id}",
                              case_message(run, case)))
        view = perf_view(run.perf)
        if view is not None and view.status in (FAIL, ERROR):
            items.append((None, f"specengine: {run.spec_name} / perf",
                          truncate("\n".join([f"perf {view.status}: {run_title(run)}"]
                                             + [one_line(m) for m in view.messages]),
                                   MESSAGE_LIMIT)))
        for line, title, message in items:
            if emitted >= limit:
                skipped += 1
                continue
            emitted += 1
            yield workflow_command("error", message, file=file, line=line, title=title)
    if skipped:
        yield workflow_command("warning", f"{skipped} more failing case(s) not annotated "
                               f"(limit {limit}); see the specengine report")


# --- failure text (pytest) ----------------------------------------------------------------

def case_failure_text(run: RunResult, case: CaseResult, color: bool = False) -> str:
    """The terminal report's block for this case, then prompt, continuations and top-k."""
    block = render_terminal([replace(run, cases=[case], perf=None)], color=color)
    lines = block.split("\n")[:-1]          # without the final "N passed, ..." line
    while lines and not lines[-1].strip():
        lines.pop()
    # first line: what failed, for pytest's one-line summary (-ra, "short test summary")
    headline = truncate(one_line(f"{case.id} {case.status}: {'; '.join(case.failures())}"), 300)
    lines = [headline, ""] + lines
    lines.append("")
    lines.append(f"  prompt:    {truncate(repr(case.prompt), 400)}")
    lines += _continuations(case)
    lines += _topk_table(case)
    for check in failing_checks(case):
        if check.metrics:
            shown = {k: v for k, v in check.metrics.items() if k != "tolerance"}
            lines.append(f"  {check.name} metrics: "
                         + ", ".join(f"{k}={fmt(v) if not isinstance(v, (dict, list)) else v}"
                                     for k, v in sorted(shown.items())))
    return "\n".join(lines)


def _continuations(case: CaseResult) -> list[str]:

    step = case.divergence_step
    out = []
    for label, tokens, text in (("golden", case.golden_tokens, case.golden_text),
                                ("candidate", case.candidate_tokens, case.candidate_text)):
        shown = marked(case, label) if step is not None and tokens else decoded(case, label)
        out.append(f"  {label + ':':<10} {truncate(one_line(shown), 500)}")
    if step is not None:
        g, c = divergence_texts(case)
        out.append(f"  first divergence at step {step}: golden {token_text(g or '(end)')}, "
                   f"candidate {token_text(c or '(end)')} (marked ⟦ ⟧ above)")
    return out


def _topk_table(case: CaseResult) -> list[str]:
    if not case.worst_topk or case.worst_position is None:
        return []
    rows = [f"  top-k at the worst position ({case.worst_position}):",
            f"    {'token':<16} {'golden p':>9} {'cand p':>9} {'Δ':>9}"]
    for row in case.worst_topk:
        rows.append(f"    {truncate(repr(row.token), 16):<16} {fmt(row.golden_p):>9} "
                    f"{fmt(row.candidate_p):>9} {fmt(row.delta):>9}")
    return rows
