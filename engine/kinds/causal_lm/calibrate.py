"""Calibration: measure the noise between two backends known to be good and propose
tolerances with stated headroom (`specengine calibrate`), optionally writing them into
the spec with its comments and layout kept.

The measurement is an ordinary check of `--backend` against `--against` (live) or against
the golden, with repeats and batch checks switched off (they do not change the metrics
calibrated here). Per case it reads the teacher-forced metrics and the first divergence.
The proposal (pure, `propose`):

- upper limits (kl_mean_max, kl_max, logprob_atol, prob_atol):
  max observed over the cases × headroom (default 2), at least a floor
  (1e-5, 1e-4, 1e-3, 1e-4), rounded up to two significant digits;
- top1_agreement_min: the lowest observed agreement minus one flip at the median
  continuation length (1 / median positions), rounded down to 0.01;
- divergence (within_top_k, max_margin) are near-tie rules, not noise levels: kept as
  they are unless a benign divergence of the good pair needed more (then its rank, and
  its margin × headroom).

`measure` runs the check (the causal-lm kind through the one skeleton) and returns the
calibration, which the command line renders and, with --write, writes into the spec (only
the block of the class it measured).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from specengine.results import RunResult
from specengine.spec import Spec, Tolerance
from specengine.compare.limits import LimitSource
from specengine.compare.tolerances import DEFAULTS, FLOAT32
from specengine.backends.registry import config_for
from specengine.errors import UsageError
from specengine.kinds.base import CheckRequest, check
from specengine.kinds.causal_lm.kind import CausalLm
from specengine.kinds.policy import select_cases

HEADROOM = 2.0
# metric in the check -> (tolerance key, floor)
UPPER = {"kl_mean": ("kl_mean_max", 1e-5), "kl_max": ("kl_max", 1e-4),
         "max_abs_dlogprob": ("logprob_atol", 1e-3), "max_abs_dp": ("prob_atol", 1e-4)}
ORDER = ("kl_mean_max", "kl_max", "top1_agreement_min", "logprob_atol", "prob_atol",
         "within_top_k", "max_margin")


@dataclass
class CaseSample:
    """What one case of the good pair measured."""

    case_id: str
    positions: int
    kl_mean: float | None = None
    kl_max: float | None = None
    top1_agreement: float | None = None
    max_abs_dlogprob: float | None = None
    max_abs_dp: float | None = None
    divergence_step: int | None = None
    divergence_rank: int | None = None
    divergence_margin: float | None = None
    status: str = ""


@dataclass
class MetricStats:
    name: str
    count: int
    min: float
    median: float
    max: float


@dataclass
class Proposal:
    """One tolerance: its current value, the proposed one, and how it was derived."""

    key: str
    current: Any
    proposed: Any
    observed: float | None
    how: str

    @property
    def changed(self) -> bool:
        return self.current != self.proposed


@dataclass
class Calibration:
    spec_name: str
    spec_path: str
    candidate: str
    reference: str
    reference_kind: str
    headroom: float
    samples: list[CaseSample]
    stats: list[MetricStats]
    proposals: list[Proposal]
    klass: str = FLOAT32              # the numeric class measured: the only block written
    notes: list[str] = field(default_factory=list)

    def proposed_tolerance(self) -> dict[str, Any]:
        """The proposal as a spec `tolerance:` mapping (divergence nested)."""
        out: dict[str, Any] = {}
        for p in self.proposals:
            if p.proposed is None:
                continue
            if p.key in ("within_top_k", "max_margin"):
                out.setdefault("divergence", {})[p.key] = p.proposed
            else:
                out[p.key] = p.proposed
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["proposed_tolerance"] = self.proposed_tolerance()
        return data


# -- pure ------------------------------------------------------------------------------

def ceil_sig(x: float, digits: int = 2) -> float:
    """Round up to `digits` significant digits (0.004213 -> 0.0043)."""
    if x <= 0 or not math.isfinite(x):
        return x
    exp = math.floor(math.log10(x)) - digits + 1
    step = 10.0 ** exp
    return float(f"{math.ceil(x / step - 1e-9) * step:.{max(0, -exp)}f}")


def samples_of(run: RunResult) -> list[CaseSample]:
    """Per-case metrics of a check run (teacher-forced, decode and divergence checks)."""
    out = []
    for case in run.cases:
        div = next((c for c in case.checks if c.name == "divergence"), None)
        m = _both_paths([c.metrics for c in case.checks
                         if c.name in ("teacher-forced", "decode") and c.metrics])
        d = div.metrics if div is not None else {}
        out.append(CaseSample(
            case_id=case.id, positions=int(m.get("positions") or len(case.golden_ids) or 0),
            kl_mean=m.get("kl_mean"), kl_max=m.get("kl_max"),
            top1_agreement=m.get("top1_agreement"), max_abs_dlogprob=m.get("max_abs_dlogprob"),
            max_abs_dp=m.get("max_abs_dp"), divergence_step=d.get("step"),
            divergence_rank=d.get("rank_in_golden"), divergence_margin=d.get("margin"),
            status=case.status))
    return out


def _both_paths(metrics: list[dict]) -> dict:
    """The one-pass and decode-path metrics of a case merged into the worse of the two
    (the same tolerances judge both paths): max of the errors, min of the agreement."""
    if not metrics:
        return {}
    out = dict(metrics[0])
    for m in metrics[1:]:
        for key in ("kl_mean", "kl_max", "max_abs_dlogprob", "max_abs_dp"):
            values = [v for v in (out.get(key), m.get(key)) if v is not None]
            out[key] = max(values) if values else None
        values = [v for v in (out.get("top1_agreement"), m.get("top1_agreement")) if v is not None]
        out["top1_agreement"] = min(values) if values else None
    return out


def stats_of(samples: Sequence[CaseSample]) -> list[MetricStats]:
    out = []
    for name in ("kl_mean", "kl_max", "top1_agreement", "max_abs_dlogprob", "max_abs_dp",
                 "divergence_margin"):
        values = [float(getattr(s, name)) for s in samples
                  if getattr(s, name) is not None and math.isfinite(float(getattr(s, name)))]
        if values:
            out.append(MetricStats(name, len(values), min(values), statistics.median(values),
                                   max(values)))
    return out


def propose(samples: Sequence[CaseSample], current: Tolerance,
            headroom: float = HEADROOM) -> list[Proposal]:
    """Tolerances from the good pair's measured metrics (rules in the module docstring)."""
    proposals: list[Proposal] = []
    for metric, (key, floor) in UPPER.items():
        values = [float(getattr(s, metric)) for s in samples if getattr(s, metric) is not None]
        cur = getattr(current, key)
        if not values:
            proposals.append(Proposal(key, cur, cur, None, "not measured: kept"))
            continue
        worst = max(values)
        if not math.isfinite(worst):
            proposals.append(Proposal(key, cur, cur, worst, "the good pair gave a non-finite "
                                      "value: kept (check the pair)"))
            continue
        value = ceil_sig(max(worst * headroom, floor))
        proposals.append(Proposal(key, cur, value, worst,
                                  f"max observed {worst:.3g} × {headroom:g}"
                                  + (f", floor {floor:g}" if worst * headroom < floor else "")))
    agree = [float(s.top1_agreement) for s in samples if s.top1_agreement is not None]
    if agree:
        low = min(agree)
        n = max(1, int(statistics.median(max(1, s.positions) for s in samples)))
        value = max(0.0, math.floor((low - 1.0 / n) * 100 + 1e-9) / 100)
        proposals.append(Proposal("top1_agreement_min", current.top1_agreement_min, value, low,
                                  f"min observed {low:.3g} − 1/{n} (one more flip at the "
                                  "median length)"))
    else:
        proposals.append(Proposal("top1_agreement_min", current.top1_agreement_min,
                                  current.top1_agreement_min, None, "not measured: kept"))
    ranks = [s.divergence_rank for s in samples if s.divergence_rank is not None]
    margins = [float(s.divergence_margin) for s in samples if s.divergence_margin is not None]
    top_k = max(ranks, default=0)
    proposals.append(Proposal("within_top_k", current.within_top_k,
                              max(current.within_top_k, top_k), float(top_k) if ranks else None,
                              "near-tie rule: kept" if top_k <= current.within_top_k else
                              f"a benign divergence of the good pair was at rank {top_k}"))
    worst_margin = max(margins, default=0.0)
    need = ceil_sig(worst_margin * headroom) if margins else 0.0
    proposals.append(Proposal("max_margin", current.max_margin, max(current.max_margin, need),
                              worst_margin if margins else None,
                              "near-tie rule: kept" if need <= current.max_margin else
                              f"largest divergence margin {worst_margin:.3g} × {headroom:g}"))
    proposals.sort(key=lambda p: ORDER.index(p.key))
    return proposals


