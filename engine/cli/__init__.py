"""The `specengine` command line. Exit codes: 0 pass, 1 a check failed, 2 bad spec /
usage / golden problem, 3 backend unavailable or crashed.

Heavy libraries are imported only by the commands that run models.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specengine import __version__
from specengine.cli import analysis, migrate
from specengine.cli.output import (backends_parser, golden_dir_arg, configure_output, finish, output_args,
    plural, say, stdout_gone)
from specengine.errors import SpecEngineError, UsageError, printable

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_BACKEND = 0, 1, 2, 3

DEFAULT_SPEC = "specs/smollm2-135m.yaml"    # the embedded default (cli.embedded)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors are exit 2 with one line
        self.print_usage(sys.stderr)
        raise SystemExit(f"specengine: error: {message}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="specengine", description="Declarative differential testing of "
                     "model ports: run YAML specs on backends, record goldens, check candidates.")
    parser.add_argument("--version", action="version", version=f"specengine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (_validate_parser, migrate.add_parser, _record_parser, _check_parser,
                _run_parser, _report_parser, analysis.add_parsers, backends_parser,
                _init_parser):
        add(sub)
    for p in sub.choices.values():
        output_args(p)
    return parser


def _validate_parser(sub) -> None:
    p = sub.add_parser("validate", help="schema + semantic checks of specs (no model is loaded)")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files or folders")
    p.add_argument("--fix", action="store_true", help="first move flat tolerance blocks "
                   "under their numeric class (as `specengine migrate`)")
    migrate.class_arg(p)


def _record_parser(sub) -> None:
    p = sub.add_parser("record-golden", help="record goldens on a reference backend")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--backend", help="backend to record on (default: the spec's reference)")
    p.add_argument("--update", action="store_true", help="re-record an existing golden and "
                   "show what changed")
    p.add_argument("--allow-inconsistent-reference", action="store_true",
                   help="record even when the reference's own incremental decode and one-pass "
                   "forward disagree on a case beyond its dtype's noise (refused by default, "
                   "exit 1); the golden then lists those cases")
    p.add_argument("--noise", action="append", choices=("float32", "half"), metavar="CLASS",
                   help="also measure the reference model's own error in this numeric class "
                   "(half: run again in bfloat16; float32: again with another thread count) on "
                   "both paths and store it per case, the yardstick of relative limits "
                   "({noise: K}); on an existing golden without --update it is added, the "
                   "recorded outputs kept byte for byte (repeatable)")
    p.add_argument("--allow-failing-expectations", action="store_true",
                   help="record even when the reference's own text fails a case's expect "
                   "(refused by default, exit 1); the golden marks those expectations and "
                   "check reports them as failing on the reference too")
    p.add_argument("--perf", action="store_true", help="record the perf golden instead of the "
                   "output golden: the spec's perf: measurement on --backend, stored for its "
                   "device class (backend + device name + dtype) under GOLDEN_DIR/SPEC/perf/")
    p.add_argument("--case", action="append", metavar="ID", help="record only this case "
                   "(repeatable); the golden's other cases are kept byte for byte (re-recording "
                   "a case it holds needs --update)")
    p.add_argument("--tag", action="append", metavar="TAG", help="record only the cases with "
                   "this tag (repeatable, any), as --case")
    golden_dir_arg(p)


def _check_parser(sub) -> None:
    p = sub.add_parser("check", help="check a candidate backend against the goldens")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--backend", required=True, help="candidate backend (cpu, cpu-bf16, cuda, "
                   "npu, onnx, or one a spec defines)")
    p.add_argument("--against", metavar="BACKEND", help="compare with this backend live "
                   "instead of the golden")
    p.add_argument("--perf", action="store_true", help="also measure performance (the spec's "
                   "perf: section, or its defaults) and judge budgets and the perf golden; "
                   "without it no perf is measured, so plain checks stay fast")
    p.add_argument("--localize", nargs="?", const="failing", choices=("failing", "all"),
                   help="localize each failing case (or, with `all`, every case: a passing "
                   "case with a flagged layer gets a warning): "
                   "per-layer errors against the golden's layer sketch (or the --against "
                   "backend's hidden states) and the first layer that drifts, in every report")
    golden_dir_arg(p)
    _report_args(p)
    _selection_args(p)


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="the main job: record the reference golden if missing, "
                       "check the candidate, write reports")
    p.add_argument("specs", nargs="*", metavar="SPEC", help=f"default: {DEFAULT_SPEC} (the "
                   "embedded SmolLM2 spec)")
    p.add_argument("--backend", default="cpu-bf16", help="candidate backend (default cpu-bf16)")
    p.add_argument("--report-dir", default="reports", help="folder for report.html / .md / "
                   ".json / .xml (default ./reports)")
    _annotations_arg(p)
    golden_dir_arg(p)
    _selection_args(p)


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="re-render a results JSON without running anything")
    p.add_argument("results", metavar="RESULTS.json")
    _report_args(p)
    sub.add_parser("schema", help="print the spec JSON Schema (for editors)")


def _init_parser(sub) -> None:
    p = sub.add_parser("init", help="write a starter spec for a local Hugging Face model folder")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="local HF model folder (config.json, "
                   "weights, tokenizer)")
    p.add_argument("-o", "--output", type=Path, metavar="SPEC", help="spec file to write "
                   "(default: specs/NAME.yaml, NAME from the folder)")
    p.add_argument("--name", help="spec name (default: from the folder name)")
    p.add_argument("--force", action="store_true", help="overwrite an existing spec file")


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, metavar="PATH", help="write results JSON")
    p.add_argument("--html", type=Path, metavar="PATH", help="write an HTML report")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="write a Markdown report")
    p.add_argument("--junit", type=Path, metavar="PATH", help="write JUnit XML")
    _annotations_arg(p)


def _annotations_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--annotations", choices=("github",), help="print CI annotations for "
                   "failing cases: 'github' emits ::error file=SPEC,line=N:: workflow "
                   "commands at each failing case's line in its spec")


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--case", action="append", metavar="ID", help="run only this case (repeatable)")
    p.add_argument("--tag", action="append", metavar="TAG", help="run only cases with this tag")
    p.add_argument("-k", dest="expr", metavar="EXPR", help="run cases whose id or tag contains "
                   "EXPR ('not EXPR' excludes)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing case")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(printable(exc.code), file=sys.stderr)
            return EXIT_USAGE
        return int(exc.code or 0)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    configure_output(args)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:           # `specengine report r.json | head -1`
        stdout_gone()
        return EXIT_PASS
    except SpecEngineError as exc:
        print(f"specengine: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("specengine: interrupted", file=sys.stderr)
        return 130


def entry(argv: list[str] | None = None) -> None:
    """The program: `main`, then exit with its code. SIGINT at any moment gives exit 130
    and one line: inside a command as KeyboardInterrupt; once the command is over (its
    last line printed, the interpreter shutting down) it is only noted, so no traceback
    can come from the way out."""
    import signal

    interrupted: list[int] = []
    code = -1
    try:
        try:
            code = main(argv)
        finally:
            signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))
    except KeyboardInterrupt:
        interrupted.append(1)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code == -1 or (interrupted and code != 130):
        try:
            print("specengine: interrupted", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
        code = 130
    sys.exit(code)


def _specs(targets: list[str]):
    from specengine.spec import find_specs, load_spec

    paths = find_specs(targets)
    if not paths:
        raise UsageError(f"no spec files in {' '.join(targets)}")
    return [load_spec(p) for p in paths]


def cmd_validate(args) -> int:
    """Every error of every file, then a summary line."""
    from specengine.cli.validate import cli_main

    if args.fix:
        migrate.migrate_files(args.specs, args.klass)
    return cli_main(args)


def cmd_record(args) -> int:
    from specengine.golden.store import default_golden_dir
    from specengine.run import record_golden, record_perf_golden, select_cases

    for spec in _specs(args.specs):
        golden_dir = args.golden_dir or default_golden_dir(spec.path)
        if args.perf:
            if args.case or args.tag:
                raise UsageError("--perf records the spec's perf section; --case / --tag "
                                 "select output-golden cases")
            path = record_perf_golden(spec, args.backend or spec.reference, golden_dir, args.update)
            print(f"recorded perf golden {printable(path)}")
            continue
        only = None
        if args.case or args.tag:
            only = select_cases(spec, args.case, args.tag)
            if not only:
                raise UsageError(f"{spec.path}: no case has tag "
                                 f"{', '.join(map(repr, args.tag or []))}")
        path = record_golden(spec, args.backend or spec.reference, golden_dir, args.update,
                             allow_inconsistent=args.allow_inconsistent_reference, cases=only,
                             noise=tuple(dict.fromkeys(args.noise or ())),
                             allow_failing=args.allow_failing_expectations)
        count = len(spec.cases if only is None else only)
        print(f"recorded {printable(path)} ({plural(count, 'case')}"
              f"{'' if only is None else ' recorded, the others kept'})")
        if not getattr(args, "quiet", False):
            from specengine.kinds.causal_lm.record_summary import summary_lines

            import dataclasses

            recorded = spec if only is None else dataclasses.replace(spec, cases=only)
            for line in summary_lines(recorded, path):
                say(line)
    return EXIT_PASS


def cmd_check(args) -> int:
    from specengine.golden.store import default_golden_dir
    from specengine.run import check_spec, select_cases

    from specengine.cli.checkall import each_spec

    def one(spec):
        cases = select_cases(spec, args.case, args.tag, args.expr)
        if not cases:
            print(f"note: {printable(spec.path)}: no case selected", file=sys.stderr)
            return None
        return check_spec(spec, args.backend, args.golden_dir or default_golden_dir(spec.path),
                          args.against, cases, args.fail_fast, perf=args.perf,
                          localize=args.localize)

    runs, worst = each_spec(args.specs, args.backend, "check", one, args.fail_fast)
    return finish(runs, args, worst)


def cmd_run(args) -> int:
    """Record the reference golden where it is missing, check, write every report."""
    from specengine.golden.store import default_golden_dir, golden_path
    from specengine.run import check_spec, record_golden, select_cases

    from specengine.cli.checkall import each_spec

    out = Path(args.report_dir)
    args.json, args.markdown = out / "report.json", out / "report.md"
    args.html, args.junit = out / "report.html", out / "report.xml"

    from specengine.cli.embedded import default_spec, golden_dir_for

    def one(spec):
        golden_dir = (args.golden_dir or golden_dir_for(spec.path)
                      or default_golden_dir(spec.path))
        if not golden_path(golden_dir, spec.name, spec.reference).exists():
            path = record_golden(spec, spec.reference, golden_dir)
            print(f"recorded {printable(path)} on {spec.reference}")
        cases = select_cases(spec, args.case, args.tag, args.expr)
        run = check_spec(spec, args.backend, golden_dir, None, cases, args.fail_fast)
        run.command = "run"
        return run

    runs, worst = each_spec(args.specs or [str(default_spec())], args.backend, "run", one)
    return finish(runs, args, worst)


def cmd_report(args) -> int:
    from specengine.report import load_results

    runs = load_results(args.results)
    if not runs:
        raise UsageError(f"{args.results}: the results file holds no runs")
    # the closing line gives the runs' own time, not the time this re-rendering took
    return finish(runs, args, elapsed=sum(float(r.duration_s or 0.0) for r in runs))


def cmd_schema(args) -> int:
    import json

    from specengine.spec import schema

    print(json.dumps(schema("spec"), indent=2, ensure_ascii=False))
    return EXIT_PASS


def cmd_init(args) -> int:
    from specengine.cli.init_spec import init_spec

    path, spec = init_spec(args.model_dir, args.output, name=args.name, force=args.force)
    print(f"wrote {printable(path)} ({spec.name}: {plural(len(spec.cases), 'case')})")
    print(f"next: specengine record-golden {printable(path)} && specengine check "
          f"{printable(path)} --backend cpu-bf16")
    return EXIT_PASS


COMMANDS = {"validate": cmd_validate, "record-golden": cmd_record, "check": cmd_check,
            "run": cmd_run, "report": cmd_report, "schema": cmd_schema, "init": cmd_init}
COMMANDS.update({"localize": analysis.cmd_localize, "calibrate": analysis.cmd_calibrate,
                 "migrate": migrate.cli_main})


def cmd_backends(args) -> int:
    from specengine.cli.backends_cmd import cli_main

    return cli_main(args)


COMMANDS["backends"] = cmd_backends


if __name__ == "__main__":
    entry()
