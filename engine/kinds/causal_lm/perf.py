"""Performance: measure a loaded backend, judge the numbers, keep a perf golden.

Three layers, kept apart:

* **measuring** (`measure`) drives a loaded backend: for each batch size, `warmup` runs
  that are thrown away, then `runs` measured greedy generations of exactly `new_tokens`
  tokens (no stop ids) on prompts of `prompt_tokens` tokens. Per run it keeps the time to
  first token (prefill + first token, TTFT) and the total time; the backend synchronises
  its device before every clock read (`Generation.timings`; a backend without timings is
  timed here around `generate`, after `synchronize()`). Peak memory is the allocator's
  peak on an accelerator and the host's peak RSS on the CPU (`VmHWM`, reset before each
  batch size through `/proc/self/clear_refs` where Linux allows it).
* **summarising and judging** (`summarise`, `judge_budgets`, `judge_regression`) are
  pure functions on plain numbers; they are tested without a model.
* **the perf golden** (`record_perf_golden`, `load_perf_golden`) stores one measurement
  per *device class* — backend name + device name + dtype — in
  `golden/<spec>/perf/<backend>--<device-slug>--<dtype>.json`, separate from the output
  goldens, written atomically.

Definitions (per batch size, over the measured runs):

* TTFT = time from the start of `generate` to the first generated token of the batch.
* TPOT = (total - TTFT) / (tokens per row - 1): the mean time per output token after the
  first, i.e. one decode step of the whole batch.
* tokens/s = batch size * tokens per row / total, the median over runs.
* p50 / p90 / p99 are numpy's linear-interpolation percentiles of the runs (with few
  runs, p99 is close to the slowest run).

The relative gate (`judge_regression`): for each batch size and each of TTFT p50,
TPOT p50 and tokens/s (median), the slowdown against the golden is
``s = candidate_time / golden_time - 1`` (for tokens/s, ``golden / candidate - 1``).
The run-to-run spread is ``spread = spread_k * (rIQR_golden + rIQR_candidate)`` where
rIQR is the interquartile range of a measurement's runs divided by their median. A metric
regresses only when ``s > max(regression_max, spread)``: slower by more than the allowed
fraction *and* by more than the noise both measurements showed. On a quiet machine the
spread is a few percent and `regression_max` decides; on a noisy one the spread widens
the limit, so noise alone does not fail a clean change.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from specengine.errors import GoldenError, UsageError

PERF_GOLDEN_FORMAT = 1
PASS, FAIL, ERROR, MEASURED = "pass", "fail", "error", "measured"
GIB = float(1 << 30)
PERCENTILES = (50, 90, 99)


# -- settings ------------------------------------------------------------------------

@dataclass(frozen=True)
class PerfSettings:
    """The spec's `perf:` section with its defaults (DESIGN §2)."""

    warmup: int = 1
    runs: int = 5
    batch_sizes: tuple[int, ...] = (1,)
    prompt_tokens: int | None = None
    new_tokens: int = 32
    budgets: dict[str, dict] = field(default_factory=dict)
    regression_max: float | None = None
    spread_k: float = 1.0

    @classmethod
    def from_spec(cls, perf: dict | None) -> "PerfSettings":
        perf = dict(perf or {})
        sizes = tuple(dict.fromkeys(int(b) for b in perf.get("batch_sizes", (1,))))
        return cls(warmup=int(perf.get("warmup", 1)), runs=int(perf.get("runs", 5)),
                   batch_sizes=sizes or (1,), prompt_tokens=perf.get("prompt_tokens"),
                   new_tokens=int(perf.get("new_tokens", 32)),
                   budgets=dict(perf.get("budgets") or {}),
                   regression_max=perf.get("regression_max"),
                   spread_k=float(perf.get("spread_k", 1.0)))


# -- measurement (raw samples) -------------------------------------------------------

@dataclass
class BatchSamples:
    """Raw timings of the measured runs at one batch size."""

    batch_size: int
    ttft_s: list[float]
    total_s: list[float]
    tokens_per_row: int
    peak_mem_bytes: int | None = None

    def tpot_s(self) -> list[float]:
        steps = max(self.tokens_per_row - 1, 1)
        return [max(t - f, 0.0) / steps for t, f in zip(self.total_s, self.ttft_s)]

    def tokens_per_s(self) -> list[float]:
        return [self.batch_size * self.tokens_per_row / max(t, 1e-9) for t in self.total_s]


