"""Report files: the results JSON (write and read back) and atomic writes of every
report format.

The JSON file is `{"format": 1, "runs": [RunResult.to_dict(), ...]}`, validated by
`schemas/results.schema.json`. Non-finite floats (a NaN KL, an infinite |Δ logprob|)
are written as null: JSON has no NaN, and a report must never crash on a bad number.
"""

from __future__ import annotations

import json
import math
import os
from specengine.files import atomic_write_text
from pathlib import Path
from typing import Any

from specengine.errors import OutputError, UsageError
from specengine.results import RESULTS_FORMAT, RunResult, from_dict
from specengine.report.text import one_line, truncate
from specengine.report.markdown import render_markdown
from specengine.report.render import render_html, render_junit
from specengine.spec import schema

PathLike = str | os.PathLike


def finite(value: Any) -> Any:
    """A JSON-ready copy: NaN/±Inf floats become None, numpy values become Python ones,
    tuples become lists, anything else its str()."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):          # numpy scalar or array
        return finite(value.tolist())
    return str(value)                     # a Path, an enum, ...: readable, never a crash


def results_payload(runs: list[RunResult]) -> dict[str, Any]:
    return {"format": RESULTS_FORMAT, "runs": [finite(run.to_dict()) for run in runs]}


def dump_results(runs: list[RunResult]) -> str:
    """The results file's text: sorted keys, one value per line, UTF-8 where possible
    (text with lone surrogates falls back to \\u escapes so it stays valid UTF-8)."""
    payload = results_payload(runs)
    text = json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=False)
    return text + "\n"


def write_reports(runs: list[RunResult], *, json_path: PathLike | None = None,
                  markdown: PathLike | None = None, html: PathLike | None = None,
                  junit: PathLike | None = None) -> None:
    """Write each requested report. Everything is rendered before the first file is
    written, so a rendering problem leaves no partial set of reports behind."""

    jobs = [(json_path, dump_results), (markdown, render_markdown), (html, render_html),
            (junit, render_junit)]
    rendered = [(path, fn(runs)) for path, fn in jobs if path is not None]
    failed: list[OutputError] = []
    for path, text in rendered:       # one report that cannot be written stops no other
        try:
            atomic_write_text(path, text)
        except OutputError as exc:
            failed.append(exc)
    if failed:
        more = f" ({len(failed) - 1} more report(s) not written)" if len(failed) > 1 else ""
        written = len(rendered) - len(failed)
        raise OutputError(f"{failed[0]}{more}; {written} other report(s) written")


def _fail(path: PathLike, message: str) -> UsageError:
    return UsageError(truncate(one_line(f"{path}: {message}"), 400))


def _read_json(path: PathLike) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(path, "results file not found") from None
    except UnicodeDecodeError:
        raise _fail(path, "not a results file (not UTF-8 text)") from None
    except OSError as exc:
        raise _fail(path, f"cannot read the results file: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise _fail(path, "not a results file (JSON nested too deeply)") from None


def load_results(path: PathLike) -> list[RunResult]:
    """Read a results file written by `write_reports(json_path=...)`. Any problem —
    unreadable, not JSON, another format version, not matching the schema — is a
    `UsageError` with a one-line message naming the file."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    data = _read_json(path)
    if not isinstance(data, dict) or "runs" not in data or "format" not in data:
        raise _fail(path, "not a specengine results file (expected an object with "
                          "'format' and 'runs', as written by --json)")
    if data["format"] != RESULTS_FORMAT:
        raise _fail(path, f"results format {data['format']!r} is not supported "
                          f"(this specengine reads format {RESULTS_FORMAT})")
    error = best_match(Draft202012Validator(schema("results")).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise _fail(path, f"not a valid results file: at {where}: {truncate(error.message, 200)}")
    try:
        return [from_dict(run) for run in data["runs"]]
    except (TypeError, KeyError, ValueError) as exc:
        raise _fail(path, f"not a valid results file: {exc}") from None
