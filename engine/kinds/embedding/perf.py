"""`check --perf` on an embedding spec: inputs/s and batch latency per batch size, and the
spec's budgets."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from specengine.errors import SpecEngineError
from specengine.kinds.policy import described
from specengine.kinds.embedding.inputs import PreparedInputs
from specengine.kinds.timing import percentiles
from specengine.results import ERROR, FAIL, PASS
from specengine.spec import EmbeddingCase, Spec


def _cycle(feeds: dict[str, np.ndarray], count: int, batch: int) -> dict[str, np.ndarray]:
    idx = np.arange(batch) % count
    return {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}


def measure_perf(session, spec: Spec, cases: list[EmbeddingCase]) -> dict[str, Any]:
    """Inputs/s and batch latency per batch size, on the first case's inputs cycled to the
    batch size; the device is synchronised around every timed call. Budgets from
    perf.budgets.<backend> (items_per_s.min, latency_ms percentiles, load_s.max)."""
    perf = spec.perf or {}
    warmup, runs = int(perf.get("warmup", 1)), int(perf.get("runs", 5))
    sizes = [int(b) for b in perf.get("batch_sizes", [1])]
    prepared = session.inputs(cases[0] if cases else spec.cases[0])
    sync = session.backend.synchronize
    rows = []
    try:
        for size in sizes:
            feeds = PreparedInputs(_cycle(prepared.feeds, prepared.count, size), size, None, {}, {})
            for _ in range(warmup):
                session.forward(feeds)
            times = []
            for _ in range(runs):
                sync()
                t0 = time.perf_counter()
                session.forward(feeds)
                sync()
                times.append(time.perf_counter() - t0)
            rows.append({"backend": session.config.name, "batch_size": size,
                         "latency_ms": percentiles(times, 1000.0),
                         "items_per_s": float(size / np.median(times)), "unit": prepared.unit})
    except SpecEngineError:
        raise
    except Exception as exc:
        return {"status": ERROR, "failures": [f"perf measurement failed: {described(exc)}"]}
    load_s = session.backend.load_s
    budget = (perf.get("budgets") or {}).get(session.config.name)
    failures = judge_budget(rows, load_s, budget)
    lines = [f"perf batch {r['batch_size']}: {r['items_per_s']:.1f} {r['unit']}/s, latency "
             f"p50/p90/p99 {r['latency_ms']['p50']:.2f}/{r['latency_ms']['p90']:.2f}/"
             f"{r['latency_ms']['p99']:.2f} ms" for r in rows]
    # `batches`, not `rows`: the report layer's perf rows are generation metrics (TTFT/TPOT)
    return {"status": (FAIL if failures else PASS) if budget else "measured", "batches": rows,
            "failures": failures, "load_s": load_s, "warmup": warmup, "runs": runs,
            "lines": lines}


def judge_budget(rows: list[dict], load_s: float | None, budget: dict | None) -> list[str]:
    """Budget failures (pure)."""
    if not budget:
        return []
    sizes = budget.get("batch_sizes")
    out = []
    for row in rows:
        if sizes and row["batch_size"] not in sizes:
            continue
        floor = (budget.get("items_per_s") or {}).get("min")
        if floor is not None and row["items_per_s"] < floor:
            out.append(f"batch {row['batch_size']}: {row['items_per_s']:.1f} {row['unit']}/s "
                       f"< budget {floor:g}")
        for pct, limit in (budget.get("latency_ms") or {}).items():
            if row["latency_ms"].get(pct, 0.0) > limit:
                out.append(f"batch {row['batch_size']}: latency {pct} "
                           f"{row['latency_ms'][pct]:.2f} ms > budget {limit:g} ms")
    limit = (budget.get("load_s") or {}).get("max")
    if limit is not None and load_s is not None and load_s > limit:
        out.append(f"load {load_s:.2f} s > budget {limit:g} s")
    return out
