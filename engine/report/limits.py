"""Each judged metric beside its limit: the value, the limit, the headroom left, where the
limit came from (class default, spec, backend, case, or a multiple of the reference's own
noise) and the value ÷ that noise when the golden records it — for passing cases as much
as for failing ones, so a reader sees how close a pass was.

Read from the metrics the checks record (`tolerance`, `limit_sources`, `noise_ratio`,
`tolerance_class`); pure, plain values, for every report format.
"""

from __future__ import annotations

from dataclasses import dataclass

from specengine.results import CaseResult, RunResult
from specengine.report.text import fmt, is_number

# (metric key in a check, tolerance key, label, direction): "max" = the value must stay at
# or below the limit, "min" = at or above it
METRICS = (("kl_mean", "kl_mean_max", "KL mean", "max"),
           ("kl_max", "kl_max", "KL max", "max"),
           ("top1_agreement", "top1_agreement_min", "top-1", "min"),
           ("max_abs_dlogprob", "logprob_atol", "max |Δ logprob|", "max"))
PATHS = (("teacher-forced", "one-pass"), ("decode", "decode"), ("prompt-positions", "prompt"),
         ("consistency", "consistency"))


@dataclass
class LimitRow:
    path: str             # one-pass | decode | prompt | consistency
    metric: str           # label
    value: float
    limit: float
    direction: str        # max | min
    origin: str           # where the limit came from
    klass: str            # the numeric class that judged it
    noise_ratio: float | None = None    # value ÷ the reference's noise of the class

    @property
    def ok(self) -> bool:
        return self.value <= self.limit if self.direction == "max" else self.value >= self.limit

    @property
    def headroom(self) -> float | None:
        """The share of the allowed range left: 1 - value/limit for an upper limit,
        (value - limit)/(1 - limit) for a lower one; negative when broken."""
        if self.direction == "max":
            return None if self.limit <= 0 else 1.0 - self.value / self.limit
        span = 1.0 - self.limit
        return None if span <= 0 else (self.value - self.limit) / span

    def relation(self) -> str:
        op = ("≤" if self.ok else ">") if self.direction == "max" else ("≥" if self.ok else "<")
        return f"{fmt(self.value, 3)} {op} {fmt(self.limit, 3)}"

    def headroom_text(self) -> str:
        """`81%` of the range left; a broken upper limit as how many times over it is, a
        broken lower one as how far under it the value fell."""
        room = self.headroom
        if room is None:
            return "—"
        if room < 0:
            if self.direction == "max":
                return f"{self.value / self.limit:.3g}× over"
            return f"{fmt(self.limit - self.value, 3)} under"
        return f"{room:.0%}"

    def noise_text(self) -> str:
        return "—" if self.noise_ratio is None else f"{self.noise_ratio:.3g}×"


def limit_rows(case: CaseResult) -> list[LimitRow]:
    """Every limit a case's token-distribution checks applied, per path."""
    out = []
    checks = {c.name: c for c in case.checks}
    for name, path in PATHS:
        check = checks.get(name)
        metrics = check.metrics if check is not None else None
        if not isinstance(metrics, dict) or not isinstance(metrics.get("tolerance"), dict):
            continue
        tol, sources = metrics["tolerance"], metrics.get("limit_sources") or {}
        ratios = metrics.get("noise_ratio") or {}
        for key, tkey, label, direction in METRICS:
            value, limit = metrics.get(key), tol.get(tkey)
            if not (is_number(value) and is_number(limit)):
                continue
            out.append(LimitRow(path, label, float(value), float(limit), direction,
                                str(sources.get(tkey, "")),
                                str(metrics.get("tolerance_class", "")),
                                ratios.get(key) if is_number(ratios.get(key)) else None))
    return out


def tightest(case: CaseResult) -> LimitRow | None:
    """The one-pass or decode limit with the least headroom (the closest call)."""
    rows = [r for r in limit_rows(case) if r.path in ("one-pass", "decode")
            and r.headroom is not None]
    return min(rows, key=lambda r: r.headroom) if rows else None


def headroom_cell(case: CaseResult) -> str:
    """The terminal's `headroom` column: the tightest limit's headroom and metric."""
    row = tightest(case)
    return "—" if row is None else f"{row.headroom_text()} {_short(row.metric)}"


def noise_cell(case: CaseResult) -> str:
    """The terminal's `÷noise` column: the one-pass KL mean ÷ the reference's noise."""
    row = next((r for r in limit_rows(case) if r.path == "one-pass" and r.metric == "KL mean"),
               None)
    return "—" if row is None or row.noise_ratio is None else row.noise_text()


def _short(metric: str) -> str:
    return {"max |Δ logprob|": "|Δlp|"}.get(metric, metric)


def has_noise(run: RunResult) -> bool:
    return any(r.noise_ratio is not None for c in run.cases for r in limit_rows(c))


def class_line(run: RunResult) -> str:
    """Which class judged the run and where its limits came from (the first case's
    one-pass label; cases with their own limits say so in their rows)."""
    labels = []
    for case in run.cases:
        for check in case.checks:
            label = check.metrics.get("tolerance_set") if isinstance(check.metrics, dict) \
                else None
            if label and check.name in ("teacher-forced", "decode") and label not in labels:
                labels.append(str(label))
    if not labels:
        return f"numeric class: {run.tolerance_class}" if run.tolerance_class else ""
    more = f" (and {len(labels) - 1} other limit set(s) in some cases)" if len(labels) > 1 else ""
    return f"limits — {labels[0]}{more}"
