"""The command line's output side: the -q / -v / --color flags, the summary and
reports every checking command ends with (and its exit code), and stdout that survives
a reader that went away (`specengine report r.json | head -1`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from specengine.errors import UsageError, printable

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_BACKEND = 0, 1, 2, 3
_STARTED: list[float] = []          # when the command started, for the closing line


def plural(count: int, word: str) -> str:
    """"1 case", "2 cases"."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the terminal output: auto (default) colours on a terminal "
                   "unless NO_COLOR is set, or when FORCE_COLOR is set")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress; the summary "
                   "shows failing cases and the closing line only")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail: every check "
                   "of every case in the summary")


def golden_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--golden-dir", type=Path, default=None, help="golden folder (default: "
                   "$SPECENGINE_GOLDEN_DIR, else the golden/ folder nearest the spec: in its "
                   "folder or one above, else in its project root, the folder holding .git or "
                   "pyproject.toml)")


def backends_parser(sub) -> None:
    p = sub.add_parser("backends", help="list the backends (built-in, or a spec's), their "
                       "aliases, runtime, device and dtype, and whether each can run here")
    p.add_argument("spec", nargs="?", metavar="SPEC", help="also list the backends this "
                   "spec defines")


def configure_output(args) -> None:
    from specengine.progress import configure, quiet_libraries

    _STARTED[:] = [time.perf_counter()]
    quiet_libraries()
    configure(quiet=getattr(args, "quiet", False), verbose=getattr(args, "verbose", False),
              color=getattr(args, "color", "auto"))


def stdout_gone() -> None:
    """The reader of stdout went away: send the rest to /dev/null, so neither later
    prints nor the interpreter's final flush raise."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def say(text: str) -> None:
    """print() to stdout that survives a closed pipe (the command still finishes: its
    reports are written and its exit code is the verdict's)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        stdout_gone()


def finish(runs, args, worst: int = EXIT_PASS, elapsed: float | None = None) -> int:
    """Print the summary, write the reports; the exit code is the worst of the runs'
    verdicts and `worst` (the exit code of specs that could not run). The closing line's
    time is `elapsed`, else the time since the command started."""
    return max(worst, _render_all(runs, args, elapsed))


def _render_all(runs, args, elapsed: float | None = None) -> int:
    from specengine.report import render_terminal, write_reports

    if not runs:
        raise UsageError("no case was selected")
    from specengine.progress import use_color

    if elapsed is None:
        elapsed = time.perf_counter() - _STARTED[0] if _STARTED else None
    say(render_terminal(runs, color=use_color(sys.stdout), elapsed=elapsed,
                         quiet=getattr(args, "quiet", False),
                         verbose=getattr(args, "verbose", False)))
    write_reports(runs, json_path=args.json, markdown=args.markdown, html=args.html,
                  junit=args.junit)
    for label, path in (("json", args.json), ("markdown", args.markdown), ("html", args.html),
                        ("junit", args.junit)):
        if path:
            say(f"{label} report: {printable(path)}")
    if getattr(args, "annotations", None) == "github":
        from specengine.report.annotations import github_annotations

        for line in github_annotations(runs):
            say(line)
    ran = [r for r in runs if not getattr(r, "error", "")]
    if any(r.status == "error" for r in ran):
        code = EXIT_BACKEND if all(c.status == "error" for r in ran for c in r.cases) else EXIT_FAIL
    else:
        code = EXIT_PASS if all(r.passed for r in ran) else EXIT_FAIL
    # a spec that could not run: its own exit code when known (passed in as `worst`),
    # at least 2 when a results file is re-rendered
    return max(code, EXIT_USAGE) if len(ran) < len(runs) else code
