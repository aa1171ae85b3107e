"""Distribution statistics over every compared position of a whole spec.

Per-case limits catch a case that drifts; these catch a port whose drift is spread thin
over many positions, and give the numbers a quantisation or port report is read by (the
layout of llama.cpp's KL-divergence table): mean KL with its standard error, KL
percentiles up to p99.9 and the max, Δp (the candidate's probability of the golden's
token minus the golden's) mean / RMS / p1 / p99, and the share of positions whose argmax
is the golden's top-1 with its binomial standard error. Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from specengine.results import CaseResult

PATHS = ("prefill", "decode")

# spec `distribution:` limit -> (statistic, upper (max) or lower (min) bound)
LIMITS = {"kl_mean_max": ("kl_mean", "max"), "kl_p99_max": ("kl_p99", "max"),
          "kl_p999_max": ("kl_p999", "max"), "kl_max": ("kl_max", "max"),
          "dp_rms_max": ("dp_rms", "max"), "same_top1_min": ("same_top1", "min")}


@dataclass
class Distribution:
    """The statistics of one path (one-pass `prefill` or incremental `decode`)."""

    path: str
    positions: int
    kl_mean: float
    kl_sem: float            # standard error of the mean
    kl_p50: float
    kl_p90: float
    kl_p99: float
    kl_p999: float
    kl_max: float
    dp_mean: float
    dp_rms: float
    dp_p1: float
    dp_p99: float
    same_top1: float         # fraction of positions
    same_top1_err: float     # binomial standard error of that fraction

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def distribution(path: str, kl: Sequence[float], dp: Sequence[float],
                 same_top1: Sequence[bool]) -> Distribution | None:
    """Statistics of per-position KL, signed Δp and argmax agreement (None: no position)."""
    k = np.asarray(kl, dtype=np.float64)
    if k.size == 0:
        return None
    d = np.asarray(dp, dtype=np.float64)
    s = np.asarray(same_top1, dtype=bool)
    n = int(k.size)
    finite = np.isfinite(k).all()
    sem = float(k.std(ddof=1) / math.sqrt(n)) if n > 1 and finite else (0.0 if finite else math.inf)
    with np.errstate(invalid="ignore"):
        pct = np.percentile(k, [50, 90, 99, 99.9]) if finite else [math.inf] * 4
    p = float(s.mean()) if s.size else 1.0
    return Distribution(
        path=path, positions=n, kl_mean=float(k.mean()), kl_sem=sem,
        kl_p50=float(pct[0]), kl_p90=float(pct[1]), kl_p99=float(pct[2]),
        kl_p999=float(pct[3]), kl_max=float(k.max()),
        dp_mean=float(d.mean()) if d.size else 0.0,
        dp_rms=float(math.sqrt((d ** 2).mean())) if d.size else 0.0,
        dp_p1=float(np.percentile(d, 1)) if d.size else 0.0,
        dp_p99=float(np.percentile(d, 99)) if d.size else 0.0,
        same_top1=p, same_top1_err=float(math.sqrt(p * (1 - p) / s.size)) if s.size else 0.0)


def judge(stats: Distribution, limits: Mapping[str, float]) -> list[str]:
    """The spec-level limits a path's statistics break, as messages."""
    out = []
    for key, bound in limits.items():
        if key not in LIMITS:
            continue
        name, kind = LIMITS[key]
        value = getattr(stats, name)
        if (kind == "max" and not value <= bound) or (kind == "min" and not value >= bound):
            sign = ">" if kind == "max" else "<"
            out.append(f"{stats.path}: {name} {value:.4g} {sign} {bound:g} ({key})")
    return out


def spec_distribution(cases: Sequence[CaseResult], limits: dict | None) -> dict | None:
    """Distribution statistics over every compared position of every case, per path
    (one-pass `prefill`, incremental `decode`), and the spec-level limits they break."""
    out: dict = {"failures": [], "limits": dict(limits or {})}
    for path in PATHS:
        suffix = "" if path == "prefill" else "_decode"
        kl, dp, same = [], [], []
        for case in cases:
            pp = case.per_position
            if f"kl{suffix}" in pp and f"dp{suffix}" in pp:
                kl += pp[f"kl{suffix}"]
                dp += pp[f"dp{suffix}"]
                same += [bool(x) for x in pp.get(f"same_top1{suffix}", [])]
        stats = distribution(path, kl, dp, same)
        if stats is not None:
            out[path] = stats.as_dict()
            wanted = (limits or {}).get("paths", list(PATHS))
            if path in wanted:
                out["failures"] += judge(stats, limits or {})
    return out if any(p in out for p in PATHS) else None
