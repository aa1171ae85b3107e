"""The terminal text of `specengine calibrate`: per-case metrics of the good pair, their
distribution, and each proposed limit beside the current one with how it was derived."""

from __future__ import annotations

from typing import Any


def render(cal: Any) -> str:
    """Terminal text: per-case metrics, distribution, proposals."""
    lines = [f"calibrate {cal.spec_name}: {cal.candidate} vs {cal.reference} "
             f"({cal.reference_kind}), {cal.klass} class, headroom × {cal.headroom:g}", "",
             f"  {'case':<18}{'KL mean':>10}{'KL max':>10}{'top-1':>8}{'max|Δlp|':>10}"
             f"{'max|Δp|':>9}  divergence"]
    for s in cal.samples:
        div = ("none" if s.divergence_step is None else
               f"step {s.divergence_step} rank {s.divergence_rank} margin "
               f"{_num(s.divergence_margin)}")
        lines.append(f"  {s.case_id[:17]:<18}{_num(s.kl_mean):>10}{_num(s.kl_max):>10}"
                     f"{_num(s.top1_agreement):>8}{_num(s.max_abs_dlogprob):>10}"
                     f"{_num(s.max_abs_dp):>9}  {div}")
    lines += ["", f"  {'metric':<18}{'n':>3}{'min':>10}{'median':>10}{'max':>10}"]
    for st in cal.stats:
        lines.append(f"  {st.name:<18}{st.count:>3}{_num(st.min):>10}{_num(st.median):>10}"
                     f"{_num(st.max):>10}")
    lines += ["", f"  {'tolerance':<20}{'current':>10}{'proposed':>10}  how"]
    for p in cal.proposals:
        mark = "*" if p.changed else " "
        lines.append(f"{mark} {p.key:<20}{_num(p.current):>10}{_num(p.proposed):>10}  {p.how}")
    lines += [f"note: {n}" for n in cal.notes]
    return "\n".join(lines)


def _num(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool) or isinstance(x, int):
        return str(x)
    return f"{x:.4g}"