@dataclass
class PerfMeasurement:
    backend: str
    runtime: str
    device: str
    device_name: str
    dtype: str
    load_s: float | None
    prompt_tokens: int
    new_tokens: int
    warmup: int
    runs: int
    peak_mem_kind: str
    batches: list[BatchSamples]
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    model_fingerprint: str = ""

    @property
    def device_class(self) -> str:
        return device_class(self.backend, self.device_name, self.dtype)


def perf_prompts(streams: Sequence[Sequence[int]], batch_size: int,
                 prompt_tokens: int | None) -> list[list[int]]:
    """Equal-length prompts for one batch (pure).

    Without `prompt_tokens`, every row is the first stream (the first case's prompt). With
    it, the streams (all cases' prompt ids) are concatenated and cycled; row r starts at a
    different offset so rows differ, and every row has exactly `prompt_tokens` ids, so no
    row is padded and the measurement is of real work only.
    """
    streams = [list(s) for s in streams if len(s)]
    if not streams:
        raise UsageError("perf needs at least one case with a non-empty prompt")
    if prompt_tokens is None:
        return [list(streams[0]) for _ in range(batch_size)]
    flat = [t for s in streams for t in s]
    rows = []
    for r in range(batch_size):
        start = (r * 7) % len(flat)
        rows.append([flat[(start + i) % len(flat)] for i in range(prompt_tokens)])
    return rows


class _PeakMemory:
    """Peak memory of one batch size: allocator peak on accelerators, host RSS on CPU."""

    def __init__(self, backend):
        self.backend = backend
        self.host = str(getattr(backend.config, "device", "cpu")).split(":")[0] == "cpu"
        self.resettable = self.host and _clear_host_peak()
        if not self.host:
            source = getattr(backend, "peak_memory_source", None)
            where = f"{source()}, " if callable(source) else ""
            self.kind = f"device allocator peak ({where}reset per batch size)"
        elif self.resettable:
            self.kind = "host peak RSS (VmHWM, reset per batch size)"
        else:
            self.kind = "host peak RSS since process start"

    def reset(self) -> None:
        if self.host:
            if self.resettable:
                _clear_host_peak()
        else:
            reset = getattr(self.backend, "reset_peak_memory", None)
            if reset:
                reset()

    def read(self) -> int | None:
        if self.host and self.resettable:
            value = _host_hwm_bytes()
            if value is not None:
                return value
        peak = getattr(self.backend, "peak_memory_bytes", None)
        return peak() if peak else None


def _clear_host_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return _host_hwm_bytes() is not None
    except OSError:
        return False


def _host_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sync(backend) -> None:
    sync = getattr(backend, "synchronize", None)
    if sync:
        sync()


def _timed_generate(backend, prompts, new_tokens: int, top_k: int) -> tuple[float, float, int]:
    """One generation: (ttft_s, total_s, tokens per row). No stop ids: full length."""
    _sync(backend)
    start = time.perf_counter()
    gens = backend.generate(prompts, new_tokens, top_k, ())
    _sync(backend)
    wall = time.perf_counter() - start
    timings = gens[0].timings if gens else {}
    tokens = max((len(g.output_ids) for g in gens), default=0)
    total = float(timings.get("total_s", wall))
    ttft = timings.get("ttft_s")
    if ttft is None:  # a backend without its own timings: time a one-token generation
        _sync(backend)
        start = time.perf_counter()
        backend.generate(prompts, 1, top_k, ())
        _sync(backend)
        ttft = time.perf_counter() - start
    return float(ttft), total, tokens


def measure(backend, streams: Sequence[Sequence[int]], settings: PerfSettings,
            top_k: int = 1, progress: Callable[[str], None] | None = None) -> PerfMeasurement:
    """Measure a loaded backend at every batch size of `settings` (warm-up excluded)."""
    env = backend.environment()
    memory = _PeakMemory(backend)
    batches = []
    prompt_len = 0
    for size in settings.batch_sizes:
        prompts = perf_prompts(streams, size, settings.prompt_tokens)
        prompt_len = len(prompts[0])
        if progress:
            progress(f"perf batch {size}: {settings.warmup} warm-up + {settings.runs} runs")
        for _ in range(settings.warmup):
            _timed_generate(backend, prompts, settings.new_tokens, top_k)
        memory.reset()
        ttft, total, tokens = [], [], settings.new_tokens
        for _ in range(settings.runs):
            f, t, n = _timed_generate(backend, prompts, settings.new_tokens, top_k)
            ttft.append(f)
            total.append(t)
            tokens = n
        batches.append(BatchSamples(size, ttft, total, tokens, memory.read()))
    return PerfMeasurement(
        backend=backend.name, runtime=str(env.get("runtime", "")),
        device=str(env.get("device", "")), device_name=str(env.get("device_name", "")),
        dtype=str(env.get("dtype", "")), load_s=getattr(backend, "load_s", None),
        prompt_tokens=prompt_len, new_tokens=settings.new_tokens, warmup=settings.warmup,
        runs=settings.runs, peak_mem_kind=memory.kind, batches=batches,
        versions=dict(env.get("versions", {})), settings=dict(env.get("settings", {})),
        model_fingerprint=str(getattr(getattr(backend, "resolved", None), "fingerprint", "")
                              or ""))


