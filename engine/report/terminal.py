"""The terminal summary: one block per run, one row per case, one line per failing
check, and a final `N passed, N failed, N errors` over all cases. Plain text; ANSI
colours only when asked. Untrusted text (ids, messages) has its control characters
made visible, so model output cannot move the cursor or recolour the terminal."""

from __future__ import annotations

from specengine.results import ERROR, FAIL, PASS, RunResult
from specengine.report.model import (SELF_CHECK, SELF_CHECK_TEXT, counts, failing_checks,
    overall_status, perf_view, run_status, run_title)
from specengine.report.text import fmt, fmt_seconds, is_number, one_line, truncate
from specengine.report.columns import CAUSAL, columns_for, columns_for_kind
from specengine.report.hints import near_tie_hints
from specengine.report.tokens import marked
from specengine.report.ttft import ttft_line, ttft_rows
from specengine.report.distribution import distribution_lines
from specengine.report.layers import localization_line
from specengine.report.limits import class_line

_COLORS = {PASS: "32", FAIL: "31", ERROR: "35", "warn": "33", "dim": "2", "bold": "1"}
MESSAGE_WIDTH = 200
ID_WIDTH = 40


def _paint(text: str, key: str, color: bool) -> str:
    code = _COLORS.get(key)
    return f"\033[{code}m{text}\033[0m" if color and code else text


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def _run_block(run: RunResult, color: bool, quiet: bool = False,
               verbose: bool = False) -> list[str]:
    status = run_status(run)
    head = f"{one_line(run.spec_name)}  {one_line(run_title(run))}  [{run.comparison}]"
    lines = [_paint(head, "bold", color) + "  " + _paint(status.upper(), status, color)]
    if run.comparison == SELF_CHECK:
        lines.append("  " + _paint(SELF_CHECK_TEXT, "warn", color))
    for side, label in ((run.candidate, "candidate"), (run.reference, "reference")):
        if side.model_override:
            lines.append("  " + _paint(f"{label} {side.backend} uses its own model "
                                       f"(model override: {one_line(side.model_source)})", "warn", color))
        if side.trust_remote_code:
            lines.append("  " + _paint(f"{label} {side.backend} ran with trust_remote_code", "warn", color))
    if getattr(run, "error", ""):
        lines.append("      " + _paint(f"✗ could not run: {truncate(one_line(run.error), MESSAGE_WIDTH)}",
                                       ERROR, color))
    elif not run.cases:
        lines.append("  (no cases)")
    else:
        cols = columns_for(run)
        idw = min(max(len("case"), *(len(one_line(c.id)) for c in run.cases)), ID_WIDTH)
        widths = [idw, 7, *cols.widths]
        limits = class_line(run)
        if limits:
            lines.append("  " + _paint(truncate(one_line(limits), MESSAGE_WIDTH), "dim", color))
        lines.append("  " + _paint(_row(["case", "status", *cols.headers], widths), "dim", color))
        for case in run.cases:
            if quiet and case.status == PASS:
                continue
            lines += _case_lines(case, widths, color, cols.cells, verbose)
    lines += _perf_lines(run, color)
    if run.distribution and not quiet:
        klass = f" (tolerance class: {run.tolerance_class})" if run.tolerance_class else ""
        lines.append("  " + _paint(f"distribution over all positions{klass}", "dim", color))
        lines += ["    " + _paint(line, FAIL if line.startswith("distribution limit") else "dim",
                                  color) for line in distribution_lines(run)]
    lines += [f"  note: {truncate(one_line(n), MESSAGE_WIDTH)}" for n in run.notes]
    return lines


