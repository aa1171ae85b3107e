"""`specengine validate`: every error of every spec file, then one summary line.

`spec_errors(path)` collects instead of stopping at the first problem: all schema
errors (one per place in the document, the most specific reason at each), and when the
structure is valid, the semantic errors of each case (every case is built on its own,
with the spec's other keys, so one bad case does not hide the next) plus those only the
whole spec shows (duplicate ids). The loader (`load_spec`) stays the single source of
truth: a file is valid here exactly when it loads.
"""

from __future__ import annotations

import sys
from pathlib import Path

from specengine.errors import SpecEngineError, SpecError


def _schema_errors(located) -> list[SpecError]:
    from specengine.spec.checks import check_numbers
    from specengine.spec.load import schema_errors

    try:
        check_numbers(located)
    except SpecError as exc:
        return [exc]
    return schema_errors(located)


def _position(exc) -> tuple[int, int]:
    return (getattr(exc, "line", 0) or 0, getattr(exc, "col", 0) or 0)


def _duplicate_ids(located) -> list[SpecError]:
    seen: dict = {}
    out = []
    for index, case in enumerate(located.data.get("cases") or []):
        cid = case.get("id") if isinstance(case, dict) else None
        if cid in seen:
            out.append(located.error(("cases", index, "id"),
                                     f"duplicate case id '{cid}' (first at case {seen[cid] + 1})"))
        elif cid is not None:
            seen[cid] = index
    return out


def _only_case(located, index: int):
    """The spec with its case `index` alone, positions kept."""
    from specengine.spec.yamlio import Located

    data = dict(located.data)
    data["cases"] = [located.data["cases"][index]]

    def remap(table: dict) -> dict:
        out = {}
        for path, pos in table.items():
            if len(path) >= 2 and path[0] == "cases" and isinstance(path[1], int):
                if path[1] == index:
                    out[("cases", 0) + path[2:]] = pos
            else:
                out[path] = pos
        return out

    return Located(data, located.file, remap(located.values), remap(located.keys))


def spec_errors(path: str | Path) -> list[SpecEngineError]:
    """Every error of one spec file (empty when it loads)."""
    from specengine.spec.load import build_spec, load_spec
    from specengine.spec.yamlio import load_yaml

    try:
        load_spec(path)
        return []
    except SpecEngineError as first:
        failure = first
    from specengine.files import FileRefused, read_limited
    from specengine.spec import MAX_SPEC_BYTES

    try:                                 # regular files only, read within the size limit
        text = read_limited(path, MAX_SPEC_BYTES, "spec").decode("utf-8")
        located = load_yaml(text, str(path))
    except (OSError, FileRefused, UnicodeDecodeError, SpecEngineError):
        return [failure]                 # unreadable or not YAML: nothing more to find
    schema_errors = _schema_errors(located)
    if schema_errors:
        return schema_errors
    errors: list[SpecEngineError] = []
    cases = located.data.get("cases") if isinstance(located.data, dict) else None
    base = Path(path).parent
    for index in range(len(cases or [])):
        try:
            build_spec(_only_case(located, index), Path(str(path)), base)
        except SpecEngineError as exc:
            errors.append(exc)
    errors += _duplicate_ids(located)
    unique: dict[str, SpecEngineError] = {}
    for exc in [*errors, failure]:       # the loader's own first error is always listed
        unique.setdefault(exc.one_line(), exc)
    return sorted(unique.values(), key=_position)


def cli_main(args) -> int:
    from specengine.cli.checkall import spec_paths
    from specengine.cli.output import plural
    from specengine.errors import UsageError, printable
    from specengine.spec import load_spec

    paths = spec_paths(args.specs)
    if not paths:
        raise UsageError(f"no spec files in {' '.join(args.specs)}")
    bad_files = total = 0
    for path in paths:
        errors = spec_errors(path)
        if errors:
            bad_files += 1
            total += len(errors)
            for exc in errors:
                print(exc.one_line(), file=sys.stderr)
            continue
        spec = load_spec(path)
        if not getattr(args, "quiet", False):
            print(f"ok {printable(path)} ({spec.name}: {plural(len(spec.cases), 'case')})")
    files = len(paths)
    if bad_files:
        # the summary goes with the "ok" lines on stdout; stderr holds the errors only
        print(f"{total} error{'s' if total != 1 else ''} in {bad_files} of {files} "
              f"file{'s' if files != 1 else ''}; {files - bad_files} valid")
        return 2
    print(f"{files} file{'s' if files != 1 else ''} valid")
    return 0