# -- summaries (pure) ----------------------------------------------------------------

def percentiles(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64) * scale
    return {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}


def relative_iqr(values: Sequence[float]) -> float:
    """Interquartile range over the median: the run-to-run spread of one measurement."""
    arr = np.asarray(values, dtype=np.float64)
    med = float(np.median(arr))
    if not len(arr) or med == 0 or not math.isfinite(med):
        return 0.0
    q75, q25 = np.percentile(arr, [75, 25])
    return float((q75 - q25) / abs(med))


def summarise(batch: BatchSamples, backend: str) -> dict[str, Any]:
    """One report row (keys the report layer reads) plus the raw samples and spreads."""
    tps = batch.tokens_per_s()
    return {
        "backend": backend, "batch_size": batch.batch_size,
        "ttft_ms": percentiles(batch.ttft_s, 1e3), "tpot_ms": percentiles(batch.tpot_s(), 1e3),
        "tokens_per_s": float(np.median(tps)),
        "peak_mem_gib": None if batch.peak_mem_bytes is None else batch.peak_mem_bytes / GIB,
        "tokens_per_row": batch.tokens_per_row, "runs": len(batch.total_s),
        "spread": {"ttft_ms": relative_iqr(batch.ttft_s), "tpot_ms": relative_iqr(batch.tpot_s()),
                   "tokens_per_s": relative_iqr(tps)},
        "samples": {"ttft_ms": [round(x * 1e3, 4) for x in batch.ttft_s],
                    "total_ms": [round(x * 1e3, 4) for x in batch.total_s]},
    }


def summarise_all(m: PerfMeasurement) -> list[dict[str, Any]]:
    return [summarise(b, m.backend) for b in m.batches]


# -- judging (pure) ------------------------------------------------------------------

_LABELS = {"ttft_ms": ("TTFT", "ms"), "tpot_ms": ("TPOT", "ms")}


def judge_budgets(rows: list[dict], load_s: float | None, budget: dict | None) -> list[str]:
    """Absolute budget failures (empty = within budget). `budget` is one backend's entry:
    ttft_ms / tpot_ms {p50, p90, p99} ceilings, tokens_per_s {min}, peak_mem_gib {max},
    load_s {max}; `batch_sizes` restricts the rows it applies to (default: every row)."""
    if not budget:
        return []
    failures = []
    limit = budget.get("load_s", {}).get("max")
    if limit is not None and load_s is not None and load_s > limit:
        failures.append(f"load time {load_s:.3g} s > budget {limit:g} s")
    only = budget.get("batch_sizes")
    for row in rows:
        b = row["batch_size"]
        if only and b not in only:
            continue
        for key, (label, unit) in _LABELS.items():
            for pct, ceiling in sorted((budget.get(key) or {}).items()):
                value = (row.get(key) or {}).get(pct)
                if value is not None and value > ceiling:
                    failures.append(f"batch {b}: {label} {pct} {value:.4g} {unit} > budget "
                                    f"{ceiling:g} {unit}")
        floor = (budget.get("tokens_per_s") or {}).get("min")
        if floor is not None and row.get("tokens_per_s") is not None and row["tokens_per_s"] < floor:
            failures.append(f"batch {b}: {row['tokens_per_s']:.4g} tokens/s < budget {floor:g}")
        ceiling = (budget.get("peak_mem_gib") or {}).get("max")
        mem = row.get("peak_mem_gib")
        if ceiling is not None and mem is not None and mem > ceiling:
            failures.append(f"batch {b}: peak memory {mem:.3g} GiB > budget {ceiling:g} GiB")
    return failures


