"""Causal-lm goldens: per case the prompt ids, the greedy output ids and text, and per
step the top-k ids and log-probs with the tail mass (schemas/golden.schema.json), plus the
optional layer sketch and sampled prompt positions; a per-case hash against staleness."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from specengine.errors import GoldenError
from specengine.golden.store import Golden, GoldenFormat, read_verified, seal
from specengine.loading.session import prompt_ids_for, reference_source, tokenizer_for
from specengine.spec import Case, Spec
from specengine.spec.long_prompt import ids_sha256

GOLDEN_FORMAT = 1
ROUND = 6   # decimals kept for log-probabilities
FORMAT = GoldenFormat(kind="causal-lm", version=GOLDEN_FORMAT, what="golden", schema="golden",
                      default_kind="causal-lm", slim=True)


class LmGolden(Golden):
    """A causal-lm golden, with its steps as arrays."""

    def arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(topk ids (n,k), topk logprobs (n,k), tail (n,)) of a case."""
        steps = self.cases[case_id]["steps"]
        if not steps:
            return (np.zeros((0, 1), np.int64), np.zeros((0, 1), np.float32),
                    np.zeros((0,), np.float32))
        k = min(len(s["ids"]) for s in steps)
        ids = np.array([s["ids"][:k] for s in steps], dtype=np.int64)
        lp = np.array([s["logprobs"][:k] for s in steps], dtype=np.float64)
        tail = np.array([-np.inf if s["tail"] is None else s["tail"] for s in steps],
                        dtype=np.float64)
        return ids, lp, tail


