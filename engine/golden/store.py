"""The one golden lifecycle, shared by every kind and by perf goldens.

A golden is golden/<spec>/<backend>.json: reviewable JSON (sorted keys, short lists on one
line), a content hash against hand edits, validated on every read against its kind's
schema (`read_verified`, the one loader), written atomically, and re-recorded only with
--update, the changes shown (`previous_golden` then `replace_golden`: the re-record rule,
shaped like pytest-regressions' perform_regression_check). What a case record holds is
each kind's business (kinds/*/golden.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from specengine.errors import GoldenError, UsageError
from specengine.files import atomic_write_text, read_golden_json
from specengine.results import Side
from specengine.spec.load import schema

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


def seal(data: dict) -> dict:
    """`data` round-tripped through JSON (so the hash is of exactly what a reader will
    see) with its content hash added."""
    data = json.loads(json.dumps(data, sort_keys=True, ensure_ascii=False))
    data["content_sha256"] = content_hash(data)
    return data


@dataclass(frozen=True)
class ModelGolden:
    """What every golden of a model holds besides its cases: where it is, its spec, the
    backend that recorded it, the model (fingerprint, source) and the recording side."""

    path: Path
    spec: str
    backend: str
    fingerprint: str
    source: str
    recorded_with: Mapping[str, Any]

    def side(self) -> Side:
        """The environment that recorded it."""
        return Side.of_recording(dict(self.recorded_with), self.fingerprint, self.source)


def model_header(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The ModelGolden fields of a verified golden's JSON."""
    return {"path": Path(path), "spec": data["spec"], "backend": data["backend"],
            "fingerprint": data["model"]["fingerprint"], "source": data["model"]["source"],
            "recorded_with": dict(data.get("recorded_with") or {})}


def changed_records(old: Mapping, new: Mapping, what: str,
                    changes: Callable[[str, Any, Any], list[str]], limit: int = 40) -> list[str]:
    """What re-recording changed record by record (`what`: case, op): added, removed,
    and `changes(id, old, new)` for a record that differs; cut at `limit` lines."""
    lines: list[str] = []
    for rid in sorted(set(old) | set(new)):
        if rid not in old:
            lines.append(f"  + {what} {rid} (new)")
        elif rid not in new:
            lines.append(f"  - {what} {rid} (removed)")
        elif old[rid] != new[rid]:
            lines += changes(rid, old[rid], new[rid])
        if len(lines) >= limit:
            lines.append("  … (more changes not shown)")
            break
    return lines


@dataclass(frozen=True)
class GoldenFormat:
    """What one kind of golden file is: its `kind` value, format version, schema (or the
    keys it must have), how it is named in messages and how it is re-recorded."""

    kind: str
    version: int
    what: str                           # "golden", "embedding golden", ...
    schema: str | None = None           # schemas/<name>.schema.json
    required: tuple[str, ...] = ()      # without a schema: the keys it must hold
    default_kind: str | None = None     # the kind a file without `kind` is (older goldens)
    rerecord: str = "--update"
    slim: bool = False                  # validate long scalar arrays by their first items


def read_verified(path: Path, fmt: GoldenFormat, spec_name: str | None = None) -> dict:
    """Read and verify a golden; GoldenError (exit 2) naming the file and the problem:
    missing, unreadable (not a regular file, too large, not UTF-8, duplicate keys, nested
    too deeply), another kind or format, not matching its schema, edited by hand (content
    hash), or belonging to another spec."""
    from jsonschema import Draft202012Validator

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise GoldenError(f"no golden at {path}: record it with "
                          f"`specengine record-golden SPEC --backend {path.stem}`")
    data = read_golden_json(path, fmt.what)
    if not isinstance(data, dict):
        raise GoldenError(f"{fmt.what} {path} is corrupted (not a JSON object)")
    kind = data.get("kind", fmt.default_kind)
    if kind != fmt.kind:
        raise GoldenError(f"{fmt.what} {path} holds a {kind!r} golden, not a {fmt.kind!r} one; "
                          f"re-record it with {fmt.rerecord}")
    if data.get("format") != fmt.version:
        raise GoldenError(f"{fmt.what} {path} has format {data.get('format')!r}; this "
                          f"specengine reads format {fmt.version} — re-record it with "
                          f"{fmt.rerecord}")
    if fmt.schema:
        sch = schema(fmt.schema)
        errors = sorted(Draft202012Validator(sch).iter_errors(_slim(data, sch) if fmt.slim
                                                               else data),
                        key=lambda e: [str(p) for p in e.absolute_path])
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "top level"
            raise GoldenError(f"{fmt.what} {path} does not match the {fmt.what} schema at "
                              f"{where}: {errors[0].message[:200]}")
    missing = [k for k in (*fmt.required, "content_sha256") if k not in data]
    if missing:
        raise GoldenError(f"{fmt.what} {path} lacks {', '.join(missing)}")
    if content_hash(data) != data["content_sha256"]:
        raise GoldenError(f"{fmt.what} {path} was edited by hand or corrupted: its content "
                          f"hash does not match (re-record it with {fmt.rerecord})")
    if spec_name is not None and data.get("spec") != spec_name:
        raise GoldenError(f"{fmt.what} {path} belongs to spec '{data.get('spec')}', not "
                          f"'{spec_name}'")
    return data