@dataclass
class Regression:
    """One metric at one batch size against the perf golden."""

    batch_size: int
    metric: str              # ttft_ms | tpot_ms | tokens_per_s
    golden: float
    candidate: float
    slowdown: float          # fraction; > 0 is slower
    spread: float            # spread_k * (rIQR golden + rIQR candidate)
    allowed: float           # max(regression_max, spread)
    regressed: bool

    def describe(self) -> str:
        label, unit = _LABELS.get(self.metric, ("tokens/s", ""))
        what = f"{label} p50" if self.metric in _LABELS else "tokens/s"
        unit = f" {unit}" if unit else ""
        return (f"batch {self.batch_size}: {what} {self.candidate:.4g}{unit} vs golden "
                f"{self.golden:.4g}{unit}: {self.slowdown:+.1%} slower, allowed "
                f"{self.allowed:.1%} (max of regression_max and spread {self.spread:.1%})")


def slowdown(metric: str, golden: float, candidate: float) -> float:
    """Fractional slowdown (> 0 slower). Times grow when slower; tokens/s shrinks."""
    if metric == "tokens_per_s":
        return golden / max(candidate, 1e-12) - 1.0
    return candidate / golden - 1.0 if golden > 0 else 0.0


def judge_regression(rows: list[dict], golden_rows: list[dict], regression_max: float,
                     spread_k: float = 1.0) -> list[Regression]:
    """Compare medians with the golden's, batch size by batch size (see the module doc)."""
    by_size = {r["batch_size"]: r for r in golden_rows}
    out = []
    for row in rows:
        g = by_size.get(row["batch_size"])
        if g is None:
            continue
        for metric in ("ttft_ms", "tpot_ms", "tokens_per_s"):
            gv, cv = _median_of(g, metric), _median_of(row, metric)
            if gv is None or cv is None:
                continue
            s = slowdown(metric, gv, cv)
            spread = spread_k * (g.get("spread", {}).get(metric, 0.0)
                                 + row.get("spread", {}).get(metric, 0.0))
            allowed = max(regression_max, spread)
            out.append(Regression(row["batch_size"], metric, gv, cv, s, spread, allowed,
                                  s > allowed))
    return out


def _median_of(row: dict, metric: str) -> float | None:
    value = row.get(metric)
    if isinstance(value, dict):
        value = value.get("p50")
    return None if value is None else float(value)


# -- device classes and the perf golden ----------------------------------------------