def case_hash(prompt_ids: list[int], settings: dict, fingerprint: str) -> str:
    payload = json.dumps({"prompt_ids": list(prompt_ids), "settings": settings,
                          "model": fingerprint}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def step_record(ids: np.ndarray, logprobs: np.ndarray, tail: float) -> dict:
    t = float(tail)
    return {"ids": [int(i) for i in ids],
            "logprobs": [min(0.0, round(float(x), ROUND)) for x in logprobs],
            "tail": None if not math.isfinite(t) else min(0.0, round(t, ROUND))}


def load_golden(path: Path, spec_name: str | None = None) -> LmGolden:
    """Read and verify a causal-lm golden; GoldenError (exit 2) naming the problem."""
    path = Path(path)
    data = read_verified(path, FORMAT, spec_name)
    for cid, case in data["cases"].items():
        if len(case["steps"]) != len(case["output_ids"]):
            raise GoldenError(f"golden {path}: case '{cid}' has {len(case['steps'])} steps for "
                              f"{len(case['output_ids'])} output ids")
        for n, step in enumerate(case["steps"]):
            values = list(step["logprobs"]) + ([] if step["tail"] is None else [step["tail"]])
            if not all(math.isfinite(v) for v in values):
                raise GoldenError(f"golden {path}: case '{cid}' step {n} holds a log-probability "
                                  "that is not finite (a recorded golden stores only finite "
                                  "ones; an empty tail is null)")
        sketch = case.get("sketch")
        if sketch and any(len(layer["v"]) != sketch["dims"]
                          or len(layer["norms"]) != len(sketch["positions"])
                          for layer in sketch["layers"]):
            raise GoldenError(f"golden {path}: case '{cid}' has a layer sketch whose sizes do "
                              "not match its dims / positions")
    return LmGolden(path, data)


def build_golden(spec_name: str, backend: str, fingerprint: str, source: str,
                 environment: dict, cases: dict[str, dict],
                 inconsistent_allowed: list[str] | None = None) -> dict:
    data = {"format": GOLDEN_FORMAT, "spec": spec_name, "backend": backend, "kind": "causal-lm",
            "model": {"fingerprint": fingerprint, "source": source},
            "recorded_with": environment, "cases": cases}
    if inconsistent_allowed:   # recorded with --allow-inconsistent-reference
        data["inconsistent_reference"] = list(inconsistent_allowed)
    return seal(data)


def describe_changes(old: dict, new: dict, limit: int = 40) -> list[str]:
    """What re-recording changed, case by case (deepdiff), for the terminal."""
    from deepdiff import DeepDiff

    lines: list[str] = []
    old_cases, new_cases = old.get("cases", {}), new.get("cases", {})
    for cid in sorted(set(old_cases) | set(new_cases)):
        if cid not in old_cases:
            lines.append(f"  + case {cid} (new)")
            continue
        if cid not in new_cases:
            lines.append(f"  - case {cid} (removed)")
            continue
        a, b = old_cases[cid], new_cases[cid]
        if a == b:
            continue
        if a["output_ids"] != b["output_ids"]:
            lines.append(f"  ~ case {cid}: output {a['output_text']!r} -> {b['output_text']!r}")
        diff = DeepDiff(a["steps"], b["steps"], significant_digits=4, ignore_numeric_type_changes=True)
        changed = len(diff.get("values_changed", {})) + len(diff.get("iterable_item_added", {})) \
            + len(diff.get("iterable_item_removed", {}))
        if changed:
            lines.append(f"  ~ case {cid}: {changed} step value(s) changed beyond 4 significant digits")
        if a["hash"] != b["hash"]:
            lines.append(f"  ~ case {cid}: prompt, settings or model changed (hash)")
        if a.get("noise") != b.get("noise"):
            lines.append(f"  ~ case {cid}: reference noise now recorded for "
                         f"{', '.join(sorted(b.get('noise') or {})) or 'no class'}")
        sketch_change = _sketch_change(a.get("sketch"), b.get("sketch"))
        if sketch_change:
            lines.append(f"  ~ case {cid}: layer sketch {sketch_change}")
        if len(lines) >= limit:
            lines.append("  … (more changes not shown)")
            break
    for key in ("model",):
        if old.get(key) != new.get(key):
            lines.insert(0, f"  ~ {key}: {old.get(key)} -> {new.get(key)}")
    return lines or ["  (no change in ids, log-probs or hashes)"]


def _sketch_change(old: dict | None, new: dict | None) -> str:
    """How a case's layer sketch changed on re-record ('' for nothing beyond 1e-4)."""
    if not old and not new:
        return ""
    if not old or not new:
        return "added" if new else "removed"
    shape = lambda s: (s["method"], s["seed"], s["dims"], s["positions"],  # noqa: E731
                       [layer["name"] for layer in s["layers"]])
    if shape(old) != shape(new):
        return "changed (layers or positions)"
    delta = max((abs(x - y) for la, lb in zip(old["layers"], new["layers"])
                 for x, y in zip(la["v"], lb["v"])), default=0.0)
    return f"changed (max |Δ| {delta:.2g})" if delta > 1e-4 else ""


def check_staleness(spec: Spec, golden: LmGolden, ref_name: str, cases: list[Case],
                     resolved=None) -> None:
    resolved = resolved or reference_source(spec, ref_name)
    if resolved.fingerprint != golden.data["model"]["fingerprint"]:
        raise GoldenError(f"golden {golden.path} was recorded from another model "
                          f"({golden.data['model']['fingerprint'][:23]}…, now "
                          f"{resolved.fingerprint[:23]}…); re-record it with --update")
    tokenizer = tokenizer_for(spec)
    for case in cases:
        if case.id not in golden.cases:
            raise GoldenError(f"case '{case.id}' ({spec.path}:{case.line}) has no golden in "
                              f"{golden.path}; re-record with --update")
        ids = prompt_ids_for(tokenizer, case)
        record = golden.cases[case.id]
        if "prompt_ids" not in record:      # a long prompt stored by recipe + hash
            if record.get("prompt_ids_sha256") != ids_sha256(ids):
                raise GoldenError(f"golden for case '{case.id}' ({spec.path}:{case.line}) is "
                                  "stale: its long prompt's recipe no longer reproduces the "
                                  "recorded prompt ids (sha256 differs); re-record with "
                                  "`specengine record-golden --update`")
            record["prompt_ids"] = ids      # in memory only: the golden file keeps the hash
        if case_hash(ids, case.settings(), resolved.fingerprint) != record["hash"]:
            raise GoldenError(f"golden for case '{case.id}' ({spec.path}:{case.line}) is stale: "
                              "its prompt or generation settings changed since it was recorded; "
                              "re-record with `specengine record-golden --update`")
