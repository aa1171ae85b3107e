"""What every report format derives from a RunResult: verdicts, counts, the headline
metrics of a case, the environment of both sides, the perf section.

Pure functions over `specengine.results`; no formatting beyond plain strings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from specengine.results import ERROR, FAIL, NOT_RUN, PASS, CaseResult, RunResult, Side
from specengine.report.text import is_number, short_hash

SELF_CHECK = "self-check"
CROSS_MODEL = "cross-model"
CROSS_BACKEND = "cross-backend"
SELF_CHECK_TEXT = ("self-check: both sides ran on the same runtime/device/dtype; "
                   "this is not a cross-backend pass")

_SEVERITY = {PASS: 0, NOT_RUN: 1, FAIL: 2, ERROR: 3}
BAD = (FAIL, ERROR)

# Where the headline metrics are looked up in a case's check metrics (the names of
# `specengine.compare.tokens.TeacherForced`'s fields first, then common aliases).
METRIC_KEYS = {
    "kl_mean": ("kl_mean",),
    "kl_max": ("kl_max",),
    "top1": ("top1_agreement", "top1"),
    "dlogprob": ("max_abs_dlogprob", "max_abs_dlp", "abs_dlogprob_max"),
}
PREFERRED_CHECKS = ("teacher-forced", "teacher_forced", "teacher")


def worst(statuses: Iterable[str]) -> str:
    """The most severe status (error > fail > not-run > pass); pass when empty."""
    return max(statuses, key=lambda s: _SEVERITY.get(s, 2), default=PASS)


def run_status(run: RunResult) -> str:
    """The run's verdict, also when `finish()` was not called: never better than its
    cases or its perf section."""
    statuses = [run.status] + [c.status for c in run.cases]
    if isinstance(run.perf, dict) and run.perf.get("status") in BAD:
        statuses.append(run.perf["status"])
    return worst(statuses)


def overall_status(runs: list[RunResult]) -> str:
    return worst(run_status(r) for r in runs) if runs else NOT_RUN


def all_self_check(runs: list[RunResult]) -> bool:
    return bool(runs) and all(r.comparison == SELF_CHECK for r in runs)


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    not_run: int = 0

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.not_run

    def line(self) -> str:
        text = f"{self.passed} passed, {self.failed} failed, {self.errors} errors"
        return text + (f", {self.not_run} not run" if self.not_run else "")


def counts(runs: Iterable[RunResult]) -> Counts:
    out = Counts()
    for run in runs:
        for case in run.cases:
            if case.status == PASS:
                out.passed += 1
            elif case.status == FAIL:
                out.failed += 1
            elif case.status == ERROR:
                out.errors += 1
            else:
                out.not_run += 1
        if getattr(run, "error", "") and not run.cases:   # a spec that could not run
            out.errors += 1
    return out


def run_title(run: RunResult) -> str:
    """`candidate vs reference (golden|live)`."""
    return f"{run.candidate.backend} vs {run.reference.backend} ({run.reference_kind})"


@dataclass(frozen=True)
class CaseMetrics:
    kl_mean: float | None = None
    kl_max: float | None = None
    top1: float | None = None
    dlogprob: float | None = None
    divergence: int | None = None
    divergence_ok: bool | None = None     # None: no divergence check recorded


def _finite_values(values: Any) -> list[float]:
    return [float(v) for v in values or [] if is_number(v)]


def case_metrics(case: CaseResult) -> CaseMetrics:
    """Headline metrics of a case: from its teacher-forced check's metrics, falling back
    on the per-position series for KL and |Δ logprob|."""
    checks = [c for c in case.checks if c.name in PREFERRED_CHECKS]
    found: dict[str, Any] = {}
    for attr, keys in METRIC_KEYS.items():
        for check in checks:
            value = next((check.metrics[k] for k in keys if k in check.metrics), None)
            if value is not None:
                found[attr] = value
                break
    kl = _finite_values(case.per_position.get("kl"))
    dlp = _finite_values(case.per_position.get("abs_dlogprob"))
    if "kl_mean" not in found and kl:
        found["kl_mean"] = math.fsum(kl) / len(kl)
    if "kl_max" not in found and kl:
        found["kl_max"] = max(kl)
    if "dlogprob" not in found and dlp:
        found["dlogprob"] = max(dlp)
    div_check = next((c for c in case.checks if c.name.startswith("divergence")), None)
    return CaseMetrics(divergence=case.divergence_step,
                       divergence_ok=None if div_check is None else div_check.status not in BAD,
                       **found)


def teacher_forced(case: CaseResult):
    return next((c for c in case.checks if c.name in PREFERRED_CHECKS), None)


# which headline metric a teacher-forced failure message is about (compare.teacher_forced)
_MESSAGE_METRIC = (("KL mean", "kl_mean"), ("KL max", "kl_max"), ("top-1", "top1"),
                   ("logprob", "dlogprob"))


def bad_metrics(case: CaseResult) -> set[str]:
    """Headline metrics (CaseMetrics field names) that broke their tolerance."""
    check = teacher_forced(case)
    if check is None or check.status not in BAD:
        return set()
    return {attr for text, attr in _MESSAGE_METRIC if text in check.message}


def tolerance(case: CaseResult) -> dict[str, Any]:
    """The tolerance the teacher-forced check applied, when it recorded one."""
    check = teacher_forced(case)
    tol = check.metrics.get("tolerance") if check is not None else None
    return tol if isinstance(tol, dict) else {}


def failing_checks(case: CaseResult) -> list:
    return [c for c in case.checks if c.status in BAD]


@dataclass(frozen=True)
class EnvRow:
    label: str
    reference: str
    candidate: str
    title_reference: str = ""     # full value where the shown one is shortened
    title_candidate: str = ""
    flag: bool = False            # something a reviewer must notice
    differs: bool = False


def _flag_text(value: bool, what: str) -> str:
    return f"YES — {what}" if value else "no"


def env_rows(run: RunResult) -> list[EnvRow]:
    """The environment of both sides, row by row (versions and settings one row each)."""
    ref, cand = run.reference, run.candidate
    rows = [_row(label, getattr(ref, attr), getattr(cand, attr)) for label, attr in (
        ("backend", "backend"), ("runtime", "runtime"), ("device", "device"),
        ("device name", "device_name"), ("dtype", "dtype"))]
    for key in sorted(set(ref.versions) | set(cand.versions)):
        rows.append(_row(key, ref.versions.get(key, ""), cand.versions.get(key, "")))
    differs = ref.model_fingerprint != cand.model_fingerprint
    rows.append(replace(_row("model fingerprint", _short_fp(ref), _short_fp(cand)),
                        title_reference=ref.model_fingerprint,
                        title_candidate=cand.model_fingerprint, differs=differs))
    source = _row("model source", ref.model_source, cand.model_source)
    # the fingerprint is the identity: the same weights found at two places are the same
    rows.append(replace(source, differs=source.differs and differs))
    for label, attr, what in (("model override", "model_override", "the backend's own model"),
                              ("trust_remote_code", "trust_remote_code", "runs model code")):
        row = _row(label, _flag_text(getattr(ref, attr), what), _flag_text(getattr(cand, attr), what))
        rows.append(replace(row, flag=getattr(ref, attr) or getattr(cand, attr)))
    rows.append(replace(_row("modeling code", modeling_text(ref), modeling_text(cand)),
                        flag=any((s.modeling or {}).get("folder_code_sha256") for s in (ref, cand))))
    if ref.quantization or cand.quantization:
        rows.append(_row("quantization", _mapping_text(ref.quantization),
                         _mapping_text(cand.quantization)))
    for key in sorted(set(ref.settings) | set(cand.settings)):
        rows.append(_row(f"setting: {key}", ref.settings.get(key, ""), cand.settings.get(key, "")))
    return rows


def modeling_text(side: Side) -> str:
    """Which modeling code ran on a side: class (module), and the folder's own code —
    its sha256 and whether it ran — when the folder ships any."""
    info = side.modeling or {}
    if not info:
        return ""
    text = f"{info.get('class', '?')} ({info.get('module', '?')})"
    sha = info.get("folder_code_sha256")
    if sha:
        ran = "ran" if info.get("folder_code_ran") else "NOT run: built-in class used"
        text += f"; folder code sha256 {short_hash(sha)} {ran}"
    return text


def _mapping_text(value: Any) -> str:
    if not value:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in sorted(value.items()))
    return str(value)


def _short_fp(side: Side) -> str:
    return short_hash(side.model_fingerprint) if side.model_fingerprint else ""


def _row(label: str, ref: Any, cand: Any) -> EnvRow:
    ref_s = "" if ref is None else str(ref)
    cand_s = "" if cand is None else str(cand)
    return EnvRow(label, ref_s, cand_s, differs=ref_s != cand_s)


# --- perf ------------------------------------------------------------------------------

@dataclass
class PerfRow:
    backend: str
    batch_size: Any
    ttft: dict[str, Any]            # p50, p90, p99 (missing keys absent)
    tpot: dict[str, Any]
    tokens_per_s: Any
    peak_mem_gib: Any
    status: str = ""


@dataclass
class PerfView:
    status: str
    rows: list[PerfRow]
    extras: list[tuple[str, Any]] = field(default_factory=list)   # other scalar keys
    messages: list[str] = field(default_factory=list)


def _percentiles(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: value.get(k) for k in ("p50", "p90", "p99") if k in value}
    if is_number(value):
        return {"p50": value}
    return {}


def perf_view(perf: Any) -> PerfView | None:
    """A tolerant reading of `run.perf` (its shape is not fixed): rows of per-batch-size
    measurements, plus every other scalar top-level key as an extra."""
    if not isinstance(perf, dict):
        return None
    rows = []
    for row in perf.get("rows") or []:
        if not isinstance(row, dict):
            continue
        rows.append(PerfRow(
            backend=str(row.get("backend", "")), batch_size=row.get("batch_size"),
            ttft=_percentiles(row.get("ttft_ms")), tpot=_percentiles(row.get("tpot_ms")),
            tokens_per_s=row.get("tokens_per_s"), peak_mem_gib=row.get("peak_mem_gib"),
            status=str(row.get("status", ""))))
    extras = [(str(k), v) for k, v in sorted(perf.items(), key=lambda kv: str(kv[0]))
              if k not in ("rows", "status", "messages", "failures")
              and (is_number(v) or isinstance(v, (str, bool)) or v is None)]
    found = perf.get("failures") or perf.get("messages") or []
    messages = [str(m) for m in found] if isinstance(found, list) else [str(found)]
    return PerfView(status=str(perf.get("status", "")), rows=rows, extras=extras,
                    messages=messages)
