"""Running specs: the one table of kinds, and the entry points every command uses.

A spec's kind (spec.keys: causal-lm, embedding, ops) picks its row in `KINDS`: a `Kind`
whose hooks the one skeleton of `kinds.base` calls — `check_spec` builds a CheckRequest
and runs `kinds.base.check`, `record_golden` a RecordRequest and `kinds.base.record`.
Each kind lives in its own package under `kinds/`.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Callable

from specengine.backends.registry import config_for
from specengine.errors import UsageError
from specengine.golden.store import merge_records
from specengine.kinds import causal_lm, embedding, ops
from specengine.kinds.base import (CheckOptions, CheckRequest, Kind, RecordRequest, check,
                                   record)
from specengine.kinds.policy import select_cases
from specengine.results import RunResult
from specengine.spec import AnyCase, Spec

__all__ = ["KINDS", "check_spec", "kind_of", "record_golden", "record_perf_golden",
           "select_cases"]

KINDS: dict[str, Kind] = {kind.name: kind for kind in (causal_lm.KIND, embedding.KIND, ops.KIND)}
RECORD_FLAGS = {"noise": "noise", "allow_failing": "allow-failing-expectations"}


def kind_of(spec: Spec) -> Kind:
    return KINDS[spec.kind]


def check_spec(spec: Spec, backend_name: str, golden_dir: Path | None = None,
               against: str | None = None, cases: list[AnyCase] | None = None,
               fail_fast: bool = False, perf: bool = False,
               localize: bool | str = False) -> RunResult:
    """Check a candidate backend against the golden (or a live reference backend
    `against`); with `perf`, measure it too; with `localize`, localize each failing case
    ("all": every case)."""
    request = CheckRequest(spec, config_for(backend_name, spec.backends).name,
                           tuple(spec.cases if cases is None else cases), golden_dir, against,
                           CheckOptions(fail_fast, perf, localize))
    return check(kind_of(spec), request)


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
    name = config_for(backend_name, spec.backends).name
    if cases is None:
        return record(kind, RecordRequest(spec, name, Path(golden_dir), update, echo,
                                          allow_inconsistent, given))
    return _record_some(kind, RecordRequest(spec, name, Path(golden_dir), update, echo,
                                            allow_inconsistent, given), list(cases))


def _record_some(kind: Kind, req: RecordRequest, cases: list[AnyCase]) -> Path:
    """The kind records a spec holding only `cases` into a scratch folder (its whole
    record path: consistency refusal, expectations, noise, provenance); the new records
    are then merged into the golden (`merge_records`)."""
    if not cases:
        raise UsageError(f"{req.spec.path}: no case selected to record")
    path = req.path
    only = dataclasses.replace(req.spec, cases=list(cases))
    with tempfile.TemporaryDirectory(prefix=".record-", dir=_scratch_parent(path)) as tmp:
        recorded = record(kind, dataclasses.replace(req, spec=only, golden_dir=Path(tmp),
                                                    update=False))
        new = json.loads(Path(recorded).read_text("utf-8"))
    return merge_records(path, new, req.update, req.echo)


def _scratch_parent(path: Path) -> Path | None:
    """Beside the golden where that folder exists (same file system), else the default."""
    for folder in (path.parent, path.parent.parent):
        if folder.is_dir():
            return folder
    return None


def record_perf_golden(spec: Spec, backend_name: str, golden_dir: Path,
                       update: bool = False) -> Path:
    """`record-golden --perf`, for the kinds that keep perf goldens."""
    kind = kind_of(spec)
    if kind.record_perf is None:
        raise UsageError(f"{spec.path}: perf goldens are for causal-lm specs; an "
                         f"{spec.kind} spec's perf is measured by `check --perf`")
    return kind.record_perf(spec, backend_name, golden_dir, update)