# -- measuring -------------------------------------------------------------------------

def measure(spec: Spec, backend: str, against: str | None, golden_dir: Path | None,
            case_ids: list[str] | None = None, headroom: float = HEADROOM) -> Calibration:
    """Run the good pair once (no repeats, no batches) and propose tolerances."""

    if spec.kind != "causal-lm":
        raise UsageError(f"{spec.path}: calibrate proposes causal-lm tolerances (this spec is "
                         f"kind: {spec.kind})")
    cases = [replace(c, determinism=replace(c.determinism, runs=1, batch_sizes=()))
             for c in select_cases(spec, case_ids)]
    run = check(CausalLm(), CheckRequest(spec, config_for(backend, spec.backends).name,
                                          tuple(cases), golden_dir, against))
    samples = samples_of(run)

    klass = run.tolerance_class or FLOAT32
    spec_blocks = LimitSource.of((spec.located.data.get("defaults") or {}).get("tolerance"))
    base = spec_blocks.resolve(klass, DEFAULTS[klass], absolute_only=True).values
    relative = spec_blocks.relative_keys(klass)
    proposals = [p for p in propose(samples, base, headroom) if p.key not in relative]
    cal = Calibration(spec_name=spec.name, spec_path=str(spec.path), candidate=run.candidate.backend,
                      reference=run.reference.backend, reference_kind=run.reference_kind,
                      headroom=headroom, samples=samples, stats=stats_of(samples),
                      proposals=proposals, klass=klass)
    if relative:
        cal.notes.append(f"{', '.join(relative)}: relative to the reference's {klass} noise in "
                         "the spec, kept as written (not proposed)")
    if run.comparison == "self-check":
        cal.notes.append("self-check: both sides run the same runtime, device and dtype, so "
                         "this measures repeatability, not cross-backend noise")
    failing = [s.case_id for s in samples if s.status != "pass"]
    if failing:
        cal.notes.append(f"with the spec's current tolerances these cases fail: "
                         f"{', '.join(failing)} (the proposal is what would pass them)")
    errors = [c.id for c in run.cases if c.error]
    if errors:
        cal.notes.append(f"cases that errored (not measured): {', '.join(errors)}")
    overrides = [c.id for c in spec.cases
                 if any("tolerance" in e and e.get("id") == c.id
                        for e in spec.located.data.get("cases", []))]
    if overrides:
        cal.notes.append(f"cases with their own tolerance override (not rewritten): "
                         f"{', '.join(overrides)}")
    return cal