def slug(text: str, limit: int = 60) -> str:
    """Lower-case [a-z0-9-] form of a device name, for file names."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].strip("-") or "unknown"


def device_class(backend: str, device_name: str, dtype: str) -> str:
    return f"{backend}--{slug(device_name)}--{slug(dtype)}"


def perf_golden_path(golden_dir: Path, spec_name: str, backend: str, device_name: str,
                     dtype: str) -> Path:
    """golden/<spec>/perf/<backend>--<device slug>--<dtype>.json, confined to golden_dir."""
    from specengine.golden import golden_path

    golden_path(golden_dir, spec_name, backend)          # validates both names
    root = Path(golden_dir).resolve()
    path = (root / spec_name / "perf" / f"{device_class(backend, device_name, dtype)}.json").resolve()
    if not path.is_relative_to(root):
        raise UsageError(f"perf golden path {path} would leave the golden folder {root}")
    return path


def _setup(m: PerfMeasurement) -> dict:
    """What must match for two measurements to be comparable."""
    return {"prompt_tokens": m.prompt_tokens, "new_tokens": m.new_tokens,
            "model_fingerprint": m.model_fingerprint}


def build_perf_golden(spec_name: str, m: PerfMeasurement) -> dict:
    from specengine.golden import content_hash

    data = {"format": PERF_GOLDEN_FORMAT, "kind": "perf", "spec": spec_name,
            "device_class": {"backend": m.backend, "device_name": m.device_name, "dtype": m.dtype},
            "recorded_with": {"runtime": m.runtime, "device": m.device, "versions": m.versions,
                              "settings": m.settings, "peak_mem_kind": m.peak_mem_kind,
                              "warmup": m.warmup, "runs": m.runs},
            "setup": _setup(m), "load_s": m.load_s, "rows": summarise_all(m)}
    data = json.loads(json.dumps(data, sort_keys=True, ensure_ascii=False))
    data["content_sha256"] = content_hash(data)
    return data


def load_perf_golden(path: Path, spec_name: str) -> dict:
    from specengine.golden import content_hash

    from specengine.fileio import read_golden_json

    data = read_golden_json(path, "perf golden")
    if not isinstance(data, dict) or data.get("kind") != "perf" \
            or data.get("format") != PERF_GOLDEN_FORMAT:
        raise GoldenError(f"{path} is not a format-{PERF_GOLDEN_FORMAT} perf golden; re-record "
                          "it with `specengine record-golden --perf --update`")
    missing = [k for k in ("spec", "device_class", "setup", "rows", "content_sha256") if k not in data]
    if missing:
        raise GoldenError(f"perf golden {path} lacks {', '.join(missing)}")
    if content_hash(data) != data["content_sha256"]:
        raise GoldenError(f"perf golden {path} was edited by hand or corrupted: its content "
                          "hash does not match (re-record it with --perf --update)")
    if data["spec"] != spec_name:
        raise GoldenError(f"perf golden {path} belongs to spec '{data['spec']}', not '{spec_name}'")
    return data


def perf_changes(old: dict, new: dict) -> list[str]:
    """What re-recording a perf golden changed: medians per batch size."""
    lines = []
    olds = {r["batch_size"]: r for r in old.get("rows", [])}
    for row in new["rows"]:
        o = olds.get(row["batch_size"])
        if o is None:
            lines.append(f"  + batch {row['batch_size']} (new)")
            continue
        for metric in ("ttft_ms", "tpot_ms", "tokens_per_s"):
            a, b = _median_of(o, metric), _median_of(row, metric)
            if a and b is not None:
                lines.append(f"  ~ batch {row['batch_size']} {metric}: {a:.4g} -> {b:.4g} "
                             f"({b / a - 1:+.1%})")
    if old.get("setup") != new.get("setup"):
        lines.insert(0, f"  ~ setup: {old.get('setup')} -> {new.get('setup')}")
    return lines or ["  (no change)"]


def record_perf_golden(spec, backend_name: str, golden_dir: Path, update: bool = False,
                       echo: Callable[[str], None] = print) -> Path:
    """`record-golden --perf`: measure on a backend and store it for its device class."""
    from specengine.files import atomic_write_text
    from specengine.golden import dumps
    from specengine.loading.session import open_session

    settings = PerfSettings.from_spec(spec.perf)
    session = open_session(spec, backend_name)
    try:
        m = measure(session.backend, _streams(session), settings, _top_k(spec))
    finally:
        session.close()
    m.model_fingerprint = session.resolved.fingerprint
    path = perf_golden_path(golden_dir, spec.name, m.backend, m.device_name, m.dtype)
    data = build_perf_golden(spec.name, m)
    if path.exists():
        if not update:
            raise GoldenError(f"a perf golden already exists at {path}; pass --update to "
                              "re-record it (the changes are shown)")
        try:
            old = load_perf_golden(path, spec.name)
            echo(f"changes in {path}:")
            for line in perf_changes(old, data):
                echo(line)
        except GoldenError as exc:
            echo(f"note: replacing an unreadable perf golden ({exc.one_line()})")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dumps(data))
    for row in data["rows"]:
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

def check_perf(session, spec, golden_dir: Path | None) -> dict[str, Any]:
    """Measure on the session's backend and judge it: the `RunResult.perf` dict.

    Status: fail when a budget or the relative gate fails, pass when at least one of them
    applied and none failed, `measured` when there was nothing to judge against.
    A stale perf golden (other prompt length, new tokens or model) is a GoldenError.
    """
    from specengine.golden import default_golden_dir

    settings = PerfSettings.from_spec(spec.perf)
    m = measure(session.backend, _streams(session), settings, _top_k(spec))
    m.model_fingerprint = session.resolved.fingerprint
    rows = summarise_all(m)
    report: dict[str, Any] = {
        "backend": m.backend, "device_name": m.device_name, "dtype": m.dtype,
        "device_class": m.device_class, "load_s": m.load_s, "prompt_tokens": m.prompt_tokens,
        "new_tokens": m.new_tokens, "warmup": m.warmup, "runs": m.runs,
        "peak_mem_kind": m.peak_mem_kind, "rows": rows, "failures": []}
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
            if golden["setup"] != _setup(m):
                raise GoldenError(f"perf golden {path} was measured with {golden['setup']}, "
                                  f"this run with {_setup(m)}; re-record it with "
                                  "`specengine record-golden --perf --update`")
            gates.append("relative")
            regs = judge_regression(rows, golden["rows"], settings.regression_max,
                                    settings.spread_k)
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
