"""The whole-spec distribution statistics of a run (both paths), as rows and lines every
report format renders: mean KL ± standard error, KL percentiles, Δp and same-top-1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from specengine.results import RunResult
from specengine.report.text import is_number


@dataclass(frozen=True)
class DistributionRow:
    path: str
    positions: int
    kl_mean: str            # "mean ± sem"
    kl_p50: Any
    kl_p90: Any
    kl_p99: Any
    kl_p999: Any
    kl_max: Any
    dp_mean: Any
    dp_rms: Any
    dp_p1: Any
    dp_p99: Any
    same_top1: str          # "93.8 ± 6.1 %"


def distribution_rows(run: RunResult) -> list[DistributionRow]:
    """The distribution statistics of a run, one row per path (prefill, decode)."""
    dist = run.distribution or {}
    rows = []
    for path in ("prefill", "decode"):
        d = dist.get(path)
        if not isinstance(d, dict):
            continue
        rows.append(DistributionRow(
            path=path, positions=int(d.get("positions", 0)),
            kl_mean=f"{_g(d.get('kl_mean'))} ± {_g(d.get('kl_sem'))}",
            kl_p50=d.get("kl_p50"), kl_p90=d.get("kl_p90"), kl_p99=d.get("kl_p99"),
            kl_p999=d.get("kl_p999"), kl_max=d.get("kl_max"), dp_mean=d.get("dp_mean"),
            dp_rms=d.get("dp_rms"), dp_p1=d.get("dp_p1"), dp_p99=d.get("dp_p99"),
            same_top1=f"{_pct(d.get('same_top1'))} ± {_pct(d.get('same_top1_err'))} %"))
    return rows


def distribution_lines(run: RunResult) -> list[str]:
    """Plain-text lines of the distribution table (terminal, JUnit, annotations)."""
    out = []
    for r in distribution_rows(run):
        out.append(f"{r.path} ({r.positions} positions): KL mean {r.kl_mean}, p50 {_g(r.kl_p50)}, "
                   f"p90 {_g(r.kl_p90)}, p99 {_g(r.kl_p99)}, p99.9 {_g(r.kl_p999)}, max "
                   f"{_g(r.kl_max)}; Δp mean {_g(r.dp_mean)}, RMS {_g(r.dp_rms)}, p1 "
                   f"{_g(r.dp_p1)}, p99 {_g(r.dp_p99)}; same top-1 {r.same_top1}")
    for failure in (run.distribution or {}).get("failures", []):
        out.append(f"distribution limit broken: {failure}")
    return out


def _g(value: Any) -> str:
    return f"{float(value):.3g}" if is_number(value) else "—"


def _pct(value: Any) -> str:
    return f"{100 * float(value):.1f}" if is_number(value) else "—"
