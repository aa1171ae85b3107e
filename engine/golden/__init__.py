"""Goldens: golden/<spec>/<backend>.json — reviewable JSON (sorted keys, one step per
line), validated by schemas/golden.schema.json, a content hash against hand edits, a
per-case hash against staleness, atomic writes, and a deepdiff summary on re-record."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specengine.files import atomic_write_text
from specengine.errors import GoldenError, UsageError

GOLDEN_FORMAT = 1
ROUND = 6   # decimals kept for log-probabilities


PROJECT_MARKERS = (".git", "pyproject.toml", "setup.cfg", "setup.py")


def default_golden_dir(spec_path: str | os.PathLike | None = None) -> Path:
    """Where a spec's goldens live, the one rule every command uses (an explicit
    --golden-dir wins over it):

    1. $SPECENGINE_GOLDEN_DIR when set;
    2. else the nearest `golden/` folder in the spec's folder or a folder above it;
    3. else `golden/` in the spec's project root (the nearest folder above it holding
       `.git` or `pyproject.toml`), created there when the first golden is recorded;
    4. else `golden/` beside the spec.

    The answer depends on where the spec is, never on the current folder. Without a spec
    (nothing to anchor on) the current folder stands in for the spec's folder.
    """
    env = os.environ.get("SPECENGINE_GOLDEN_DIR")
    if env:
        return Path(env)
    start = Path(spec_path).resolve().parent if spec_path is not None else Path.cwd().resolve()
    for folder in (start, *start.parents):
        if (folder / "golden").is_dir():
            return folder / "golden"
    for folder in (start, *start.parents):
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder / "golden"
    return start / "golden"


def golden_path(golden_dir: Path, spec_name: str, backend: str, suffix: str = ".json") -> Path:
    """The golden file of a spec and backend; refuses anything that would leave golden_dir."""
    for part, what in ((spec_name, "spec name"), (backend, "backend name")):
        if (not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part
                or part.startswith(".")):
            raise UsageError(f"{what} {part!r} cannot name a golden file")
    root = Path(golden_dir).resolve()
    path = (root / spec_name / f"{backend}{suffix}").resolve()
    if not path.is_relative_to(root):
        raise UsageError(f"golden path {path} would leave the golden folder {root}")
    return path


def case_hash(prompt_ids: list[int], settings: dict, fingerprint: str) -> str:
    payload = json.dumps({"prompt_ids": list(prompt_ids), "settings": settings,
                          "model": fingerprint}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def step_record(ids: np.ndarray, logprobs: np.ndarray, tail: float) -> dict:
    t = float(tail)
    return {"ids": [int(i) for i in ids],
            "logprobs": [min(0.0, round(float(x), ROUND)) for x in logprobs],
            "tail": None if not math.isfinite(t) else min(0.0, round(t, ROUND))}


def content_hash(data: dict) -> str:
    body = {k: v for k, v in data.items() if k != "content_sha256"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def dumps(data: dict) -> str:
    """Sorted keys, two-space indent; lists of scalars and step records on one line."""
    return _dump(data, 0) + "\n"


def _inline(value: Any) -> bool:
    scalar = (str, int, float, bool, type(None))
    if isinstance(value, list):
        return all(isinstance(v, scalar) for v in value)
    if isinstance(value, dict):
        return all(isinstance(v, scalar) or (isinstance(v, list) and _inline(v))
                   for v in value.values()) and len(value) <= 4
    return True


def _dump(value: Any, depth: int) -> str:
    if _inline(value) and not (isinstance(value, dict) and depth == 0):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(inner + _dump(v, depth + 1) for v in value) + "\n" + pad + "]"
    if not value:
        return "{}"
    items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_dump(value[k], depth + 1)}"
             for k in sorted(value)]
    return "{\n" + ",\n".join(items) + "\n" + pad + "}"


@dataclass
class Golden:
    path: Path
    data: dict

    @property
    def cases(self) -> dict[str, dict]:
        return self.data["cases"]

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


def previous_golden(path: Path, update: bool, load, echo):
    """What a re-record replaces: None when there is no golden yet; GoldenError without
    --update; an unreadable golden is replaced with a note (`load` reads one kind)."""
    if not Path(path).exists():
        return None
    if not update:
        raise GoldenError(f"a golden already exists at {path}; pass --update to re-record "
                          "it (the changes are shown)")
    try:
        return load(path)
    except GoldenError as exc:
        echo(f"note: replacing an unreadable golden ({exc.one_line()})")
        return None


def load_golden(path: Path, spec_name: str | None = None) -> Golden:
    """Read and verify a golden; GoldenError (exit 2) naming the problem."""
    from jsonschema import Draft202012Validator

    from specengine.spec import schema

    from specengine.fileio import read_golden_json

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise GoldenError(f"no golden at {path}: record it with "
                          f"`specengine record-golden SPEC --backend {path.stem}`")
    data = read_golden_json(path)
    if not isinstance(data, dict):
        raise GoldenError(f"golden {path} is corrupted (not a JSON object)")
    if data.get("format") != GOLDEN_FORMAT:
        raise GoldenError(f"golden {path} has format {data.get('format')!r}; this specengine "
                          f"reads format {GOLDEN_FORMAT} — re-record it with --update")
    golden_schema = schema("golden")
    errors = sorted(Draft202012Validator(golden_schema).iter_errors(_slim(data, golden_schema)),
                    key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "top level"
        raise GoldenError(f"golden {path} does not match the golden schema at {where}: "
                          f"{errors[0].message[:200]}")
    if content_hash(data) != data["content_sha256"]:
        raise GoldenError(f"golden {path} was edited by hand or corrupted: its content hash "
                          "does not match (re-record it with --update)")
    if spec_name is not None and data["spec"] != spec_name:
        raise GoldenError(f"golden {path} belongs to spec '{data['spec']}', not '{spec_name}'")
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
    return Golden(path, data)


_SCALAR_KEYS = {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                "description"}
_TYPES = {"integer": lambda v: type(v) is int or (type(v) is float and v.is_integer()),
          "number": lambda v: type(v) in (int, float), "null": lambda v: v is None,
          "string": lambda v: type(v) is str}


def _slim(value: Any, sub: dict) -> Any:
    """`value` with every array of plain scalars that already satisfies its `items`
    schema cut to its first items, so that jsonschema walks the structure but not each
    of the many thousand ids and log-probs (10x faster on a 1,000-case golden). An array
    with a failing item, or a schema keyword this does not know, is left whole, so the
    validator's verdict and messages are unchanged."""
    if isinstance(value, dict):
        props, extra = sub.get("properties", {}), sub.get("additionalProperties")
        return {k: _slim(v, props[k] if k in props else extra) if isinstance(
            props.get(k, extra), dict) else v for k, v in value.items()}
    if not isinstance(value, list) or not isinstance(sub.get("items"), dict):
        return value
    items = sub["items"]
    if set(items) <= _SCALAR_KEYS and not set(sub) & {"maxItems", "uniqueItems", "contains",
                                                        "prefixItems", "minContains"}:
        if _scalars_ok(value, items):
            return value[:max(1, int(sub.get("minItems", 1)))]
        return value
    return [_slim(v, items) for v in value]


