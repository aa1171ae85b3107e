"""Running specs: the one table of kinds, and the two entry points every command uses.

A spec's kind (spec.keys: causal-lm, embedding, ops) picks its row in `KINDS`; the row's
functions record goldens and check candidates. Each kind lives in its own package under
`kinds/` and plugs into the shared skeleton of `kinds.base`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from specengine.kinds import causal_lm, embedding, ops
from specengine.errors import UsageError
from specengine.kinds.base import Kind, select_cases
from specengine.results import RunResult
from specengine.spec import AnyCase, Spec

__all__ = ["KINDS", "check_spec", "kind_of", "record_golden", "record_perf_golden",
           "select_cases"]

KINDS: dict[str, Kind] = {kind.name: kind for kind in (causal_lm.KIND, embedding.KIND, ops.KIND)}


def kind_of(spec: Spec) -> Kind:
    return KINDS[spec.kind]


def record_golden(spec: Spec, backend_name: str, golden_dir: Path, update: bool = False,
                  echo: Callable[[str], None] = print,
                  allow_inconsistent: bool = False,
                  cases: list[AnyCase] | None = None, **options) -> Path:
    """Record every case of a spec on a backend into golden/<spec>/<backend>.json; with
    `cases`, record only those and keep the golden's other cases as they are.
    `options` are those a kind's recording has (Kind.record_options: causal-lm's `noise`
    classes and `allow_failing` expectations); one a kind lacks is a usage error when set."""
    kind = kind_of(spec)
    unknown = [k for k, v in options.items() if v and k not in kind.record_options]
    if unknown:
        flags = ", ".join("--" + RECORD_FLAGS.get(k, k) for k in unknown)
        raise UsageError(f"{spec.path}: {flags} apply to causal-lm goldens, not to "
                         f"{spec.kind} ones")
    given = {k: v for k, v in options.items() if k in kind.record_options}
    if cases is None:
        return kind.record(spec, backend_name, golden_dir, update, echo, allow_inconsistent,
                           **given)
    return _record_some(spec, backend_name, golden_dir, update, echo, allow_inconsistent,
                        cases, given)


RECORD_FLAGS = {"noise": "noise", "allow_failing": "allow-failing-expectations"}


def _record_some(spec: Spec, backend_name: str, golden_dir: Path, update: bool,
                 echo: Callable[[str], None], allow_inconsistent: bool,
                 cases: list[AnyCase], options: dict) -> Path:
    """The kind records a spec holding only `cases` into a scratch folder (its whole
    record path: consistency refusal, expectations, noise, provenance); the new records
    are then merged into the golden (`merge_records`)."""
    import dataclasses
    import tempfile

    from specengine.backends.registry import config_for
    from specengine.golden.store import golden_path, merge_records

    if not cases:
        raise UsageError(f"{spec.path}: no case selected to record")
    name = config_for(backend_name, spec.backends).name
    path = golden_path(golden_dir, spec.name, name)
    only = dataclasses.replace(spec, cases=list(cases))
    with tempfile.TemporaryDirectory(prefix=".record-", dir=_scratch_parent(path)) as tmp:
        recorded = kind_of(spec).record(only, name, Path(tmp), False, echo, allow_inconsistent,
                                        **options)
        new = json.loads(Path(recorded).read_text("utf-8"))
    return merge_records(path, new, update, echo)


def _scratch_parent(path: Path) -> Path | None:
    """Beside the golden where that folder exists (same file system), else the default."""
    for folder in (path.parent, path.parent.parent):
        if folder.is_dir():
            return folder
    return None


def check_spec(spec: Spec, backend_name: str, golden_dir: Path | None = None,
               against: str | None = None, cases: list[AnyCase] | None = None,
               fail_fast: bool = False, perf: bool = False, localize: bool = False) -> RunResult:
    """Check a candidate backend against the golden (or a live reference backend `against`);
    with `perf`, measure it too; with `localize`, localize each failing case."""
    return kind_of(spec).check(spec, backend_name, golden_dir, against, cases, fail_fast,
                               perf, localize)


def record_perf_golden(spec: Spec, backend_name: str, golden_dir: Path,
                       update: bool = False) -> Path:
    """`record-golden --perf`, for the kinds that keep perf goldens."""
    kind = kind_of(spec)
    if kind.record_perf is None:
        raise UsageError(f"{spec.path}: perf goldens are for causal-lm specs; an "
                         f"{spec.kind} spec's perf is measured by `check --perf`")
    return kind.record_perf(spec, backend_name, golden_dir, update)