def _case_lines(case, widths: list[int], color: bool, metric_cells=None,
                verbose: bool = False) -> list[str]:
    metric_cells = metric_cells or columns_for_kind(CAUSAL).cells
    cells = [truncate(one_line(case.id), widths[0]), case.status, *metric_cells(case)]
    padded = [c.ljust(w) for c, w in zip(cells, widths)]
    # colour the status cell only, after padding, so columns stay aligned
    padded[1] = _paint(padded[1], case.status, color)
    out = ["  " + "  ".join(padded).rstrip()]
    for check in (case.checks if verbose else failing_checks(case)):
        msg = truncate(one_line(f"{check.name}: {check.message or check.status}"), MESSAGE_WIDTH)
        mark = "✗" if check.status in (FAIL, ERROR) else "✓" if check.status == PASS else "·"
        out.append("      " + _paint(f"{mark} {msg}", check.status, color))
    for hint in near_tie_hints(case):
        out.append("      " + _paint(f"! {truncate(one_line(hint), MESSAGE_WIDTH)}", "warn", color))
    if case.error:
        out.append("      " + _paint(f"✗ error: {truncate(one_line(case.error), MESSAGE_WIDTH)}",
                                     ERROR, color))
    if case.status != PASS and (case.golden_tokens or case.candidate_tokens):
        for side in ("golden", "candidate"):
            text = truncate(one_line(marked(case, side)), MESSAGE_WIDTH)
            out.append("      " + _paint(f"{side + ':':<10} {text}", "dim", color))
    if getattr(case, "localization", None):   # check --localize (kinds.causal_lm.localize)
        out.append("      ↳ " + truncate(one_line(localization_line(case.localization)),
                                        MESSAGE_WIDTH))
    return out


def _perf_lines(run: RunResult, color: bool) -> list[str]:
    view = perf_view(run.perf)
    if view is None:
        return []
    status = view.status or "measured"
    lines = ["  perf " + _paint(status, status, color)]
    for row in view.rows:  # one line per batch size, with percentiles
        bits = [f"{row.backend} batch {fmt(row.batch_size)}:"]
        for label, pcts in (("TTFT", row.ttft), ("TPOT", row.tpot)):
            if pcts:
                keys = [k for k in ("p50", "p90", "p99") if k in pcts]
                bits.append(f"{label} {'/'.join(keys)} {'/'.join(fmt(pcts[k]) for k in keys)} ms")
        if row.tokens_per_s is not None:
            bits.append(f"{fmt(row.tokens_per_s)} tok/s")
        if row.peak_mem_gib is not None:
            bits.append(f"peak {fmt(row.peak_mem_gib)} GiB")
        lines.append("      " + bits[0] + " " + "  ".join(bits[1:]))
    by_length = ttft_line(ttft_rows(run.perf))
    if by_length:
        lines.append("      " + truncate(one_line(by_length), 2 * MESSAGE_WIDTH))
    extras = dict(view.extras)
    about = [f"load {fmt(extras['load_s'])} s"] if is_number(extras.get("load_s")) else []
    if extras.get("relative_gate"):
        about.append(f"relative gate: {extras['relative_gate']}")
    if about:
        lines.append("      " + truncate(one_line("; ".join(about)), MESSAGE_WIDTH))
    lines += [f"      ✗ {truncate(one_line(m), MESSAGE_WIDTH)}" for m in view.messages]
    return lines


def render_terminal(runs: list[RunResult], color: bool = False, elapsed: float | None = None,
                    quiet: bool = False, verbose: bool = False) -> str:
    """The compact summary printed after every command (no trailing newline): a block
    per run (with `quiet` only its failing cases; with `verbose` every check), then a
    closing line with the counts over all runs and, when given, the total time."""
    lines: list[str] = []
    for run in runs:
        if quiet and run_status(run) == PASS:
            continue
        lines += _run_block(run, color, quiet, verbose)
        lines.append("")
    total = counts(runs)
    verdict = overall_status(runs)
    closing = total.line()
    if elapsed is not None:
        closing += f" in {fmt_seconds(elapsed)}"
    lines.append(_paint(closing, verdict if verdict != "not-run" else "warn", color))
    return "\n".join(lines)
