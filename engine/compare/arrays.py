"""Comparing float arrays: the metrics of embedding checks and operator checks.

Pure numpy in, a dataclass out; no torch. Definitions (documented in the spec schema):

* rows: the last axis is the feature axis; every other axis is flattened into rows
  (an embedding per input, a hidden state per token, an operator output row).
* cosine: per row, <g, c> / (|g| |c|), computed in float64; 1 when both rows are zero,
  0 when only one is. `cosine_min` is the smallest over rows.
* max_abs_err: max |c - g| over all elements.
* relative error of an element: |c - g| / max(|g|, floor), floor = 1e-6 * max|g| (so an
  exact zero in the reference does not divide by zero; elements near zero still have large
  relative errors, which is why the shares below are reported as well).
* rel_share_1e3 / rel_share_5e3: the share of elements whose relative error is below
  0.001 / 0.005.
* rel_rms_err: ||c - g|| / ||g|| over all elements.

The dtype-relative numbers (`dtype_error`) judge a result by what its dtype can achieve:
the error of simply rounding the exact result to that dtype is the best any implementation
in that dtype can do, so `dtype_error_ratio = rms(c - exact) / rms(round_dtype(exact) -
exact)` is about 1 for a correctly rounded result, a few for usual kernels that compute in
a wider type, and large for a real precision loss. `max_err_dtype_units = max|c - exact| /
(u * max|exact|)` is the worst error in units of the dtype's resolution at the output's
scale (u = unit roundoff: 2^-24 float32, 2^-11 float16, 2^-8 bfloat16).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

REL_FLOOR = 1e-6

# unit roundoff (half the machine epsilon) of each dtype a backend may compute in
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11,
                 "bfloat16": 2.0 ** -8}


@dataclass
class ArrayStats:
    """How far a candidate array is from a reference array of the same shape."""

    rows: int
    elements: int
    cosine_min: float
    cosine_mean: float
    worst_row: int
    max_abs_err: float
    max_rel_err: float
    rel_share_1e3: float
    rel_share_5e3: float
    rel_rms_err: float
    finite: bool

    def as_dict(self) -> dict:
        return {k: _clean(v) for k, v in asdict(self).items()}


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def as_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    return a.reshape(-1, a.shape[-1])


def cosine_rows(g: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (float64)."""
    g, c = as_rows(g), as_rows(c)
    ng, nc = np.linalg.norm(g, axis=1), np.linalg.norm(c, axis=1)
    dot = (g * c).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (ng * nc)
    cos = np.where((ng == 0) & (nc == 0), 1.0, np.where((ng == 0) | (nc == 0), 0.0, cos))
    return np.clip(cos, -1.0, 1.0)


def relative_errors(g: np.ndarray, c: np.ndarray) -> np.ndarray:
    g = np.asarray(g, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    scale = float(np.abs(g).max()) if g.size else 0.0
    floor = max(REL_FLOOR * scale, np.finfo(np.float64).tiny)
    return np.abs(c - g) / np.maximum(np.abs(g), floor)


def array_stats(golden: np.ndarray, candidate: np.ndarray) -> ArrayStats:
    """All metrics of `candidate` against `golden` (same shape)."""
    g = np.asarray(golden, dtype=np.float64)
    c = np.asarray(candidate, dtype=np.float64)
    if g.shape != c.shape:
        raise ValueError(f"shape mismatch: reference {g.shape}, candidate {c.shape}")
    finite = bool(np.isfinite(c).all())
    if g.size == 0:
        return ArrayStats(0, 0, 1.0, 1.0, 0, 0.0, 0.0, 1.0, 1.0, 0.0, finite)
    cos = cosine_rows(g, c)
    cos = np.where(np.isnan(cos), -1.0, cos)
    diff = np.abs(c - g)
    rel = relative_errors(g, c)
    norm_g = float(np.linalg.norm(g))
    with np.errstate(invalid="ignore"):
        rel_rms = float(np.linalg.norm(c - g) / norm_g) if norm_g else float(np.linalg.norm(c))
    return ArrayStats(
        rows=int(cos.size), elements=int(g.size),
        cosine_min=float(cos.min()), cosine_mean=float(cos.mean()), worst_row=int(cos.argmin()),
        max_abs_err=float(np.nanmax(diff)) if finite else math.inf,
        max_rel_err=float(np.nanmax(rel)) if finite else math.inf,
        rel_share_1e3=float((rel < 1e-3).mean()), rel_share_5e3=float((rel < 5e-3).mean()),
        rel_rms_err=rel_rms if finite else math.inf, finite=finite)


@dataclass
class DtypeError:
    """A result's error judged against what its dtype can achieve."""

    dtype: str
    unit_roundoff: float
    rms_err: float
    rounding_rms_err: float          # rms(round_dtype(exact) - exact)
    dtype_error_ratio: float         # rms_err / max(rounding_rms_err, floor)
    max_err_dtype_units: float       # max|c - exact| / (u * max|exact|)

    def as_dict(self) -> dict:
        return {k: _clean(v) for k, v in asdict(self).items()}


def dtype_error(exact: np.ndarray, candidate: np.ndarray, rounded_exact: np.ndarray,
                dtype: str) -> DtypeError:
    """`rounded_exact` is `exact` rounded to `dtype` (by the caller, who has the dtype's
    rounding at hand); the floor of the rounding baseline is 0.1 u rms(exact), so a result
    whose exact values happen to be representable is not divided by zero."""
    e = np.asarray(exact, dtype=np.float64)
    c = np.asarray(candidate, dtype=np.float64)
    r = np.asarray(rounded_exact, dtype=np.float64)
    u = UNIT_ROUNDOFF[dtype]
    if e.size == 0:
        return DtypeError(dtype, u, 0.0, 0.0, 0.0, 0.0)
    rms = float(np.sqrt(np.mean((c - e) ** 2)))
    base = float(np.sqrt(np.mean((r - e) ** 2)))
    floor = 0.1 * u * float(np.sqrt(np.mean(e ** 2)))
    denom = max(base, floor, np.finfo(np.float64).tiny)
    scale = float(np.abs(e).max())
    units = float(np.abs(c - e).max()) / (u * scale) if scale else (
        0.0 if not np.abs(c).max() else math.inf)
    if not np.isfinite(c).all():
        rms, units = math.inf, math.inf
    return DtypeError(dtype, u, rms, base, rms / denom, units)


def limit_failures(stats: ArrayStats, tol) -> list[str]:
    """What an output's stats break of the optional limits both array kinds share (a
    tolerance with max_abs_err, max_rel_err, rel_share_1e3_min, rel_share_5e3_min; None
    means no limit). Pure."""
    failures = []
    for value, limit, label in ((stats.max_abs_err, tol.max_abs_err, "max abs err"),
                                (stats.max_rel_err, tol.max_rel_err, "max rel err")):
        if limit is not None and not value <= limit:
            failures.append(f"{label} {value:.3g} > {limit:g}")
    for value, limit, label in ((stats.rel_share_1e3, tol.rel_share_1e3_min, "rel err < 0.001"),
                                (stats.rel_share_5e3, tol.rel_share_5e3_min, "rel err < 0.005")):
        if limit is not None and value < limit:
            failures.append(f"share {label} {value:.1%} < {limit:.1%}")
    return failures
