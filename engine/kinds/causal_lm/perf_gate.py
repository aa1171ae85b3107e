"""The perf gate of a causal-lm check (`check --perf`): measure, then judge against the
spec's absolute budgets and, relatively, against the perf golden of the same device
class (`record-golden --perf`), which goes through the one golden lifecycle."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from specengine.errors import GoldenError
from specengine.golden.store import default_golden_dir, previous_golden, replace_golden
from specengine.results import FAIL, PASS
from specengine.kinds.causal_lm.perf import (MEASURED, PerfSettings, judge_budgets,
                                             judge_regression, length_groups, measure,
                                             measure_ttft_by_length, summarise_all,
                                             summarise_by_length)
from specengine.kinds.causal_lm.perf_golden import (build_perf_golden, load_perf_data,
                                                    load_perf_golden, medians, perf_changes,
                                                    perf_golden_path, setup_of)
from specengine.loading.session import Session, open_session
from specengine.spec import Spec

def record_perf_golden(spec: Spec, backend_name: str, golden_dir: Path, update: bool = False,
                       echo: Callable[[str], None] = print) -> Path:
    """`record-golden --perf`: measure on a backend and store it for its device class."""
    settings = PerfSettings.from_spec(spec.perf)
    session = open_session(spec, backend_name)
    try:
        side = session.side()
        path = perf_golden_path(golden_dir, spec.name, side.backend, side.device_name,
                                side.dtype)
        old = previous_golden(path, update, lambda p: load_perf_data(p, spec.name), echo,
                              "perf golden")
        m = measure(session.backend, _streams(session), settings, _top_k(spec))
    finally:
        session.close()
    m.model_fingerprint = session.resolved.fingerprint
    rows = summarise_all(m)
    replace_golden(path, build_perf_golden(spec.name, m, rows), old, perf_changes, echo)
    for row in rows:
        echo(f"  batch {row['batch_size']}: {_row_line(row)}")
    return path


def _streams(session) -> list[list[int]]:
    return [session.prompt_ids(case) for case in session.spec.cases]


def _top_k(spec) -> int:
    return spec.cases[0].top_k if spec.cases else 1


def _row_line(row: dict) -> str:
    t, p = row["ttft_ms"], row["tpot_ms"]
    mem = row.get("peak_mem_gib")
    return (f"TTFT p50/p90/p99 {t['p50']:.4g}/{t['p90']:.4g}/{t['p99']:.4g} ms, "
            f"TPOT {p['p50']:.4g}/{p['p90']:.4g}/{p['p99']:.4g} ms, "
            f"{row['tokens_per_s']:.4g} tokens/s" + (f", peak {mem:.3g} GiB" if mem is not None else ""))


# -- the check-side entry point ------------------------------------------------------

def check_perf(session: Session, spec: Spec, golden_dir: Path | None) -> dict[str, Any]:
    """Measure on the session's backend and judge it: the `RunResult.perf` dict. A long
    spec with several prompt lengths also gets `ttft_by_length` (perf.length_groups).

    Status: fail when a budget or the relative gate fails, pass when at least one of them
    applied and none failed, `measured` when there was nothing to judge against.
    A stale perf golden (other prompt length, new tokens or model) is a GoldenError.
    """
    settings = PerfSettings.from_spec(spec.perf)
    m = measure(session.backend, _streams(session), settings, _top_k(spec))
    m.model_fingerprint = session.resolved.fingerprint
    rows = summarise_all(m)
    report: dict[str, Any] = {
        "backend": m.backend, "device_name": m.device_name, "dtype": m.dtype,
        "device_class": m.device_class, "load_s": m.load_s, "prompt_tokens": m.prompt_tokens,
        "new_tokens": m.new_tokens, "warmup": m.warmup, "runs": m.runs,
        "peak_mem_kind": m.peak_mem_kind, "rows": rows, "failures": []}
    groups = length_groups([(c.id, session.prompt_ids(c)) for c in spec.cases],
                           long=any(c.recipe is not None for c in spec.cases))
    if groups:   # TTFT against prompt length: informative, judged by no gate
        report["ttft_by_length"] = summarise_by_length(
            measure_ttft_by_length(session.backend, groups, settings, _top_k(spec)))
    gates = []
    budget = settings.budgets.get(m.backend)
    if budget:
        gates.append("budgets")
        report["budgets"] = budget
        report["failures"] += judge_budgets(rows, m.load_s, budget)
    if settings.regression_max is not None:
        path = perf_golden_path(golden_dir or default_golden_dir(spec.path), spec.name, m.backend,
                                m.device_name, m.dtype)
        report["regression_max"] = settings.regression_max
        if not path.exists():
            report["relative_gate"] = (f"not applied: no perf golden for device class "
                                       f"{m.device_class} (record-golden --perf)")
        else:
            golden = load_perf_golden(path, spec.name)
            if dict(golden.setup) != setup_of(m):
                raise GoldenError(f"perf golden {path} was measured with {dict(golden.setup)}, "
                                  f"this run with {setup_of(m)}; re-record it with "
                                  "`specengine record-golden --perf --update`")
            gates.append("relative")
            regs = judge_regression([medians(r) for r in rows], golden.rows,
                                    settings.regression_max, settings.spread_k)
            bad = [r for r in regs if r.regressed]
            report["regressions"] = [r.__dict__ for r in regs]
            report["failures"] += [r.describe() for r in bad]
            report["perf_golden"] = str(path)
            worst = max(regs, key=lambda r: r.slowdown - r.allowed, default=None)
            report["relative_gate"] = (
                f"{len(bad)} of {len(regs)} medians regressed" if bad else
                f"pass: {len(regs)} medians within limits" + (
                    f" (closest: {worst.describe()})" if worst else ""))
    report["status"] = FAIL if report["failures"] else PASS if gates else MEASURED
    return report