def _scalars_ok(values: list, items: dict) -> bool:
    types = items.get("type", [])
    checks = [_TYPES.get(t) for t in ([types] if isinstance(types, str) else types)]
    if None in checks:
        return False
    low, high = items.get("minimum"), items.get("maximum")
    xlow, xhigh = items.get("exclusiveMinimum"), items.get("exclusiveMaximum")
    for v in values:
        if checks and not any(check(v) for check in checks):
            return False
        if type(v) in (int, float) and not (
                (low is None or v >= low) and (high is None or v <= high)
                and (xlow is None or v > xlow) and (xhigh is None or v < xhigh)):
            return False
    return True


def build_golden(spec_name: str, backend: str, fingerprint: str, source: str,
                 environment: dict, cases: dict[str, dict],
                 inconsistent_allowed: list[str] | None = None) -> dict:
    data = {"format": GOLDEN_FORMAT, "spec": spec_name, "backend": backend, "kind": "causal-lm",
            "model": {"fingerprint": fingerprint, "source": source},
            "recorded_with": environment, "cases": cases}
    if inconsistent_allowed:   # recorded with --allow-inconsistent-reference
        data["inconsistent_reference"] = list(inconsistent_allowed)
    # round-trip through JSON so the hash is of exactly what a reader will see
    data = json.loads(json.dumps(data, sort_keys=True, ensure_ascii=False))
    data["content_sha256"] = content_hash(data)
    return data


def write_golden(path: Path, data: dict) -> None:
    atomic_write_text(path, dumps(data))


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
