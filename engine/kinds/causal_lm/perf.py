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

TTFT against prompt length (`length_groups`, `measure_ttft_by_length`,
`summarise_by_length`): where a spec has long cases (a `long_prompt` recipe or a length
sweep, or any prompt of `LONG_PROMPT_TOKENS` or more) and at least two distinct prompt
lengths, each distinct length (at most `MAX_TTFT_LENGTHS`, spread evenly) is timed on the
first case of that length, its own prompt ids, batch 1: `warmup` one-token generations
thrown away, then `runs` timed ones, the device synchronised before and after each. TTFT
is the backend's own `ttft_s` where it reports one, else the synchronised wall time of
the one-token generation (prefill + first token).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from specengine.errors import UsageError
from specengine.kinds.timing import PeakMemory, percentiles, relative_iqr

PERF_GOLDEN_FORMAT = 1
MEASURED = "measured"   # a perf section with nothing to judge against
GIB = float(1 << 30)
LONG_PROMPT_TOKENS = 256     # a prompt this long makes a spec "long" for TTFT by length
MAX_TTFT_LENGTHS = 12


# -- settings ------------------------------------------------------------------------

@dataclass(frozen=True)
class PerfSettings:
    """The spec's `perf:` section with its defaults."""

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


def _timed_generate(backend, prompts, new_tokens: int, top_k: int) -> tuple[float, float, int]:
    """One generation: (ttft_s, total_s, tokens per row). No stop ids: full length."""
    backend.synchronize()
    start = time.perf_counter()
    gens = backend.generate(prompts, new_tokens, top_k, ())
    backend.synchronize()
    wall = time.perf_counter() - start
    timings = gens[0].timings if gens else {}
    tokens = max((len(g.output_ids) for g in gens), default=0)
    total = float(timings.get("total_s", wall))
    ttft = timings.get("ttft_s")
    if ttft is None:  # a backend without its own timings: time a one-token generation
        backend.synchronize()
        start = time.perf_counter()
        backend.generate(prompts, 1, top_k, ())
        backend.synchronize()
        ttft = time.perf_counter() - start
    return float(ttft), total, tokens


def measure(backend, streams: Sequence[Sequence[int]], settings: PerfSettings,
            top_k: int = 1, progress: Callable[[str], None] | None = None) -> PerfMeasurement:
    """Measure a loaded backend at every batch size of `settings` (warm-up excluded)."""
    env = backend.environment()
    memory = PeakMemory(backend)
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
        dtype=str(env.get("dtype", "")), load_s=backend.load_s,
        prompt_tokens=prompt_len, new_tokens=settings.new_tokens, warmup=settings.warmup,
        runs=settings.runs, peak_mem_kind=memory.kind, batches=batches,
        versions=dict(env.get("versions", {})), settings=dict(env.get("settings", {})),
        model_fingerprint="")


def length_groups(cases: Sequence[tuple[str, Sequence[int]]], long: bool = False,
                  limit: int = MAX_TTFT_LENGTHS) -> list[tuple[int, list[str], list[int]]]:
    """(length, case ids of that length, the first such case's ids) per distinct prompt
    length, shortest first (pure). Empty unless the spec is long (`long`, or a prompt of
    LONG_PROMPT_TOKENS or more) and has two lengths or more; past `limit` lengths, `limit`
    of them evenly spread, the shortest and the longest included."""
    groups: dict[int, tuple[list[str], list[int]]] = {}
    for cid, ids in cases:
        if len(ids):
            groups.setdefault(len(ids), ([], list(ids)))[0].append(cid)
    lengths = sorted(groups)
    if len(lengths) < 2 or not (long or lengths[-1] >= LONG_PROMPT_TOKENS):
        return []
    if len(lengths) > limit:
        lengths = sorted({lengths[round(i * (len(lengths) - 1) / (limit - 1))]
                          for i in range(limit)})
    return [(n, groups[n][0], groups[n][1]) for n in lengths]


def _ttft_once(backend, ids: list[int], top_k: int) -> float:
    backend.synchronize()
    start = time.perf_counter()
    gens = backend.generate([ids], 1, top_k, ())
    backend.synchronize()
    wall = time.perf_counter() - start
    return float((gens[0].timings if gens else {}).get("ttft_s", wall))


def measure_ttft_by_length(backend, groups, settings: PerfSettings, top_k: int = 1,
                           progress: Callable[[str], None] | None = None
                           ) -> list[tuple[int, list[str], list[float]]]:
    """(length, case ids, TTFT seconds of each measured run) per group of `length_groups`."""
    out = []
    for n, cases, ids in groups:
        if progress:
            progress(f"perf TTFT at {n} prompt tokens: {settings.warmup} warm-up + "
                     f"{settings.runs} runs")
        for _ in range(settings.warmup):
            _ttft_once(backend, ids, top_k)
        out.append((n, list(cases), [_ttft_once(backend, ids, top_k)
                                     for _ in range(settings.runs)]))
    return out


# -- summaries (pure) ----------------------------------------------------------------


def summarise_by_length(samples: Sequence[tuple[int, list[str], list[float]]]) -> list[dict]:
    """`ttft_by_length` rows: prompt_tokens, ttft_ms percentiles, runs, cases, spread."""
    return [{"prompt_tokens": n, "ttft_ms": percentiles(ttft, 1e3), "runs": len(ttft),
             "cases": list(cases), "spread": relative_iqr(ttft),
             "samples_ms": [round(x * 1e3, 4) for x in ttft]}
            for n, cases, ttft in samples if ttft]

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


def judge_regression(rows: Sequence, golden_rows: Sequence, regression_max: float,
                     spread_k: float = 1.0) -> list[Regression]:
    """Compare medians with the golden's, batch size by batch size (see the module doc);
    both sides are typed medians (perf_golden.Medians)."""
    by_size = {r.batch_size: r for r in golden_rows}
    out = []
    for row in rows:
        g = by_size.get(row.batch_size)
        if g is None:
            continue
        for metric in ("ttft_ms", "tpot_ms", "tokens_per_s"):
            gv, cv = g.medians.get(metric), row.medians.get(metric)
            if gv is None or cv is None:
                continue
            s = slowdown(metric, gv, cv)
            spread = spread_k * (g.spread.get(metric, 0.0) + row.spread.get(metric, 0.0))
            allowed = max(regression_max, spread)
            out.append(Regression(row.batch_size, metric, gv, cv, s, spread, allowed,
                                  s > allowed))
    return out


# -- device classes and the perf golden ----------------------------------------------


def slug(text: str, limit: int = 60) -> str:
    """Lower-case [a-z0-9-] form of a device name, for file names."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].strip("-") or "unknown"


def device_class(backend: str, device_name: str, dtype: str) -> str:
    return f"{backend}--{slug(device_name)}--{slug(dtype)}"
