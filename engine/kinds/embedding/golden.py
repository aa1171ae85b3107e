"""Embedding goldens: golden/<spec>/<backend>.json, validated by
schemas/embedding-golden.schema.json.

Features are stored without pickle, compactly and reviewably. Each array is one JSON
object:

    {"shape": [4, 384], "dtype": "float32", "encoding": "base64-f32le",
     "data": "<base64 of the float32 little-endian bytes, row-major>",
     "sha256": "<sha256 of those bytes>",
     "norms": [per-row L2 norms, 6 significant digits],
     "preview": [the first 8 values of row 0, 6 significant digits]}

`data` is the truth (exact float32, 4 bytes per value, +33% for base64); `norms` and
`preview` exist so a git diff of a re-recorded golden says something to a reader. The
golden as a whole has the same rules as every golden (golden.store): sorted keys,
a content hash against hand edits (`content_sha256`), a per-case hash of the inputs,
settings and model fingerprint against staleness, atomic writes, path confinement.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np

from dataclasses import dataclass, field
from typing import Any, Mapping

from specengine.errors import GoldenError
from specengine.golden.store import (GoldenFormat, ModelGolden, changed_records, content_hash,
                                     model_header, read_verified)

EMBEDDING_GOLDEN_FORMAT = 1
FORMAT = GoldenFormat(kind="embedding", version=EMBEDDING_GOLDEN_FORMAT, what="embedding golden",
                      schema="embedding-golden", default_kind="causal-lm")
ENCODING = "base64-f32le"
PREVIEW = 8


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{float(x):.{digits}g}")


def encode_array(array: np.ndarray, **extra) -> dict:
    """A float array as a golden record (float32 little-endian, base64)."""
    a = np.ascontiguousarray(np.asarray(array, dtype="<f4"))
    raw = a.tobytes()
    rows = a.reshape(-1, a.shape[-1]) if a.ndim >= 1 and a.size else a.reshape(1, -1)
    record = {"shape": list(a.shape), "dtype": "float32", "encoding": ENCODING,
              "data": base64.b64encode(raw).decode("ascii"),
              "sha256": hashlib.sha256(raw).hexdigest(),
              "norms": [_sig(n) for n in np.linalg.norm(rows.astype(np.float64), axis=-1)],
              "preview": [_sig(v) for v in rows[0][:PREVIEW]] if rows.size else []}
    record.update(extra)
    return record


def decode_array(record: dict, where: str) -> np.ndarray:
    """The exact float32 array of a record; GoldenError when it does not add up."""
    if record.get("encoding") != ENCODING or record.get("dtype") != "float32":
        raise GoldenError(f"{where}: unknown array encoding {record.get('encoding')!r}")
    try:
        raw = base64.b64decode(record["data"].encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise GoldenError(f"{where}: array data is not valid base64") from None
    if hashlib.sha256(raw).hexdigest() != record["sha256"]:
        raise GoldenError(f"{where}: array data does not match its sha256 (corrupted or "
                          "edited by hand); re-record with --update")
    shape = tuple(int(s) for s in record["shape"])
    if int(np.prod(shape)) * 4 != len(raw):
        raise GoldenError(f"{where}: {len(raw)} bytes of data for shape {list(shape)}")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


def embedding_case_hash(inputs: dict, settings: dict, fingerprint: str) -> str:
    """What a case's outputs depend on: the exact model inputs (token ids, or the pixel
    tensor's sha256), the embedding settings, and the model fingerprint."""
    payload = json.dumps({"inputs": inputs, "settings": settings, "model": fingerprint},
                         sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def build_embedding_golden(spec_name: str, backend: str, fingerprint: str, source: str,
                           environment: dict, settings: dict,
                           cases: Mapping[str, EmbeddingCaseRecord]) -> dict:
    data = {"format": EMBEDDING_GOLDEN_FORMAT, "spec": spec_name, "backend": backend,
            "kind": "embedding", "model": {"fingerprint": fingerprint, "source": source},
            "recorded_with": environment, "settings": settings,
            "cases": {cid: rec.encode() for cid, rec in cases.items()}}
    data = json.loads(json.dumps(data, sort_keys=True, ensure_ascii=False))
    data["content_sha256"] = content_hash(data)
    return data


@dataclass(frozen=True)
class EmbeddingCaseRecord:
    """One case of an embedding golden (or of a live reference run): its staleness hash,
    its inputs as described, and its stored outputs (decoded on demand)."""

    id: str
    hash: str
    inputs: Any
    stored: Mapping[str, Mapping[str, Any]]     # output name -> encoded array
    where: str = ""

    def outputs(self) -> dict[str, np.ndarray]:
        """The decoded output arrays (pooled, last_hidden_state)."""
        return {name: decode_array(rec, f"{self.where}case '{self.id}' {name}")
                for name, rec in self.stored.items()}

    def lengths(self) -> list[int] | None:
        """The token count of each input, where the last hidden state was kept."""
        hidden = self.stored.get("last_hidden_state") or {}
        return hidden.get("lengths")

    def encode(self) -> dict:
        return {"hash": self.hash, "inputs": self.inputs, "outputs": dict(self.stored)}


@dataclass(frozen=True)
class EmbeddingGolden(ModelGolden):
    """A verified embedding golden: the pooling it was recorded with, its typed cases."""

    pooling: str = "cls"
    normalize: Any = False
    outputs: tuple[str, ...] = ()
    cases: Mapping[str, EmbeddingCaseRecord] = field(default_factory=dict)

    def case(self, case_id: str) -> EmbeddingCaseRecord:
        return self.cases[case_id]


def decode_golden(data: Mapping[str, Any], path: Path) -> EmbeddingGolden:
    where = f"golden {path}: "
    settings = data["settings"]
    return EmbeddingGolden(
        **model_header(data, path), pooling=settings["pooling"],
        normalize=settings["normalize"], outputs=tuple(settings["outputs"]),
        cases={cid: EmbeddingCaseRecord(cid, rec["hash"], rec.get("inputs"),
                                        dict(rec["outputs"]), where)
               for cid, rec in data["cases"].items()})


def load_embedding_data(path: Path, spec_name: str | None = None) -> dict:
    """Read and verify an embedding golden; GoldenError (exit 2) naming the problem."""
    return read_verified(path, FORMAT, spec_name)


def load_embedding_golden(path: Path, spec_name: str | None = None) -> EmbeddingGolden:
    return decode_golden(load_embedding_data(path, spec_name), Path(path))


def staleness(golden: EmbeddingGolden, fingerprint: str, settings: dict,
              cases: list[tuple[Any, dict]], spec_path: str) -> str | None:
    """The first problem that makes the golden stale for these (case, input digest) pairs:
    another model, a case it lacks, other inputs or settings; None when it fits. Pure."""
    if fingerprint != golden.fingerprint:
        return (f"golden {golden.path} was recorded from another model "
                f"({golden.fingerprint[:23]}…, now {fingerprint[:23]}…); re-record it with "
                "--update")
    for case, digest in cases:
        record = golden.cases.get(case.id)
        if record is None:
            return (f"case '{case.id}' ({spec_path}:{case.line}) has no golden in "
                    f"{golden.path}; re-record with --update")
        if embedding_case_hash(digest, settings, fingerprint) != record.hash:
            return (f"golden for case '{case.id}' ({spec_path}:{case.line}) is stale: its "
                    "inputs or embedding settings changed since it was recorded; re-record "
                    "with `specengine record-golden --update`")
    return None


def describe_embedding_changes(old: dict, new: dict, limit: int = 40) -> list[str]:
    """What re-recording changed, case by case, for the terminal."""
    lines: list[str] = []
    if old.get("model") != new.get("model"):
        lines.append(f"  ~ model: {old.get('model')} -> {new.get('model')}")
    if old.get("settings") != new.get("settings"):
        lines.append(f"  ~ settings: {old.get('settings')} -> {new.get('settings')}")
    lines += changed_records(old.get("cases", {}), new.get("cases", {}), "case",
                             _case_changes, limit - len(lines))
    return lines or ["  (no change in outputs or hashes)"]


def _case_changes(cid: str, a: dict, b: dict) -> list[str]:
    lines = []
    if a.get("hash") != b.get("hash"):
        lines.append(f"  ~ case {cid}: inputs, settings or model changed (hash)")
    for name in sorted(set(a.get("outputs", {})) | set(b.get("outputs", {}))):
        ra, rb = a.get("outputs", {}).get(name), b.get("outputs", {}).get(name)
        if ra is None or rb is None:
            lines.append(f"  ~ case {cid}: output {name} {'added' if ra is None else 'removed'}")
        elif ra["sha256"] != rb["sha256"]:
            ga, gb = decode_array(ra, cid), decode_array(rb, cid)
            if ga.shape != gb.shape:
                lines.append(f"  ~ case {cid}: {name} shape {list(ga.shape)} -> {list(gb.shape)}")
            else:
                d = float(np.abs(ga.astype(np.float64) - gb).max()) if ga.size else 0.0
                lines.append(f"  ~ case {cid}: {name} changed (max |Δ| {d:.3g})")
    return lines
