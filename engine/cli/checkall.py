"""Running many specs in one command (`check DIR`, `run DIR`): a spec that cannot run
(invalid, its model missing, its backend unavailable here) becomes an error row with the
reason in every report, the other specs still run, and the exit code is the worst one
(0 pass < 1 a check failed < 2 bad spec/usage/golden < 3 backend unavailable)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

from specengine.errors import SpecEngineError, UsageError
from specengine.results import ERROR, RunResult, Side


def error_run(path: Path, spec, backend: str, command: str, exc: SpecEngineError) -> RunResult:
    """The row of a spec that could not run: no cases, status error, the reason."""
    cand, ref = Side(backend=backend), Side(backend=getattr(spec, "reference", "") or "")
    try:
        from specengine.backends.registry import config_for

        for side in (cand, ref):
            if side.backend:
                config = config_for(side.backend, getattr(spec, "backends", None))
                side.backend, side.runtime = config.name, config.runtime
                side.device, side.dtype = config.device, config.dtype
    except SpecEngineError:
        pass
    comparison = "cross-backend"
    if (cand.runtime, cand.device, cand.dtype) == (ref.runtime, ref.device, ref.dtype) \
            and cand.runtime:
        comparison = "self-check"
    run = RunResult(spec_name=getattr(spec, "name", None) or Path(path).stem,
                    spec_path=str(path), command=command, candidate=cand, reference=ref,
                    comparison=comparison, reference_kind="golden", status=ERROR,
                    error=exc.one_line())
    run.finish()
    return run


_SPEC_KEY = re.compile(rb"^specengine\s*:", re.MULTILINE)


def looks_like_spec(path: Path) -> bool:
    """A YAML file with a top-level `specengine:` key in its first 64 KiB: what a folder
    scan takes as a spec (other YAML in the folder, a CI config, is not one)."""
    try:
        with open(path, "rb") as fh:
            return bool(_SPEC_KEY.search(fh.read(64 * 1024)))
    except OSError:
        return False


def spec_paths(targets: list[str]) -> list[Path]:
    """Files named on the command line as they are; in folders, the YAML files that are
    specs."""
    from specengine.spec import find_specs

    out: list[Path] = []
    for target in targets:
        found = find_specs([target])
        out += found if not Path(target).is_dir() else [p for p in found if looks_like_spec(p)]
    return out


def each_spec(targets: list[str], backend: str, command: str,
              run_one: Callable[[object], RunResult | None],
              fail_fast: bool = False) -> tuple[list[RunResult], int]:
    """Run `run_one(spec)` on every spec of `targets`; (runs, worst exit code of the
    specs that could not run, 0 when all ran). `run_one` returns None to skip a spec;
    with `fail_fast` the first spec that does not pass ends the loop."""
    from specengine.spec import load_spec

    paths = spec_paths(targets)
    if not paths:
        raise UsageError(f"no spec files in {' '.join(targets)}")
    runs: list[RunResult] = []
    worst = 0
    for path in paths:
        spec = None
        try:
            spec = load_spec(path)
            run = run_one(spec)
        except SpecEngineError as exc:
            print(f"specengine: {exc.one_line()}", file=sys.stderr, flush=True)
            partial = exc.partial_run
            runs.append(partial if partial is not None else
                        error_run(path, spec, backend, command, exc))
            worst = max(worst, exc.exit_code)
            if fail_fast:
                break
            continue
        if run is not None:
            runs.append(run)
            if fail_fast and not run.passed:
                break
    return runs, worst
