"""Timing and memory measurement shared by the kinds' perf: peak memory per batch size
(the device allocator's on accelerators, the host's peak RSS on the CPU) and the
percentile summaries every perf table prints."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from specengine.backends.base import Backend

PERCENTILES = (50, 90, 99)


class PeakMemory:
    """Peak memory of one batch size: allocator peak on accelerators, host RSS on CPU."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.host = str(backend.config.device).split(":")[0] == "cpu"
        self.resettable = self.host and _clear_host_peak()
        if not self.host:
            source = backend.peak_memory_source()
            where = f"{source}, " if source else ""
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
            self.backend.reset_peak_memory()

    def read(self) -> int | None:
        if self.host and self.resettable:
            value = _host_hwm_bytes()
            if value is not None:
                return value
        return self.backend.peak_memory_bytes()


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
