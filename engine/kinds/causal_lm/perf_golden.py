"""The perf golden codec: golden/<spec>/perf/<device class>.json — what one device
class measured (per batch size: TTFT / TPOT percentiles, tokens/s, peak memory, the
run-to-run spread) and the setup it was measured with — turned into typed medians once,
and written back through the one golden lifecycle (golden.store)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from specengine.errors import UsageError
from specengine.golden.store import GoldenFormat, golden_path, read_verified, seal
from specengine.kinds.causal_lm.perf import PERF_GOLDEN_FORMAT, PerfMeasurement, device_class

PERF_FORMAT = GoldenFormat(kind="perf", version=PERF_GOLDEN_FORMAT, what="perf golden",
                           required=("spec", "device_class", "setup", "rows"),
                           rerecord="`specengine record-golden --perf --update`")
METRICS = ("ttft_ms", "tpot_ms", "tokens_per_s")


@dataclass(frozen=True)
class Medians:
    """One batch size's medians (a percentile metric's p50) and relative spreads."""

    batch_size: int
    medians: Mapping[str, float]
    spread: Mapping[str, float]


@dataclass(frozen=True)
class PerfGolden:
    path: Path
    setup: Mapping[str, Any]
    rows: tuple[Medians, ...]


def medians(row: Mapping[str, Any]) -> Medians:
    """A summarised perf row (a measurement's, or a golden's) as its medians."""
    out = {}
    for metric in METRICS:
        value = row.get(metric)
        value = value.get("p50") if isinstance(value, dict) else value
        if value is not None:
            out[metric] = float(value)
    return Medians(int(row["batch_size"]), out, dict(row.get("spread") or {}))


def perf_golden_path(golden_dir: Path, spec_name: str, backend: str, device_name: str,
                     dtype: str) -> Path:
    """golden/<spec>/perf/<backend>--<device slug>--<dtype>.json, confined to golden_dir."""
    golden_path(golden_dir, spec_name, backend)          # validates both names
    root = Path(golden_dir).resolve()
    path = (root / spec_name / "perf" / f"{device_class(backend, device_name, dtype)}.json").resolve()
    if not path.is_relative_to(root):
        raise UsageError(f"perf golden path {path} would leave the golden folder {root}")
    return path


def setup_of(m: PerfMeasurement) -> dict:
    """What must match for two measurements to be comparable."""
    return {"prompt_tokens": m.prompt_tokens, "new_tokens": m.new_tokens,
            "model_fingerprint": m.model_fingerprint}


def build_perf_golden(spec_name: str, m: PerfMeasurement, rows: Sequence[dict]) -> dict:
    data = {"format": PERF_GOLDEN_FORMAT, "kind": "perf", "spec": spec_name,
            "device_class": {"backend": m.backend, "device_name": m.device_name, "dtype": m.dtype},
            "recorded_with": {"runtime": m.runtime, "device": m.device, "versions": m.versions,
                              "settings": m.settings, "peak_mem_kind": m.peak_mem_kind,
                              "warmup": m.warmup, "runs": m.runs},
            "setup": setup_of(m), "load_s": m.load_s, "rows": list(rows)}
    return seal(data)


def load_perf_data(path: Path, spec_name: str) -> dict:
    """Read and verify a perf golden; GoldenError (exit 2) naming the problem."""
    return read_verified(path, PERF_FORMAT, spec_name)


def load_perf_golden(path: Path, spec_name: str) -> PerfGolden:
    data = load_perf_data(path, spec_name)
    return PerfGolden(Path(path), dict(data["setup"]), tuple(medians(r) for r in data["rows"]))


def perf_changes(old: dict, new: dict) -> list[str]:
    """What re-recording a perf golden changed: medians per batch size."""
    lines = []
    olds = {m.batch_size: m for m in map(medians, old.get("rows", []))}
    for row in map(medians, new["rows"]):
        o = olds.get(row.batch_size)
        if o is None:
            lines.append(f"  + batch {row.batch_size} (new)")
            continue
        for metric in METRICS:
            a, b = o.medians.get(metric), row.medians.get(metric)
            if a and b is not None:
                lines.append(f"  ~ batch {row.batch_size} {metric}: {a:.4g} -> {b:.4g} "
                             f"({b / a - 1:+.1%})")
    if old.get("setup") != new.get("setup"):
        lines.insert(0, f"  ~ setup: {old.get('setup')} -> {new.get('setup')}")
    return lines or ["  (no change)"]