def previous_golden(path: Path, update: bool, load: Callable[[Path], Any],
                    echo: Callable[[str], None], what: str = "golden") -> Any:
    """What a re-record replaces: None when there is no golden yet; GoldenError without
    --update; an unreadable golden is replaced with a note (`load` reads one kind)."""
    if not Path(path).exists():
        return None
    if not update:
        raise GoldenError(f"a {what} already exists at {path}; pass --update to re-record "
                          "it (the changes are shown)")
    try:
        return load(path)
    except GoldenError as exc:
        echo(f"note: replacing an unreadable {what} ({exc.one_line()})")
        return None


def replace_golden(path: Path, data: dict, old: dict | None,
                   describe: Callable[[dict, dict], list[str]],
                   echo: Callable[[str], None]) -> Path:
    """Write a (re-)recorded golden atomically, echoing what changed since `old`."""
    if old is not None:
        echo(f"changes in {path}:")
        for line in describe(old, data):
            echo(line)
    write_golden(path, data)
    return path


def write_golden(path: Path, data: dict) -> None:
    atomic_write_text(path, dumps(data))


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


def merge_records(path: Path, new: dict, update: bool, echo: Callable[[str], None]) -> Path:
    """Write the golden at `path` with the case records of `new` (a golden of the same
    spec and backend recorded for some of its cases) put in; every other case record is
    kept as it was, byte for byte in the file. A case the golden already holds is only
    re-recorded with `update`. The model and the settings that every record depends on
    must be those the golden was recorded with, else re-recording the whole golden is
    the only honest answer (GoldenError)."""
    records = "ops" if "ops" in new else "cases"
    if not Path(path).exists():
        write_golden(path, new)
        return path
    old = read_golden_json(path, "golden")
    if not isinstance(old, dict) or old.get("content_sha256") != content_hash(old):
        raise GoldenError(f"golden {path} is unreadable or was edited by hand; re-record it "
                          "whole with --update")
    again = sorted(set(new[records]) & set(old.get(records, {})))
    if again and not update:
        raise GoldenError(f"golden {path} already holds case(s) {', '.join(again)}; pass "
                          "--update to re-record them (the other cases are kept)")
    for key in sorted(set(old) | set(new)):
        if key in (records, "content_sha256", "recorded_with", "inconsistent_reference",
                   "noise"):
            continue
        if old.get(key) != new.get(key):
            raise GoldenError(f"golden {path}: its {key} differs from this recording's "
                              f"({old.get(key)!r} vs {new.get(key)!r}), so its other cases "
                              "would not match; re-record every case with --update")
    before = {k: v for k, v in (old.get("recorded_with") or {}).items() if k != "versions"}
    after = {k: v for k, v in (new.get("recorded_with") or {}).items() if k != "versions"}
    if before != after:
        raise GoldenError(f"golden {path} was recorded on another backend setup "
                          f"({before} vs {after}); re-record every case with --update")
    versions = [(old.get("recorded_with") or {}).get("versions"),
                (new.get("recorded_with") or {}).get("versions")]
    if versions[0] != versions[1]:
        echo(f"note: these cases were recorded with {versions[1]}; the golden's "
             f"recorded_with keeps {versions[0]}")
    merged = {k: v for k, v in old.items() if k != "content_sha256"}
    merged[records] = {**old.get(records, {}), **new[records]}
    if old.get("noise") or new.get("noise"):      # how each class's noise run was made
        merged["noise"] = {**(old.get("noise") or {}), **(new.get("noise") or {})}
        missing = sorted(set(old.get("noise") or {}) - set(new.get("noise") or {}))
        if missing:
            echo(f"note: the re-recorded case(s) carry no {', '.join(missing)} noise; add it "
                 f"with `record-golden --noise {missing[0]}` (relative limits need it)")
    kept = [c for c in old.get("inconsistent_reference", []) if c not in new[records]]
    flagged = kept + list(new.get("inconsistent_reference", []))
    merged.pop("inconsistent_reference", None)
    if flagged:
        merged["inconsistent_reference"] = flagged
    for cid in sorted(new[records]):
        if cid not in old.get(records, {}):
            echo(f"  + case {cid} (new)")
        else:
            same = old[records][cid] == new[records][cid]
            echo(f"  ~ case {cid} re-recorded{' (unchanged)' if same else ''}")
    write_golden(path, seal(merged))
    return path
