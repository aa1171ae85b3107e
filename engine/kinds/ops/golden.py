"""The ops golden codec: golden/<spec>/<backend>.json of an operator spec — per op the
hash of its settings (shape, parameters, dtype, seed), the sha256 of its seeded inputs and
the metrics the reference measured against the float64 oracle — turned into typed
records once, and built back into the sealed JSON (golden.store) when recorded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from specengine.golden.store import GoldenFormat, changed_records, read_verified, seal

OPS_GOLDEN_FORMAT = 1
OPS_FORMAT = GoldenFormat(kind="ops", version=OPS_GOLDEN_FORMAT, what="ops golden",
                          schema="ops-golden", default_kind="causal-lm")


@dataclass(frozen=True)
class OpRecord:
    id: str
    hash: str
    op: str
    dtype: str
    inputs_sha256: str
    metrics: Mapping[str, Mapping[str, Any]]       # per float output
    routing: Mapping[str, Any] | None = None

    def encode(self) -> dict:
        return {"hash": self.hash, "op": self.op, "dtype": self.dtype,
                "inputs_sha256": self.inputs_sha256,
                "metrics": {k: dict(v) for k, v in self.metrics.items()},
                "routing": None if self.routing is None else dict(self.routing)}


@dataclass(frozen=True)
class RecordedOutput:
    """The reference's recorded numbers for one output of one op."""

    backend: str
    dtype: str
    values: Mapping[str, Any]

    @property
    def dtype_error_ratio(self) -> float | None:
        return self.values.get("dtype_error_ratio")

    def as_metrics(self) -> dict:
        return {**self.values, "backend": self.backend, "dtype": self.dtype}


@dataclass(frozen=True)
class OpsGolden:
    path: Path
    backend: str
    ops: Mapping[str, OpRecord]

    def recorded(self, op_id: str) -> dict[str, RecordedOutput] | None:
        """The reference's numbers of one op per output, named by backend and dtype (what
        a check shows beside the candidate's); None when the op has no record."""
        rec = self.ops.get(op_id)
        if rec is None:
            return None
        return {name: RecordedOutput(self.backend, rec.dtype, dict(vals))
                for name, vals in rec.metrics.items()}


def load_ops_data(path: Path, spec_name: str) -> dict:
    """Read and verify an ops golden; GoldenError (exit 2) naming the problem."""
    return read_verified(path, OPS_FORMAT, spec_name)


def load_ops_golden(path: Path, spec_name: str) -> OpsGolden:
    data = load_ops_data(path, spec_name)
    ops = {oid: OpRecord(oid, rec["hash"], rec["op"], rec["dtype"], rec["inputs_sha256"],
                         dict(rec["metrics"]), rec.get("routing"))
           for oid, rec in data["ops"].items()}
    return OpsGolden(Path(path), data["backend"], ops)


def build_ops_golden(spec_name: str, backend: str, environment: Mapping[str, Any],
                     records: Mapping[str, OpRecord]) -> dict:
    data = {"format": OPS_GOLDEN_FORMAT, "kind": "ops", "spec": spec_name, "backend": backend,
            "recorded_with": dict(environment),
            "ops": {oid: rec.encode() for oid, rec in records.items()}}
    return seal(data)


def staleness(golden: OpsGolden, cases: Sequence[tuple[Any, str]], spec_path: str
              ) -> str | None:
    """The first op the golden lacks or whose settings changed, for (case, its hash now)
    pairs; None when the golden fits. Pure."""
    for case, op_hash in cases:
        rec = golden.ops.get(case.id)
        if rec is None:
            return (f"op '{case.id}' ({spec_path}:{case.line}) has no golden in "
                    f"{golden.path}; re-record with --update")
        if rec.hash != op_hash:
            return (f"golden for op '{case.id}' ({spec_path}:{case.line}) is stale: its "
                    "shape, parameters, dtype or seed changed since it was recorded; "
                    "re-record with `specengine record-golden --update`")
    return None


def describe_ops_changes(old: dict, new: dict) -> list[str]:
    lines = changed_records(old.get("ops", {}), new.get("ops", {}), "op", _op_changes,
                            limit=10 ** 6)
    return lines or ["  (no change)"]


def _op_changes(oid: str, a: dict, b: dict) -> list[str]:
    what = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return [f"  ~ op {oid}: {', '.join(what)} changed"]
